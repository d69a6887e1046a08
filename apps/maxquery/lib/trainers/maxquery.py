"""Training task: fine-tune the bundle on the datastore's final labels, recalibrate, publish the new model if better."""

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

import torch
from ignite.engine import Events
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import device_list

from bundle.handlers.naming import strip_image_suffix
from bundle.ood.calibration import MODEL_HASH_KEY, check_model_hash, file_sha256, save_calibration

from ..app_settings import MAX_EPOCHS_LIMIT
from ..bundle_config import BundleConfig
from ..errors import InvalidInputError
from ..model_store import ModelStore
from ..options import (
    check_options,
    parse_bool,
    parse_device,
    parse_float,
    parse_gpus,
    parse_int,
    parse_name,
    parse_text,
)
from ..volume_checks import check_label

__all__ = ["MaxQueryTrainer", "publish_decision", "remove_stale_staging", "split_cases"]

logger = logging.getLogger(__name__)

#: upper bounds of the numeric training options (the config's own default is always allowed)
MAX_LEARNING_RATE = 0.1
MAX_VAL_SPLIT = 0.9
MAX_TARGET_FPR = 0.5
#: prefix of the staging folders of training runs, next to the model
STAGING_PREFIX = ".maxquery-train-"
#: file in a staging folder naming the process that owns it
STAGING_OWNER = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def remove_stale_staging(folder: Path) -> list[str]:
    """Remove the staging folders that a killed training run left in ``folder`` (the model's folder).

    A staging folder is stale when the process named in its ``owner.pid`` is gone, or when it has had no owner file
    for a minute (the file is written right after the folder is made). Folders of running trainings are kept:
    MONAI Label builds the app in every training and scoring process, so this runs while others may be training.

    Returns:
        the names of the folders removed.
    """
    removed = []
    for staging in sorted(Path(folder).glob(STAGING_PREFIX + "*")):
        if not staging.is_dir():
            continue
        try:
            owner = int((staging / STAGING_OWNER).read_text().strip())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _alive(owner):
            continue
        if owner is None and time.time() - staging.stat().st_mtime < 60:
            continue
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging.name)
        logger.warning("removed %s, left by an interrupted training run.", staging)
    return removed


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


def publish_decision(current_score: float | None, new_score: float | None, force: bool) -> tuple[bool, str]:
    """Whether a trained model replaces the served one, and why.

    The new model is published when it is forced, when there is no current model to compare with (or it cannot be
    evaluated), or when its validation score beats the current model's on the same validation cases.

    Args:
        current_score: the served model's validation score (``None``: no usable current model).
        new_score: the best validation score of the trained model (``None``: no finite score).
        force: the caller asked to publish whatever the scores.
    """
    if force:
        return True, "publication forced by the request (force: true)."
    if current_score is None:
        return True, "no current model to compare with."
    if new_score is not None and new_score > current_score:
        return True, f"validation score {new_score:.4f} beats the current model's {current_score:.4f}."
    shown = "undefined" if new_score is None else f"{new_score:.4f}"
    return False, (
        f"not published: the trained model's validation score ({shown}) does not beat the current model's "
        f"({current_score:.4f}) on the same validation cases; the current model is kept (force: true publishes it)."
    )


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class MaxQueryTrainer(TrainTask):
    """Fine-tune the MaxQuery bundle (``configs/train.json``, in-process) from the datastore's final labels.

    Steps: (1) keep the labelled images whose label holds only the bundle's inlier classes (background, organ,
    inlier tumour types) -- a label with the suspected-OOD value or any other value marks a case that is not an
    inlier, and inliers are what the model and its OOD thresholds are fitted to; (2) split them into training and
    validation cases; (3) score the served model on the validation cases with the bundle's validation evaluator;
    (4) run the bundle trainer, starting from the current model file (``pretrained``), keeping the checkpoint with
    the best validation score -- the served model's score is where that search starts, so only an epoch that beats
    it is kept; (5) if an epoch beat it (or ``force`` is set, or there is no usable current model), recalibrate the
    case and voxel OOD thresholds on the validation cases with the bundle's ``OODCalibrationHandler`` (recording the
    new model's sha256), back up the current model and calibration, and replace them, each with one atomic rename.
    The inference tasks load the new file on their next request.

    Everything is written to a staging folder next to the model first; a failed or unpublished run leaves the
    current model and calibration untouched. If calibration fails (e.g. the model segments nothing yet) the new
    model is published without calibration and the old calibration, which belongs to the old model, is moved to
    the backup.

    Request options (all optional; every value is checked, anything else is HTTP 422 naming the option):
    ``device`` (``cpu``, ``cuda``, ``cuda:N``), ``max_epochs`` (1-1000), ``val_interval`` (1-``max_epochs``),
    ``val_split`` ([0, 0.9]), ``pretrained`` and ``force`` (booleans), ``learning_rate`` ((0, 0.1]),
    ``target_fpr`` ((0, 0.5]).

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
        self.default_device = parse_device(default_device, "device")
        self.max_epochs = max_epochs
        self.val_split = val_split
        self.ood_label_value = ood_label_value
        train_config = bundle.parser("train.json")
        self.learning_rate = float(train_config.get_parsed_content("learning_rate"))
        self.target_fpr = float(train_config.get_parsed_content("calibrate#target_fpr"))
        self.val_interval = int(train_config.get_parsed_content("val_interval"))
        self.parsers = {
            "model": parse_name,
            "device": parse_device,
            "gpus": parse_gpus,
            "max_epochs": parse_int(1, MAX_EPOCHS_LIMIT),
            "val_interval": parse_int(1, MAX_EPOCHS_LIMIT),
            "val_split": parse_float(0.0, max(MAX_VAL_SPLIT, val_split)),
            "pretrained": parse_bool,
            "force": parse_bool,
            "learning_rate": parse_float(0.0, max(MAX_LEARNING_RATE, self.learning_rate), low_open=True),
            "target_fpr": parse_float(0.0, max(MAX_TARGET_FPR, self.target_fpr), low_open=True),
            "client_id": parse_text(200),
            # set by MONAI Label's training process (multi-GPU rank); not used by this single-process trainer
            "local_rank": parse_int(0, 1024),
        }

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
            "force": False,
        }

    def stats(self) -> dict[str, Any]:
        """The summary of the last training, if any."""
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def check_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The training options of ``request`` checked and completed with the defaults.

        Called by the server before a training is queued (so a bad request is HTTP 422 at once) and again by the
        training process itself.

        Raises:
            InvalidInputError: an unknown option, or a value of the wrong type or out of its range (names it).
        """
        given = check_options(request, self.parsers, "training")
        options = check_options(self.config(), self.parsers, "training")
        options.update(given)
        options["device"] = options["device"] or self.default_device
        options["val_interval"] = min(options["max_epochs"], given.get("val_interval", self.val_interval))
        return options

    def inlier_cases(self, datastore: Datastore) -> tuple[list[dict], dict[str, str]]:
        """The labelled cases usable for training, and the excluded ones with the reason."""
        inlier_values = list(self.bundle.class_names)
        cases, excluded = [], {}
        for item in datastore.datalist():
            case = {"image": item["image"], "label": item["label"]}
            case_id = strip_image_suffix(case["image"])
            try:
                check_label(case["label"], case["image"], inlier_values, f"final label of '{case_id}'")
            except InvalidInputError as error:
                excluded[case_id] = f"{error} Only cases labelled with the inlier classes are trained on."
                continue
            cases.append(case)
        return cases, excluded

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train, compare, calibrate and publish; returns the training summary (also saved as the train stats)."""
        options = self.check_request(request)
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
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.store.model_path.parent))
        try:
            (staging / STAGING_OWNER).write_text(str(os.getpid()))
            summary = self._train_and_publish(options, train_cases, val_cases, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary.update(
            {
                "train_cases": sorted(strip_image_suffix(c["image"]) for c in train_cases),
                "val_cases": sorted(strip_image_suffix(c["image"]) for c in val_cases),
                "excluded_cases": excluded,
                "max_epochs": options["max_epochs"],
                "learning_rate": options["learning_rate"],
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

    def _current_weights(self, device: torch.device) -> tuple[dict[str, torch.Tensor] | None, str | None]:
        """The served model's weights, or ``None`` and the reason (no model file, or not this network's)."""
        if not self.store.model_available():
            return None, "no current model"
        try:
            return self.store.load_state_dict(self.store.model_path, str(device)), None
        except RuntimeError as error:
            logger.warning("the current model cannot be compared with: %s", error)
            return None, f"the current model cannot be loaded ({error})"

    @staticmethod
    def _key_metric(evaluator: Any) -> float | None:
        """The evaluator's key metric after a run (the validation Dice of the bundle's ``validate#evaluator``)."""
        name = getattr(evaluator.state, "key_metric_name", None)
        return _finite(evaluator.state.metrics.get(name)) if name else None

    def current_score(self, evaluator: Any, network: torch.nn.Module, weights: dict[str, torch.Tensor]) -> float | None:
        """Score the served model on the validation cases with the training's own evaluator.

        The evaluator's checkpoint handler then holds the served model as the best so far, so that training keeps
        only an epoch that beats it. The network's weights are left as they were before.
        """
        initial = {key: value.detach().clone() for key, value in network.state_dict().items()}
        network.load_state_dict(weights)
        evaluator.run()
        network.load_state_dict(initial)
        return self._key_metric(evaluator)

    def _train_and_publish(
        self, options: dict[str, Any], train_cases: list[dict], val_cases: list[dict], staging: Path
    ) -> dict[str, Any]:
        device = torch.device(options["device"])
        overrides = {
            "ckpt_dir": str(staging),
            "output_dir": str(staging / "logs"),
            "class_names": {str(k): v for k, v in self.bundle.class_names.items()},
            "train_datalist": train_cases,
            "val_datalist": val_cases,
            "num_workers": 0,
            "val_interval": options["val_interval"],
            "train#trainer#max_epochs": options["max_epochs"],
            "learning_rate": options["learning_rate"],
            "calibrate#target_fpr": options["target_fpr"],
            # the calibration runs the cascade: the served organ localiser stays as it is
            "localiser_ckpt_path": str(self.store.model_path.with_name("localiser.pt")),
            # a built object, not a config expression: nothing from the request is ever evaluated
            "device": device,
        }
        parser = self.bundle.parser("train.json", overrides)
        parser.get_parsed_content("initialize")
        network = parser.get_parsed_content("network")
        evaluator = parser.get_parsed_content("validate#evaluator")

        weights, no_comparison = self._current_weights(device)
        current = None
        if weights is not None and not options["force"]:
            current = self.current_score(evaluator, network, weights)
            logger.info("current model: validation score %s on %d case(s)", current, len(val_cases))
            if current is None:
                no_comparison = "the current model has no finite validation score"
        if current is not None:
            no_comparison = None
        start_model = None
        if options["pretrained"] and weights is not None:
            network.load_state_dict(weights)
            start_model = self.store.model_path.name
        logger.info("training from %s", start_model or "random initialisation")

        trained_scores: list[float] = []

        def record_score(engine: Any) -> None:
            score = self._key_metric(engine)
            if score is not None:
                trained_scores.append(score)

        evaluator.add_event_handler(Events.COMPLETED, record_score)
        parser.get_parsed_content("train#trainer").run()
        trained_best = max(trained_scores) if trained_scores else None
        publish, reason = publish_decision(current, trained_best, options["force"])
        if no_comparison and not options["force"]:
            reason = f"{no_comparison}: nothing to compare with."
        summary: dict[str, Any] = {
            "published": publish,
            "reason": reason,
            "forced": options["force"],
            "started_from": start_model,
            "current_val_mean_dice": current,
            "best_val_mean_dice": trained_best,
        }
        if not publish:
            logger.warning("training result %s", reason)
            summary.update(self._model_fields())
            summary.update({"calibration": None, "calibration_error": None, "backup": None})
            return summary

        new_model = staging / "model.pt"
        if not new_model.is_file():
            raise RuntimeError("training finished without saving a checkpoint (no validation ran).")
        calibration, calibration_error = self._calibrate(parser, new_model, staging / "ood_calibration.json")
        if calibration_error:
            logger.warning("OOD calibration failed, publishing the model uncalibrated: %s", calibration_error)
        backup = self.store.publish(new_model, None if calibration_error else staging / "ood_calibration.json")
        summary.update(self._model_fields())
        summary.update(
            {
                "backup": backup,
                "calibration": (
                    {k: calibration[k] for k in ("threshold", "voxel_threshold", "target_fpr") if k in calibration}
                    if calibration
                    else None
                ),
                "calibration_error": calibration_error,
            }
        )
        return summary

    def _calibrate(self, parser: Any, new_model: Path, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """Run the bundle's calibration of the staged model; the calibration (with the model's hash) or the error."""
        try:
            parser.get_parsed_content("calibrate#evaluator").run()
            if not path.is_file():
                return None, f"calibration wrote no {path.name}"
            calibration = json.loads(path.read_text())
            if calibration.get(MODEL_HASH_KEY) is None:
                calibration[MODEL_HASH_KEY] = file_sha256(new_model)
                save_calibration(path, calibration)
            check_model_hash(calibration, new_model, path.name)
        except Exception as error:
            return None, f"{type(error).__name__}: {error}"
        return calibration, None

    def _model_fields(self) -> dict[str, Any]:
        return {
            "model_file": self.store.model_path.name,
            "model_version": self.store.model_version(),
            "model_sha256": self.store.model_sha256(),
        }

    def _save_stats(self, summary: dict[str, Any]) -> None:
        tmp = self.stats_path.with_name(f".{self.stats_path.name}.partial")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, self.stats_path)
