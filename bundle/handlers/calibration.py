"""Calibrates the OOD thresholds on inlier validation data and stores them next to the model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import min_version, optional_import

from bundle.ood.calibration import (
    CASE_SCORE_KEY,
    HYSTERESIS_KEY,
    MODEL_HASH_KEY,
    calibrate_threshold,
    file_sha256,
    save_calibration,
)
from bundle.ood.class_centring import CLASS_MEANS_KEY, class_anomaly_sums, class_means
from bundle.transforms.hysteresis import INPUT_TYPES, crop_to_foreground, fit_hysteresis_offsets, log_scores

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["OODCalibrationHandler"]

logger = logging.getLogger(__name__)


class OODCalibrationHandler:
    """Collect inlier case scores and foreground anomaly values, then write the calibration JSON.

    Two thresholds are stored:

    - ``threshold``: the case score above which a case is flagged, chosen so that a fraction ``target_fpr``
      of inlier validation cases would be flagged;
    - ``voxel_threshold``: the anomaly value above which a voxel of the predicted organ/lesion region is marked
      "suspected OOD", chosen so that a fraction ``voxel_target_fpr`` of inlier foreground voxels would be marked.

    With ``hysteresis_classes``, it also fits the segmentation's hysteresis offsets of those classes
    (:func:`~bundle.transforms.hysteresis.fit_hysteresis_offsets`: the offset that maximises the mean per-case Dice
    of the validation cases, a false lesion in a case without one counting as Dice 0) and stores them under
    ``hysteresis_offsets``, with the mean Dice before and after under ``hysteresis_dice``.

    The calibration also records ``model_sha256``, the sha256 of the model file it was calibrated for, so that a
    model is never used with the thresholds of another one, and, with ``case_score_settings``, the settings the case
    scores were computed with, so that the case threshold is never used with another case score.

    With ``class_mean_key``, it also stores under ``anomaly_class_means`` the inlier mean anomaly of each predicted
    class (:func:`~bundle.ood.class_centring.class_anomaly_sums`), by which the class-centred MaxQuery is centred.

    Only inlier data may reach this handler: OOD cases are never used for model selection or calibration.

    Args:
        save_path: where to write the JSON (written atomically at completion).
        target_fpr: the tolerated fraction of inlier cases flagged.
        voxel_target_fpr: the tolerated fraction of inlier foreground voxels marked.
        pred_key: key of the segmentation probabilities (or one-hot) per item, channel first.
        ood_key: key of the anomaly map per item.
        score_key: key of the case score per item.
        max_voxels_per_case: foreground voxels sampled per case for the voxel threshold (a fixed-seed sample).
        hysteresis_classes: the classes whose hysteresis offsets are fitted (e.g. the tumour classes); ``None``
            fits none.
        label_key: key of the label map ``(1, *spatial)`` on the grid of ``pred_key`` (needed for the offsets).
        input_type: what ``pred_key`` holds, ``"probabilities"`` or ``"logits"``.
        crop_margin: voxels kept around the predicted and true foreground of a case for the offset fit.
        case_score_settings: the settings of the case score under ``score_key`` (``{"top_k_fraction": ...,
            "erode_voxels": ...}``, the configs' ``case_score_settings``), recorded with the threshold.
        model_path: the model file being calibrated, whose hash is recorded; by default ``model.pt`` next to
            ``save_path`` (where the bundle's configs keep the checkpoint and its calibration). Without such a file
            no hash is recorded, and a warning says so.
        class_mean_key: key of the anomaly map the class means are fitted on; it must be the map the class-centred
            score is computed from (the unsmoothed map, before ``SmoothOODMapd``). ``None`` fits no class means.
        class_mean_margin_voxels: dilation of the predicted foreground whose voxels enter the class means.
    """

    def __init__(
        self,
        save_path: str,
        target_fpr: float = 0.05,
        voxel_target_fpr: float = 0.005,
        pred_key: str = "pred",
        ood_key: str = "ood",
        score_key: str = "ood_score",
        max_voxels_per_case: int = 200_000,
        model_path: str | None = None,
        hysteresis_classes: Sequence[int] | None = None,
        label_key: str = "label",
        input_type: str = "probabilities",
        crop_margin: int = 16,
        case_score_settings: Mapping[str, float | int] | None = None,
        class_mean_key: str | None = None,
        class_mean_margin_voxels: int = 3,
    ) -> None:
        self.save_path = Path(save_path)
        self.model_path = Path(model_path) if model_path else self.save_path.with_name("model.pt")
        self.target_fpr = target_fpr
        self.voxel_target_fpr = voxel_target_fpr
        self.pred_key = pred_key
        self.ood_key = ood_key
        self.score_key = score_key
        self.max_voxels_per_case = max_voxels_per_case
        self.case_scores: list[float] = []
        self.voxel_scores: list[np.ndarray] = []
        self.cases_without_foreground = 0
        if input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}.")
        self.hysteresis_classes = [int(k) for k in hysteresis_classes] if hysteresis_classes else []
        self.label_key = label_key
        self.input_type = input_type
        self.crop_margin = int(crop_margin)
        self.segmentation_cases: list[tuple[np.ndarray, np.ndarray]] = []
        self.case_score_settings = dict(case_score_settings) if case_score_settings is not None else None
        self.class_mean_key = class_mean_key
        if class_mean_margin_voxels < 0:
            raise ValueError(f"class_mean_margin_voxels must be >= 0, got {class_mean_margin_voxels}.")
        self.class_mean_margin_voxels = int(class_mean_margin_voxels)
        self.class_sums: np.ndarray | None = None
        self.class_counts: np.ndarray | None = None

    def attach(self, engine: Engine) -> None:
        """Register with the engine's events."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _reset(self, engine: Engine) -> None:
        self.case_scores, self.voxel_scores = [], []
        self.cases_without_foreground = 0
        self.segmentation_cases = []
        self.class_sums, self.class_counts = None, None

    def _collect(self, engine: Engine) -> None:
        rng = np.random.default_rng(len(self.case_scores))
        for item in engine.state.output:
            for key in (self.pred_key, self.ood_key, self.score_key, self.class_mean_key):
                if key is None:
                    continue
                if key not in item:
                    raise KeyError(f"calibration needs '{key}' in the post-processed output (keys: {sorted(item)}).")
            score = item[self.score_key]
            self.case_scores.append(float(score.item() if isinstance(score, torch.Tensor) else score))
            foreground = torch.as_tensor(item[self.pred_key]).argmax(dim=0) > 0
            anomaly_map = torch.as_tensor(item[self.ood_key])[0].detach().float().cpu()
            if not bool(foreground.any()):
                # An untrained model may predict no foreground; fall back to the whole volume for this case.
                foreground = torch.ones_like(foreground)
                self.cases_without_foreground += 1
            anomaly = anomaly_map[foreground.cpu()].numpy()
            if anomaly.size > self.max_voxels_per_case:
                anomaly = rng.choice(anomaly, self.max_voxels_per_case, replace=False)
            self.voxel_scores.append(anomaly)
            if self.hysteresis_classes:
                self.segmentation_cases.append(self._segmentation_case(item))
            if self.class_mean_key:
                sums, counts = class_anomaly_sums(
                    item[self.class_mean_key], item[self.pred_key], self.class_mean_margin_voxels
                )
                self.class_sums = sums if self.class_sums is None else self.class_sums + sums
                self.class_counts = counts if self.class_counts is None else self.class_counts + counts

    def _segmentation_case(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        """Log-scores and label of one case, cropped around its true and predicted foreground (memory)."""
        if self.label_key not in item:
            raise KeyError(
                f"fitting hysteresis offsets needs the label '{self.label_key}' in the post-processed output "
                f"(keys: {sorted(item)})."
            )
        values = log_scores(torch.as_tensor(item[self.pred_key]), self.input_type)
        label = torch.as_tensor(item[self.label_key])[0].long().cpu().numpy()
        try:
            return crop_to_foreground(values, label, self.crop_margin)
        except ValueError as error:
            raise ValueError(f"label '{self.label_key}' and prediction '{self.pred_key}': {error}") from error

    def _save(self, engine: Engine) -> None:
        if not self.case_scores:
            raise RuntimeError("OOD calibration saw no validation case; check the validation list of the dataset.")
        voxels = np.concatenate(self.voxel_scores)
        if self.cases_without_foreground:
            logger.warning(
                "%d of %d validation case(s) had no predicted foreground: their whole volume was used for the voxel "
                "threshold. The model may need more training.",
                self.cases_without_foreground,
                len(self.case_scores),
            )
        calibration = {
            "threshold": calibrate_threshold(self.case_scores, self.target_fpr),
            "voxel_threshold": calibrate_threshold(voxels, self.voxel_target_fpr),
            "target_fpr": self.target_fpr,
            "voxel_target_fpr": self.voxel_target_fpr,
            "num_cases": len(self.case_scores),
            "num_voxels": int(voxels.size),
            "cases_without_foreground": self.cases_without_foreground,
            "case_scores": sorted(self.case_scores),
        }
        if self.case_score_settings is not None:
            calibration[CASE_SCORE_KEY] = self.case_score_settings
        if self.hysteresis_classes:
            offsets, dice = fit_hysteresis_offsets(self.segmentation_cases, self.hysteresis_classes)
            calibration[HYSTERESIS_KEY] = {str(k): v for k, v in offsets.items()}
            calibration["hysteresis_dice"] = {str(k): list(v) for k, v in dice.items()}
            logger.info("hysteresis offsets %s (mean validation Dice before, after: %s)", offsets, dice)
        if self.class_mean_key:
            means = class_means(self.class_sums, self.class_counts)
            calibration[CLASS_MEANS_KEY] = {str(k): v for k, v in means.items()}
            calibration["anomaly_class_voxels"] = {str(k): int(n) for k, n in enumerate(self.class_counts)}
            logger.info("inlier mean anomaly by predicted class: %s", means)
        if self.model_path.is_file():
            calibration[MODEL_HASH_KEY] = file_sha256(self.model_path)
        else:
            logger.warning("model file %s not found: the calibration records no model hash.", self.model_path)
        save_calibration(self.save_path, calibration)
        logger.info(
            "OOD calibration on %d inlier validation case(s): case threshold %.4f, voxel threshold %.4f -> %s",
            len(self.case_scores),
            calibration["threshold"],
            calibration["voxel_threshold"],
            self.save_path,
        )
