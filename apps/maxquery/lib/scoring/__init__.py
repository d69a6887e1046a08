"""Scoring methods of the MaxQuery app."""

from .maxquery_ood import FLAG_KEY, MODEL_KEY, SCORE_KEY, MaxQueryOODScoring

__all__ = ["FLAG_KEY", "MODEL_KEY", "SCORE_KEY", "MaxQueryOODScoring"]
