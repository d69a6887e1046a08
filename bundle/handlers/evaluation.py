"""Evaluation of inlier segmentation and OOD localisation/detection as an ignite handler (docs/benchmark/README.md).

The OOD scores are those registered in :data:`bundle.ood.scores.SCORES`. Each declares the network output it
consumes; the handler hands it that output (the class output as probabilities or logits, the anomaly map, the
query affinities) and reports a score whose output the network does not give under ``skipped_scores`` with the
reason, instead of computing it. Registering a score is therefore enough to have it evaluated.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.utils import min_version, optional_import

from bundle.data.files import atomic_write, atomic_write_text
from bundle.handlers.naming import case_name
from bundle.metrics.ood import case_auroc, case_auroc_by_size, check_size_edges, pixel_ood_metrics, roi_mask, size_bins
from bundle.ood.case_score import case_ood_score, eroded_foreground
from bundle.ood.class_centring import CLASS_CENTRED_SCORE, CLASS_MEANS_KEY, centre_by_class, check_class_means
from bundle.ood.scores import SCORES, OODScore, class_inputs
from bundle.ood.smoothing import grid_spacing, smooth_score_map
from bundle.transforms.hysteresis import check_offsets, hysteresis_argmax

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["BASELINE_METHODS", "ROI_VOXEL_KEYS", "OODEvaluationHandler", "format_metrics_table"]

logger = logging.getLogger(__name__)

BASELINE_METHODS = ("msp", "max_logit", "energy", "entropy", "rba")
"""The built-in scores of the class output, which every segmentation network gives."""

ROI_VOXEL_KEYS = ("is_ood", "ood_type", "inlier_tumour", "case_index", "case_names", "case_groups")
"""The arrays of ``roi_scores.npz`` that are not a score: every other array is one score's pooled ROI voxels."""

PROTOCOL = {
    "dice": "per class on inlier test cases (ground truth and prediction on the model grid), averaged over cases; "
    "a case whose ground truth lacks the class is left out of that class's mean; the prediction is the model's "
    "segmentation as delivered: the hysteresis argmax with the offsets of its calibration (dice_argmax: the plain "
    "argmax, when they differ)",
    "pixel_ood": "voxels pooled over all evaluated cases (test + test_ood) inside the ROI = ground-truth organ and "
    "lesions (inlier and OOD) dilated by roi_margin_voxels; positives are OOD-lesion voxels; AUROC and AUPR "
    "(average precision, OOD positive) from scikit-learn, ties count half in AUROC; FPR95 = false-positive rate at "
    "the first threshold reaching 95% true-positive rate; every score's voxel map is first smoothed with a Gaussian of "
    "smoothing_sigma_mm millimetres (0 = not smoothed)",
    "case_ood": "case score = mean of the top top_k_fraction voxel scores (of the unsmoothed map) inside the "
    "predicted foreground (organ + tumours), eroded by case_erode_voxels face-connected steps; AUROC of test_ood "
    "cases (positive) against test cases",
    "near_ood": "pixel AUROC of the OOD-lesion ROI voxels (positive) against the inlier tumour voxels alone (ground "
    "truth), the same pooled and smoothed scores as pixel_ood: whether an unseen lesion type is told apart from the "
    "known tumour types rather than from normal tissue (NaN without both)",
    "by_ood_type": "for each OOD lesion type: pixel AUROC of that type's ROI voxels (positive) against every "
    "non-OOD ROI voxel of every case (voxels of other OOD types left out), and case AUROC of the test_ood cases "
    "holding that type (positive) against the test cases; a case with several types counts for each; "
    "pixel_auroc_vs_inlier_tumours: that type's voxels against the inlier tumour voxels alone (as near_ood)",
    "by_ood_size": "case AUROC of the test_ood cases whose OOD voxels (all OOD labels of the case, on the model grid) "
    "fall in each size bin [min_size, max_size) of ood_size_edges, against all test cases: a small unseen lesion "
    "moves a case score little, so the pooled case AUROC depends on the sizes a split happens to draw",
}


class OODEvaluationHandler:
    """Accumulate per-case results during an evaluator run; write ``metrics.json`` and ``per_case.csv`` at the end.

    Each post-processed item must hold the class output under ``pred_key`` (channel first, probabilities or logits),
    the ground truth under ``label_key`` and, for the mask transformer, the MaxQuery map under ``anomaly_key`` (and
    the query affinities under ``affinity_key`` if set). Every selected score of :data:`bundle.ood.scores.SCORES`
    gets the output it consumes; one whose output this network does not give (its key is ``None``, e.g. the
    DynUNet baseline has no anomaly map) is listed in ``metrics.json`` under ``skipped_scores`` with the reason.
    Whether a case belongs to ``test_ood`` is read from ``case_group_key`` in the batch (falls back to "its label
    holds an OOD value").

    Args:
        output_dir: where ``metrics.json`` and ``per_case.csv`` go.
        class_names: inlier class id -> name, background included.
        ood_labels: label values that mark OOD lesions.
        roi_margin_voxels: dilation of the ground-truth foreground defining the ROI.
        top_k_fraction: fraction of foreground voxels averaged into a case score.
        case_erode_voxels: erosion of the predicted foreground before the case score is read
            (:func:`bundle.ood.case_ood_score`).
        smoothing_sigma_mm: every score's voxel map is smoothed with a Gaussian of this many millimetres
            (:func:`bundle.ood.smooth_score_map`; spacing from the class output's affine) before the pixel metrics, as
            the inference smooths its OOD map; case scores use the unsmoothed maps. 0 turns smoothing off.
        input_type: what the class output is, ``"probabilities"`` (mask transformer Z) or ``"logits"`` (per-voxel
            head, or the mask transformer's ``eval_output="logits"``); the other is derived from it
            (:func:`bundle.ood.scores.class_inputs`).
        anomaly_key: key of the MaxQuery map, or ``None`` for models without queries.
        methods: names of the registered scores to evaluate; ``None`` evaluates every registered score (in
            registration order) whose input the network gives.
        pred_key: key of the class output.
        label_key: key of the label map.
        case_group_key: batch key with 1 for OOD cases, 0 for inlier cases.
        affinity_key: key of the query affinities ``R`` ``(N, *spatial)``, or ``None`` if the output has none.
        metrics_filename: name of the JSON summary.
        per_case_filename: name of the per-case CSV.
        hysteresis_offsets: ``{class index: offset}`` of the model's calibration
            (:func:`bundle.ood.calibrated_hysteresis_offsets`): the segmentation whose Dice is reported is the
            hysteresis argmax (:func:`bundle.transforms.hysteresis_argmax`), as the inference delivers it; the
            plain argmax's Dice is then reported as well (``dice_argmax``). Case scores use the plain argmax's
            foreground, as the inference computes them before the segmentation is made.
        ood_label_names: OOD label value -> lesion type name (e.g. ``bundle.data.ood_label_names(dataset)``), for
            the per-type breakdown ``by_ood_type`` of ``metrics.json`` and the ``ood_types`` column of
            ``per_case.csv``; a type without a name is keyed by its label value.
        ood_size_edges: voxel edges of the OOD-lesion size bins of ``by_ood_size`` in ``metrics.json`` (model
            grid, strictly increasing; :func:`bundle.metrics.case_auroc_by_size`).
        anomaly_class_means: the inlier mean anomaly of each class from the model's calibration
            (:func:`bundle.ood.calibrated_class_means`): the class-centred MaxQuery (``maxquery_centred``,
            :mod:`bundle.ood.class_centring`) is then evaluated beside the registered scores. ``None`` (a
            calibration without usable means) skips it with the reason; so does a network without an anomaly map.
        save_scores: also write ``roi_scores.npz``: the pooled ROI voxel scores of every method and the OOD mask
            ``is_ood``, for ROC and precision-recall curves, with ``ood_type`` (int16, each voxel's OOD label value,
            0 for the others), ``inlier_tumour`` (bool, the voxel is an inlier tumour in the ground truth),
            ``case_index`` (int32, the case each voxel comes from, numbering the cases in the
            order they were evaluated) and ``case_names`` / ``case_groups`` (the name and ``test`` / ``test_ood``
            group of each numbered case), for case-level bootstrap intervals (:mod:`bundle.metrics.bootstrap`).
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Mapping[int | str, str],
        ood_labels: Sequence[int],
        roi_margin_voxels: int = 3,
        top_k_fraction: float = 0.01,
        case_erode_voxels: int = 0,
        smoothing_sigma_mm: float = 0.0,
        input_type: str = "probabilities",
        anomaly_key: str | None = "ood",
        methods: Sequence[str] | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        case_group_key: str = "ood_case",
        affinity_key: str | None = None,
        metrics_filename: str = "metrics.json",
        per_case_filename: str = "per_case.csv",
        save_scores: bool = False,
        hysteresis_offsets: Mapping[int | str, float] | None = None,
        ood_label_names: Mapping[int | str, str] | None = None,
        ood_size_edges: Sequence[int] = (250, 500),
        anomaly_class_means: Mapping[int | str, float] | None = None,
    ) -> None:
        if input_type not in ("probabilities", "logits"):
            raise ValueError(f"input_type must be 'probabilities' or 'logits', got '{input_type}'.")
        self.output_dir = Path(output_dir)
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.num_classes = len(self.class_names)
        self.ood_labels = sorted(int(v) for v in ood_labels)
        names = {int(k): str(v) for k, v in (ood_label_names or {}).items()}
        self.ood_type_names = {value: names.get(value, str(value)) for value in self.ood_labels}
        self.roi_margin_voxels = roi_margin_voxels
        self.top_k_fraction = top_k_fraction
        if case_erode_voxels < 0:
            raise ValueError(f"case_erode_voxels must be >= 0, got {case_erode_voxels}.")
        self.case_erode_voxels = case_erode_voxels
        if smoothing_sigma_mm < 0:
            raise ValueError(f"smoothing_sigma_mm must be >= 0, got {smoothing_sigma_mm}.")
        self.smoothing_sigma_mm = float(smoothing_sigma_mm)
        self.input_type = input_type
        self.anomaly_key = anomaly_key
        self.affinity_key = affinity_key
        self.scores, self.skipped = self._select_scores(methods)
        self.methods = [score.name for score in self.scores]
        self.class_means = None
        if methods is None or CLASS_CENTRED_SCORE in methods:
            if not anomaly_key:
                self.skipped[CLASS_CENTRED_SCORE] = "the network gives no anomaly map (anomaly_key is None)"
            elif anomaly_class_means is None:
                self.skipped[CLASS_CENTRED_SCORE] = (
                    f"no usable {CLASS_MEANS_KEY} in the model's calibration (the log says why); recalibrate the model"
                )
            else:
                self.class_means = check_class_means(anomaly_class_means, self.num_classes, CLASS_MEANS_KEY)
                position = self.methods.index("maxquery") + 1 if "maxquery" in self.methods else len(self.methods)
                self.methods.insert(position, CLASS_CENTRED_SCORE)
        self.pred_key, self.label_key, self.case_group_key = pred_key, label_key, case_group_key
        self.metrics_filename, self.per_case_filename = metrics_filename, per_case_filename
        self.save_scores = save_scores
        self.hysteresis_offsets = check_offsets(hysteresis_offsets, self.num_classes)
        self.ood_size_edges = check_size_edges(ood_size_edges)  # bad edges refused now, not after the evaluation
        self._reset()

    def _select_scores(self, methods: Sequence[str] | None) -> tuple[list[OODScore], dict[str, str]]:
        """The scores to compute and, by name, the reason each other selected score is skipped."""
        names = list(SCORES) if methods is None else [name for name in methods if name != CLASS_CENTRED_SCORE]
        unknown = [name for name in names if name not in SCORES]
        if unknown:
            raise ValueError(f"unknown OOD score(s) {unknown}; registered: {sorted(SCORES)}.")
        missing = {
            "anomaly": None if self.anomaly_key else "the network gives no anomaly map (anomaly_key is None)",
            "affinities": None if self.affinity_key else "the network gives no query affinities (affinity_key is None)",
        }
        scores, skipped = [], {}
        for name in names:
            reason = missing.get(SCORES[name].consumes)
            if reason:
                skipped[name] = f"consumes {SCORES[name].consumes!r}: {reason}"
            else:
                scores.append(SCORES[name])
        return scores, skipped

    def _reset(self, engine: Engine | None = None) -> None:
        self.cases: list[dict] = []
        self.roi_scores: dict[str, list[np.ndarray]] = {m: [] for m in self.methods}
        self.roi_is_ood: list[np.ndarray] = []
        self.roi_ood_type: list[np.ndarray] = []
        self.roi_inlier_tumour: list[np.ndarray] = []
        self.roi_sizes: list[int] = []
        self.metrics: dict = {}

    def attach(self, engine: Engine) -> None:
        """Register with the engine's events."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def score_maps(self, item: Mapping) -> dict[str, torch.Tensor]:
        """Each score's voxel map ``(*spatial)`` of one item, from the output the score consumes."""
        inputs = class_inputs(torch.as_tensor(item[self.pred_key]).float(), self.input_type, dim=0)
        for name, key in (("anomaly", self.anomaly_key), ("affinities", self.affinity_key)):
            if key:
                inputs[name] = torch.as_tensor(item[key]).float()
        maps = {score.name: score(inputs[score.consumes], dim=0, keepdim=False) for score in self.scores}
        if self.class_means is not None:
            maps[CLASS_CENTRED_SCORE] = centre_by_class(inputs["anomaly"][0], inputs["logits"], self.class_means)
        return {name: maps[name] for name in self.methods}

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [None] * len(engine.state.output)
        for item, batch_item in zip(engine.state.output, batch, strict=True):
            for key in (self.pred_key, self.label_key, self.anomaly_key, self.affinity_key):
                if key is None:
                    continue
                if key not in item:
                    raise KeyError(f"evaluation needs '{key}' in the post-processed output (keys: {sorted(item)}).")
            label = torch.as_tensor(item[self.label_key])[0].long().cpu()
            pred = torch.as_tensor(item[self.pred_key])
            pred_label = pred.argmax(dim=0).cpu()
            is_ood_voxel = torch.isin(label, torch.tensor(self.ood_labels, dtype=label.dtype))
            group = None if batch_item is None else batch_item.get(self.case_group_key)
            is_ood_case = bool(is_ood_voxel.any()) if group is None else bool(int(torch.as_tensor(group).item()))
            record: dict = {"case": case_name(item, batch_item), "group": "test_ood" if is_ood_case else "test"}
            record["ood_voxels"] = int(is_ood_voxel.sum())
            present = torch.unique(label[is_ood_voxel]).tolist()
            record["ood_types"] = ";".join(self.ood_type_names[int(v)] for v in present)

            if not is_ood_case:
                segmentations = {"dice": pred_label}
                if any(self.hysteresis_offsets.values()):
                    grown = hysteresis_argmax(pred, self.hysteresis_offsets, self.input_type)
                    segmentations = {"dice": torch.from_numpy(grown), "dice_argmax": pred_label}
                label_onehot = one_hot(label[None, None].clamp_max(self.num_classes - 1), self.num_classes)
                for prefix, segmentation in segmentations.items():
                    pred_onehot = one_hot(segmentation[None, None], self.num_classes)
                    dice = compute_dice(pred_onehot, label_onehot, include_background=False, ignore_empty=True)[0]
                    for class_id, value in zip(range(1, self.num_classes), dice.tolist(), strict=True):
                        record[f"{prefix}_{self.class_names[class_id]}"] = value

            roi = torch.as_tensor(roi_mask(label.numpy(), self.ood_labels, self.roi_margin_voxels), dtype=torch.bool)
            foreground = torch.from_numpy(eroded_foreground(pred_label > 0, self.case_erode_voxels))
            spacing = grid_spacing(pred, self.pred_key) if self.smoothing_sigma_mm else None
            for method, values in self.score_maps(item).items():
                values = values.cpu()
                record[f"score_{method}"] = case_ood_score(values, foreground, self.top_k_fraction)
                if spacing is not None:
                    values = smooth_score_map(values, spacing, self.smoothing_sigma_mm)
                self.roi_scores[method].append(values[roi].numpy().astype(np.float32))
            self.roi_is_ood.append(is_ood_voxel[roi].numpy())
            self.roi_ood_type.append(torch.where(is_ood_voxel, label, 0)[roi].numpy().astype(np.int16))
            self.roi_inlier_tumour.append(((label >= 2) & (label < self.num_classes) & ~is_ood_voxel)[roi].numpy())
            self.roi_sizes.append(int(roi.sum()))
            self.cases.append(record)

    def compute(self) -> dict:
        """The metrics of the cases seen so far."""
        inlier = [c for c in self.cases if c["group"] == "test"]
        ood = [c for c in self.cases if c["group"] == "test_ood"]
        prefixes = ("dice", "dice_argmax") if any(self.hysteresis_offsets.values()) else ("dice",)
        dice_of: dict[str, dict] = {prefix: {} for prefix in prefixes}
        for prefix, dice in dice_of.items():
            for class_id in range(1, self.num_classes):
                values = [c.get(f"{prefix}_{self.class_names[class_id]}", math.nan) for c in inlier]
                values = [v for v in values if not math.isnan(v)]
                dice[self.class_names[class_id]] = float(np.mean(values)) if values else float("nan")
        is_ood = np.concatenate(self.roi_is_ood) if self.roi_is_ood else np.zeros(0, dtype=bool)
        pooled = {m: np.concatenate(v) if v else np.zeros(0) for m, v in self.roi_scores.items()}
        tumour = np.concatenate(self.roi_inlier_tumour) if self.roi_inlier_tumour else np.zeros(0, dtype=bool)
        pixel, case = {}, {}
        for method in self.methods:
            pixel[method] = pixel_ood_metrics(pooled[method], is_ood)
            inlier_scores = [c[f"score_{method}"] for c in inlier]
            ood_scores = [c[f"score_{method}"] for c in ood]
            case[method] = {"auroc": case_auroc(inlier_scores, ood_scores) if inlier and ood else float("nan")}
        return {
            "dice": dice_of["dice"],
            **({"dice_argmax": dice_of["dice_argmax"]} if "dice_argmax" in dice_of else {}),
            "pixel_ood": pixel,
            "case_ood": case,
            "near_ood": {m: self._auroc_against_tumours(pooled[m], is_ood, tumour) for m in self.methods},
            "by_ood_type": self._by_ood_type(inlier, pooled, tumour),
            "by_ood_size": self._by_ood_size(inlier, ood),
            "skipped_scores": dict(self.skipped),
            "num_cases": {"test": len(inlier), "test_ood": len(ood)},
            "num_roi_voxels": {"total": int(is_ood.size), "ood": int(is_ood.sum())},
            "settings": {
                "roi_margin_voxels": self.roi_margin_voxels,
                "top_k_fraction": self.top_k_fraction,
                "case_erode_voxels": self.case_erode_voxels,
                "smoothing_sigma_mm": self.smoothing_sigma_mm,
                "ood_labels": self.ood_labels,
                "ood_size_edges": self.ood_size_edges,
                "input_type": self.input_type,
                "hysteresis_offsets": {str(k): v for k, v in self.hysteresis_offsets.items()},
            },
            "protocol": PROTOCOL,
        }

    @staticmethod
    def _auroc_against_tumours(scores: np.ndarray, positive: np.ndarray, tumour: np.ndarray) -> float:
        """Pixel AUROC of the ``positive`` voxels against the inlier tumour voxels alone (NaN if either is absent)."""
        keep = positive | tumour
        if not positive.any() or not tumour.any():
            return float("nan")
        return pixel_ood_metrics(scores[keep], positive[keep])["auroc"]

    def _by_ood_type(self, inlier: list[dict], pooled: dict[str, np.ndarray], tumour: np.ndarray) -> dict:
        """Pixel and case AUROC of every score for each OOD lesion type on its own (see ``PROTOCOL``), from the
        pooled ROI voxel scores of every method and the inlier tumour mask of the pooled ROI voxels."""
        voxel_type = np.concatenate(self.roi_ood_type) if self.roi_ood_type else np.zeros(0, dtype=np.int16)
        # every OOD voxel lies inside its case's ROI, so the ROI's types are the case's types
        ood = [(c, set(np.unique(t).tolist())) for c, t in zip(self.cases, self.roi_ood_type, strict=True)]
        ood = [(c, values) for c, values in ood if c["group"] == "test_ood"]
        results = {}
        for value, name in self.ood_type_names.items():
            positive = voxel_type == value
            if not positive.any():
                continue
            keep = positive | (voxel_type == 0)
            holding = [c for c, values in ood if value in values]
            results[name] = {
                "label": value,
                "voxels": int(positive.sum()),
                "cases": len(holding),
                "pixel_auroc": {m: pixel_ood_metrics(pooled[m][keep], positive[keep])["auroc"] for m in self.methods},
                "pixel_auroc_vs_inlier_tumours": {
                    m: self._auroc_against_tumours(pooled[m], positive, tumour) for m in self.methods
                },
                "case_auroc": {
                    m: case_auroc([c[f"score_{m}"] for c in inlier], [c[f"score_{m}"] for c in holding])
                    if inlier and holding
                    else float("nan")
                    for m in self.methods
                },
            }
        return results

    def _by_ood_size(self, inlier: list[dict], ood: list[dict]) -> list[dict]:
        """Case AUROC of every score for the OOD cases of each size bin (see ``PROTOCOL``)."""
        sizes = [c["ood_voxels"] for c in ood]
        aurocs = {
            m: case_auroc_by_size(
                [c[f"score_{m}"] for c in inlier], [c[f"score_{m}"] for c in ood], sizes, self.ood_size_edges
            )
            for m in self.methods
        }
        return [
            {
                "min_voxels": low,
                "max_voxels": high,
                "cases": int(inside.sum()),
                "case_auroc": {m: aurocs[m][i]["auroc"] for m in self.methods},
            }
            for i, (low, high, inside) in enumerate(size_bins(sizes, self.ood_size_edges))
        ]

    def _finish(self, engine: Engine) -> None:
        self.metrics = self.compute()
        atomic_write_text(self.output_dir / self.metrics_filename, json.dumps(self.metrics, indent=2) + "\n")
        columns = sorted({k for c in self.cases for k in c} - {"case", "group"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["case", "group", *columns], restval="")
        writer.writeheader()
        for record in sorted(self.cases, key=lambda c: (c["group"], c["case"])):
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in record.items()})
        atomic_write_text(self.output_dir / self.per_case_filename, buffer.getvalue())
        if self.save_scores:
            arrays = {m: np.concatenate(v) for m, v in self.roi_scores.items() if v}
            arrays["is_ood"] = np.concatenate(self.roi_is_ood)
            arrays["ood_type"] = np.concatenate(self.roi_ood_type)
            arrays["inlier_tumour"] = np.concatenate(self.roi_inlier_tumour)
            arrays["case_index"] = np.repeat(np.arange(len(self.cases), dtype=np.int32), self.roi_sizes)
            # fixed-width unicode (not object) arrays, so that np.load needs no pickle to read them
            arrays["case_names"] = np.array([c["case"] for c in self.cases], dtype=str)
            arrays["case_groups"] = np.array([c["group"] for c in self.cases], dtype=str)
            atomic_write(self.output_dir / "roi_scores.npz", lambda handle: np.savez_compressed(handle, **arrays))
        logger.info("evaluation written to %s\n%s", self.output_dir, format_metrics_table(self.metrics))


def format_metrics_table(metrics: Mapping) -> str:
    """A plain-text table of Dice per class and the OOD metrics per score."""
    lines = ["Dice (inlier test cases): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["dice"].items())]
    if "dice_argmax" in metrics:
        lines.append("  plain argmax: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["dice_argmax"].items()))
    near = metrics.get("near_ood", {})
    lines.append(
        f"{'score':<16} {'pixel AUROC':>11} {'AUPR':>7} {'FPR95':>7} {'case AUROC':>11}"
        + (f" {'vs tumours':>10}" if near else "")
    )
    for method, values in metrics["pixel_ood"].items():
        lines.append(
            f"{method:<16} {values['auroc']:>11.3f} {values['aupr']:>7.3f} {values['fpr95']:>7.3f} "
            f"{metrics['case_ood'][method]['auroc']:>11.3f}" + (f" {near[method]:>10.3f}" if method in near else "")
        )
    for method, reason in metrics.get("skipped_scores", {}).items():
        lines.append(f"{method:<16} skipped: {reason}")
    return "\n".join(lines)
