"""Query transformer decoder (Mask2Former / kMaX-DeepLab style): learnable queries attend to multi-scale features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import SinePositionalEncoding

__all__ = ["MultiHeadAttention", "QueryDecoderLayer", "QueryTransformerDecoder"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``(B, L, dim)`` sequences using :func:`torch.nn.functional.scaled_dot_product_attention`.

    Never materialises the attention matrix when a fused kernel is available, which matters for cross-attention
    from a few queries to many voxels.

    Args:
        dim: model width.
        num_heads: number of heads; must divide ``dim``.
        dropout: attention dropout (training only).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Attend ``query`` (B, Lq, dim) to ``key``/``value`` (B, Lk, dim); returns (B, Lq, dim)."""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # under CPU autocast the projections come in bfloat16, and the CPU's bfloat16 attention kernels are
            # slower than its float32 ones at these sizes (benchmarks/cpu_amp.py times both): attend in float32
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class QueryDecoderLayer(nn.Module):
    """One decoder layer: query-to-voxel cross-attention, query self-attention, feed-forward network.

    Positional embeddings are added to queries and keys (not to values), as in DETR / Mask2Former.

    Args:
        dim: model width.
        num_heads: attention heads.
        ffn_dim: hidden width of the feed-forward network.
        dropout: dropout after attention / FFN and inside attention.
        pre_norm: LayerNorm before each sub-block (pre-norm) instead of after the residual sum (post-norm).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0, pre_norm: bool = False) -> None:
        super().__init__()
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_self = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self, queries: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor
    ) -> torch.Tensor:
        """Update ``queries`` (B, N, dim) given ``memory`` (B, V, dim) and positional embeddings of both."""
        if self.pre_norm:
            q = self.norm_cross(queries)
            queries = queries + self.drop(self.cross_attn(q + query_pos, memory + memory_pos, memory))
            q = self.norm_self(queries)
            queries = queries + self.drop(self.self_attn(q + query_pos, q + query_pos, q))
            return queries + self.drop(self.ffn(self.norm_ffn(queries)))
        queries = self.norm_cross(
            queries + self.drop(self.cross_attn(queries + query_pos, memory + memory_pos, memory))
        )
        q = queries + query_pos
        queries = self.norm_self(queries + self.drop(self.self_attn(q, q, queries)))
        return self.norm_ffn(queries + self.drop(self.ffn(queries)))


class QueryTransformerDecoder(nn.Module):
    """Refines ``num_queries`` learnable queries by attending, layer by layer, to multi-scale voxel features.

    Each feature scale is projected to ``embed_dim`` channels with a 1x1(x1) convolution, flattened to a voxel
    sequence and given a fixed sinusoidal positional encoding plus a learnable per-scale embedding. Layer ``l``
    cross-attends to scale ``l % num_scales`` (round robin, coarse first), then runs query self-attention and an FFN.
    The queries carry a learnable content embedding and a learnable positional embedding.

    Args:
        feature_channels: channels of each feature scale passed to :meth:`forward`, in the same order.
        embed_dim: model width ``D``.
        num_queries: number of queries ``N``.
        num_layers: number of decoder layers ``L``.
        num_heads: attention heads.
        ffn_dim: FFN hidden width; ``4 * embed_dim`` by default.
        dropout: dropout rate.
        pre_norm: pre-norm instead of post-norm layers.
        spatial_dims: number of spatial axes of the features.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        embed_dim: int = 64,
        num_queries: int = 16,
        num_layers: int = 6,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        pre_norm: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if len(feature_channels) < 1:
            raise ValueError("feature_channels must name at least one feature scale.")
        if num_layers < 1 or num_queries < 1:
            raise ValueError(f"num_layers ({num_layers}) and num_queries ({num_queries}) must be positive.")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.input_proj = nn.ModuleList([conv(c, embed_dim, kernel_size=1) for c in feature_channels])
        self.level_embed = nn.Parameter(torch.zeros(len(feature_channels), embed_dim))
        self.pos_encoding = SinePositionalEncoding(embed_dim, spatial_dims)
        self.query_feat = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        ffn_dim = 4 * embed_dim if ffn_dim is None else ffn_dim
        self.layers = nn.ModuleList(
            [QueryDecoderLayer(embed_dim, num_heads, ffn_dim, dropout, pre_norm) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        # plain attributes (not in the state dict) that MaskTransformer checks a given decoder against
        self.feature_channels = [int(c) for c in feature_channels]
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.num_scales = len(feature_channels)
        nn.init.normal_(self.level_embed, std=0.02)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decode.

        Args:
            features: one ``(B, C_s, *spatial_s)`` tensor per scale, matching ``feature_channels``.

        Returns:
            ``num_layers`` tensors ``(B, N, D)``: the (layer-normalised) queries after each layer.
        """
        if len(features) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} feature scales, got {len(features)}.")
        memories, positions = [], []
        for i, (feat, proj) in enumerate(zip(features, self.input_proj, strict=True)):
            mem = proj(feat).flatten(2).transpose(1, 2)  # (B, V_s, D)
            memories.append(mem + self.level_embed[i].to(mem.dtype))
            positions.append(self.pos_encoding(feat.shape[2:], mem.device, mem.dtype).unsqueeze(0))
        batch = features[0].shape[0]
        queries = self.query_feat.unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_pos.unsqueeze(0).expand(batch, -1, -1)
        outputs = []
        for i, layer in enumerate(self.layers):
            s = i % self.num_scales
            queries = layer(queries, query_pos, memories[s], positions[s])
            outputs.append(self.norm(queries))
        return outputs
