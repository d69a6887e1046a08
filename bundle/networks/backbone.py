"""nnU-Net-style CNN backbone that exposes multi-scale decoder features and a per-voxel embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from monai.networks.nets import DynUNet
from torch import nn

__all__ = ["DynUNetBackbone", "FeatureBackbone", "check_backbone"]


@runtime_checkable
class FeatureBackbone(Protocol):
    """What :class:`~bundle.networks.MaskTransformer` needs from a backbone (``DynUNetBackbone`` is one).

    Any ``nn.Module`` with these members can be passed as ``MaskTransformer(backbone=...)`` or nested in a config
    with ``_target_``; :func:`check_backbone` verifies them when the mask transformer is built.

    Attributes:
        feature_channels: channels of each feature map returned by ``forward``, coarsest first. The transformer
            decoder attends to the first ``num_feature_levels`` of them, so there must be at least that many.
        embed_dim: channels ``D`` of the per-voxel embedding; must equal the mask transformer's ``embed_dim``
            (the embedding is compared with the ``D``-wide cluster centres).

    ``forward(x)`` takes ``(B, in_channels, *spatial)`` and returns ``(features, embedding)``:

    - ``features``: a sequence of ``(B, feature_channels[i], *spatial_i)`` tensors, coarsest first;
    - ``embedding``: ``(B, embed_dim, *spatial)`` at the resolution of ``x``, because the segmentation and the
      anomaly map are produced at the embedding's resolution and must line up with the input patch. Channels-last
      strides (as :class:`DynUNetBackbone` returns) make the mask head's voxel-by-query products copy-free; other
      layouts work, with a copy.
    """

    feature_channels: Sequence[int]
    embed_dim: int

    def __call__(self, x: torch.Tensor) -> tuple[Sequence[torch.Tensor], torch.Tensor]:
        """Run the backbone; see the class docstring."""
        ...


def check_backbone(backbone: object, embed_dim: int, num_feature_levels: int) -> list[int]:
    """Check ``backbone`` against the :class:`FeatureBackbone` contract.

    Args:
        backbone: the module to check.
        embed_dim: the embedding width the mask head expects.
        num_feature_levels: how many feature levels the decoder attends to.

    Returns:
        ``backbone.feature_channels`` as a list.

    Raises:
        ValueError: the backbone is not an ``nn.Module``, lacks ``feature_channels`` or ``embed_dim``, or their
            values do not fit (the message names the member and both values).
    """
    name = type(backbone).__name__
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"the backbone must be an nn.Module (see FeatureBackbone), got a {name}.")
    missing = [attr for attr in ("feature_channels", "embed_dim") if not hasattr(backbone, attr)]
    if missing:
        raise ValueError(f"the backbone {name} lacks {', '.join(missing)} (required by the FeatureBackbone contract).")
    channels = backbone.feature_channels
    if (
        isinstance(channels, str | bytes)
        or not isinstance(channels, Sequence)
        or not all(isinstance(c, int) and c > 0 for c in channels)
    ):
        raise ValueError(f"{name}.feature_channels must be a sequence of positive ints, got {channels!r}.")
    if backbone.embed_dim != embed_dim:
        raise ValueError(
            f"{name}.embed_dim={backbone.embed_dim} differs from the mask head's embed_dim={embed_dim} (the voxel "
            "embedding is compared with the cluster centres, so both must have the same width)."
        )
    if len(channels) < num_feature_levels:
        raise ValueError(
            f"{name} returns {len(channels)} feature levels ({list(channels)}) but num_feature_levels="
            f"{num_feature_levels}."
        )
    return list(channels)


class DynUNetBackbone(DynUNet):
    """A MONAI :class:`~monai.networks.nets.DynUNet` returning decoder features instead of logits.

    The encoder, bottleneck and decoder blocks are the ones built by ``DynUNet`` (so the backbone is configured
    exactly like an nnU-Net / DynUNet: ``kernel_size``, ``strides``, ``filters``, instance norm, leaky ReLU). The
    forward pass runs those blocks explicitly and returns the outputs of every up-sampling stage, coarse to fine,
    together with a per-voxel embedding ``P``: a 1x1(x1) projection of the full-resolution decoder output to
    ``embed_dim`` channels. The projection is applied voxel-major (an ``nn.Linear`` on the ``(B, V, C)`` view, which
    is the same operation as a 1x1(x1) convolution), so ``P`` comes out with channels-last strides, the layout the
    voxel-by-query products of the mask head want.

    With ``strides=[1, 2, 2, 2, 2]`` the decoder features are at 1/8, 1/4, 1/2 and full resolution with
    ``filters[3], filters[2], filters[1], filters[0]`` channels.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        embed_dim: channels of the per-voxel embedding ``P``.
        kernel_size: convolution kernel size of each level (as in ``DynUNet``).
        strides: convolution stride of each level (as in ``DynUNet``; the first is usually 1).
        upsample_kernel_size: transposed-convolution kernel sizes; defaults to ``strides[1:]``.
        filters: channels of each level; defaults to DynUNet's nnU-Net rule.
        dropout: dropout of the convolution blocks.
        norm_name: normalisation layer (default instance norm with affine parameters).
        act_name: activation (default leaky ReLU, slope 0.01).
        res_block: use residual convolution blocks.
        trans_bias: bias in the transposed convolutions.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_dim: int,
        kernel_size: Sequence[Sequence[int] | int],
        strides: Sequence[Sequence[int] | int],
        upsample_kernel_size: Sequence[Sequence[int] | int] | None = None,
        filters: Sequence[int] | None = None,
        dropout: tuple | str | float | None = None,
        norm_name: tuple | str = ("INSTANCE", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block: bool = False,
        trans_bias: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=embed_dim,
            kernel_size=kernel_size,
            strides=strides,
            upsample_kernel_size=strides[1:] if upsample_kernel_size is None else upsample_kernel_size,
            filters=filters,
            dropout=dropout,
            norm_name=norm_name,
            act_name=act_name,
            deep_supervision=False,
            res_block=res_block,
            trans_bias=trans_bias,
        )
        # The recursive skip-layer wrapper only re-registers the blocks above for DynUNet.forward, which is replaced
        # here; dropping it keeps the state dict free of duplicate keys. The logits head is replaced by the
        # voxel-embedding projection below.
        del self.skip_layers
        del self.output_block
        self.pixel_proj = nn.Linear(self.filters[0], embed_dim)
        self.embed_dim = embed_dim

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the decoder features returned by :meth:`forward`, coarse to fine."""
        return list(self.filters[:-1][::-1])

    @property
    def feature_strides(self) -> list[tuple[int, ...]]:
        """Down-sampling factor of each decoder feature (per spatial axis), coarse to fine."""
        total = [1] * self.spatial_dims
        per_level = []
        for stride in self.strides:
            s = [stride] * self.spatial_dims if isinstance(stride, int) else list(stride)
            total = [t * si for t, si in zip(total, s, strict=True)]
            per_level.append(tuple(total))
        # decoder stage i outputs at the resolution of encoder level (n_levels - 2 - i)
        return per_level[:-1][::-1]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:  # type: ignore[override]
        """Run the U-Net.

        Args:
            x: input image, ``(B, in_channels, *spatial)``; each spatial size divisible by the product of ``strides``.

        Returns:
            ``(features, embedding)``: the list of decoder stage outputs, coarse to fine (the last one at the
            resolution of ``strides[0]``), and the per-voxel embedding ``(B, embed_dim, *spatial)`` (a view with
            channels-last strides).
        """
        skips = []
        out = self.input_block(x)
        skips.append(out)
        for down in self.downsamples:
            out = down(out)
            skips.append(out)
        out = self.bottleneck(out)
        features = []
        for up, skip in zip(self.upsamples, skips[::-1], strict=True):
            out = up(out, skip)
            features.append(out)
        tokens = self.pixel_proj(out.flatten(2).transpose(1, 2))  # (B, V, embed_dim), contiguous
        embedding = tokens.transpose(1, 2).unflatten(2, tuple(out.shape[2:]))
        return features, embedding
