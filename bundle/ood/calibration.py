"""Calibrate, store and read back the OOD thresholds (case flag and suspected-OOD voxels) of a model."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.data.files import atomic_write_text
from bundle.transforms.hysteresis import check_offsets

__all__ = [
    "CASE_SCORE_KEY",
    "HYSTERESIS_KEY",
    "MODEL_HASH_KEY",
    "CalibrationError",
    "OODThresholds",
    "calibrate_threshold",
    "calibrated_hysteresis_offsets",
    "calibrated_thresholds",
    "check_case_score",
    "check_model_hash",
    "empirical_fpr",
    "file_sha256",
    "load_calibration",
    "save_calibration",
]

logger = logging.getLogger(__name__)

#: key of the calibration JSON holding the segmentation's hysteresis offsets ``{class index: offset}``
HYSTERESIS_KEY = "hysteresis_offsets"

#: key of the calibration JSON holding the sha256 (hex) of the model file the thresholds were calibrated for
MODEL_HASH_KEY = "model_sha256"

#: key of the calibration JSON holding the case-score settings the case threshold was calibrated with
#: (``{"top_k_fraction": float, "erode_voxels": int}``, the arguments of :func:`~bundle.ood.case_ood_score`)
CASE_SCORE_KEY = "case_score_settings"


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


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, e.g. of a model checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model_hash(
    calibration: Mapping[str, object], model: str | os.PathLike, where: str = "calibration", warn: bool = True
) -> bool:
    """Check that a calibration belongs to a model file.

    Args:
        calibration: calibration data (see :func:`load_calibration`).
        model: the model file, or its sha256 (64 hex digits).
        where: how to name the calibration in messages.
        warn: log a warning for a calibration without a hash.

    Returns:
        ``True`` when the calibration records the model's hash; ``False`` (with a logged warning) when it records
        no hash at all, as calibrations written before the hash was recorded.

    Raises:
        CalibrationError: the calibration records the hash of another model file.
    """
    recorded = calibration.get(MODEL_HASH_KEY)
    if recorded is None:
        if warn:
            logger.warning(
                "%s records no model hash (%s): it cannot be checked against the model.", where, MODEL_HASH_KEY
            )
        return False
    model = str(model)
    actual = model if len(model) == 64 and all(c in "0123456789abcdef" for c in model) else file_sha256(model)
    if recorded != actual:
        raise CalibrationError(
            f"{where} was calibrated for another model (model sha256 {str(recorded)[:12]}..., the model file has "
            f"{actual[:12]}...); recalibrate it for this model."
        )
    return True


def _case_score_settings(settings: object, where: str) -> dict[str, float | int]:
    """``settings`` as ``{"top_k_fraction": float in (0, 1], "erode_voxels": int >= 0}``, or a CalibrationError."""
    keys = {"top_k_fraction", "erode_voxels"}
    if not isinstance(settings, Mapping) or set(settings) != keys:
        raise CalibrationError(
            f"{where}: case-score settings must be an object with the keys {sorted(keys)}, got {settings!r}."
        )
    fraction, erode = settings["top_k_fraction"], settings["erode_voxels"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise CalibrationError(f"{where}: 'top_k_fraction' must be a number in (0, 1], got {fraction!r}.")
    if isinstance(erode, bool) or not isinstance(erode, int) or erode < 0:
        raise CalibrationError(f"{where}: 'erode_voxels' must be an integer >= 0, got {erode!r}.")
    return {"top_k_fraction": float(fraction), "erode_voxels": int(erode)}


def check_case_score(
    calibration: Mapping[str, object], settings: Mapping[str, object], where: str = "calibration"
) -> bool:
    """Check that a calibration's case threshold was fitted with the case-score settings in use.

    A case threshold is a quantile of inlier case scores, so it only means something for the case score it was
    fitted with: the top fraction and the erosion change the scale of the scores.

    Args:
        calibration: calibration data (see :func:`load_calibration`).
        settings: the case-score settings in use, ``{"top_k_fraction": ..., "erode_voxels": ...}`` (the configs'
            ``case_score_settings``).
        where: how to name the calibration in messages.

    Returns:
        ``True`` when the calibration records the same settings; ``False`` when it records none (calibrations written
        before the settings were recorded).

    Raises:
        CalibrationError: the calibration records other settings, or either side is malformed.
    """
    in_use = _case_score_settings(settings, "the case-score settings in use")
    recorded = calibration.get(CASE_SCORE_KEY)
    if recorded is None:
        return False
    recorded = _case_score_settings(recorded, f"{where} '{CASE_SCORE_KEY}'")
    same = recorded["erode_voxels"] == in_use["erode_voxels"] and math.isclose(
        recorded["top_k_fraction"], in_use["top_k_fraction"], rel_tol=1e-9
    )
    if not same:
        raise CalibrationError(
            f"{where} was calibrated for another case score ({recorded}; the configs compute {in_use}); recalibrate "
            "it with the settings in use."
        )
    return True


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


def load_calibration(path: str | Path, model_path: str | os.PathLike | None = None) -> dict:
    """Read a calibration JSON written by :func:`save_calibration`.

    Args:
        path: the calibration file.
        model_path: if given, the model file the calibration must belong to (see :func:`check_model_hash`).

    Raises:
        FileNotFoundError: if the file does not exist (the message says how to create it).
        CalibrationError: if it is not valid JSON, not an object, lacks a finite numeric ``"threshold"``, or records
            the hash of another model than ``model_path``.
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
    if model_path is not None:
        check_model_hash(data, model_path, str(path))
    return data


def _validate(data: dict, where: str) -> None:
    if "threshold" not in data:
        raise CalibrationError(f"{where}: calibration data has no 'threshold' key (keys: {sorted(data)}).")
    t = data["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise CalibrationError(f"{where}: 'threshold' must be a finite number, got {t!r}.")
    if data.get(CASE_SCORE_KEY) is not None:
        _case_score_settings(data[CASE_SCORE_KEY], f"{where} '{CASE_SCORE_KEY}'")
    recorded = data.get(MODEL_HASH_KEY)
    if recorded is not None and not (
        isinstance(recorded, str) and len(recorded) == 64 and all(c in "0123456789abcdef" for c in recorded)
    ):
        raise CalibrationError(f"{where}: '{MODEL_HASH_KEY}' must be a sha256 in lower-case hex, got {recorded!r}.")


@dataclass(frozen=True)
class OODThresholds:
    """The thresholds that turn MaxQuery anomaly values into decisions.

    Attributes:
        case_threshold: case score above which a case is flagged as OOD (``None``: no flag).
        voxel_threshold: anomaly value above which a predicted organ/lesion voxel is marked suspected OOD (``None``:
            nothing is marked).
        source: where the values come from, for results and logs (file names, never full paths).
        warning: why the thresholds are missing, if they are.
        model_checked: the calibration records the hash of the model it is used with (``False`` for calibrations
            written before the hash was recorded, and for missing thresholds).
    """

    case_threshold: float | None
    voxel_threshold: float | None
    source: str
    warning: str | None = None
    model_checked: bool = False


def _finite_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_json_object(path: Path) -> dict:
    """The JSON object of a calibration file; ``OSError`` or ``ValueError`` (bad JSON, not an object) otherwise."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def calibrated_thresholds(
    calibration_path: str | os.PathLike,
    model: str | os.PathLike | None = None,
    case_score_settings: Mapping[str, object] | None = None,
) -> OODThresholds:
    """The thresholds of a model's calibration file, or none at all with the reason, never another model's.

    The command line (``configs/inference.json``) and the MONAI Label app both read thresholds through this
    function. Nothing raises: a model must still segment without a usable calibration, it then flags no case and
    marks no voxel, and ``warning`` says why.

    Args:
        calibration_path: the calibration JSON written after training (``ood_calibration.json``).
        model: the model file the thresholds are for, or its sha256; ``None`` skips the check.
        case_score_settings: the case-score settings in use (``{"top_k_fraction": ..., "erode_voxels": ...}``, see
            :func:`check_case_score`); ``None`` skips the check.

    Returns:
        both thresholds, or ``None`` for both (with ``warning``) when the file is missing, unreadable, lacks a
        finite ``threshold`` or ``voxel_threshold``, or was calibrated for another model. A calibration fitted with
        other case-score settings keeps its voxel threshold (the anomaly map does not depend on them) but gives no
        case threshold, with ``warning``.
    """
    path = Path(calibration_path)
    name = path.name
    if not path.is_file():
        return OODThresholds(
            None,
            None,
            "none",
            f"no OOD calibration file ({name}): the model is not calibrated, "
            "so no case is flagged and no voxel is marked suspected OOD.",
        )
    try:
        data = _read_json_object(path)
        for key in ("threshold", "voxel_threshold"):
            if _finite_or_none(data.get(key)) is None:
                raise ValueError(f"'{key}' is missing or not a finite number")
        checked = model is not None and check_model_hash(data, model, name, warn=False)
    except CalibrationError as error:
        return OODThresholds(
            None, None, "none", f"OOD calibration refused: {error} No case is flagged and no voxel is marked."
        )
    except (OSError, ValueError) as error:
        return OODThresholds(None, None, "none", f"ignoring the OOD calibration file {name}: {error}")
    voxel_threshold = float(data["voxel_threshold"])
    if case_score_settings is not None:
        try:
            check_case_score(data, case_score_settings, name)
        except CalibrationError as error:
            return OODThresholds(
                None,
                voxel_threshold,
                name,
                f"OOD calibration refused for the case flag: {error} No case is flagged; suspected-OOD voxels are "
                "still marked.",
                model_checked=checked,
            )
    return OODThresholds(float(data["threshold"]), voxel_threshold, name, model_checked=checked)


def calibrated_hysteresis_offsets(
    calibration_path: str | os.PathLike, model: str | os.PathLike | None = None
) -> dict[int, float]:
    """The segmentation's hysteresis offsets (``{class index: offset}``) of a model's calibration file.

    Read like :func:`calibrated_thresholds`: nothing raises, since a model must still segment without them. A missing
    file, a calibration without offsets (written before they were fitted) or one of another model gives ``{}``,
    the plain argmax, with a logged warning; malformed offsets are refused the same way.
    """
    path = Path(calibration_path)
    if not path.is_file():
        logger.warning("no calibration file %s: the segmentation is the plain argmax.", path.name)
        return {}
    try:
        data = _read_json_object(path)
        if model is not None:
            check_model_hash(data, model, path.name, warn=False)
        if HYSTERESIS_KEY not in data:
            logger.warning("%s has no %s: the segmentation is the plain argmax.", path.name, HYSTERESIS_KEY)
            return {}
        offsets = data[HYSTERESIS_KEY]
        if not isinstance(offsets, dict):
            raise ValueError(f"'{HYSTERESIS_KEY}' must be an object {{class index: offset}}")
        return check_offsets(offsets)
    except (OSError, ValueError) as error:  # CalibrationError is a ValueError
        logger.warning(
            "ignoring the hysteresis offsets of %s: %s; the segmentation is the plain argmax.", path.name, error
        )
        return {}
