"""Inference tasks of the MaxQuery app."""

from .maxquery import SUSPECTED_OOD, MaxQueryAnomalyMap, MaxQueryInferTask, MaxQuerySegmentation

__all__ = ["SUSPECTED_OOD", "MaxQueryAnomalyMap", "MaxQueryInferTask", "MaxQuerySegmentation"]
