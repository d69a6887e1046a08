"""Class-centred MaxQuery: the anomaly map measured against the inlier voxels of the class a voxel is taken for.

The MaxQuery map ``A = -max_n R`` is on one scale for every class, but the inlier classes do not sit equally close to
their cluster centres: on the phantom benchmark, inlier tumour voxels lie about 16 units (``s``-scaled cosine) further
from their nearest centre than organ voxels do. An unseen lesion is then told apart from normal tissue, but poorly
from the known tumour types (the "near-OOD" question a radiologist asks of a lesion). Subtracting the inlier mean of
the predicted class,

    ``A_c[v] = A[v] - mean_inlier(A | predicted class = argmax_k Z[k, v])``,

asks instead whether a voxel is more anomalous than the known tissue it is taken for. This is the centring step of
Standardized Max Logits (Jung et al., ICCV 2021), applied to MaxQuery. The class means are fitted on inlier
validation cases by the calibration (:class:`~bundle.handlers.OODCalibrationHandler`, key
:data:`CLASS_MEANS_KEY` of ``ood_calibration.json``) over the voxels of the predicted foreground and a margin around
it, so that no label is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from .calibration import CalibrationError, load_calibration

__all__ = [
    "CLASS_CENTRED_SCORE",
    "CLASS_MEANS_KEY",
    "ClassCentredAnomalyd",
    "calibrated_class_means",
    "centre_by_class",
    "check_class_means",
    "class_anomaly_sums",
    "class_means",
]

logger = logging.getLogger(__name__)

#: key of the calibration JSON holding the inlier mean anomaly of each predicted class ``{class index: mean}``
CLASS_MEANS_KEY = "anomaly_class_means"

#: the name of the class-centred MaxQuery in evaluation reports (``pixel_ood.maxquery_centred``, ...)
CLASS_CENTRED_SCORE = "maxquery_centred"


def _array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _anomaly_and_classes(
    anomaly: torch.Tensor | np.ndarray, class_output: torch.Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The anomaly map ``(*spatial)`` and the predicted class of each voxel, from ``(1, *spatial)`` or ``(*spatial)``
    and a channel-first class output ``(K, *spatial)``."""
    values = _array(anomaly).astype(np.float64)
    scores = _array(class_output)
    if values.ndim == scores.ndim:
        if values.shape[0] != 1:
            raise ValueError(f"the anomaly map has {values.shape[0]} channels; expected 1 (shape {values.shape}).")
        values = values[0]
    if values.shape != scores.shape[1:]:
        raise ValueError(
            f"the anomaly map {tuple(values.shape)} and the class output {tuple(scores.shape)} (channel first) are "
            "not on the same grid."
        )
    return values, scores.argmax(axis=0)


def class_anomaly_sums(
    anomaly: torch.Tensor | np.ndarray, class_output: torch.Tensor | np.ndarray, margin_voxels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Per predicted class, the sum and count of the anomaly values of one case.

    The voxels counted are those of the predicted foreground (every class but 0) dilated by ``margin_voxels``
    face-connected steps: the organ, its lesions and the tissue around them, where the map is read. A case without
    predicted foreground counts nothing.

    Args:
        anomaly: the anomaly map, ``(1, *spatial)`` or ``(*spatial)``.
        class_output: the class output ``(K, *spatial)`` (probabilities or logits; only its argmax is used).
        margin_voxels: dilation of the predicted foreground.

    Returns:
        ``(sums, counts)``, two arrays of length ``K`` (float64, int64).
    """
    values, predicted = _anomaly_and_classes(anomaly, class_output)
    num_classes = _array(class_output).shape[0]
    region = predicted > 0
    if margin_voxels > 0 and region.any():
        region = ndimage.binary_dilation(region, iterations=int(margin_voxels))
    classes = predicted[region]
    sums = np.bincount(classes, weights=values[region], minlength=num_classes)
    counts = np.bincount(classes, minlength=num_classes).astype(np.int64)
    return sums, counts


def class_means(sums: np.ndarray, counts: np.ndarray) -> dict[int, float]:
    """``{class index: mean}`` from accumulated sums and counts.

    Raises:
        CalibrationError: a class was never predicted on the calibration cases, so it has no mean to centre by.
    """
    missing = [k for k, n in enumerate(counts) if n <= 0]
    if missing:
        raise CalibrationError(
            f"class(es) {missing} were never predicted on the calibration cases, so the class-centred MaxQuery "
            "has no mean for them; calibrate on cases where the model predicts every class."
        )
    return {k: float(s / n) for k, (s, n) in enumerate(zip(sums, counts, strict=True))}


def check_class_means(means: object, num_classes: int | None = None, where: str = "class means") -> dict[int, float]:
    """``means`` as ``{class index: finite float}`` for exactly the classes ``0..K-1``.

    Raises:
        CalibrationError: naming the malformed key or value, or the missing or extra classes.
    """
    if not isinstance(means, Mapping) or not means:
        raise CalibrationError(f"{where} must be a non-empty object {{class index: mean}}, got {means!r}.")
    checked: dict[int, float] = {}
    for key, value in means.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise CalibrationError(f"{where}: class key {key!r} is not an integer.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CalibrationError(f"{where}: the mean of class {index} must be a finite number, got {value!r}.")
        checked[index] = float(value)
    expected = list(range(num_classes if num_classes is not None else len(checked)))
    if sorted(checked) != expected:
        raise CalibrationError(f"{where}: classes {sorted(checked)} given; expected exactly {expected}.")
    return checked


def centre_by_class(
    anomaly: torch.Tensor, class_output: torch.Tensor, means: Mapping[int | str, float], class_dim: int = 0
) -> torch.Tensor:
    """``A - mean[argmax_k class_output]``: the anomaly map centred on the inlier mean of each voxel's class.

    Args:
        anomaly: the anomaly map, with a size-1 axis at ``class_dim`` or without it.
        class_output: the class output with its ``K`` classes along ``class_dim``.
        means: the inlier mean anomaly of each class ``0..K-1`` (:func:`calibrated_class_means`).
        class_dim: the class axis of ``class_output``.

    Returns:
        a float32 tensor of the anomaly map's shape.
    """
    num_classes = class_output.shape[class_dim]
    table = check_class_means(means, num_classes)
    offsets = torch.tensor([table[k] for k in range(num_classes)], dtype=torch.float32, device=anomaly.device)
    predicted = class_output.argmax(dim=class_dim, keepdim=anomaly.ndim == class_output.ndim)
    return anomaly.float() - offsets[predicted]


def calibrated_class_means(calibration_path: str, model_path: str | None = None) -> dict[int, float] | None:
    """The class means of a model's calibration, or ``None`` (with a logged warning) where there are none to use.

    Read like :func:`~bundle.ood.calibrated_hysteresis_offsets`: nothing raises, since the evaluation must still run
    without the class-centred score. A missing file, a calibration without means (written before 0.25.0), one of
    another model and malformed means all give ``None``, and the evaluation lists the score as skipped.

    Args:
        calibration_path: ``ood_calibration.json``.
        model_path: the model file the calibration must belong to (see :func:`~bundle.ood.load_calibration`).
    """
    name = Path(calibration_path).name
    try:
        calibration = load_calibration(calibration_path, model_path)
        means = calibration.get(CLASS_MEANS_KEY)
        if means is None:
            logger.warning("%s has no %s: no class-centred MaxQuery; recalibrate the model.", name, CLASS_MEANS_KEY)
            return None
        return check_class_means(means, where=f"{name} '{CLASS_MEANS_KEY}'")
    except (OSError, ValueError) as error:  # CalibrationError is a ValueError
        logger.warning("ignoring the class means of %s: %s", name, error)
        return None


class ClassCentredAnomalyd(MapTransform):
    """Write the class-centred MaxQuery map (:func:`centre_by_class`) of a sample under ``output_key``.

    Args:
        keys: key(s) of the anomaly map ``(1, *spatial)``.
        class_key: key of the class output ``(K, *spatial)`` (probabilities or logits).
        means: the inlier mean anomaly of each class (:func:`calibrated_class_means`).
        output_key: where the centred map goes.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_key: str,
        means: Mapping[int | str, float],
        output_key: str = "ood_centred",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.class_key = class_key
        self.means = check_class_means(means)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Apply to one sample dictionary."""
        d = dict(data)
        for key in self.key_iterator(d):
            anomaly = torch.as_tensor(d[key])
            centred = centre_by_class(anomaly, torch.as_tensor(d[self.class_key]), self.means)
            d[self.output_key] = anomaly.float().clone().copy_(centred)  # a MetaTensor keeps its meta data
        return d
