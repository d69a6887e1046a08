"""Query-distribution (QD) loss: steer groups of queries to background, organ and tumour regions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .segmentation import ProbabilityDiceCELoss

__all__ = ["QueryDistributionLoss", "parse_query_groups"]


def parse_query_groups(
    query_groups: Sequence[Sequence], num_queries: int | None = None, num_classes: int | None = None
) -> tuple[list[int], list[int]]:
    """Validate ``query_groups`` and derive the per-group query counts and the class-to-group lookup table.

    Args:
        query_groups: ``[[n_queries, [class, ...]], ...]``, e.g. ``[[4, [0]], [4, [1]], [8, [2, 3]]]``: the first
            ``n_0`` queries form group 0 and represent classes ``[0]``, the next ``n_1`` queries group 1, ...
        num_queries: if given, the counts must sum to it.
        num_classes: if given, the classes must be exactly ``0 .. num_classes - 1``.

    Returns:
        ``(counts, class_to_group)``.

    Raises:
        ValueError: on a malformed entry, a non-positive count, a class in two groups, a missing class, or counts
            that do not sum to ``num_queries``.
    """
    if not isinstance(query_groups, Sequence) or isinstance(query_groups, str) or len(query_groups) < 2:
        raise ValueError(
            f"query_groups must be a list of at least two [n_queries, [classes]] pairs, got {query_groups!r}."
        )
    counts: list[int] = []
    owner: dict[int, int] = {}
    for g, entry in enumerate(query_groups):
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise ValueError(f"query_groups[{g}] must be [n_queries, [classes]], got {entry!r}.")
        n, classes = entry
        if isinstance(classes, int):
            classes = [classes]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"query_groups[{g}]: number of queries must be a positive integer, got {n!r}.")
        if not isinstance(classes, Sequence) or len(classes) == 0:
            raise ValueError(f"query_groups[{g}]: classes must be a non-empty list of class indices, got {classes!r}.")
        for c in classes:
            if not isinstance(c, int) or isinstance(c, bool) or c < 0:
                raise ValueError(f"query_groups[{g}]: class {c!r} is not a non-negative integer.")
            if c in owner:
                raise ValueError(f"query_groups: class {c} appears in groups {owner[c]} and {g}.")
            owner[c] = g
        counts.append(n)
    if num_queries is not None and sum(counts) != num_queries:
        raise ValueError(
            f"query_groups assign {sum(counts)} queries ({' + '.join(map(str, counts))}) but the network has "
            f"{num_queries} queries; the counts must sum to the number of queries."
        )
    k = max(owner) + 1 if num_classes is None else num_classes
    missing = sorted(set(range(k)) - set(owner))
    extra = sorted(c for c in owner if c >= k)
    if missing or extra:
        raise ValueError(
            f"query_groups must cover classes 0..{k - 1} exactly once; missing {missing}, unknown {extra}."
        )
    return counts, [owner[c] for c in range(k)]


class QueryDistributionLoss(nn.Module):
    """QD loss: Dice + CE between query-group probabilities and the grouped label map.

    Summing the query assignments ``M`` (softmax over queries) over the queries of each group gives a G-channel
    probability map; the label map with every class replaced by its group index supervises it. The loss is 0 when
    every voxel is assigned (with probability 1) to the queries of its group, and grows as assignment mass moves to
    the queries of other groups.

    Args:
        query_groups: see :func:`parse_query_groups`.
        num_queries: optional number of queries, to validate ``query_groups`` at construction.
        num_classes: optional number of classes, to validate ``query_groups`` at construction.
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
        batch: batch Dice.
        eps: probability floor before the logarithm.
    """

    def __init__(
        self,
        query_groups: Sequence[Sequence],
        num_queries: int | None = None,
        num_classes: int | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        counts, class_to_group = parse_query_groups(query_groups, num_queries, num_classes)
        self.counts = counts
        self.num_queries = sum(counts)
        self.num_groups = len(counts)
        membership = torch.zeros(self.num_queries, self.num_groups)
        start = 0
        for g, n in enumerate(counts):
            membership[start : start + n, g] = 1.0
            start += n
        self.register_buffer("membership", membership, persistent=False)
        self.register_buffer("class_to_group", torch.tensor(class_to_group, dtype=torch.long), persistent=False)
        self.loss = ProbabilityDiceCELoss(dice_weight=dice_weight, ce_weight=ce_weight, batch=batch, eps=eps)

    def group_probs(self, query_probs: torch.Tensor) -> torch.Tensor:
        """Group probability map ``(B, G, *spatial)`` (float32) from ``M`` ``(B, N, *spatial)``."""
        if query_probs.shape[1] != self.num_queries:
            raise ValueError(
                f"query_groups assign {self.num_queries} queries ({' + '.join(map(str, self.counts))}) but the "
                f"network output has {query_probs.shape[1]}; the counts must sum to the number of queries."
            )
        with torch.autocast(device_type=query_probs.device.type, enabled=False):
            tokens = query_probs.float().flatten(2).transpose(1, 2)  # (B, V, N); a plain view for channels-last input
            groups = torch.matmul(tokens, self.membership.to(tokens.device))  # (B, V, G)
        return groups.transpose(1, 2).unflatten(2, tuple(query_probs.shape[2:]))

    def group_target(self, label: torch.Tensor) -> torch.Tensor:
        """Validated, flattened ``(B, V)`` grouped target: every class value replaced by its group index."""
        target = ProbabilityDiceCELoss.flat_target(label, len(self.class_to_group))
        return self.class_to_group.to(target.device)[target]

    def loss_flat(
        self, query_probs: torch.Tensor, group_target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """QD loss given the output of :meth:`group_target` (lets a caller share it across decoder layers);
        ``valid``: optional ``(B, V)`` mask of the voxels that count."""
        return self.loss.loss_flat(self.group_probs(query_probs), group_target, valid)

    def forward(self, query_probs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """QD loss of ``query_probs`` (B, N, ...) against the class index map ``label`` (B, 1, ...)."""
        return self.loss_flat(query_probs, self.group_target(label))
