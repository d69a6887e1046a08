"""Losses: Dice+CE on probabilities, query-distribution loss and the combined training criterion."""

from __future__ import annotations

from .criterion import MaxQueryCriterion
from .query_distribution import QueryDistributionLoss, parse_query_groups
from .segmentation import ProbabilityDiceCELoss, as_index_label, dice_ce_from_probs

__all__ = [
    "MaxQueryCriterion",
    "ProbabilityDiceCELoss",
    "QueryDistributionLoss",
    "as_index_label",
    "dice_ce_from_probs",
    "parse_query_groups",
]
