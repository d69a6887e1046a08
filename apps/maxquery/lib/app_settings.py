"""The app's options, read from ``monailabel start_server ... --conf KEY VALUE`` pairs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monailabel.utils.others.generic import name_to_device

__all__ = ["AppSettings", "DEFAULT_OOD_LABEL_VALUE"]

DEFAULT_OOD_LABEL_VALUE = 9


def _optional_float(conf: Mapping[str, Any], key: str) -> float | None:
    value = conf.get(key)
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"--conf {key} must be a number, got '{value}'.") from error


def _number(conf: Mapping[str, Any], key: str, default: float, kind: type) -> Any:
    value = conf.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"--conf {key} must be {expected}, got '{value}'.") from error


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
        bundle_overrides: bundle config ids -> values, applied to the inference and training configs.
        max_epochs: default number of training epochs.
        val_split: default fraction of labelled images used for validation and calibration.
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
        ood_label_value = _number(conf, "ood_label_value", DEFAULT_OOD_LABEL_VALUE, int)
        if not 1 <= ood_label_value <= 255:
            raise ValueError(f"--conf ood_label_value must be in [1, 255] (uint8 label maps), got {ood_label_value}.")
        return cls(
            device=name_to_device(conf.get("device") or None),
            model_path=model_path,
            calibration_path=Path(calibration_path).expanduser().resolve(),
            ood_threshold=_optional_float(conf, "ood_threshold"),
            ood_voxel_threshold=_optional_float(conf, "ood_voxel_threshold"),
            ood_label_value=ood_label_value,
            bundle_overrides=overrides,
            max_epochs=_number(conf, "max_epochs", 10, int),
            val_split=_number(conf, "val_split", 0.2, float),
        )
