"""Mask transformer for 3D CT segmentation with MaxQuery out-of-distribution localisation."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bundle.ood.scores import entropy

from .backbone import DynUNetBackbone, check_backbone
from .heads import MaskClassificationHead, to_channel_first
from .transformer_decoder import QueryTransformerDecoder

__all__ = ["MaskTransformer", "split_prediction"]

# The flat arguments that only serve to build each part; with a ready part they must agree with it or be left at
# their defaults, so that a stale override (e.g. ``network_def#filters`` next to a nested backbone) fails loudly
# instead of being ignored.
_BACKBONE_ARGS = ("in_channels", "kernel_size", "strides", "filters", "upsample_kernel_size", "norm_name", "act_name")
_BACKBONE_ARGS += ("res_block",)
_DECODER_ARGS = ("num_layers", "num_heads", "ffn_dim", "dropout", "pre_norm", "num_feature_levels")
_HEAD_ARGS = ("normalize_embeddings", "temperature")
# the attribute of a ready part that holds the value of a flat argument, where the names differ
_ATTRIBUTES = {"num_feature_levels": "num_scales"}
_HEAD_METHODS = ("embed_pixels", "assign", "anomaly", "similarity", "evidence_logits")


def _plain(value: Any) -> Any:
    """``value`` with tuples turned into lists (recursively), so that config lists compare equal to tuple defaults."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_unused(part: str, module: nn.Module, args: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Refuse flat arguments that would build ``part`` but disagree with the ``module`` given for it."""
    for arg, value in args.items():
        if _plain(value) == _plain(defaults[arg]):
            continue
        attr = _ATTRIBUTES.get(arg, arg)
        if hasattr(module, attr) and _plain(getattr(module, attr)) == _plain(value):
            continue
        found = f"its {attr} is {getattr(module, attr)!r}" if hasattr(module, attr) else f"it has no {attr}"
        raise ValueError(
            f"{arg}={value!r} only builds the default {part}, but a {part} ({type(module).__name__}) was given and "
            f"{found}: set it on the {part} (in a config: network_def#{part}#...) or drop it."
        )


def _require(part: str, module: object, members: Sequence[str]) -> None:
    if not isinstance(module, nn.Module):
        raise ValueError(f"the {part} must be an nn.Module, got a {type(module).__name__}.")
    missing = [m for m in members if not hasattr(module, m)]
    if missing:
        raise ValueError(f"the {part} {type(module).__name__} lacks {', '.join(missing)}.")


def split_prediction(prediction: torch.Tensor, num_classes: int, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the evaluation output ``cat[Z, A]`` of :class:`MaskTransformer`.

    Args:
        prediction: ``(B, K+1, *spatial)`` (or channel-first ``(K+1, *spatial)`` with ``dim=0``).
        num_classes: number ``K`` of inlier classes.
        dim: channel dimension.

    Returns:
        ``(Z, A)``: segmentation probabilities (K channels) and the MaxQuery anomaly map (1 channel).
    """
    if prediction.shape[dim] != num_classes + 1:
        raise ValueError(
            f"expected {num_classes + 1} channels (K={num_classes} class probabilities + 1 anomaly map) along dim "
            f"{dim}, got shape {tuple(prediction.shape)}."
        )
    return prediction.narrow(dim, 0, num_classes), prediction.narrow(dim, num_classes, 1)


class MaskTransformer(nn.Module):
    """nnU-Net backbone + query transformer decoder + mask-classification heads (segmentation as soft clustering).

    ``N`` learnable queries are refined by a transformer decoder that cross-attends, round robin, to the
    ``num_feature_levels`` coarsest decoder scales of a :class:`DynUNetBackbone`; each query yields a cluster centre
    and class logits. A full-resolution per-voxel embedding ``P`` is assigned softly to the centres
    (``M = softmax_N(R)``, ``R = C P^T / temperature``) and ``Z = S^T M`` gives per-class probabilities.
    ``A = -max_n R`` is the MaxQuery anomaly map (higher = further from every inlier cluster centre); with
    ``anomaly_uncertainty_weight`` ``w > 0`` the map adds the class uncertainty,
    ``A = -max_n R + w s H(Z)``, where ``H(Z) = -sum_k Z_k log Z_k`` and ``s = 1 / temperature`` puts ``w`` in the
    units of a cosine similarity (see :meth:`anomaly`).

    Output (like ``DynUNet``, it depends on ``self.training``):

    - eval: one tensor ``(B, K+1, *spatial)`` = ``cat[Z, A]`` (or ``cat[l, A]`` with ``eval_output="logits"``; use
      :func:`split_prediction`), so that
      ``SlidingWindowInferer``, ``torch.jit.trace`` and bundle export work unchanged;
    - train: a dict with ``"pred"`` Z ``(B, K, ...)``, ``"ood"`` A ``(B, 1, ...)``, ``"query_probs"`` M
      ``(B, N, ...)`` and ``"query_similarity"`` ``R * temperature`` ``(B, N, ...)`` (for the compactness loss) of
      the last layer and, with ``deep_supervision``, ``"aux_{i}_pred"`` and
      ``"aux_{i}_query_probs"`` of decoder layers ``i = 0 .. L-2``. ``"ood"`` is detached (it is not a training
      target), so the affinities need not be kept for the backward pass.

    All outputs are float32, also under autocast. The training-mode tensors are views with channels-last strides
    (the head works voxel-major, see :class:`MaskClassificationHead`); the evaluation tensor is contiguous.

    The three parts can be swapped (Mask2Former-style): pass ready modules as ``backbone``, ``decoder`` and
    ``head`` (in a config, nested objects with ``_target_``); a part left ``None`` is built from the flat arguments,
    with the same parameter names as always, so checkpoints fit either way. A given part is checked here:

    - backbone: the :class:`~bundle.networks.backbone.FeatureBackbone` contract (``feature_channels``, coarsest
      first, at least ``num_feature_levels`` of them; ``embed_dim`` equal to ``embed_dim``; ``forward(x)`` returns
      ``(features, embedding)``), see :func:`~bundle.networks.backbone.check_backbone`;
    - decoder: ``feature_channels`` (what it expects, coarsest first) equal to the first ones of the backbone,
      ``embed_dim``, ``num_queries`` (equal to the count from ``queries_per_class``/``num_queries`` where given) and
      ``num_layers``; ``forward(features)`` returns ``num_layers`` tensors ``(B, N, D)``, as
      :class:`~bundle.networks.transformer_decoder.QueryTransformerDecoder` does;
    - head: the :class:`~bundle.networks.heads.MaskClassificationHead` interface, with ``embed_dim`` and
      ``num_classes`` equal to this model's and ``query_classes`` naming ``num_queries`` queries if fixed.

    A flat argument that only builds a given part (e.g. ``filters`` with a ready backbone) must be left at its
    default or agree with the part's attribute of that name; otherwise a ``ValueError`` says so.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
        num_classes: number ``K`` of inlier classes, background included.
        kernel_size: DynUNet kernel size per level.
        strides: DynUNet stride per level; input sizes must be divisible by their product.
        filters: DynUNet channels per level.
        upsample_kernel_size: DynUNet transposed-convolution kernels; ``strides[1:]`` by default.
        num_queries: number of queries ``N``; derived from ``queries_per_class`` when that is given.
        queries_per_class: ``[n_0, ..., n_{K-1}]``: fix the class of every query, the first ``n_0`` to class 0, the
            next ``n_1`` to class 1, ... (``S`` one-hot, no classification MLP). A free classification head lets all
            the tumour queries settle on one shared mix of tumour classes (then one tumour type can never win the
            argmax of ``Z``); with fixed classes every inlier class has cluster centres of its own, as in
            Mask2Former / kMaX-DeepLab after matching, but without a matching step: the class of a centre is given
            by its group, the way the QD loss already assigns regions to query groups. ``Z_k`` is then the
            assignment mass of the class-``k`` queries, and ``log Z_k + logsumexp_n R_n = logsumexp_{n in k} R_n``
            is a real per-class logit.
        embed_dim: width ``D`` of the transformer, the centres and the voxel embedding.
        num_layers: decoder layers ``L``.
        num_heads: attention heads.
        ffn_dim: decoder FFN width (``4 * embed_dim`` by default).
        dropout: dropout of the decoder (the backbone uses none).
        num_feature_levels: how many decoder scales (coarsest first) the queries attend to; at most ``num_layers``
            are used, since the layers visit the scales round robin.
        pre_norm: pre-norm decoder layers.
        normalize_embeddings: L2-normalise centres and voxel embeddings (cosine affinities).
        temperature: affinity temperature; ``None`` = learnable (see :class:`MaskClassificationHead`).
        deep_supervision: return the predictions of every decoder layer in training mode.
        eval_output: the class channels of the evaluation output: ``"probabilities"`` (``Z``) or ``"logits"``
            (``l_k = log sum_n exp(R_n) S_nk``, with ``softmax_k(l) = Z``; see
            :meth:`~bundle.networks.heads.MaskClassificationHead.evidence_logits`), for logit-based OOD baselines.
        anomaly_uncertainty_weight: weight ``w >= 0`` of the class uncertainty in the anomaly map (see
            :meth:`anomaly`); 0 gives the paper's MaxQuery map. It changes no weight, so a checkpoint fits any value.
        norm_name: backbone normalisation.
        act_name: backbone activation.
        res_block: residual backbone blocks.
        backbone: a ready backbone (see above); ``None`` builds a :class:`DynUNetBackbone` from the flat arguments.
        decoder: a ready query decoder; ``None`` builds a ``QueryTransformerDecoder`` from the flat arguments.
        head: a ready mask-classification head; ``None`` builds a ``MaskClassificationHead``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 4,
        kernel_size: Sequence[Sequence[int] | int] = (3, 3, 3, 3, 3),
        strides: Sequence[Sequence[int] | int] = (1, 2, 2, 2, 2),
        filters: Sequence[int] | None = (32, 64, 128, 256, 320),
        upsample_kernel_size: Sequence[Sequence[int] | int] | None = None,
        num_queries: int | None = None,
        queries_per_class: Sequence[int] | None = None,
        embed_dim: int = 64,
        num_layers: int = 6,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        pre_norm: bool = False,
        normalize_embeddings: bool = True,
        temperature: float | None = None,
        deep_supervision: bool = True,
        norm_name: tuple | str = ("INSTANCE", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block: bool = False,
        eval_output: str = "probabilities",
        anomaly_uncertainty_weight: float = 0.0,
        backbone: nn.Module | None = None,
        decoder: nn.Module | None = None,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if eval_output not in ("probabilities", "logits"):
            raise ValueError(f"eval_output must be 'probabilities' or 'logits', got {eval_output!r}.")
        self.eval_output = eval_output
        weight = float(anomaly_uncertainty_weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"anomaly_uncertainty_weight must be a finite number >= 0, got {anomaly_uncertainty_weight!r}."
            )
        self.anomaly_uncertainty_weight = weight
        query_classes = None
        if queries_per_class is not None:
            counts = [int(n) for n in queries_per_class]
            if len(counts) != num_classes or any(n < 1 for n in counts):
                raise ValueError(
                    f"queries_per_class must give a positive number of queries for each of the {num_classes} classes, "
                    f"got {list(queries_per_class)}."
                )
            if num_queries is not None and num_queries != sum(counts):
                raise ValueError(f"num_queries={num_queries} but queries_per_class {counts} sums to {sum(counts)}.")
            num_queries = sum(counts)
            query_classes = [k for k, n in enumerate(counts) for _ in range(n)]
        if not num_feature_levels >= 1:
            raise ValueError(f"num_feature_levels must be >= 1, got {num_feature_levels}.")
        values = locals()
        defaults = {k: p.default for k, p in inspect.signature(MaskTransformer.__init__).parameters.items()}
        if backbone is None:
            backbone = DynUNetBackbone(
                spatial_dims=spatial_dims,
                in_channels=in_channels,
                embed_dim=embed_dim,
                kernel_size=kernel_size,
                strides=strides,
                upsample_kernel_size=upsample_kernel_size,
                filters=filters,
                norm_name=norm_name,
                act_name=act_name,
                res_block=res_block,
            )
        else:
            _check_unused("backbone", backbone, {k: values[k] for k in _BACKBONE_ARGS}, defaults)
            if getattr(backbone, "spatial_dims", spatial_dims) != spatial_dims:
                raise ValueError(f"the backbone has spatial_dims={backbone.spatial_dims}, the model {spatial_dims}.")
        if decoder is None:
            channels = check_backbone(backbone, embed_dim, num_feature_levels)
            if num_queries is None:
                num_queries = 16
            # A scale that no decoder layer attends to would hold parameters without gradients (and break DDP).
            num_feature_levels = min(num_feature_levels, num_layers)
            decoder = QueryTransformerDecoder(
                feature_channels=channels[:num_feature_levels],
                embed_dim=embed_dim,
                num_queries=num_queries,
                num_layers=num_layers,
                num_heads=num_heads,
                ffn_dim=ffn_dim,
                dropout=dropout,
                pre_norm=pre_norm,
                spatial_dims=spatial_dims,
            )
        else:
            _require("decoder", decoder, ("feature_channels", "embed_dim", "num_queries", "num_layers"))
            _check_unused("decoder", decoder, {k: values[k] for k in _DECODER_ARGS}, defaults)
            wanted = [int(c) for c in decoder.feature_channels]
            channels = check_backbone(backbone, embed_dim, len(wanted))
            if wanted != channels[: len(wanted)] or decoder.embed_dim != embed_dim:
                raise ValueError(
                    f"the decoder {type(decoder).__name__} expects feature_channels={wanted} and embed_dim="
                    f"{decoder.embed_dim}, but the backbone returns {channels} (coarsest first) and embed_dim is "
                    f"{embed_dim}."
                )
            if num_queries is not None and num_queries != decoder.num_queries:
                raise ValueError(f"num_queries={num_queries} but the decoder has {decoder.num_queries} queries.")
            num_queries, num_layers, num_feature_levels = decoder.num_queries, decoder.num_layers, len(wanted)
        if head is None:
            head = MaskClassificationHead(
                embed_dim, num_classes, normalize_embeddings, temperature, query_classes=query_classes
            )
        else:
            _require("head", head, ("embed_dim", "num_classes", "query_classes", *_HEAD_METHODS))
            _check_unused("head", head, {k: values[k] for k in _HEAD_ARGS}, defaults)
            if head.embed_dim != embed_dim or head.num_classes != num_classes:
                raise ValueError(
                    f"the head {type(head).__name__} has embed_dim={head.embed_dim} and num_classes={head.num_classes}"
                    f", the model {embed_dim} and {num_classes}."
                )
            if query_classes is not None and list(head.query_classes or []) != query_classes:
                raise ValueError(
                    f"queries_per_class gives query classes {query_classes}, the head {head.query_classes}."
                )
        if self.anomaly_uncertainty_weight and not hasattr(head, "temperature"):
            raise ValueError(
                f"anomaly_uncertainty_weight needs a head with a 'temperature' (the scale of its affinities); "
                f"{type(head).__name__} has none."
            )
        if head.query_classes is not None and len(head.query_classes) != num_queries:
            raise ValueError(
                f"the head fixes the classes of {len(head.query_classes)} queries, the decoder has {num_queries}."
            )
        # registered in this order, under these names, as always: the state-dict keys of the shipped weights
        self.backbone = backbone
        self.decoder = decoder
        self.head = head
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels
        self.deep_supervision = deep_supervision

    def _decode(self, x: torch.Tensor, all_layers: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        features, embedding = self.backbone(x)
        queries = self.decoder(features[: self.num_feature_levels])
        pixels = self.head.embed_pixels(embedding)
        used = torch.stack(queries if all_layers else queries[-1:], dim=1)  # (B, L', N, D)
        affinity, logits = self.head(used, pixels)
        return affinity, logits, tuple(embedding.shape[2:])

    def forward_all(self, x: torch.Tensor, all_layers: bool = False) -> list[dict[str, torch.Tensor]]:
        """Every intermediate quantity, for analysis: one dict per decoded layer (last layer last).

        Args:
            x: input ``(B, C, *spatial)``.
            all_layers: decode every layer (else only the last).

        Returns:
            dicts of channel-first tensors: ``"affinity"`` R ``(B, N, ...)``, ``"class_logits"`` ``(B, N, K)``,
            ``"query_probs"`` M ``(B, N, ...)``, ``"pred"`` Z ``(B, K, ...)`` and ``"ood"`` A ``(B, 1, ...)``.
        """
        affinity, logits, spatial = self._decode(x, all_layers)
        query_probs, seg = self.head.assign(affinity, logits)
        results = []
        for i in range(affinity.shape[2]):
            results.append(
                {
                    "affinity": to_channel_first(affinity[:, :, i], spatial),
                    "class_logits": logits[:, i],
                    "query_probs": to_channel_first(query_probs[:, :, i], spatial),
                    "pred": to_channel_first(seg[:, :, i], spatial),
                    "ood": to_channel_first(self.anomaly(affinity[:, :, i], seg[:, :, i]), spatial),
                }
            )
        return results

    def anomaly(self, affinity: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """The anomaly map ``A = -max_n R + w s H(Z)`` of ``(B, V, N)`` affinities and ``(B, V, K)`` class
        probabilities ``Z``, ``(B, V, 1)``, float32; higher = more anomalous.

        ``-max_n R`` (MaxQuery) is high where a voxel is far from every cluster centre. An unseen lesion that looks
        like tissue the model knows sits between the centres of several classes instead: it is near enough to some
        centre, but its class is uncertain. The entropy ``H(Z)`` (nats) adds that; ``s = 1 / temperature`` scales it
        to the affinities, so that ``w`` weighs an entropy against a cosine similarity whatever the temperature.
        """
        anomaly = self.head.anomaly(affinity)
        if not self.anomaly_uncertainty_weight:
            return anomaly
        with torch.autocast(device_type=affinity.device.type, enabled=False):
            uncertainty = entropy(probabilities, dim=-1)
            return anomaly + (self.anomaly_uncertainty_weight / self.head.temperature) * uncertainty

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Run the network; see the class docstring for the output in train and eval mode."""
        all_layers = self.training and self.deep_supervision
        affinity, logits, spatial = self._decode(x, all_layers)
        query_probs, seg = self.head.assign(affinity, logits)  # (B, V, L', N), (B, V, L', K)
        # A is not a training target: detached, so the affinities need not be kept alive for the backward pass
        anomaly = self.anomaly(affinity[:, :, -1].detach(), seg[:, :, -1].detach())  # (B, V, 1)
        if not self.training:
            classes = seg[:, :, -1]
            if self.eval_output == "logits":
                classes = self.head.evidence_logits(affinity[:, :, -1], logits[:, -1])
            del affinity
            out = torch.cat([classes, anomaly], dim=-1).transpose(1, 2)
            return out.reshape(x.shape[0], -1, *spatial).contiguous()
        similarity = self.head.similarity(affinity[:, :, -1])
        del affinity
        # unbind (not indexing): its backward stacks the per-layer gradients in one pass
        seg_layers, prob_layers = seg.unbind(2), query_probs.unbind(2)
        out = {
            "pred": to_channel_first(seg_layers[-1], spatial),
            "ood": to_channel_first(anomaly, spatial),
            "query_probs": to_channel_first(prob_layers[-1], spatial),
            "query_similarity": to_channel_first(similarity, spatial),
        }
        for i in range(len(seg_layers) - 1):
            out[f"aux_{i}_pred"] = to_channel_first(seg_layers[i], spatial)
            out[f"aux_{i}_query_probs"] = to_channel_first(prob_layers[i], spatial)
        return out
