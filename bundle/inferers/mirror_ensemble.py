"""Test-time mirroring: an inferer's output averaged over mirrored copies of the input, as nnU-Net predicts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["MirrorEnsembleInferer"]


class MirrorEnsembleInferer(Inferer):
    """Run ``inferer`` on the input and on its mirror images, mirror each output back and average them.

    Every combination of the ``mirror_axes`` is used (``2 ** len(mirror_axes)`` passes, the identity included), so
    the prediction no longer depends on the orientation of the sliding windows' content and its noise averages out.
    The output must be one tensor laid out like the input (``(B, C, *spatial)``), as a segmentation network's logits
    or the mask transformer's evaluation tensor ``cat[l, A]`` are: averaging is done channel by channel.

    Args:
        inferer: the inferer of one pass, e.g. ``SlidingWindowInferer``.
        mirror_axes: spatial axes (0-based, after batch and channel) to mirror; empty for a single plain pass.
    """

    def __init__(self, inferer: Inferer, mirror_axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        axes = [int(a) for a in mirror_axes]
        if len(set(axes)) != len(axes) or any(a < 0 for a in axes):
            raise ValueError(f"mirror_axes must be distinct non-negative spatial axes, got {list(mirror_axes)}.")
        self.inferer = inferer
        self.mirror_axes = tuple(axes)
        self.flips = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Average of ``inferer(mirror(inputs))`` mirrored back, over every combination of the mirror axes."""
        spatial_dims = inputs.ndim - 2
        if self.mirror_axes and max(self.mirror_axes) >= spatial_dims:
            raise ValueError(
                f"mirror_axes {list(self.mirror_axes)} name an axis beyond the input's {spatial_dims} spatial axes "
                f"(input shape {tuple(inputs.shape)})."
            )
        total: torch.Tensor | None = None
        for axes in self.flips:
            dims = [a + 2 for a in axes]
            output = self.inferer(torch.flip(inputs, dims) if dims else inputs, network, *args, **kwargs)
            if not isinstance(output, torch.Tensor) or output.shape[2:] != inputs.shape[2:]:
                raise TypeError(
                    "MirrorEnsembleInferer needs one output tensor on the input's grid, got "
                    f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))} for input {tuple(inputs.shape)}."
                )
            output = torch.flip(output, dims) if dims else output
            total = output if total is None else total + output
        # a single pass is returned as it is: the default (no mirroring) adds no work to every inference
        return total if len(self.flips) == 1 else total / len(self.flips)
