"""Sinusoidal positional encoding for flattened 2D/3D feature maps."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinePositionalEncoding"]


class SinePositionalEncoding(nn.Module):
    """Fixed sine/cosine encoding of normalised voxel coordinates (DETR-style, any number of spatial axes).

    Each axis gets ``F = 2 * (dim // (2 * spatial_dims))`` channels (``F / 2`` sines and ``F / 2`` cosines of the
    coordinate, normalised to ``[0, scale]`` over the feature map, at geometrically spaced frequencies); leftover
    channels are zero. The
    encoding depends only on the feature-map shape, so it works for any patch size (it is relative to the patch,
    which is what sliding-window inference sees).

    Args:
        dim: number of output channels.
        spatial_dims: number of spatial axes.
        temperature: base of the geometric frequency progression.
        scale: coordinate range, ``2 * pi`` by default.
    """

    def __init__(self, dim: int, spatial_dims: int = 3, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.dim = dim
        self.spatial_dims = spatial_dims
        self.num_feats = 2 * (dim // (2 * spatial_dims))
        if self.num_feats < 2:
            raise ValueError(
                f"dim={dim} is too small for a sine encoding of {spatial_dims} axes (need >= {2 * spatial_dims})."
            )
        exponent = 2 * torch.div(torch.arange(self.num_feats), 2, rounding_mode="floor") / self.num_feats
        self.register_buffer("inv_freq", 1.0 / (temperature**exponent), persistent=False)
        self.scale = scale
        self.pad = dim - spatial_dims * self.num_feats

    def forward(self, shape: tuple[int, ...] | torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Encoding of a feature map of the given spatial shape.

        Args:
            shape: spatial shape ``(D, H, W)`` (or ``(H, W)``).
            device: device of the result.
            dtype: dtype of the result.

        Returns:
            ``(prod(shape), dim)`` tensor, rows in the same (C-contiguous) order as ``feature.flatten(2)``.
        """
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        axes = []
        for size in shape:
            coord = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * self.scale
            angle = coord[:, None] * inv_freq[None, :]
            axes.append(torch.cat([angle[:, 0::2].sin(), angle[:, 1::2].cos()], dim=1))  # (size, num_feats)
        grids = []
        n_axes = len(shape)
        for i, enc in enumerate(axes):
            view = [1] * n_axes + [self.num_feats]
            view[i] = shape[i]
            grids.append(enc.reshape(view).expand(*shape, self.num_feats))
        pos = torch.cat(grids, dim=-1).reshape(-1, n_axes * self.num_feats)
        if self.pad > 0:
            pos = torch.nn.functional.pad(pos, (0, self.pad))
        return pos.to(dtype)
