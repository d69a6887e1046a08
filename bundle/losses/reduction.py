"""Class-balanced averaging of per-voxel loss terms."""

from __future__ import annotations

import torch

__all__ = ["class_balanced_mean"]


def class_balanced_mean(values: torch.Tensor, classes: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``mean_k mean_{v: class v = k} values[v]`` over the classes present, so that a small class (a tumour) weighs
    as much as a large one (the background).

    Args:
        values: per-voxel terms, any shape.
        classes: long class indices of the same shape.
        num_classes: the number of classes (default: the largest index present + 1).
    """
    values, classes = values.flatten(), classes.flatten()
    size = int(classes.max()) + 1 if num_classes is None else num_classes
    sums = values.new_zeros(size).scatter_add_(0, classes, values)
    counts = values.new_zeros(size).scatter_add_(0, classes, torch.ones_like(values))
    present = counts > 0
    return (sums[present] / counts[present]).mean()
