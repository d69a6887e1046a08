"""Case-level OOD score: aggregate a voxel anomaly map over the predicted foreground."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from .calibration import load_calibration

__all__ = [
    "EMPTY_FOREGROUND_MODES",
    "CaseOODScored",
    "case_ood_score",
    "eroded_foreground",
    "foreground_from_prediction",
    "top_k_count",
]

EMPTY_FOREGROUND_MODES = ("volume", "neg_inf", "nan")


def _to_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(x)


def eroded_foreground(mask: torch.Tensor | np.ndarray, voxels: int) -> np.ndarray:
    """The mask eroded by ``voxels`` face-connected steps (a leading size-1 channel axis is kept as it is); the mask
    itself where the erosion would leave nothing (an organ too thin to erode is scored whole)."""
    mask = np.asarray(_to_tensor(mask).detach().cpu().bool())
    if voxels <= 0 or not mask.any():
        return mask
    spatial = mask[0] if mask.ndim == 4 and mask.shape[0] == 1 else mask
    structure = ndimage.generate_binary_structure(spatial.ndim, 1)
    eroded = ndimage.binary_erosion(spatial, structure=structure, iterations=voxels)
    if not eroded.any():
        return mask
    return eroded.reshape(mask.shape)


def top_k_count(num_candidates: int, top_k_fraction: float = 0.01, top_k: int | None = None) -> int:
    """How many of ``num_candidates`` voxels a case score averages: ``top_k`` if given (capped at
    ``num_candidates``), else ``max(1, ceil(top_k_fraction * num_candidates))``."""
    if top_k is not None:
        return min(top_k, num_candidates)
    return max(1, math.ceil(top_k_fraction * num_candidates))


def case_ood_score(
    anomaly_map: torch.Tensor | np.ndarray,
    foreground_mask: torch.Tensor | np.ndarray | None = None,
    top_k_fraction: float = 0.01,
    top_k: int | None = None,
    empty_foreground: str = "volume",
    erode_voxels: int = 0,
) -> float:
    """Mean of the ``k`` highest voxel scores inside the (predicted) foreground.

    ``k = top_k`` if given (capped at the number of candidate voxels), else ``max(1, ceil(top_k_fraction * n))``
    for ``n`` candidate voxels. Averaging the top tail is robust to single noisy voxels yet sensitive to a small
    anomalous lesion inside a large organ. With ``erode_voxels`` the foreground first loses its outer shell
    (:func:`eroded_foreground`; ``k`` is then taken of the eroded foreground): the voxels on the predicted organ's
    border mix organ and neighbouring tissue and are where the segmentation is least sure, so their high scores say
    little about what lies inside the organ.

    Args:
        anomaly_map: voxel scores (higher = more OOD), any shape (e.g. ``(1, *spatial)``).
        foreground_mask: boolean (or 0/1) mask with the same number of elements, e.g. ``prediction > 0``;
            ``None`` uses the whole volume.
        top_k_fraction: fraction of candidate voxels averaged, in ``(0, 1]``.
        top_k: fixed number of voxels instead of a fraction.
        empty_foreground: what to do if the mask is empty: ``"volume"`` (default) scores the whole volume
            instead, ``"neg_inf"`` returns ``-inf`` (never flagged), ``"nan"`` returns NaN.
        erode_voxels: face-connected erosion steps of the foreground before the scores are read (0: none).

    Returns:
        the case score (a Python float).
    """
    if empty_foreground not in EMPTY_FOREGROUND_MODES:
        raise ValueError(f"empty_foreground must be one of {EMPTY_FOREGROUND_MODES}, got {empty_foreground!r}.")
    if top_k is None and not 0.0 < top_k_fraction <= 1.0:
        raise ValueError(f"top_k_fraction must be in (0, 1], got {top_k_fraction}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    if erode_voxels < 0:
        raise ValueError(f"erode_voxels must be >= 0, got {erode_voxels}.")
    scores = _to_tensor(anomaly_map).detach().reshape(-1).float()
    if scores.numel() == 0:
        raise ValueError("anomaly_map is empty.")
    if foreground_mask is not None:
        if erode_voxels:
            foreground_mask = eroded_foreground(foreground_mask, erode_voxels)
        mask = _to_tensor(foreground_mask).detach().reshape(-1).to(device=scores.device).bool()
        if mask.numel() != scores.numel():
            raise ValueError(f"foreground_mask has {mask.numel()} elements but anomaly_map has {scores.numel()}.")
        if bool(mask.any()):
            scores = scores[mask]
        elif empty_foreground == "neg_inf":
            return -math.inf
        elif empty_foreground == "nan":
            return math.nan
    k = top_k_count(scores.numel(), top_k_fraction, top_k)
    return float(torch.topk(scores, k, sorted=False).values.mean())


def foreground_from_prediction(prediction: torch.Tensor | np.ndarray, num_classes: int | None = None) -> torch.Tensor:
    """Foreground mask (any non-background class) of a channel-first prediction.

    Args:
        prediction: a label map ``(1, *spatial)`` (foreground = value > 0) or class scores ``(C, *spatial)`` with
            ``C > 1`` (foreground = argmax over channels > 0).
        num_classes: if given, only the first ``num_classes`` channels are class scores (e.g. the mask
            transformer's ``cat[Z, A]``).
    """
    x = _to_tensor(prediction)
    if num_classes is not None:
        x = x[:num_classes]
    if x.shape[0] == 1:
        return x[0] > 0
    return x.argmax(dim=0) > 0


class CaseOODScored(MapTransform):
    """Dictionary transform computing :func:`case_ood_score` for one sample (and optionally an OOD flag).

    Args:
        keys: key(s) of the voxel anomaly map ``(1, *spatial)``.
        foreground_key: key of the prediction defining the foreground (see :func:`foreground_from_prediction`);
            ``None`` uses the whole volume.
        output_key: where to store the score (a Python float).
        num_classes: passed to :func:`foreground_from_prediction`.
        top_k_fraction: see :func:`case_ood_score`.
        top_k: see :func:`case_ood_score`.
        empty_foreground: see :func:`case_ood_score`.
        erode_voxels: see :func:`case_ood_score`.
        threshold: if given, also store ``score > threshold`` (a bool) under ``flag_key``. A float, or the path
            of a calibration JSON file (see :mod:`bundle.ood.calibration`) read on first use.
        flag_key: where to store the flag.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        foreground_key: str | None = "pred",
        output_key: str = "ood_score",
        num_classes: int | None = None,
        top_k_fraction: float = 0.01,
        top_k: int | None = None,
        empty_foreground: str = "volume",
        erode_voxels: int = 0,
        threshold: float | str | Path | None = None,
        flag_key: str = "ood_flag",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("CaseOODScored takes exactly one anomaly-map key.")
        if empty_foreground not in EMPTY_FOREGROUND_MODES:
            raise ValueError(f"empty_foreground must be one of {EMPTY_FOREGROUND_MODES}, got {empty_foreground!r}.")
        self.foreground_key = foreground_key
        self.output_key = output_key
        self.num_classes = num_classes
        self.top_k_fraction = top_k_fraction
        self.top_k = top_k
        self.empty_foreground = empty_foreground
        if erode_voxels < 0:
            raise ValueError(f"erode_voxels must be >= 0, got {erode_voxels}.")
        self.erode_voxels = erode_voxels
        self._threshold = threshold
        self.flag_key = flag_key

    @property
    def threshold(self) -> float | None:
        """The flagging threshold (read from the calibration file on first access if a path was given)."""
        if isinstance(self._threshold, (str, Path)):
            self._threshold = float(load_calibration(self._threshold)["threshold"])
        return self._threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        """Apply to one sample dictionary."""
        d = dict(data)
        for key in self.key_iterator(d):
            mask = None
            if self.foreground_key is not None:
                mask = foreground_from_prediction(d[self.foreground_key], self.num_classes)
            score = case_ood_score(
                d[key], mask, self.top_k_fraction, self.top_k, self.empty_foreground, self.erode_voxels
            )
            d[self.output_key] = score
            threshold = self.threshold
            if threshold is not None:
                d[self.flag_key] = bool(score > threshold)
        return d
