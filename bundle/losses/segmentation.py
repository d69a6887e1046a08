"""Dice + cross-entropy on probability maps (the mask transformer outputs probabilities, not logits)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProbabilityDiceCELoss", "as_index_label", "dice_ce_from_probs"]


def as_index_label(label: torch.Tensor) -> torch.Tensor:
    """Plain ``torch.long`` index map ``(B, 1, *spatial)`` from a (Meta)Tensor label of any numeric dtype."""
    if hasattr(label, "as_tensor"):
        label = label.as_tensor()
    if label.dim() < 3 or label.shape[1] != 1:
        raise ValueError(f"label must be an index map of shape (B, 1, *spatial), got {tuple(label.shape)}.")
    return label.round().long() if label.is_floating_point() else label.long()


def dice_ce_from_probs(
    probs: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    include_background: bool = True,
    batch: bool = True,
    smooth: float = 1e-5,
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice + cross-entropy of class probabilities against an index map, without one-hot tensors.

    ``Dice_c = (2 sum_v p_c[v] [y_v = c] + smooth) / (sum_v p_c[v] + |{v: y_v = c}| + smooth)``, averaged over
    classes (and, with ``batch=False``, over samples), identical to MONAI's ``DiceLoss(to_onehot_y=True,
    smooth_nr=smooth, smooth_dr=smooth)``; ``CE = -mean_v log(max(p_{y_v}[v], eps))``. The intersection and the
    likelihood come from one gather of the true-class probability, so the cost is independent of the number of
    classes beyond one pass over ``probs``, whatever its memory layout.

    Args:
        probs: ``(B, C, V)`` probabilities (float32), any strides.
        target: ``(B, V)`` long class indices in ``[0, C)``.
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
        include_background: include channel 0 in the Dice average.
        batch: pool the Dice sums over the batch (nnU-Net "batch Dice").
        smooth: Dice numerator/denominator smoothing.
        eps: probability floor before the logarithm.
        valid: optional ``(B, V)`` mask of the voxels that count; the others (e.g. synthetic outliers, whose class
            is "none of them") are left out of both terms. ``None``: every voxel counts. Non-negative float
            weights are taken as they are: a voxel of weight ``w`` counts ``w`` times in the cross-entropy's mean and
            in the Dice sums.

    Returns:
        scalar loss.
    """
    b, c = probs.shape[:2]
    p_true = probs.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, V)
    weight = None if valid is None else valid.to(probs.dtype)
    loss = probs.new_zeros(())
    if ce_weight:
        nll = -torch.log(p_true.clamp_min(eps))
        ce = nll.mean() if weight is None else (nll * weight).sum() / weight.sum().clamp_min(1.0)
        loss = loss + ce_weight * ce
    if dice_weight:
        counted = torch.ones_like(p_true) if weight is None else weight
        intersection = probs.new_zeros(b, c).scatter_add_(1, target, p_true * counted)
        label_count = probs.new_zeros(b, c).scatter_add_(1, target, counted)
        pred_sum = probs.sum(dim=2) if weight is None else (probs * weight.unsqueeze(1)).sum(dim=2)
        if batch:
            intersection, label_count, pred_sum = intersection.sum(0), label_count.sum(0), pred_sum.sum(0)
        dice = (2.0 * intersection + smooth) / (pred_sum + label_count + smooth)
        if not include_background:
            dice = dice[..., 1:]
        loss = loss + dice_weight * (1.0 - dice).mean()
    return loss


class ProbabilityDiceCELoss(nn.Module):
    """Dice + cross-entropy for per-voxel class probabilities (channels summing to one).

    The cross-entropy is the negative log-likelihood of ``log(probs.clamp_min(eps))``; the Dice term equals MONAI's
    :class:`~monai.losses.DiceLoss` with ``to_onehot_y=True`` on the probabilities (see
    :func:`dice_ce_from_probs`). Both are computed in float32 and are 0 for a perfect one-hot prediction.

    Args:
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
        include_background: include channel 0 in the Dice term.
        batch: compute Dice over the whole batch (nnU-Net's "batch Dice"; stable for small, sometimes absent lesions).
        smooth: Dice numerator and denominator smoothing.
        eps: floor of the probabilities before the logarithm.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        include_background: bool = True,
        batch: bool = True,
        smooth: float = 1e-5,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.kwargs = {
            "dice_weight": dice_weight,
            "ce_weight": ce_weight,
            "include_background": include_background,
            "batch": batch,
            "smooth": smooth,
            "eps": eps,
        }

    @staticmethod
    def flat_target(label: torch.Tensor, num_channels: int) -> torch.Tensor:
        """Validated ``(B, V)`` long target from a ``(B, 1, *spatial)`` label map."""
        label = as_index_label(label)
        low, high = int(label.min()), int(label.max())
        if low < 0 or high >= num_channels:
            raise ValueError(f"label values must be in [0, {num_channels - 1}], got [{low}, {high}].")
        return label.flatten(1)

    def loss_flat(self, probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` probabilities against an already flattened, validated ``(B, V)`` target
        (``valid``: optional ``(B, V)`` mask or non-negative weights of the voxels, see :func:`dice_ce_from_probs`)."""
        with torch.autocast(device_type=probs.device.type, enabled=False):
            return dice_ce_from_probs(probs.float().flatten(2), target, valid=valid, **self.kwargs)

    def forward(self, probs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Loss of ``probs`` ``(B, C, *spatial)`` against the index map ``label`` ``(B, 1, *spatial)``."""
        if label.shape[2:] != probs.shape[2:] or label.shape[0] != probs.shape[0]:
            raise ValueError(f"label shape {tuple(label.shape)} does not match probabilities {tuple(probs.shape)}.")
        return self.loss_flat(probs, self.flat_target(label, probs.shape[1]))
