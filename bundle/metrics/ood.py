"""OOD localisation and detection metrics (scikit-learn based).

Conventions:

- OOD is the positive class; higher scores mean more OOD.
- Pixel-level metrics pool all voxels of all evaluated cases that lie inside the region of interest (ROI): the
  ground-truth organ and lesions (inlier and OOD), dilated by a margin, so that trivially easy far background does
  not inflate the numbers.
- Ties: AUROC uses :func:`sklearn.metrics.roc_auc_score`, where tied positive/negative pairs count one half (the
  trapezoidal ROC through tied thresholds); AUPR is :func:`sklearn.metrics.average_precision_score` (step-wise
  precision at each distinct threshold, tied scores enter together); FPR95 is the false-positive rate at the first
  distinct threshold of :func:`sklearn.metrics.roc_curve` (with ``drop_intermediate=False``) whose TPR reaches
  0.95, so a block of tied scores is accepted or rejected as a whole.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "ball",
    "case_auroc",
    "case_auroc_by_size",
    "case_ood_metrics",
    "check_size_edges",
    "fpr_at_tpr",
    "ood_mask",
    "pixel_ood_metrics",
    "roi_mask",
    "size_bins",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _np(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def ball(radius: int, ndim: int = 3) -> np.ndarray:
    """Boolean Euclidean ball structuring element of the given radius (in voxels)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}.")
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    return sum(g.astype(np.int64) ** 2 for g in grid) <= radius**2


def ood_mask(label: ArrayLike, ood_values: Iterable[int]) -> np.ndarray:
    """Boolean mask of OOD-lesion voxels (label value in ``ood_values``)."""
    return np.isin(_np(label), np.asarray(list(ood_values)))


def roi_mask(
    label: ArrayLike,
    ood_values: Iterable[int] = (),
    margin_voxels: int = 0,
    foreground_values: Iterable[int] | None = None,
) -> np.ndarray:
    """Region of interest for pixel-level OOD evaluation: ground-truth foreground dilated by a margin.

    Args:
        label: ground-truth label map (any shape; a leading channel axis of size 1 is kept as is).
        ood_values: OOD lesion label values; always part of the foreground.
        margin_voxels: dilation radius in voxels (Euclidean ball, :func:`scipy.ndimage.binary_dilation`).
        foreground_values: inlier foreground label values; ``None`` means every value ``> 0`` (organ and all
            lesions).

    Returns:
        boolean mask with the shape of ``label``.
    """
    lab = _np(label)
    fg = lab > 0 if foreground_values is None else np.isin(lab, np.asarray(list(foreground_values)))
    fg |= ood_mask(lab, ood_values)
    if margin_voxels > 0 and fg.any():
        squeeze = lab.ndim == 4 and lab.shape[0] == 1
        core = fg[0] if squeeze else fg
        core = ndimage.binary_dilation(core, structure=ball(int(margin_voxels), core.ndim))
        fg = core[None] if squeeze else core
    return fg


def _pool(values: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    """Flatten an array, or concatenate a list of per-case arrays, into one 1D array."""
    if isinstance(values, (list, tuple)) and len(values) > 0 and not np.isscalar(values[0]):
        return np.concatenate([_np(v).reshape(-1) for v in values])
    return _np(values).reshape(-1)


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """False-positive rate at the first ROC threshold whose true-positive rate reaches ``tpr_level``."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    idx = int(np.searchsorted(tpr, tpr_level, side="left"))
    return float(fpr[min(idx, len(fpr) - 1)])


def pixel_ood_metrics(
    scores: ArrayLike | Sequence[ArrayLike],
    is_ood: ArrayLike | Sequence[ArrayLike],
    roi: ArrayLike | Sequence[ArrayLike] | None = None,
) -> dict[str, float]:
    """Pixel-level OOD localisation metrics over the pooled ROI voxels.

    Args:
        scores: voxel OOD scores (higher = more OOD); an array, or a list of per-case arrays to pool.
        is_ood: matching boolean OOD-lesion masks.
        roi: matching boolean ROI masks (see :func:`roi_mask`); ``None`` uses every voxel.

    Returns:
        ``{"auroc", "aupr", "fpr95", "num_voxels", "num_ood"}``; the three metrics are NaN (with a warning) if
        the pooled ROI holds no OOD or no inlier voxel.
    """
    s = _pool(scores).astype(np.float64)
    y = _pool(is_ood).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size} voxels) and is_ood ({y.size} voxels) do not match.")
    if roi is not None:
        r = _pool(roi).astype(bool)
        if r.shape != s.shape:
            raise ValueError(f"roi ({r.size} voxels) does not match scores ({s.size} voxels).")
        s, y = s[r], y[r]
    if np.isnan(s).any():
        raise ValueError("scores contain NaN inside the ROI.")
    n_ood = int(y.sum())
    out = {"num_voxels": float(y.size), "num_ood": float(n_ood)}
    if n_ood == 0 or n_ood == y.size:
        warnings.warn(
            "pixel OOD metrics are undefined without both OOD and inlier voxels; returning NaN.", stacklevel=2
        )
        return {"auroc": math.nan, "aupr": math.nan, "fpr95": math.nan, **out}
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "fpr95": fpr_at_tpr(y, s, 0.95),
        **out,
    }


def case_auroc(inlier_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """AUROC of case scores, OOD cases positive (ties count one half)."""
    return case_ood_metrics(inlier_scores, ood_scores)["auroc"]


def case_ood_metrics(inlier_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """Case-level detection metrics ``{"auroc", "aupr", "fpr95"}`` of inlier vs OOD case scores.

    Raises:
        ValueError: if either group is empty or a score is NaN.
    """
    neg = _np(inlier_scores).astype(np.float64).reshape(-1)
    pos = _np(ood_scores).astype(np.float64).reshape(-1)
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"need inlier and OOD cases, got {neg.size} inlier and {pos.size} OOD scores.")
    s = np.concatenate([neg, pos])
    if np.isnan(s).any():
        raise ValueError("case scores contain NaN.")
    s = np.nan_to_num(s, posinf=np.finfo(np.float64).max, neginf=np.finfo(np.float64).min)
    y = np.concatenate([np.zeros(neg.size, bool), np.ones(pos.size, bool)])
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "fpr95": fpr_at_tpr(y, s, 0.95),
    }


def check_size_edges(edges: Sequence[int]) -> list[int]:
    """The lesion-size bin edges as ints, checked: the bins are ``[0, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)``.

    Raises:
        ValueError: edges not strictly increasing or not positive.
    """
    bounds = [int(e) for e in edges]
    if any(e <= 0 for e in bounds) or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"size edges must be positive and strictly increasing, got {list(edges)}.")
    return bounds


def size_bins(sizes: ArrayLike, edges: Sequence[int]) -> list[tuple[int, int | None, np.ndarray]]:
    """``(min_size, max_size, members)`` of each bin of :func:`check_size_edges`: ``max_size`` is ``None`` for the
    last, open bin and ``members`` a boolean mask over ``sizes``."""
    bounds = check_size_edges(edges)
    values = _np(sizes).astype(np.float64).reshape(-1)
    return [
        (low, high, (values >= low) & (values < (np.inf if high is None else high)))
        for low, high in zip([0, *bounds], [*bounds, None], strict=True)
    ]


def case_auroc_by_size(
    inlier_scores: ArrayLike, ood_scores: ArrayLike, ood_sizes: ArrayLike, edges: Sequence[int]
) -> list[dict]:
    """Case AUROC of the OOD cases of each lesion-size bin against all inlier cases.

    A small unseen lesion moves a case's score little, so the pooled case AUROC of a split depends on how large its
    OOD lesions happen to be; by bin it does not.

    Args:
        inlier_scores: the inlier cases' scores.
        ood_scores: the OOD cases' scores.
        ood_sizes: each OOD case's OOD-lesion size (e.g. its OOD voxels), aligned with ``ood_scores``.
        edges: increasing bin edges (:func:`size_bins`).

    Returns:
        One dict per bin: ``min_size``, ``max_size`` (``None`` for the last, open bin), ``cases`` (OOD cases in the
        bin) and ``auroc`` (NaN for a bin without OOD cases or without inlier cases).

    Raises:
        ValueError: edges not strictly increasing or not positive, or sizes and OOD scores of different lengths.
    """
    neg = _np(inlier_scores).astype(np.float64).reshape(-1)
    pos = _np(ood_scores).astype(np.float64).reshape(-1)
    bins = size_bins(ood_sizes, edges)
    if bins[0][2].size != pos.size:
        raise ValueError(f"got {bins[0][2].size} OOD sizes for {pos.size} OOD scores.")
    return [
        {
            "min_size": low,
            "max_size": high,
            "cases": int(inside.sum()),
            "auroc": case_auroc(neg, pos[inside]) if inside.any() and neg.size else float("nan"),
        }
        for low, high, inside in bins
    ]
