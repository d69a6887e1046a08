"""The app's options, read from ``monailabel start_server ... --conf KEY VALUE`` pairs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError
from .model_store import DEFAULT_KEEP_BACKUPS
from .options import parse_bool, parse_choice, parse_device, parse_float, parse_int
from .server_guard import DEFAULT_INFER_CONCURRENCY

__all__ = ["MAX_EPOCHS_LIMIT", "AppSettings", "DEFAULT_OOD_LABEL_VALUE", "PREDICTION_TAG", "STRATEGY_NAMES"]

DEFAULT_OOD_LABEL_VALUE = 9
#: the most epochs one training request may ask for
MAX_EPOCHS_LIMIT = 1000
#: the label tag under which kept predictions are saved (never ``final``)
PREDICTION_TAG = "maxquery_prediction"
#: the app's active-learning strategies
STRATEGY_NAMES = ("maxquery_ood", "random")


def _conf(conf: Mapping[str, Any], key: str, parse: Any, default: Any) -> Any:
    """Parse ``--conf key`` with an option parser, naming the ``--conf`` option in the error."""
    value = conf.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return parse(value, key)
    except InvalidInputError as error:
        raise ValueError(f"--conf {error}") from error


def _optional_float(conf: Mapping[str, Any], key: str) -> float | None:
    value = conf.get(key)
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError as error:
        raise ValueError(f"--conf {key} must be a number, got '{value}'.") from error
    if not math.isfinite(number):
        raise ValueError(f"--conf {key} must be a finite number, got '{value}'.")
    return number


@dataclass(frozen=True)
class AppSettings:
    """Options of the MaxQuery app (all optional).

    Attributes:
        device: default device of inference, scoring and training (``cuda`` when available, else ``cpu``).
        model_path: the model checkpoint (default: the bundle's ``models/model.pt``).
        calibration_path: the OOD calibration JSON (default: ``ood_calibration.json`` next to the model).
        ood_threshold: case threshold overriding the calibrated one.
        ood_voxel_threshold: voxel threshold overriding the calibrated one.
        ood_label_value: label value of the suspected-OOD segment.
        bundle_overrides: bundle config ids -> plain values, applied to the inference and training configs.
        max_epochs: default number of training epochs.
        val_split: default fraction of labelled images used for validation and calibration.
        save_predictions: whether an inference request may keep its prediction in the datastore (under the label tag
            ``maxquery_prediction``, never ``final``); off by default.
        keep_backups: how many backups of replaced models (and their calibrations) are kept.
        infer_concurrency: how many inference requests run at once; more get HTTP 503 with a retry hint.
        activelearning_strategy: the strategy of every Next Sample request that does not name one in its body,
            whatever strategy its URL names (MONAI Label's app-level active-learning config). OHIF's MONAI Label
            panel always asks for ``random`` (its strategy list changes nothing), so this is how OHIF users get
            ``maxquery_ood``; ``None`` (default) keeps the strategy each request names.
    """

    device: str
    model_path: Path
    calibration_path: Path
    ood_threshold: float | None = None
    ood_voxel_threshold: float | None = None
    ood_label_value: int = DEFAULT_OOD_LABEL_VALUE
    bundle_overrides: dict[str, Any] = field(default_factory=dict)
    max_epochs: int = 10
    val_split: float = 0.2
    save_predictions: bool = False
    keep_backups: int = DEFAULT_KEEP_BACKUPS
    infer_concurrency: int = DEFAULT_INFER_CONCURRENCY
    activelearning_strategy: str | None = None

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], bundle_root: Path) -> AppSettings:
        """Parse ``--conf`` values (strings on the command line; JSON for ``bundle_overrides``).

        Raises:
            ValueError: a value of the wrong type, naming the key.
        """
        model_path = Path(conf.get("model_path") or bundle_root / "models" / "model.pt").expanduser().resolve()
        calibration_path = conf.get("calibration_path") or model_path.parent / "ood_calibration.json"
        overrides = conf.get("bundle_overrides") or {}
        if isinstance(overrides, str):
            try:
                overrides = json.loads(overrides)
            except ValueError as error:
                raise ValueError(f"--conf bundle_overrides must be a JSON object: {error}") from error
        if not isinstance(overrides, dict):
            raise ValueError(f"--conf bundle_overrides must be a JSON object, got {type(overrides).__name__}.")
        default_device = "cuda:0" if torch.cuda.is_available() else "cpu"
        return cls(
            device=_conf(conf, "device", parse_device, default_device),
            model_path=model_path,
            calibration_path=Path(calibration_path).expanduser().resolve(),
            ood_threshold=_optional_float(conf, "ood_threshold"),
            ood_voxel_threshold=_optional_float(conf, "ood_voxel_threshold"),
            ood_label_value=_conf(conf, "ood_label_value", parse_int(1, 255), DEFAULT_OOD_LABEL_VALUE),
            bundle_overrides=overrides,
            max_epochs=_conf(conf, "max_epochs", parse_int(1, MAX_EPOCHS_LIMIT), 10),
            val_split=_conf(conf, "val_split", parse_float(0.0, 0.9), 0.2),
            save_predictions=_conf(conf, "save_predictions", parse_bool, False),
            keep_backups=_conf(conf, "keep_backups", parse_int(1, 100), DEFAULT_KEEP_BACKUPS),
            infer_concurrency=_conf(conf, "infer_concurrency", parse_int(1, 16), DEFAULT_INFER_CONCURRENCY),
            activelearning_strategy=_conf(conf, "activelearning_strategy", parse_choice(STRATEGY_NAMES), None),
        )
