"""Hysteresis argmax: lesions found with confidence are grown to their full extent, no new lesion is made.

A segmentation network trained on voxels of which a fraction of a percent is tumour tends to find a lesion but
label only its confident core as tumour, the rim going to the organ or the background: on the phantom benchmark the
predicted tumour is a near-perfect subset of the true one, often a third of it. A global class prior (adding a
constant to a class's log-probability before the argmax) recovers the rim but also turns scattered organ voxels into
new false lesions. Hysteresis thresholding, as in edge detection, keeps the prior's recall without its false
detections: the plain argmax gives the seeds, the argmax with the class's log-probability raised by an offset gives
the candidate region, and a connected component of candidates is kept only if it holds a seed. A case without a
confident lesion therefore stays without one.

The offsets are fitted on inlier validation cases (:func:`fit_hysteresis_offsets`, used by the calibration handler)
and stored with the model's calibration; an offset of ``0`` is the plain argmax.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = [
    "INPUT_TYPES",
    "HysteresisArgmaxd",
    "case_dice",
    "check_offsets",
    "crop_to_foreground",
    "fit_hysteresis_offsets",
    "hysteresis_argmax",
    "log_scores",
]

INPUT_TYPES = ("probabilities", "logits")


def check_offsets(offsets: Mapping[int | str, float] | None, num_classes: int | None = None) -> dict[int, float]:
    """Validated ``{class index: offset}``; JSON keys may be strings. Offsets must be finite and non-negative.

    Raises:
        ValueError: naming the bad entry (the background class, an index outside ``num_classes``, a negative or
            non-finite offset).
    """
    checked: dict[int, float] = {}
    for key, value in (offsets or {}).items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"hysteresis offset key {key!r} is not a class index.") from None
        if index < 1 or (num_classes is not None and index >= num_classes):
            bound = f"1..{num_classes - 1}" if num_classes is not None else ">= 1"
            raise ValueError(f"hysteresis offset for class {index}: the class must be a foreground class ({bound}).")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"hysteresis offset for class {index} must be a finite number >= 0, got {value!r}.")
        checked[index] = float(value)
    return checked


def log_scores(scores: torch.Tensor | np.ndarray, input_type: str = "probabilities") -> np.ndarray:
    """``(C, *spatial)`` class scores as float32 log-probabilities up to a per-voxel constant (logits are kept)."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}.")
    values = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    values = values.astype(np.float32, copy=False)
    if input_type == "probabilities":
        values = np.log(np.maximum(values, np.finfo(np.float32).tiny))
    return values


def hysteresis_argmax(
    scores: torch.Tensor | np.ndarray, offsets: Mapping[int | str, float], input_type: str = "probabilities"
) -> np.ndarray:
    """Class index map ``(*spatial)`` of ``(C, *spatial)`` class scores with the classes of ``offsets`` grown.

    For each class ``k`` with offset ``b > 0``: a voxel is a candidate where the log-probability of ``k`` raised by
    ``b`` is above that of every other class; a connected candidate component (face-connected) is labelled ``k`` if
    it holds a voxel of the plain argmax's class ``k``. Seeds of another grown class keep their label.
    """
    values = log_scores(scores, input_type)
    checked = check_offsets(offsets, values.shape[0])
    base = values.argmax(axis=0)
    out = base.copy()
    grown = [k for k, b in checked.items() if b > 0]
    for k in grown:
        components, _ = ndimage.label(values[k] + checked[k] > _best_other(values, k))
        seeded = np.unique(components[base == k])
        region = np.isin(components, seeded[seeded > 0])
        region &= ~(np.isin(base, grown) & (base != k))
        out[region] = k
    return out


def _best_other(values: np.ndarray, class_index: int) -> np.ndarray:
    """Per voxel, the largest value of the classes other than ``class_index`` (one spatial array of memory)."""
    best = None
    for c in range(values.shape[0]):
        if c != class_index:
            best = values[c].copy() if best is None else np.maximum(best, values[c], out=best)
    return best


def crop_to_foreground(values: np.ndarray, label: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``(C, *spatial)`` log-scores and their ``(*spatial)`` label cropped to the box of the true and the
    predicted (argmax) foreground plus ``margin`` voxels, the part a hysteresis fit looks at; one corner voxel where
    neither holds any foreground."""
    if label.shape != values.shape[1:]:
        raise ValueError(
            f"the label has shape {label.shape}, the prediction {values.shape[1:]}: they must share the grid."
        )
    present = np.nonzero((label > 0) | (values.argmax(axis=0) > 0))
    if not present[0].size:
        box = tuple(slice(0, 1) for _ in label.shape)
    else:
        box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + 1 + margin) for i in present)
    return values[(slice(None), *box)].copy(), label[box].copy()


def case_dice(pred: np.ndarray, label: np.ndarray, class_index: int) -> float:
    """Dice of one class in one case, ``1`` where neither holds the class (a false lesion in a case without one
    scores ``0``, so a fit cannot buy recall with false detections)."""
    p, g = pred == class_index, label == class_index
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * float((p & g).sum()) / total


def fit_hysteresis_offsets(
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int],
    grid: Sequence[float] = tuple(np.arange(0.0, 10.01, 0.5)),
) -> tuple[dict[int, float], dict[int, tuple[float, float]]]:
    """Per class, the offset of ``grid`` that maximises the mean per-case Dice over ``cases``.

    Args:
        cases: ``(log-scores (C, *spatial), label (*spatial))`` of inlier validation cases.
        classes: the classes to grow, fitted one at a time with the others at the plain argmax.
        grid: candidate offsets; ties go to the smaller offset, so ``0`` is kept unless growth helps.

    Returns:
        ``{class: offset}`` and ``{class: (mean Dice at offset 0, mean Dice at the chosen offset)}``.
    """
    if not cases:
        raise ValueError("fitting hysteresis offsets needs at least one validation case.")
    offsets, dice = {}, {}
    for k in classes:
        means = []
        for b in grid:
            means.append(np.mean([case_dice(hysteresis_argmax(v, {k: b}, "logits"), g, k) for v, g in cases]))
        best = int(np.argmax(means))
        offsets[int(k)] = float(grid[best])
        plain = np.mean([case_dice(v.argmax(axis=0), g, k) for v, g in cases])
        dice[int(k)] = (float(plain), float(means[best]))
    return offsets, dice


class HysteresisArgmaxd(MapTransform):
    """Dictionary transform: replace ``(C, *spatial)`` class scores by their hysteresis argmax ``(1, *spatial)``.

    With no offsets (an uncalibrated model) this is the plain argmax, as ``AsDiscreted(argmax=True)``.

    Args:
        keys: keys of the class scores.
        offsets: ``{class index: offset}`` in log-probability units (see :func:`hysteresis_argmax`).
        input_type: ``"probabilities"`` or ``"logits"``.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        offsets: Mapping[int | str, float] | None = None,
        input_type: str = "probabilities",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}.")
        self.offsets = check_offsets(offsets)
        self.input_type = input_type

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = d[key]
            label = torch.from_numpy(hysteresis_argmax(scores, self.offsets, self.input_type)[None].astype(np.float32))
            if isinstance(scores, MetaTensor):
                label = MetaTensor(label, meta=scores.meta, applied_operations=scores.applied_operations)
            d[key] = label.to(scores.device) if isinstance(scores, torch.Tensor) else label
        return d
