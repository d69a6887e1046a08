"""Training criterion of the mask transformer: segmentation loss + QD loss (+ MaxQuery margin, + query compactness,
+ query balance), with deep supervision; optionally small lesions weighted up in the segmentation loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .balance import QueryBalanceLoss
from .compactness import QueryCompactnessLoss
from .lesion_weights import lesion_size_weights
from .outlier import MaxQueryMarginLoss
from .query_distribution import QueryDistributionLoss
from .segmentation import ProbabilityDiceCELoss, as_index_label

__all__ = ["MaxQueryCriterion"]


class MaxQueryCriterion(nn.Module):
    """Dice+CE on the segmentation probabilities ``Z`` plus the QD loss on the query assignments ``M``.

    Usable directly as the ``loss_function`` of MONAI's ``SupervisedTrainer``: ``criterion(outputs, label)`` where
    ``outputs`` is the training-mode dict of :class:`~bundle.networks.MaskTransformer`. Given a plain tensor (the
    evaluation output ``cat[Z, A]`` or just ``Z``) only the segmentation loss of that tensor is computed.

    For each decoder layer ``j`` present in ``outputs`` (``aux_0 .. aux_{L-2}`` and the final one) the loss is
    ``seg_weight * DiceCE(Z_j) + qd_weight * QD(M_j)``; layers are combined with normalised weights
    (``sum_j w_j loss_j / sum_j w_j`` over the layers present), so the scale does not depend on ``L``. With
    ``compactness_weight > 0``, ``compactness_weight`` times the
    :class:`~bundle.losses.compactness.QueryCompactnessLoss` of the final layer's similarities
    (``"query_similarity"``, the layer MaxQuery reads) is added, and with ``balance_weight > 0``, ``balance_weight``
    times the :class:`~bundle.losses.balance.QueryBalanceLoss` of the final layer's assignments.

    Args:
        num_classes: number ``K`` of inlier classes.
        query_groups: ``[[n_queries, [classes]], ...]`` for the QD loss (see
            :func:`~bundle.losses.query_distribution.parse_query_groups`); ``None`` disables it.
        seg_weight: weight of the segmentation loss.
        qd_weight: weight of the QD loss; 0 disables it (ablation "without QD loss").
        deep_supervision_weights: ``"auto"``: ``0.5 ** (L - 1 - j)`` for layer ``j`` (the last layer weighs most);
            ``None``: the final output only; a list: one weight per decoder layer, in layer order
            (``aux_0, ..., aux_{L-2}, final``). Outputs without ``aux_*`` entries (a network built with
            ``deep_supervision=False``) always use the final output alone.
        num_queries: optional number of queries, to validate ``query_groups`` early.
        batch_dice: batch Dice (nnU-Net style) in both terms.
        include_background: include the background channel in the segmentation Dice.
        compactness_weight: weight of the query-compactness loss; 0 disables it.
        queries_per_class: the number of queries of each class (fixed query classes), needed by the compactness
            loss.
        compactness_classes: the classes the compactness loss pulls onto their centres (default: all).
        balance_weight: weight of the query-balance loss; 0 disables it.
        balance_classes: the classes whose queries the balance loss makes share their voxels (default: every class
            with more than one query).
        outlier_label: label value of outlier-exposure voxels (synthetic anomalies,
            :class:`~bundle.transforms.RandAlteredLesiond`, :class:`~bundle.transforms.RandForeignTissueAnomalyd`);
            ``None``: labels hold inlier classes only.
            These voxels belong to no inlier class: the segmentation and QD losses leave them out, and the MaxQuery
            margin loss pushes them away from every centre.
        margin_weight: weight of the :class:`~bundle.losses.outlier.MaxQueryMarginLoss` on the final layer's
            similarities; 0 disables it.
        inlier_margin: the least nearest-centre similarity of an inlier voxel.
        outlier_margin: the largest nearest-centre similarity of an outlier voxel.
        lesion_classes: the classes whose connected components (lesions) are weighted by size in the segmentation
            loss (see :func:`~bundle.losses.lesion_weights.lesion_size_weights`); needed when
            ``lesion_max_weight > 1``.
        lesion_reference_voxels: lesions with at least this many voxels (in the patch) keep weight 1.
        lesion_max_weight: the weight of the smallest lesions' voxels in the segmentation loss's cross-entropy and
            Dice sums; 1 turns the weighting off. The QD, balance and margin losses are not weighted.
    """

    def __init__(
        self,
        num_classes: int,
        query_groups: Sequence[Sequence] | None = None,
        seg_weight: float = 1.0,
        qd_weight: float = 1.0,
        deep_supervision_weights: str | Sequence[float] | None = "auto",
        num_queries: int | None = None,
        batch_dice: bool = True,
        include_background: bool = True,
        compactness_weight: float = 0.0,
        queries_per_class: Sequence[int] | None = None,
        compactness_classes: Sequence[int] | None = None,
        balance_weight: float = 0.0,
        balance_classes: Sequence[int] | None = None,
        outlier_label: int | None = None,
        margin_weight: float = 0.0,
        inlier_margin: float = 0.8,
        outlier_margin: float = 0.4,
        lesion_classes: Sequence[int] | None = None,
        lesion_reference_voxels: float = 250.0,
        lesion_max_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(deep_supervision_weights, str) and deep_supervision_weights != "auto":
            raise ValueError(
                f"deep_supervision_weights must be 'auto', None or a list, got {deep_supervision_weights!r}."
            )
        if deep_supervision_weights is not None and not isinstance(deep_supervision_weights, str):
            deep_supervision_weights = [float(w) for w in deep_supervision_weights]
            if any(w < 0 for w in deep_supervision_weights) or sum(deep_supervision_weights) <= 0:
                raise ValueError("deep_supervision_weights must be non-negative with a positive sum.")
        self.num_classes = num_classes
        self.seg_weight = seg_weight
        self.qd_weight = qd_weight
        self.deep_supervision_weights = deep_supervision_weights
        self.seg_loss = ProbabilityDiceCELoss(batch=batch_dice, include_background=include_background)
        self.qd_loss = (
            QueryDistributionLoss(query_groups, num_queries=num_queries, num_classes=num_classes, batch=batch_dice)
            if query_groups is not None and qd_weight > 0
            else None
        )
        if compactness_weight < 0:
            raise ValueError(f"compactness_weight must be non-negative, got {compactness_weight}.")
        if compactness_weight > 0 and queries_per_class is None:
            raise ValueError("the compactness loss needs queries_per_class (the fixed class of every query).")
        self.compactness_weight = float(compactness_weight)
        self.compactness_loss = (
            QueryCompactnessLoss(queries_per_class, compactness_classes) if compactness_weight > 0 else None
        )
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be non-negative, got {balance_weight}.")
        if balance_weight > 0 and queries_per_class is None:
            raise ValueError("the balance loss needs queries_per_class (the fixed class of every query).")
        self.balance_weight = float(balance_weight)
        self.balance_loss = QueryBalanceLoss(queries_per_class, balance_classes) if balance_weight > 0 else None
        if margin_weight < 0:
            raise ValueError(f"margin_weight must be non-negative, got {margin_weight}.")
        if outlier_label is not None and 0 <= outlier_label < num_classes:
            raise ValueError(f"outlier_label {outlier_label} is an inlier class (0..{num_classes - 1}).")
        self.outlier_label = None if outlier_label is None else int(outlier_label)
        self.margin_weight = float(margin_weight)
        self.margin_loss = MaxQueryMarginLoss(inlier_margin, outlier_margin) if margin_weight > 0 else None
        if lesion_max_weight < 1:
            raise ValueError(f"lesion_max_weight must be >= 1 (1 = off), got {lesion_max_weight}.")
        if lesion_reference_voxels <= 0:
            raise ValueError(f"lesion_reference_voxels must be positive, got {lesion_reference_voxels}.")
        if lesion_max_weight > 1:
            if not lesion_classes:
                raise ValueError("lesion_max_weight > 1 needs lesion_classes (the classes whose lesions are weighted).")
            bad = [k for k in lesion_classes if not 0 < int(k) < num_classes]
            if bad:
                raise ValueError(f"lesion_classes {bad} are not foreground classes (1..{num_classes - 1}).")
        self.lesion_classes = [int(k) for k in lesion_classes or ()]
        self.lesion_reference_voxels = float(lesion_reference_voxels)
        self.lesion_max_weight = float(lesion_max_weight)

    def layer_weights(self, num_layers: int) -> list[float]:
        """Un-normalised weight of each decoder layer (layer order, final last) for ``num_layers`` layers."""
        w = self.deep_supervision_weights
        if w is None:
            return [0.0] * (num_layers - 1) + [1.0]
        if isinstance(w, str):
            return [0.5 ** (num_layers - 1 - j) for j in range(num_layers)]
        if num_layers == 1:  # a network without deep supervision: only the final output exists
            return [1.0]
        if len(w) != num_layers:
            raise ValueError(f"deep_supervision_weights has {len(w)} entries but the outputs have {num_layers} layers.")
        return list(w)

    def _layer_loss(
        self,
        pred: torch.Tensor,
        query_probs: torch.Tensor | None,
        target: torch.Tensor,
        group_target: torch.Tensor | None,
        valid: torch.Tensor | None,
        seg_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        loss = self.seg_weight * self.seg_loss.loss_flat(pred, target, seg_weights)
        if self.qd_loss is not None and group_target is not None:
            if query_probs is None:
                raise KeyError("the QD loss needs the query assignments ('query_probs') in the network outputs.")
            loss = loss + self.qd_weight * self.qd_loss.loss_flat(query_probs, group_target, valid)
        return loss

    def forward(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Total loss (scalar tensor).

        Args:
            outputs: training-mode network output (dict), or a tensor whose first ``num_classes`` channels are ``Z``.
            label: class index map ``(B, 1, *spatial)``.
        """
        label, outlier = self._split_outliers(label)
        valid = ~outlier.flatten(1) if bool(outlier.any()) else None
        seg_weights = self._segmentation_weights(label, valid)
        if isinstance(outputs, torch.Tensor):
            probs = outputs[:, : self.num_classes]
            target = self.seg_loss.flat_target(label, self.num_classes)
            return self.seg_weight * self.seg_loss.loss_flat(probs, target, seg_weights)
        if "pred" not in outputs:
            raise KeyError(f"network outputs must contain 'pred'; got keys {sorted(outputs)}.")
        pred = outputs["pred"]
        if pred.shape[1] != self.num_classes:
            raise ValueError(f"'pred' has {pred.shape[1]} channels but the criterion expects {self.num_classes}.")
        if label.shape[0] != pred.shape[0] or label.shape[2:] != pred.shape[2:]:
            raise ValueError(f"label shape {tuple(label.shape)} does not match 'pred' {tuple(pred.shape)}.")
        target = self.seg_loss.flat_target(label, self.num_classes)
        group_target = None if self.qd_loss is None else self.qd_loss.class_to_group.to(target.device)[target]
        num_aux = 0
        while f"aux_{num_aux}_pred" in outputs:
            num_aux += 1
        weights = self.layer_weights(num_aux + 1)
        layers = [(f"aux_{i}_pred", f"aux_{i}_query_probs") for i in range(num_aux)] + [("pred", "query_probs")]
        total, norm = None, 0.0
        for (pred_key, probs_key), w in zip(layers, weights, strict=True):
            if w == 0:
                continue
            loss = w * self._layer_loss(
                outputs[pred_key], outputs.get(probs_key), target, group_target, valid, seg_weights
            )
            total = loss if total is None else total + loss
            norm += w
        if total is None:
            raise ValueError("all deep-supervision weights of the layers present are zero.")
        total = total / norm
        if self.compactness_loss is not None:
            if "query_similarity" not in outputs:
                raise KeyError("the compactness loss needs 'query_similarity' in the network outputs.")
            total = total + self.compactness_weight * self.compactness_loss.loss_flat(
                outputs["query_similarity"], target
            )
        if self.balance_loss is not None:
            if "query_probs" not in outputs:
                raise KeyError("the balance loss needs the query assignments ('query_probs') in the network outputs.")
            total = total + self.balance_weight * self.balance_loss.loss_flat(outputs["query_probs"], target, valid)
        if self.margin_loss is not None:
            if "query_similarity" not in outputs:
                raise KeyError("the MaxQuery margin loss needs 'query_similarity' in the network outputs.")
            total = total + self.margin_weight * self.margin_loss.loss_flat(
                outputs["query_similarity"], target, outlier.flatten(1)
            )
        return total

    def _segmentation_weights(self, label: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, V)`` voxel weights of the segmentation loss: the lesion-size weights (if on) times ``valid``."""
        if self.lesion_max_weight <= 1:
            return valid
        weights = lesion_size_weights(label, self.lesion_classes, self.lesion_reference_voxels, self.lesion_max_weight)
        return weights if valid is None else weights * valid

    def _split_outliers(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The label with outlier voxels set to class 0 (a placeholder: they are masked out), and the outlier
        mask."""
        label = as_index_label(label)
        if self.outlier_label is None:
            return label, torch.zeros_like(label, dtype=torch.bool)
        outlier = label == self.outlier_label
        return label.masked_fill(outlier, 0), outlier
