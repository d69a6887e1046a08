"""Training task: fine-tune the bundle on the datastore's final labels, recalibrate, publish the new model."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import device_list, name_to_device, strtobool

from ..bundle_config import BundleConfig
from ..errors import InvalidInputError
from ..model_store import ModelStore
from ..volume_checks import check_label

__all__ = ["MaxQueryTrainer", "split_cases"]

logger = logging.getLogger(__name__)


def split_cases(cases: list[dict], val_split: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split labelled cases into training and validation lists, reproducibly.

    At least one case goes to each list when there are two or more; a single case is used for both (its
    validation Dice and calibration are then optimistic, which the train stats say).

    Args:
        cases: ``{"image", "label"}`` items.
        val_split: fraction of the cases for validation, in ``[0, 1)``.
        seed: seed of the shuffle.
    """
    cases = sorted(cases, key=lambda c: c["image"])
    if len(cases) < 2:
        return list(cases), list(cases)
    random.Random(seed).shuffle(cases)
    num_val = min(len(cases) - 1, max(1, round(val_split * len(cases))))
    return cases[num_val:], cases[:num_val]


def _first(value: Any) -> Any:
    """The selected value of a MONAI Label option (options given as lists mean "choose one", first by default)."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _case_id(case: dict) -> str:
    name = os.path.basename(case["image"])
    for extension in (".nii.gz", ".nii", ".nrrd"):
        if name.endswith(extension):
            return name[: -len(extension)]
    return name


class MaxQueryTrainer(TrainTask):
    """Fine-tune the MaxQuery bundle (``configs/train.json``, in-process) from the datastore's final labels.

    Steps: (1) keep the labelled images whose label holds only the bundle's inlier classes (background, organ,
    inlier tumour types) -- a label with the suspected-OOD value or any other value marks a case that is not an
    inlier, and inliers are what the model and its OOD thresholds are fitted to; (2) split them into training and
    validation cases; (3) run the bundle trainer starting from the current model file (``pretrained``), keeping the
    checkpoint with the best validation Dice; (4) recalibrate the case and voxel OOD thresholds on the validation
    cases with the bundle's ``OODCalibrationHandler`` (their labels contain inlier classes only, so they are inliers
    by construction); (5) replace the model file and its calibration, each with one atomic rename. The inference
    tasks load the new file on their next request.

    Everything is written to a staging folder next to the model first; a failed run leaves the current model and
    calibration untouched. If calibration fails (e.g. the model segments nothing yet) the new model is published
    without calibration and the old calibration, which belongs to the old model, is removed.

    Args:
        bundle: the bundle configs.
        store: the model file and calibration to replace.
        default_device: device used when the request names none.
        max_epochs: default number of epochs.
        val_split: default fraction of labelled cases used for validation and calibration.
        ood_label_value: the suspected-OOD label value (labels holding it are excluded).
    """

    def __init__(
        self,
        bundle: BundleConfig,
        store: ModelStore,
        default_device: str,
        max_epochs: int = 10,
        val_split: float = 0.2,
        ood_label_value: int = 9,
    ) -> None:
        super().__init__("Fine-tune the MaxQuery model on the final labels and recalibrate its OOD thresholds")
        self.bundle = bundle
        self.store = store
        self.default_device = default_device
        self.max_epochs = max_epochs
        self.val_split = val_split
        self.ood_label_value = ood_label_value
        train_config = bundle.parser("train.json")
        self.learning_rate = float(train_config.get_parsed_content("learning_rate"))
        self.target_fpr = float(train_config.get_parsed_content("calibrate#target_fpr"))

    @property
    def stats_path(self) -> Path:
        """The JSON summary of the last training, next to the model."""
        return self.store.model_path.with_name(f"{self.store.model_path.stem}_train_stats.json")

    def config(self) -> dict[str, Any]:
        """Options shown by MONAI Label clients (lists are choices, the first is the default)."""
        return {
            "device": [self.default_device] + [d for d in device_list() if d != self.default_device],
            "max_epochs": self.max_epochs,
            "val_split": self.val_split,
            "pretrained": True,
            "learning_rate": self.learning_rate,
            "target_fpr": self.target_fpr,
        }

    def stats(self) -> dict[str, Any]:
        """The summary of the last training, if any."""
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def _options(self, request: dict[str, Any]) -> dict[str, Any]:
        options = {key: _first(value) for key, value in {**self.config(), **request}.items()}
        try:
            options["max_epochs"] = int(options["max_epochs"])
            options["val_split"] = float(options["val_split"])
            options["learning_rate"] = float(options["learning_rate"])
            options["target_fpr"] = float(options["target_fpr"])
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"invalid training option: {error}") from error
        if options["max_epochs"] < 1:
            raise InvalidInputError(f"max_epochs must be at least 1, got {options['max_epochs']}.")
        if not 0.0 <= options["val_split"] < 1.0:
            raise InvalidInputError(f"val_split must be in [0, 1), got {options['val_split']}.")
        if not 0.0 < options["target_fpr"] < 1.0:
            raise InvalidInputError(f"target_fpr must be in (0, 1), got {options['target_fpr']}.")
        options["pretrained"] = bool(strtobool(options["pretrained"]))
        options["device"] = name_to_device(options["device"] or self.default_device)
        return options

    def inlier_cases(self, datastore: Datastore) -> tuple[list[dict], dict[str, str]]:
        """The labelled cases usable for training, and the excluded ones with the reason."""
        inlier_values = list(self.bundle.class_names)
        cases, excluded = [], {}
        for item in datastore.datalist():
            case = {"image": item["image"], "label": item["label"]}
            case_id = _case_id(case)
            try:
                check_label(case["label"], case["image"], inlier_values, f"final label of '{case_id}'")
            except InvalidInputError as error:
                excluded[case_id] = f"{error} Only cases labelled with the inlier classes are trained on."
                continue
            cases.append(case)
        return cases, excluded

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train, calibrate and publish; returns the training summary (also saved as the train stats)."""
        options = self._options(request)
        logger.info("MaxQuery training request: %s", options)
        cases, excluded = self.inlier_cases(datastore)
        for reason in excluded.values():
            logger.warning("excluded from training: %s", reason)
        if not cases:
            raise InvalidInputError(
                "no image has a usable final label: save final labels (background, organ, inlier tumour types) first."
                + (f" Excluded: {excluded}" if excluded else "")
            )
        train_cases, val_cases = split_cases(cases, options["val_split"])
        started = time.time()
        self.store.model_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".maxquery-train-", dir=self.store.model_path.parent))
        try:
            summary = self._train_and_publish(options, train_cases, val_cases, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary.update(
            {
                "train_cases": sorted(_case_id(c) for c in train_cases),
                "val_cases": sorted(_case_id(c) for c in val_cases),
                "excluded_cases": excluded,
                "max_epochs": options["max_epochs"],
                "pretrained": options["pretrained"],
                "device": options["device"],
                "duration_s": round(time.time() - started, 1),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
        if len(cases) == 1:
            summary["note"] = "a single labelled case was used for training, validation and calibration."
        self._save_stats(summary)
        return summary

    def _train_and_publish(
        self, options: dict[str, Any], train_cases: list[dict], val_cases: list[dict], staging: Path
    ) -> dict[str, Any]:
        max_epochs = options["max_epochs"]
        overrides = {
            "ckpt_dir": str(staging),
            "output_dir": str(staging / "logs"),
            "class_names": {str(k): v for k, v in self.bundle.class_names.items()},
            "train_datalist": train_cases,
            "val_datalist": val_cases,
            "num_workers": 0,
            "val_interval": min(max_epochs, int(options.get("val_interval") or 5)),
            "train#trainer#max_epochs": max_epochs,
            "learning_rate": options["learning_rate"],
            "calibrate#target_fpr": options["target_fpr"],
            "device": f"$torch.device('{options['device']}')",
        }
        parser = self.bundle.parser("train.json", overrides)
        parser.get_parsed_content("initialize")
        network = parser.get_parsed_content("network")
        start_model = None
        if options["pretrained"] and self.store.model_available():
            network.load_state_dict(self.store.load_state_dict(self.store.model_path, options["device"]))
            start_model = str(self.store.model_path)
        logger.info("training from %s", start_model or "random initialisation")

        parser.get_parsed_content("train#trainer").run()
        new_model = staging / "model.pt"
        if not new_model.is_file():
            raise RuntimeError(f"training finished without saving a checkpoint in {staging} (no validation ran).")
        best = parser.get_parsed_content("validate#evaluator").state.best_metric

        calibration_error = None
        try:
            parser.get_parsed_content("calibrate#evaluator").run()
        except Exception as error:
            calibration_error = f"{type(error).__name__}: {error}"
        new_calibration = staging / "ood_calibration.json"
        if calibration_error is None and not new_calibration.is_file():
            calibration_error = f"calibration wrote no {new_calibration.name}"
        if calibration_error:
            logger.warning("OOD calibration failed, publishing the model uncalibrated: %s", calibration_error)
        calibration = None if calibration_error else json.loads(new_calibration.read_text())
        self.store.publish(new_model, None if calibration_error else new_calibration)
        return {
            "model_path": str(self.store.model_path),
            "model_version": self.store.model_version(),
            "started_from": start_model,
            "best_val_mean_dice": best if isinstance(best, (int, float)) and math.isfinite(best) else None,
            "calibration": (
                {k: calibration[k] for k in ("threshold", "voxel_threshold", "target_fpr") if k in calibration}
                if calibration
                else None
            ),
            "calibration_error": calibration_error,
        }

    def _save_stats(self, summary: dict[str, Any]) -> None:
        tmp = self.stats_path.with_name(f".{self.stats_path.name}.partial")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, self.stats_path)
