"""MONAI Label app serving the MaxQuery bundle of this repository.

Start it with ``monailabel start_server --app apps/maxquery --studies DIR [--conf KEY VALUE ...]``. It runs offline:
the bundle (``configs/inference.json``, ``configs/train.json``, ``metadata.json``) is read from the repository
root, two levels above this file, and the model from ``models/model.pt`` unless ``--conf model_path`` says
otherwise. See ``lib/app_settings.py`` for the options.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

from lib.app_settings import AppSettings  # noqa: E402
from lib.bundle_config import BundleConfig  # noqa: E402
from lib.datastore import ValidatingLocalDatastore  # noqa: E402
from lib.errors import NotFoundError, http_errors  # noqa: E402
from lib.infers import MaxQueryAnomalyMap, MaxQuerySegmentation  # noqa: E402
from lib.model_store import ModelStore  # noqa: E402
from lib.scoring import MaxQueryOODScoring  # noqa: E402
from lib.strategies import MaxQueryOODStrategy  # noqa: E402
from lib.trainers import MaxQueryTrainer  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.scoring import ScoringMethod  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402

logger = logging.getLogger(__name__)


class MaxQueryApp(MONAILabelApp):
    """Segmentation of the organ and inlier tumours with a suspected-OOD segment, OOD scoring, active learning on
    the OOD score, and fine-tuning from the annotators' labels.

    Tasks: infer ``maxquery`` (label map + case OOD score/flag) and ``maxquery_ood_map`` (float anomaly map);
    scoring ``maxquery_ood``; strategies ``maxquery_ood`` and ``random``; trainer ``maxquery``.

    Args:
        app_dir: this folder.
        studies: the studies folder (or a DICOMweb URL).
        conf: ``--conf`` options (see :class:`lib.app_settings.AppSettings`).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.options = AppSettings.from_conf(conf or {}, BUNDLE_ROOT)
        self.bundle = BundleConfig(BUNDLE_ROOT, self.options.bundle_overrides)
        if self.options.ood_label_value in self.bundle.class_names:
            raise ValueError(
                f"--conf ood_label_value {self.options.ood_label_value} is one of the bundle's classes "
                f"{self.bundle.class_names}; choose another value."
            )
        self.store = ModelStore(
            self.bundle,
            self.options.model_path,
            self.options.calibration_path,
            case_threshold=self.options.ood_threshold,
            voxel_threshold=self.options.ood_voxel_threshold,
        )
        task_args = (self.bundle, self.store, self.options.ood_label_value, self.options.device)
        self.segmentation = MaxQuerySegmentation(*task_args)
        self.anomaly_map = MaxQueryAnomalyMap(*task_args)
        self.ood_scoring = MaxQueryOODScoring(self.segmentation, self.options.device)
        if not self.store.model_available():
            logger.warning(
                "model file not found: %s; inference and scoring answer HTTP 503 until a model is trained "
                "(POST /train/maxquery) or --conf model_path points to one.",
                self.store.model_path,
            )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf or {},
            name="MaxQuery",
            description=(
                "CT organ and tumour segmentation with a mask transformer; MaxQuery flags and localises tumour "
                "types the model was not trained on (out-of-distribution)."
            ),
            version=self.bundle.version,
            labels=self.segmentation.labels,
        )

    def init_datastore(self) -> Datastore:
        """A validating local datastore for a studies folder; MONAI Label's own datastores for remote URLs."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return ValidatingLocalDatastore(
            self.studies,
            label_values=[*self.bundle.class_names, self.options.ood_label_value],
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {"maxquery": self.segmentation, "maxquery_ood_map": self.anomaly_map}

    def init_trainers(self) -> dict[str, TrainTask]:
        trainer = MaxQueryTrainer(
            self.bundle,
            self.store,
            self.options.device,
            max_epochs=self.options.max_epochs,
            val_split=self.options.val_split,
            ood_label_value=self.options.ood_label_value,
        )
        return {"maxquery": trainer}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"maxquery_ood": MaxQueryOODStrategy(self.ood_scoring), "random": Random()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {"maxquery_ood": self.ood_scoring}

    def info(self) -> dict[str, Any]:
        """MONAI Label app info plus the model file and the OOD thresholds in use."""
        info = super().info()
        thresholds = self.store.thresholds()
        info["maxquery"] = {
            "model_path": str(self.store.model_path),
            "model_available": self.store.model_available(),
            "calibration_path": str(self.store.calibration_path),
            "ood_threshold": thresholds.case_threshold,
            "ood_voxel_threshold": thresholds.voxel_threshold,
            "ood_thresholds_source": thresholds.source,
            "ood_label_value": self.options.ood_label_value,
            "bundle_root": str(self.bundle.root),
        }
        return info

    @staticmethod
    def _require(name: str | None, available: dict[str, Any], what: str) -> None:
        if name not in available:
            raise NotFoundError(f"unknown {what} '{name}'; available: {sorted(available)}.")

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run an infer task; unknown model or image -> 404, unusable image -> 422, no model file -> 503."""
        model = request.get("model")
        with http_errors(f"inference with model '{model}'"):
            self._require(model, self._infers, "model")
            image = request.get("image")
            datastore = datastore or self.datastore()
            if isinstance(image, str) and not os.path.exists(image) and not datastore.get_image_uri(image):
                raise NotFoundError(f"image '{image}' not found in the datastore.")
            return super().infer(request, datastore)

    def scoring(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run a scoring method (unknown method -> 404, no model file -> 503)."""
        method = request.get("method")
        with http_errors(f"scoring with method '{method}'"):
            self._require(method, self._scoring_methods, "scoring method")
            return super().scoring(request, datastore)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run an active-learning strategy (unknown strategy -> 404)."""
        strategy = request.get("strategy") or "random"
        with http_errors(f"active learning with strategy '{strategy}'"):
            self._require(strategy, self._strategies, "strategy")
            return super().next_sample(request)

    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run a trainer (unknown model -> 404, no usable labels or bad options -> 422)."""
        model = request.get("model")
        with http_errors(f"training of model '{model}'"):
            self._require(model, self._trainers, "trainer")
            return super().train(request)

    def async_scoring(self, method: str | None, params: dict | None = None) -> dict[str, Any]:
        """Scoring triggered by MONAI Label (start-up, after training/sampling); skipped without a model file."""
        if not self.store.model_available():
            logger.info("no model file at %s: automatic OOD scoring skipped.", self.store.model_path)
            return {}
        return super().async_scoring(method, params)
