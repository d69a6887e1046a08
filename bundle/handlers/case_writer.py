"""Writes the case-level OOD table ``ood_cases.csv`` of the inference output contract."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.utils import min_version, optional_import

from bundle.data.files import atomic_write_text
from bundle.engines.keys import CASE_ERROR_KEY, CASE_NAME_KEY
from bundle.handlers.naming import case_name
from bundle.ood.calibration import OODThresholds, calibrated_thresholds

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["OODCaseWriter"]

logger = logging.getLogger(__name__)


class OODCaseWriter:
    """Collect each case's OOD score and write ``case,score,flag,message`` rows when the run completes.

    The flag is ``score > threshold``, the case threshold calibrated on inlier validation data and stored next to
    the model (``ood_calibration.json``), read by :func:`~bundle.ood.calibration.calibrated_thresholds`. Without a
    usable calibration for this model (no file, or one calibrated for another model) the flag column is left empty
    and a warning says why. The CSV is written in one step at the end, so an interrupted run leaves no partial table.

    A case that failed (an item with ``"case_error"``, see :mod:`bundle.engines.case_isolation`) gets a row with an
    empty score and flag and its error as the message; after the table is written the run fails with an error that
    lists the failed cases, so that a script sees a non-zero exit status while every other case is complete.

    Args:
        output_dir: folder of the CSV.
        calibration_path: the calibration JSON written after training; ignored when ``threshold`` is given.
        model_path: the model file whose calibration it must be (its sha256 is checked); ``None`` skips the check.
        thresholds: thresholds already read with :func:`~bundle.ood.calibration.calibrated_thresholds` (as
            ``configs/inference.json`` reads them once for the suspected-OOD marking too); they replace
            ``calibration_path`` and ``model_path``.
        score_key: key of the case score in each post-processed item.
        filename: name of the CSV.
        threshold: explicit case threshold overriding the calibration file.
        region_key: key of the organ region found by the cascade's localiser; its message (e.g. no organ found)
            goes to the ``message`` column.
        case_score_settings: the settings of the case score under ``score_key`` (the configs'
            ``case_score_settings``); a calibration read from ``calibration_path`` that records other settings gives
            no flag. ``None`` skips the check.
    """

    def __init__(
        self,
        output_dir: str,
        calibration_path: str | None = None,
        score_key: str = "ood_score",
        filename: str = "ood_cases.csv",
        threshold: float | None = None,
        region_key: str | None = "organ_region",
        model_path: str | None = None,
        thresholds: OODThresholds | None = None,
        case_score_settings: Mapping[str, float | int] | None = None,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.calibration_path = calibration_path
        self.model_path = model_path
        self.thresholds = thresholds
        self.case_score_settings = case_score_settings
        self.score_key = score_key
        self.threshold = threshold
        self.region_key = region_key
        self.rows: list[tuple[str, float, str]] = []
        self.failed: list[tuple[str, str]] = []

    def attach(self, engine: Engine) -> None:
        """Register with the engine's iteration and completion events."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.rows = []
        self.failed = []
        calibrated = self.thresholds
        if self.threshold is None and calibrated is None and self.calibration_path is not None:
            calibrated = calibrated_thresholds(self.calibration_path, self.model_path, self.case_score_settings)
        if self.threshold is None and calibrated is not None:
            self.threshold = calibrated.case_threshold
            if calibrated.warning:
                logger.warning("%s ood_cases.csv will have an empty flag column.", calibrated.warning)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [None] * len(engine.state.output)
        for item, batch_item in zip(engine.state.output, batch, strict=True):
            if CASE_ERROR_KEY in item:
                self.failed.append((str(item.get(CASE_NAME_KEY, "unknown")), str(item[CASE_ERROR_KEY])))
                continue
            if self.score_key not in item:
                raise KeyError(f"post-processing did not produce '{self.score_key}' (keys: {sorted(item)}).")
            score = item[self.score_key]
            score = float(score.item() if isinstance(score, torch.Tensor) else score)
            region = item.get(self.region_key) if self.region_key is not None else None
            message = str(region.get("message", "")) if isinstance(region, dict) else ""
            self.rows.append((case_name(item, batch_item), score, message))

    def _write(self, engine: Engine) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["case", "score", "flag", "message"])
        rows = self.rows + [(name, None, message) for name, message in self.failed]
        for name, score, message in sorted(rows, key=lambda row: row[0]):
            if score is None:
                writer.writerow([name, "", "", message])
                continue
            flag = "" if self.threshold is None or math.isnan(score) else int(score > self.threshold)
            writer.writerow([name, f"{score:.6f}", flag, message])
        atomic_write_text(self.path, buffer.getvalue())
        flagged = sum(1 for _, s, _ in self.rows if self.threshold is not None and s > self.threshold)
        logger.info("wrote %s: %d case(s), %d flagged as OOD.", self.path, len(self.rows), flagged)
        if self.failed:
            errors = "; ".join(f"{name}: {message}" for name, message in self.failed)
            raise RuntimeError(f"{len(self.failed)} of {len(rows)} case(s) failed, rows in {self.path}: {errors}")
