"""Losses: Dice+CE on probabilities, query-distribution, MaxQuery margin, query-compactness and query-balance losses,
lesion-size weights, the combined criterion."""

from __future__ import annotations

from .balance import QueryBalanceLoss
from .compactness import QueryCompactnessLoss
from .criterion import MaxQueryCriterion
from .lesion_weights import lesion_size_weights
from .outlier import MaxQueryMarginLoss
from .query_distribution import QueryDistributionLoss, parse_query_groups
from .segmentation import ProbabilityDiceCELoss, as_index_label, dice_ce_from_probs

__all__ = [
    "MaxQueryCriterion",
    "MaxQueryMarginLoss",
    "ProbabilityDiceCELoss",
    "QueryBalanceLoss",
    "QueryCompactnessLoss",
    "QueryDistributionLoss",
    "as_index_label",
    "dice_ce_from_probs",
    "lesion_size_weights",
    "parse_query_groups",
]
