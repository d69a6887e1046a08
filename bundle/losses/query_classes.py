"""Checks shared by the losses that read the fixed query classes (``queries_per_class``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_query_channels", "chosen_classes", "query_counts"]


def query_counts(queries_per_class: Sequence[int]) -> list[int]:
    """``queries_per_class`` as a list of ints; at least two classes, each with at least one query."""
    counts = [int(n) for n in queries_per_class]
    if len(counts) < 2 or any(n < 1 for n in counts):
        raise ValueError(f"queries_per_class needs at least two positive counts, got {list(queries_per_class)}.")
    return counts


def chosen_classes(classes: Sequence[int] | None, num_classes: int, default: Sequence[int]) -> list[int]:
    """The sorted distinct ``classes`` (``default`` where ``None``), each in ``0..num_classes - 1``."""
    chosen = list(default) if classes is None else sorted({int(k) for k in classes})
    if not chosen or any(not 0 <= k < num_classes for k in chosen):
        raise ValueError(f"classes must be a non-empty subset of 0..{num_classes - 1}, got {classes}.")
    return chosen


def check_query_channels(values: torch.Tensor, counts: Sequence[int], what: str) -> None:
    """Raise unless ``values`` ``(B, N, ...)`` has one channel per query named by ``counts``."""
    if values.shape[1] != sum(counts):
        raise ValueError(
            f"queries_per_class {list(counts)} name {sum(counts)} queries but the {what} have {values.shape[1]} "
            "channels."
        )
