"""Training tasks of the MaxQuery app."""

from .maxquery import MaxQueryTrainer, remove_stale_staging, split_cases

__all__ = ["MaxQueryTrainer", "remove_stale_staging", "split_cases"]
