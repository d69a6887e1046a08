"""The model file, its OOD calibration, their backups, and the networks loaded from it, shared by every task."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bundle.data.files import atomic_write
from bundle.networks.checkpoint import load_weights
from bundle.ood.calibration import (
    MODEL_HASH_KEY,
    CalibrationError,
    OODThresholds,
    calibrated_hysteresis_offsets,
    calibrated_thresholds,
    check_model_hash,
    file_sha256,
)

from .bundle_config import BundleConfig
from .errors import ModelNotFoundError, NotFoundError

__all__ = ["DEFAULT_KEEP_BACKUPS", "ModelStore"]

logger = logging.getLogger(__name__)

DEFAULT_KEEP_BACKUPS = 5
BACKUP_NAME = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9]{6}-[0-9a-f]{12}")


def _copy_file(source: Path, destination: Path) -> None:
    with source.open("rb") as src:
        atomic_write(destination, lambda out: shutil.copyfileobj(src, out))


class ModelStore:
    """Owns ``model.pt``, ``ood_calibration.json`` and their backups; loads the network once per device and model.

    - The model is identified by the sha256 of its file (``model_version`` is its first 16 hex digits). A new file
      (written by training, in another process, or restored from a backup) is picked up on the next request.
    - The calibration records the sha256 of the model it was calibrated for; a calibration of another model is
      refused (no case flagged, no voxel marked, and the result says why). A calibration without a hash (written
      before hashes were recorded) is used, with a warning.
    - :meth:`publish` keeps the current model and its calibration as a backup in ``<model stem>_backups/`` before
      replacing them; :meth:`restore` puts a backup back (backing up the current model first, so a restore can be
      undone the same way).

    Args:
        bundle: the bundle configs (the network is the inference config's ``network_def``).
        model_path: the model checkpoint (a state dict, as written by the bundle's ``CheckpointSaver``).
        calibration_path: the calibration JSON with ``threshold`` (case level), ``voxel_threshold`` and
            ``model_sha256``.
        case_threshold: overrides the calibrated case threshold.
        voxel_threshold: overrides the calibrated voxel threshold.
        keep_backups: how many backups to keep (the oldest are removed).
    """

    def __init__(
        self,
        bundle: BundleConfig,
        model_path: str | os.PathLike,
        calibration_path: str | os.PathLike,
        case_threshold: float | None = None,
        voxel_threshold: float | None = None,
        keep_backups: int = DEFAULT_KEEP_BACKUPS,
    ) -> None:
        self.bundle = bundle
        self.model_path = Path(model_path).resolve()
        self.calibration_path = Path(calibration_path).resolve()
        self.case_threshold_override = case_threshold
        self.voxel_threshold_override = voxel_threshold
        self.keep_backups = max(1, int(keep_backups))
        self._networks: dict[str, tuple[nn.Module, str]] = {}
        self._hash: tuple[tuple[int, int], str] | None = None
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    # -- the model file ---------------------------------------------------------------------------------------------

    @property
    def backup_dir(self) -> Path:
        """Where backups of replaced models and calibrations go."""
        return self.model_path.with_name(f"{self.model_path.stem}_backups")

    def model_available(self) -> bool:
        """Whether the model file exists."""
        return self.model_path.is_file()

    def require_model(self) -> Path:
        """The model path, or a ``ModelNotFoundError`` saying how to get one (the file name only, not the path)."""
        if not self.model_path.is_file():
            logger.warning("model file not found: %s", self.model_path)
            raise ModelNotFoundError(
                f"model file not found ({self.model_path.name}). Train one with POST /train/maxquery once some images "
                "have final labels, or restart the server with --conf model_path pointing to a model."
            )
        return self.model_path

    def model_sha256(self) -> str | None:
        """The sha256 of the current model file (cached until the file changes), ``None`` without a model."""
        try:
            stat = self.model_path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._hash
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = file_sha256(self.model_path)
        self._hash = (key, digest)
        return digest

    def model_version(self) -> str | None:
        """An identifier of the current model: the first 16 hex digits of its sha256 (``None`` without a model)."""
        digest = self.model_sha256()
        return digest[:16] if digest else None

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
            network = self._load_weights(path, device)
            self._networks[device] = (network, version)
            return network

    def load_state_dict(self, path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The weights stored in ``path`` (a bare state dict, or one under the ``"model"`` key), checked against the
        network by loading them into a new one.

        Raises:
            RuntimeError: the file is not a checkpoint of this network.
        """
        return self._load_weights(path, device).state_dict()

    def _load_weights(self, path: Path, device: str) -> nn.Module:
        """A new network in eval mode on ``device`` with the weights of ``path``, loaded by the bundle's
        :func:`~bundle.networks.checkpoint.load_weights`.

        Raises:
            RuntimeError: the file is missing, unreadable or not a checkpoint of this network; the message names the
                file by its name only (it may reach a client) and what does not fit (missing and unexpected weights,
                shapes).
        """
        # one error type for an unusable model file, whatever the bundle found: the trainer catches it to train
        # without comparing with the current model
        try:
            return load_weights(self.bundle.new_network(), path, torch.device(device), name=Path(path).name)
        except FileNotFoundError as error:
            raise RuntimeError(str(error)) from error
        except ValueError as error:
            raise RuntimeError(
                f"{error} The network is the network_def of configs/inference.json with the app's bundle_overrides."
            ) from error

    # -- the calibration --------------------------------------------------------------------------------------------

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def calibrated(self) -> OODThresholds:
        """The thresholds of the current model's calibration (none, with the reason, where it cannot be used)."""
        # a store without the bundle's configs (restore_model.py) cannot know the case score in use
        settings = getattr(self.bundle, "case_score_settings", None)
        calibrated = calibrated_thresholds(self.calibration_path, self.model_sha256(), settings)
        if calibrated.warning and calibrated.warning.startswith("OOD calibration refused"):
            self._warn_once(calibrated.warning)
        elif calibrated.case_threshold is not None and not calibrated.model_checked:
            self._warn_once(
                f"OOD calibration {self.calibration_path} records no model hash ({MODEL_HASH_KEY}); it is used as it "
                "is, but cannot be checked against the model. Recalibrate (train) to record it."
            )
        return calibrated

    def hysteresis_offsets(self) -> dict[int, float]:
        """The hysteresis offsets of the current model's calibration (``{}``, the plain argmax, where there are none
        or the calibration belongs to another model)."""
        if not self.model_path.is_file():
            return {}
        return calibrated_hysteresis_offsets(self.calibration_path, self.model_sha256())

    def thresholds(self) -> OODThresholds:
        """The case and voxel thresholds: the conf overrides, else the calibration of the current model."""
        case, voxel = self.case_threshold_override, self.voxel_threshold_override
        if case is not None and voxel is not None:
            return OODThresholds(case, voxel, "app configuration")
        calibrated = self.calibrated()
        case = case if case is not None else calibrated.case_threshold
        voxel = voxel if voxel is not None else calibrated.voxel_threshold
        source = calibrated.source
        if self.case_threshold_override is not None or self.voxel_threshold_override is not None:
            source = f"{source} + app configuration"
        if calibrated.warning:
            logger.debug(calibrated.warning)
        return OODThresholds(case, voxel, source, calibrated.warning, calibrated.model_checked)

    # -- publishing, backups, restoring ------------------------------------------------------------------------------

    def backups(self) -> list[dict[str, Any]]:
        """The backups, newest first: ``name``, ``model_sha256`` and whether a calibration was kept."""
        if not self.backup_dir.is_dir():
            return []
        found = []
        for folder in sorted(self.backup_dir.iterdir(), reverse=True):
            model = folder / self.model_path.name
            if not (BACKUP_NAME.fullmatch(folder.name) and model.is_file()):
                continue
            try:
                meta = json.loads((folder / "backup.json").read_text())
            except (OSError, ValueError):
                meta = {}
            found.append(
                {
                    "name": folder.name,
                    "model_sha256": meta.get("model_sha256"),
                    "calibration": (folder / self.calibration_path.name).is_file(),
                    "created": meta.get("created"),
                }
            )
        return found

    def backup(self) -> str | None:
        """Copy the current model and its calibration into a new backup folder; its name (``None``: no model)."""
        digest = self.model_sha256()
        if digest is None:
            return None
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1e6) % 1_000_000:06d}"
        folder = self.backup_dir / f"{stamp}-{digest[:12]}"
        _copy_file(self.model_path, folder / self.model_path.name)
        calibration_kept = False
        if self.calibration_path.is_file():
            _copy_file(self.calibration_path, folder / self.calibration_path.name)
            calibration_kept = True
        meta = {
            "model_sha256": digest,
            "calibration": calibration_kept,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + " UTC",
        }
        atomic_write(folder / "backup.json", lambda out: out.write(json.dumps(meta, indent=2).encode()))
        for old in self.backups()[self.keep_backups :]:
            shutil.rmtree(self.backup_dir / old["name"], ignore_errors=True)
        logger.info("backed up model %s (sha256 %s) to %s", self.model_path.name, digest[:12], folder)
        return folder.name

    def publish(self, new_model: Path, new_calibration: Path | None) -> str | None:
        """Back up the current model and calibration, then replace them by new files, each in one atomic step.

        Without a new calibration, the current one is removed (after its backup): thresholds calibrated for another
        model are meaningless. A new calibration must record the new model's hash.

        Args:
            new_model: the new checkpoint, on the same file system as the model path.
            new_calibration: the calibration of the new model, or ``None`` when it could not be calibrated.

        Returns:
            the name of the backup of the replaced model (``None`` when there was no model).

        Raises:
            CalibrationError: ``new_calibration`` records another model's hash, or none.
        """
        if new_calibration is not None:
            calibration = json.loads(Path(new_calibration).read_text())
            if not check_model_hash(calibration, new_model, f"new calibration {Path(new_calibration).name}"):
                raise CalibrationError("the new calibration records no model hash; it is not published.")
        backup = self.backup()
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new_model, self.model_path)
        if new_calibration is not None:
            os.replace(new_calibration, self.calibration_path)
        else:
            self.calibration_path.unlink(missing_ok=True)
        logger.info(
            "published model %s (calibration: %s; previous model kept as backup %s)",
            self.model_path,
            new_calibration is not None,
            backup,
        )
        return backup

    def restore(self, name: str | None = None) -> dict[str, Any]:
        """Put a backup back as the served model and calibration (the current ones are backed up first).

        Args:
            name: the backup folder name (see :meth:`backups`); default: the newest backup of another model than
                the current one.

        Returns:
            ``{"restored": name, "model_sha256": ..., "backup_of_replaced": ...}``.

        Raises:
            NotFoundError: no such backup.
        """
        available = self.backups()
        if name is None:
            current = self.model_sha256()
            others = [b for b in available if b["model_sha256"] != current]
            if not others:
                raise NotFoundError(f"no backup of another model in {self.backup_dir}.")
            name = others[0]["name"]
        if not BACKUP_NAME.fullmatch(name) or name not in {b["name"] for b in available}:
            names = [b["name"] for b in available]
            raise NotFoundError(f"no backup '{name}' in {self.backup_dir}; available: {names}.")
        folder = self.backup_dir / name
        replaced = self.backup()
        staged_model = self.model_path.with_name(f".{self.model_path.name}.restore")
        _copy_file(folder / self.model_path.name, staged_model)
        os.replace(staged_model, self.model_path)
        saved_calibration = folder / self.calibration_path.name
        if saved_calibration.is_file():
            _copy_file(saved_calibration, self.calibration_path)
        else:
            self.calibration_path.unlink(missing_ok=True)
        digest = self.model_sha256()
        logger.info("restored backup %s as %s (sha256 %s)", name, self.model_path, digest)
        return {"restored": name, "model_sha256": digest, "backup_of_replaced": replaced}

    def summary(self) -> dict[str, Any]:
        """What ``/info/`` shows about the model: file names (never server paths), hash, thresholds, backups."""
        thresholds = self.thresholds()
        calibrated = self.calibrated()
        return {
            "model_file": self.model_path.name,
            "model_available": self.model_available(),
            "model_sha256": self.model_sha256(),
            "model_version": self.model_version(),
            "calibration_file": self.calibration_path.name,
            "calibration_verified": calibrated.model_checked,
            "calibration_warning": calibrated.warning,
            "ood_threshold": thresholds.case_threshold,
            "ood_voxel_threshold": thresholds.voxel_threshold,
            "ood_thresholds_source": thresholds.source,
            "backups": [b["name"] for b in self.backups()],
        }
