"""The model file, its OOD calibration, and the networks loaded from it, shared by every task of the app."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .bundle_config import BundleConfig
from .errors import ModelNotFoundError

__all__ = ["ModelStore", "OODThresholds"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OODThresholds:
    """The thresholds that turn MaxQuery anomaly values into decisions.

    Attributes:
        case_threshold: case score above which a case is flagged as OOD (``None``: unknown).
        voxel_threshold: anomaly value above which a predicted organ/lesion voxel is marked suspected OOD.
        source: where the values come from, for the result and the logs.
        warning: why a threshold is missing, if one is.
    """

    case_threshold: float | None
    voxel_threshold: float | None
    source: str
    warning: str | None = None


def _finite_or_none(value: object) -> float | None:
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class ModelStore:
    """Owns ``model.pt`` and ``ood_calibration.json`` and loads the network once per device and model version.

    A new model file (written by training, in another process) is picked up on the next request: the cache is
    keyed by the file's size and modification time.

    Args:
        bundle: the bundle configs (the network is the inference config's ``network_def``).
        model_path: the model checkpoint (a state dict, as written by the bundle's ``CheckpointSaver``).
        calibration_path: the calibration JSON with ``threshold`` (case level) and ``voxel_threshold``.
        case_threshold: overrides the calibrated case threshold.
        voxel_threshold: overrides the calibrated voxel threshold.
    """

    def __init__(
        self,
        bundle: BundleConfig,
        model_path: str | os.PathLike,
        calibration_path: str | os.PathLike,
        case_threshold: float | None = None,
        voxel_threshold: float | None = None,
    ) -> None:
        self.bundle = bundle
        self.model_path = Path(model_path).resolve()
        self.calibration_path = Path(calibration_path).resolve()
        self.case_threshold_override = case_threshold
        self.voxel_threshold_override = voxel_threshold
        self._networks: dict[str, tuple[nn.Module, str]] = {}
        self._lock = threading.Lock()

    def model_available(self) -> bool:
        """Whether the model file exists."""
        return self.model_path.is_file()

    def require_model(self) -> Path:
        """The model path, or a ``ModelNotFoundError`` naming it and how to get one."""
        if not self.model_path.is_file():
            raise ModelNotFoundError(
                f"model file not found: {self.model_path}. Train one with POST /train/maxquery once some images have "
                "final labels, or restart the server with --conf model_path /path/to/model.pt."
            )
        return self.model_path

    def model_version(self) -> str | None:
        """An identifier of the current model file (size and modification time), ``None`` without a model."""
        try:
            stat = self.model_path.stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_size}-{stat.st_mtime_ns}"

    def network(self, device: str) -> nn.Module:
        """The network in eval mode on ``device`` with the current model weights (cached until the file changes)."""
        path = self.require_model()
        with self._lock:
            version = self.model_version()
            cached = self._networks.get(device)
            if cached is not None and cached[1] == version:
                return cached[0]
            if cached is not None:
                logger.info("model file %s changed: reloading it.", path)
            network = self.bundle.new_network()
            network.load_state_dict(self.load_state_dict(path, device))
            network.to(torch.device(device)).eval()
            self._networks[device] = (network, version)
            return network

    def load_state_dict(self, path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The weights stored in ``path`` (a bare state dict, or one under the ``"model"`` key).

        Raises:
            RuntimeError: the file is not a checkpoint of this network.
        """
        try:
            checkpoint = torch.load(path, map_location=torch.device(device), weights_only=True)
        except Exception as error:
            raise RuntimeError(f"cannot read model file {path}: {error}") from error
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
            checkpoint = checkpoint["model"]
        if not isinstance(checkpoint, dict):
            raise RuntimeError(f"model file {path} does not hold a state dict (got {type(checkpoint).__name__}).")
        expected = set(self.bundle.new_network().state_dict())
        if set(checkpoint) != expected:
            missing, unexpected = sorted(expected - set(checkpoint)), sorted(set(checkpoint) - expected)
            raise RuntimeError(
                f"model file {path} does not match the network of configs/inference.json (with the app's "
                f"bundle_overrides): {len(missing)} missing weight(s) {missing[:3]}, {len(unexpected)} unexpected "
                f"weight(s) {unexpected[:3]}."
            )
        return checkpoint

    def thresholds(self) -> OODThresholds:
        """The case and voxel thresholds: the conf overrides, else the calibration file."""
        case, voxel = self.case_threshold_override, self.voxel_threshold_override
        if case is not None and voxel is not None:
            return OODThresholds(case, voxel, "app configuration")
        warning = None
        calibrated: dict = {}
        if self.calibration_path.is_file():
            try:
                calibrated = json.loads(self.calibration_path.read_text())
                for key in ("threshold", "voxel_threshold"):
                    if _finite_or_none(calibrated.get(key)) is None:
                        raise ValueError(f"'{key}' is missing or not a finite number")
            except (OSError, ValueError) as error:
                warning = f"ignoring the OOD calibration file {self.calibration_path}: {error}"
                calibrated = {}
        else:
            warning = (
                f"no OOD calibration file at {self.calibration_path}: the model is not calibrated, so no case is "
                "flagged and no voxel is marked suspected OOD (train with POST /train/maxquery to calibrate)."
            )
        case = case if case is not None else _finite_or_none(calibrated.get("threshold"))
        voxel = voxel if voxel is not None else _finite_or_none(calibrated.get("voxel_threshold"))
        source = str(self.calibration_path) if calibrated else "none"
        if self.case_threshold_override is not None or self.voxel_threshold_override is not None:
            source = f"{source} + app configuration"
        if warning:
            logger.debug(warning)
        return OODThresholds(case, voxel, source, warning)

    def publish(self, new_model: Path, new_calibration: Path | None) -> None:
        """Replace the model (and its calibration) by files written next to them, each in one atomic step.

        Without a new calibration, the old one is removed: thresholds calibrated for another model are meaningless.

        Args:
            new_model: the new checkpoint, on the same file system as the model path.
            new_calibration: the calibration of the new model, or ``None`` when it could not be calibrated.
        """
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new_model, self.model_path)
        if new_calibration is not None:
            os.replace(new_calibration, self.calibration_path)
        else:
            self.calibration_path.unlink(missing_ok=True)
        logger.info("published model %s (calibration: %s)", self.model_path, new_calibration is not None)
