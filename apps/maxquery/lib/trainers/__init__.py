"""Training tasks of the MaxQuery app."""

from .maxquery import MaxQueryTrainer, split_cases

__all__ = ["MaxQueryTrainer", "split_cases"]
