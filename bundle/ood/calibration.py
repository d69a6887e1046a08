"""Calibrate and store the case-level OOD flagging threshold."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bundle.data.files import atomic_write_text

__all__ = ["CalibrationError", "calibrate_threshold", "empirical_fpr", "load_calibration", "save_calibration"]


class CalibrationError(ValueError):
    """A calibration file or calibration input is unusable."""


def calibrate_threshold(inlier_scores: Sequence[float] | np.ndarray, target_fpr: float = 0.05) -> float:
    """Threshold flagging (``score > threshold``) about ``target_fpr`` of inlier cases.

    The threshold is the ``1 - target_fpr`` quantile of the inlier scores, taking the next observed score above
    that quantile (numpy's ``method="higher"``): the fraction of calibration scores strictly above it is at most
    ``target_fpr`` (and within ``1/n`` of it for distinct scores).

    Args:
        inlier_scores: case scores of inlier (e.g. validation) cases; NaN is rejected, infinities are allowed.
        target_fpr: tolerated false-positive rate in ``[0, 1)``.

    Raises:
        CalibrationError: for empty input, NaN scores or ``target_fpr`` outside ``[0, 1)``.
    """
    scores = np.asarray(inlier_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise CalibrationError("cannot calibrate a threshold from an empty list of inlier scores.")
    if np.isnan(scores).any():
        raise CalibrationError(f"inlier scores contain {int(np.isnan(scores).sum())} NaN value(s).")
    if not 0.0 <= target_fpr < 1.0:
        raise CalibrationError(f"target_fpr must be in [0, 1), got {target_fpr}.")
    return float(np.quantile(scores, 1.0 - target_fpr, method="higher"))


def empirical_fpr(inlier_scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """Fraction of inlier scores flagged (``score > threshold``)."""
    scores = np.asarray(inlier_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise CalibrationError("no inlier scores given.")
    return float((scores > threshold).mean())


def save_calibration(path: str | Path, data: Mapping[str, object]) -> Path:
    """Write calibration data as JSON atomically (temporary file in the same folder, then rename).

    Args:
        path: destination, e.g. ``models/ood_calibration.json``; parent folders are created.
        data: JSON-serialisable mapping that contains a finite numeric ``"threshold"``.

    Returns:
        the destination path.
    """
    _validate(dict(data), str(path))
    return atomic_write_text(path, json.dumps(dict(data), indent=2, sort_keys=True) + "\n")


def load_calibration(path: str | Path) -> dict:
    """Read a calibration JSON written by :func:`save_calibration`.

    Raises:
        FileNotFoundError: if the file does not exist (the message says how to create it).
        CalibrationError: if it is not valid JSON, not an object, or lacks a finite numeric ``"threshold"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"OOD calibration file not found: {path}. Calibrate the case-level threshold on inlier validation cases "
            "first (it is stored next to the model weights)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CalibrationError(f"{path} must contain a JSON object, got {type(data).__name__}.")
    _validate(data, str(path))
    return data


def _validate(data: dict, where: str) -> None:
    if "threshold" not in data:
        raise CalibrationError(f"{where}: calibration data has no 'threshold' key (keys: {sorted(data)}).")
    t = data["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise CalibrationError(f"{where}: 'threshold' must be a finite number, got {t!r}.")
