"""Active-learning strategies of the MaxQuery app."""

from .maxquery_ood import MaxQueryOODStrategy

__all__ = ["MaxQueryOODStrategy"]
