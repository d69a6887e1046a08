"""Cluster-classification and cluster-assignment heads of the mask transformer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "MaskClassificationHead", "to_channel_first"]


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between linear layers.

    Args:
        in_dim: input width.
        hidden_dim: hidden width.
        out_dim: output width.
        num_layers: number of linear layers (>= 1).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1.")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension of ``x``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def to_channel_first(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """View a token-layout tensor ``(B, V, C)`` (V voxels in C order) as channel-first ``(B, C, *spatial)``.

    No copy is made: the result has channels-last strides. Call ``.contiguous()`` if a consumer needs
    channel-first memory.
    """
    return tokens.transpose(1, 2).unflatten(2, tuple(spatial))


class MaskClassificationHead(nn.Module):
    """Turns decoder queries and the per-voxel embedding into cluster assignments and segmentation probabilities.

    For queries ``Q`` (N x D) and per-voxel embedding ``P`` (V x D) of one decoder layer:

    - cluster centres ``C = mask_mlp(Q)``; class logits ``class_mlp(Q)`` (N x K), ``S = softmax_K``;
    - affinities ``R = scale * P C^T`` (V x N) where ``scale = 1 / temperature``; with ``normalize_embeddings``
      both ``C`` and ``P`` are L2-normalised first, so ``R`` is a scaled cosine similarity in ``[-scale, scale]``;
    - assignments ``M = softmax_N(R)``; segmentation probabilities ``Z[v, k] = sum_n M[v, n] S[n, k]``;
    - MaxQuery anomaly ``A = -max_n R``: the same (temperature-scaled) ``R`` that feeds ``M``.

    Tensors are in token layout (voxels before channels, ``(B, V, ...)``), which keeps the voxel-by-query products
    cache- and BLAS-friendly; :func:`to_channel_first` gives channel-first views. Several decoder layers are
    processed together (one matrix product for all their centres), which is how deep supervision stays cheap.
    ``R, M, Z, A`` are computed in float32 with autocast disabled, so mixed precision does not degrade the
    softmax, the logarithms of the losses or the resolution of the anomaly map.

    Args:
        embed_dim: width ``D`` of queries, centres and the voxel embedding.
        num_classes: number ``K`` of inlier classes (background included).
        normalize_embeddings: L2-normalise centres and voxel embeddings (cosine affinity).
        temperature: fixed temperature dividing the affinity; ``None`` makes it learnable, initialised to 0.1 with
            normalised embeddings (affinities in +-10) and to 1.0 without; the learnt value is clamped to
            ``[0.01, 100]``.
        class_mlp_layers: linear layers of the classification MLP.
        mask_mlp_layers: linear layers of the centre (mask-embedding) MLP.
        query_classes: the class of every query (length ``N``). When given, each query's class is fixed
            (``S`` is one-hot; no classification MLP is built), so every inlier class keeps cluster centres of its
            own; see :class:`~bundle.networks.MaskTransformer`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        normalize_embeddings: bool = True,
        temperature: float | None = None,
        class_mlp_layers: int = 2,
        mask_mlp_layers: int = 3,
        query_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}.")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be positive or None (learnable), got {temperature}.")
        if query_classes is None:
            self.class_mlp: MLP | None = MLP(embed_dim, embed_dim, num_classes, class_mlp_layers)
        else:
            query_classes = [int(c) for c in query_classes]
            if any(not 0 <= c < num_classes for c in query_classes) or set(query_classes) != set(range(num_classes)):
                raise ValueError(
                    f"query_classes must name every class 0..{num_classes - 1} at least once, got {query_classes}."
                )
            self.class_mlp = None
            # exp(-1e4) is exactly 0 in float32: the softmax over these logits is the one-hot class of each query
            fixed = torch.full((len(query_classes), num_classes), -1e4)
            fixed[torch.arange(len(query_classes)), torch.tensor(query_classes)] = 0.0
            self.register_buffer("fixed_class_logits", fixed, persistent=False)
        self.query_classes = query_classes
        self.mask_mlp = MLP(embed_dim, embed_dim, embed_dim, mask_mlp_layers)
        self.normalize_embeddings = normalize_embeddings
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        init = temperature if temperature is not None else (0.1 if normalize_embeddings else 1.0)
        log_scale = torch.tensor(-math.log(init), dtype=torch.float32)
        if temperature is None:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def temperature(self) -> float:
        """Current temperature (``1 / scale``)."""
        return float(1.0 / self._scale().detach())

    def _scale(self) -> torch.Tensor:
        return self.log_scale.float().clamp(-math.log(100.0), math.log(100.0)).exp()

    def similarity(self, affinity: torch.Tensor) -> torch.Tensor:
        """Affinities without the temperature: ``P C^T``, a cosine in ``[-1, 1]`` with normalised embeddings."""
        return affinity / self._scale()

    def embed_pixels(self, embedding: torch.Tensor) -> torch.Tensor:
        """Per-voxel embedding ``P`` in token layout, float32, L2-normalised if configured.

        Args:
            embedding: ``(B, D, *spatial)`` backbone embedding.

        Returns:
            ``(B, V, D)``, normalised over ``D``; contiguous when ``embedding`` has channels-last strides (as the
            :class:`~bundle.networks.backbone.DynUNetBackbone` output does).
        """
        with torch.autocast(device_type=embedding.device.type, enabled=False):
            pixels = embedding.float().flatten(2).transpose(1, 2)  # a contiguous view for channels-last input
            if self.normalize_embeddings:
                pixels = pixels * torch.rsqrt((pixels * pixels).sum(dim=-1, keepdim=True).clamp_min(1e-12))
        return pixels

    def forward(self, queries: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Affinities and class logits of one or more decoder layers.

        Args:
            queries: ``(B, L, N, D)`` queries of ``L`` decoder layers (or ``(B, N, D)`` for one layer).
            pixels: ``(B, V, D)`` output of :meth:`embed_pixels`.

        Returns:
            ``(R, class_logits)``: ``(B, V, L, N)`` float32 temperature-scaled affinities and ``(B, L, N, K)``
            float32 class logits (without the ``L`` axis for 3D ``queries``).
        """
        single = queries.dim() == 3
        if single:
            queries = queries.unsqueeze(1)
        b, n_layers, n_queries, _ = queries.shape
        centres = self.mask_mlp(queries)
        if self.class_mlp is None:
            if n_queries != self.fixed_class_logits.shape[0]:
                raise ValueError(f"got {n_queries} queries but query_classes names {self.fixed_class_logits.shape[0]}.")
            logits = self.fixed_class_logits.expand(b, n_layers, -1, -1)
        else:
            logits = self.class_mlp(queries).float()
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            centres = centres.float()
            if self.normalize_embeddings:
                centres = F.normalize(centres, dim=-1)
            centres = (centres * self._scale()).reshape(b, n_layers * n_queries, -1)
            affinity = torch.bmm(pixels, centres.transpose(1, 2)).view(b, -1, n_layers, n_queries)
        if single:
            return affinity[:, :, 0], logits[:, 0]
        return affinity, logits

    @staticmethod
    def assign(affinity: torch.Tensor, class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query assignments ``M = softmax_N(R)`` and segmentation probabilities ``Z = M S`` (float32).

        Args:
            affinity: ``(B, V, L, N)`` (or ``(B, V, N)``) affinities ``R``.
            class_logits: ``(B, L, N, K)`` (or ``(B, N, K)``) class logits.

        Returns:
            ``(M, Z)`` with shapes ``(B, V, L, N)`` and ``(B, V, L, K)`` (or without ``L``).
        """
        single = affinity.dim() == 3
        if single:
            affinity, class_logits = affinity.unsqueeze(2), class_logits.unsqueeze(1)
        b, v, n_layers, n_queries = affinity.shape
        with torch.autocast(device_type=affinity.device.type, enabled=False):
            query_probs = torch.softmax(affinity.float(), dim=-1)
            class_probs = torch.softmax(class_logits.float(), dim=-1)  # (B, L, N, K)
            k = class_probs.shape[-1]
            # block-diagonal (L*N, L*K) matrix of the class probabilities: all layers in one product
            eye = torch.eye(n_layers, device=class_probs.device, dtype=class_probs.dtype)
            block = (eye[None, :, None, :, None] * class_probs[:, :, :, None, :]).reshape(
                b, n_layers * n_queries, n_layers * k
            )
            seg = torch.bmm(query_probs.reshape(b, v, n_layers * n_queries), block).view(b, v, n_layers, k)
        if single:
            return query_probs[:, :, 0], seg[:, :, 0]
        return query_probs, seg

    @staticmethod
    def evidence_logits(affinity: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
        """Per-class logits ``l_k = log sum_n exp(R_n) S_nk``, whose softmax over ``k`` is exactly ``Z``.

        ``exp(R_n)`` is the unnormalised evidence that a voxel belongs to cluster ``n``; ``l_k`` pools it over the
        clusters of class ``k`` (with fixed query classes: a log-sum-exp over the class's own queries). So
        ``-max_k l_k`` (MaxLogit) and ``-logsumexp_k l_k = -logsumexp_n R_n`` (Energy) are scores of the
        unnormalised affinities, real rivals of MaxQuery's ``-max_n R_n``, where ``l = log Z`` would make Energy
        identically 0 and MaxLogit a monotone function of MSP.

        Args:
            affinity: ``(B, V, N)`` affinities ``R``.
            class_logits: ``(B, N, K)`` class logits.

        Returns:
            ``(B, V, K)`` float32.
        """
        with torch.autocast(device_type=affinity.device.type, enabled=False):
            log_s = torch.log_softmax(class_logits.float(), dim=-1)  # (B, N, K)
            return torch.logsumexp(affinity.float()[..., None] + log_s[:, None], dim=2)

    @staticmethod
    def anomaly(affinity: torch.Tensor) -> torch.Tensor:
        """MaxQuery anomaly ``A = -max_n R`` from ``(B, V, N)`` affinities, ``(B, V, 1)``; higher = more anomalous."""
        return -affinity.float().amax(dim=-1, keepdim=True)
