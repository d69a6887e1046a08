"""MONAI Label app serving the MaxQuery bundle of this repository.

Start it with ``monailabel start_server --app apps/maxquery --studies DIR [--conf KEY VALUE ...]``. It runs offline:
the bundle (``configs/inference.json``, ``configs/train.json``, ``metadata.json``) is read from the repository
root, two levels above this file, and the model from ``models/model.pt`` unless ``--conf model_path`` says
otherwise. See ``lib/app_settings.py`` for the options.

``--studies http://HOST:PORT/dicom-web`` serves a DICOMweb PACS (e.g. Orthanc) instead of a folder: final labels are
checked like uploads to a folder and stored there as DICOM SEG with their label values (``lib/dicomweb_datastore.py``);
dcmqi comes from its installed wheel, never downloaded.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

from dicomweb_client import DICOMwebClient  # noqa: E402
from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials  # noqa: E402
from dicomweb_client.session_utils import create_session_from_user_pass  # noqa: E402
from lib.app_settings import PREDICTION_TAG, AppSettings  # noqa: E402
from lib.bundle_config import BundleConfig  # noqa: E402
from lib.datastore import ValidatingLocalDatastore  # noqa: E402
from lib.dicomweb_datastore import ValidatingDICOMWebDatastore, expose_dcmqi_tools  # noqa: E402
from lib.errors import ForbiddenError, InvalidInputError, NotFoundError, http_errors  # noqa: E402
from lib.infers import MaxQueryAnomalyMap, MaxQuerySegmentation  # noqa: E402
from lib.model_store import ModelStore  # noqa: E402
from lib.options import (  # noqa: E402
    OptionParser,
    check_options,
    optional,
    parse_bool,
    parse_choice,
    parse_device,
    parse_float,
    parse_gpus,
    parse_int,
    parse_name,
    parse_name_list,
    parse_text,
    shown,
)
from lib.scoring import MaxQueryOODScoring  # noqa: E402
from lib.server_guard import install as install_request_checks  # noqa: E402
from lib.server_guard import is_uploaded_input  # noqa: E402
from lib.strategies import MaxQueryOODStrategy  # noqa: E402
from lib.strategies.maxquery_ood import STRATEGY_OPTIONS  # noqa: E402
from lib.trainers import MaxQueryTrainer, remove_stale_staging  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.datastore.dicom import DICOMwebClientX  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.scoring import ScoringMethod  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402

__all__ = ["BATCH_OPTIONS", "INFER_OPTIONS", "MaxQueryApp"]

logger = logging.getLogger(__name__)

#: bound of the threshold options (anomaly values are far smaller)
ANOMALY_BOUND = 1e9
#: options of an inference request; everything else is refused (HTTP 422)
INFER_OPTIONS: dict[str, OptionParser] = {
    "device": parse_device,
    "ood_threshold": optional(parse_float(-ANOMALY_BOUND, ANOMALY_BOUND)),
    "ood_voxel_threshold": optional(parse_float(-ANOMALY_BOUND, ANOMALY_BOUND)),
    "result_extension": optional(parse_choice([".nii.gz", ".nii", ".nrrd"])),
    "result_dtype": optional(parse_choice(["uint8", "uint16", "int16", "int32", "float32"])),
    "result_compress": parse_bool,
    "save_label": parse_bool,
    "label_tag": parse_choice([PREDICTION_TAG]),
    "logging": parse_choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    "timeout": parse_float(1.0, 86_400.0),
    "client_id": parse_text(200),
}
#: set by MONAI Label or sent by its clients, never read by the app's tasks: accepted and left out
INFER_IGNORED = ("label", "session", "label_info", "largest_cc", "restore_label_idx", "description")
#: options that the ``params`` of an inference request may not set (they name what is read)
INFER_RESERVED = ("image", "model", "label", "session", "file", "session_id")
#: options of a batch inference request
BATCH_OPTIONS: dict[str, OptionParser] = {
    "model": parse_name,
    "images": lambda value, name: (
        parse_choice(["all", "labeled", "unlabeled"])(value, name)
        if isinstance(value, str)
        else parse_name_list()(value, name)
    ),
    "max_batch_size": parse_int(0, 100_000),
    "max_workers": parse_int(0, 64),
    "multi_gpu": parse_bool,
    "gpus": parse_gpus,
    "device": parse_device,
    "save_label": parse_bool,
    "label_tag": parse_choice([PREDICTION_TAG]),
    "logging": parse_choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    "ood_threshold": INFER_OPTIONS["ood_threshold"],
    "ood_voxel_threshold": INFER_OPTIONS["ood_voxel_threshold"],
    "result_extension": INFER_OPTIONS["result_extension"],
    "client_id": INFER_OPTIONS["client_id"],
}
BATCH_ONLY = ("images", "max_batch_size", "max_workers", "multi_gpu", "gpus", "_id", "_image_id", "model")


class MaxQueryApp(MONAILabelApp):
    """Segmentation of the organ and inlier tumours with a suspected-OOD segment, OOD scoring, active learning on
    the OOD score, and fine-tuning from the annotators' labels.

    Tasks: infer ``maxquery`` (label map + case OOD score/flag) and ``maxquery_ood_map`` (float anomaly map);
    scoring ``maxquery_ood``; strategies ``maxquery_ood`` and ``random``; trainer ``maxquery``.

    Every request option is checked (type and range) before use; an image is a datastore image id (or an upload);
    inference never writes ``final`` labels; training publishes only a model that beats the current one, keeping a
    backup. See the README's Security section.

    Args:
        app_dir: this folder.
        studies: the studies folder (or a DICOMweb URL).
        conf: ``--conf`` options (see :class:`lib.app_settings.AppSettings`).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.options = AppSettings.from_conf(conf or {}, BUNDLE_ROOT)
        self.bundle = BundleConfig(
            BUNDLE_ROOT,
            self.options.bundle_overrides,
            # checkpoints named by the inference config (e.g. a cascade's organ localiser) sit next to the model
            inference_defaults={
                "ckpt_dir": str(self.options.model_path.parent),
                "device": torch.device(self.options.device),
            },
        )
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
            keep_backups=self.options.keep_backups,
        )
        if self.options.model_path.parent.is_dir():
            remove_stale_staging(self.options.model_path.parent)
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
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            logger.warning(
                "authentication is off (MONAI_LABEL_AUTH_ENABLE=false): every client is an administrator. Serve on "
                "127.0.0.1 only, or turn authentication on before exposing the server (README, Security)."
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
            # no app-level labels: MONAI Label then lists the models' label names in value order, the list OHIF's
            # panel appends to (a dict breaks it: "all_labels.push is not a function"); each model keeps its own
            # name -> value dict for mapping segment values
            labels=None,
        )
        server = sys.modules.get("monailabel.app")
        if server is not None and hasattr(server, "app"):
            install_request_checks(server.app, self.options.infer_concurrency)

    def init_datastore(self) -> Datastore:
        """A validating local datastore for a studies folder; a validating DICOMweb datastore for an http(s) URL."""
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/").strip()
            return self.init_remote_datastore()
        return ValidatingLocalDatastore(
            self.studies,
            label_values=[*self.bundle.class_names, self.options.ood_label_value],
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_remote_datastore(self) -> Datastore:
        """A :class:`~lib.dicomweb_datastore.ValidatingDICOMWebDatastore`, built as MONAI Label builds its DICOMweb
        datastore (client, prefixes, credentials, cache path, fetch by frame, search filter), without downloading
        anything; XNAT and DSA stay MONAI Label's."""
        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        logger.info("Using DICOMweb: %s", self.studies)
        if "googleapis.com" in self.studies:
            client = DICOMwebClient(url=self.studies, session=create_session_from_gcp_credentials())
        else:
            session = None
            if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
                session = create_session_from_user_pass(
                    settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
                )
            client = DICOMwebClientX(
                url=self.studies,
                session=session,
                qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
            )
        self._download_dcmqi_tools()
        cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return ValidatingDICOMWebDatastore(
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            label_names=self.segmentation.labels,
            cache_path=cache_path or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
            software_version=self.bundle.version,
        )

    def _download_dcmqi_tools(self) -> None:
        """Never download: use the dcmqi wheel's binaries (:func:`~lib.dicomweb_datastore.expose_dcmqi_tools`).

        Raises:
            RuntimeError: dcmqi is not installed; the message names ``pip install dcmqi``.
        """
        folder = expose_dcmqi_tools()
        logger.info("dcmqi tools from the installed wheel: %s", folder)

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
        """MONAI Label app info plus the model file, its hash, the OOD thresholds in use and the backups.

        File names only: no server path is shown.
        """
        info = super().info()
        info["maxquery"] = {
            **self.store.summary(),
            "ood_label_value": self.options.ood_label_value,
            "save_predictions": self.options.save_predictions,
            "prediction_tag": PREDICTION_TAG,
        }
        if self.options.activelearning_strategy:
            # MONAI Label merges this into every active-learning request, over the strategy of its URL
            info["config"] = {"activelearning": {"strategy": self.options.activelearning_strategy}}
        for stats in info.get("train_stats", {}).values():
            for key in ("model_path", "started_from"):
                if isinstance(stats.get(key), str):
                    stats[key] = os.path.basename(stats[key])
        return info

    # -- request checks -----------------------------------------------------------------------------------------

    @staticmethod
    def _require(name: object, available: dict[str, Any], what: str) -> None:
        if not isinstance(name, str) or name not in available:
            raise NotFoundError(f"unknown {what} '{shown(name)}'; available: {sorted(available)}.")

    @staticmethod
    def image_uri(image: object, datastore: Datastore) -> str:
        """The file of a datastore image id; anything else (a path, an unknown id) is HTTP 404, same message."""
        if isinstance(image, str) and image and image in set(datastore.list_images()):
            uri = datastore.get_image_uri(image)
            if uri:
                return uri
        raise NotFoundError(f"image '{shown(image)}' not found in the datastore.")

    def check_infer_call(self, model: str, image: str, params: dict[str, Any], uploaded: bool) -> None:
        """Check an inference request as it arrives (before MONAI Label reads the upload or the image).

        Raises:
            HTTPException: unknown model or image (404), ``params`` setting a reserved option or holding a bad
                value (422), saving a prediction on a server that does not allow it (403).
        """
        with http_errors(f"inference with model '{shown(model)}'"):
            self._require(model, self._infers, "model")
            for key in INFER_RESERVED:
                if key in params:
                    raise InvalidInputError(
                        f"params may not set '{key}': name a datastore image with the 'image' query parameter or "
                        "upload the image as 'file'."
                    )
            options = check_options(params, INFER_OPTIONS, "inference", dropped=INFER_IGNORED)
            self._check_save_label(options, uploaded)
            if not uploaded:
                self.image_uri(image, self.datastore())

    def _check_save_label(self, options: dict[str, Any], uploaded: bool) -> bool:
        if not options.get("save_label", False):
            return False
        if not self.options.save_predictions:
            raise ForbiddenError(
                "save_label: this server does not keep predictions (start it with --conf save_predictions true to "
                f"keep them under the label tag '{PREDICTION_TAG}'). Final labels are saved with PUT /datastore/label."
            )
        if uploaded:
            raise InvalidInputError("save_label: only the prediction of a datastore image can be kept.")
        return True

    def check_background_request(self, kind: str, name: str | None, params: dict[str, Any]) -> None:
        """Check a training, scoring or batch-inference request before MONAI Label queues it.

        Args:
            kind: ``"train"``, ``"scoring"`` or ``"batch_infer"``.
            name: the trainer, scoring method or model (``None``: every one, with per-name params).
            params: the request body.

        Raises:
            HTTPException: unknown name (404), bad option (422), or a request the server does not allow (403).
        """
        tasks = {"train": self._trainers, "scoring": self._scoring_methods, "batch_infer": self._infers}[kind]
        what = {"train": "trainer", "scoring": "scoring method", "batch_infer": "model"}[kind]
        with http_errors(f"{kind} request"):
            if not isinstance(params, dict):
                raise InvalidInputError(f"{kind} options must be a JSON object.")
            names = [name] if name is not None else list(tasks)
            for task_name in names:
                self._require(task_name, tasks, what)
                request = self._merged_request(params, tasks, task_name)
                if kind == "train":
                    self._trainers[task_name].check_request(request)
                elif kind == "scoring":
                    self._scoring_methods[task_name].check_request(request, self.datastore())
                else:
                    self.check_batch_request(request)

    @staticmethod
    def _merged_request(params: dict[str, Any], tasks: dict[str, Any], name: str) -> dict[str, Any]:
        """The options MONAI Label gives task ``name``: the body, with per-task entries (``{name: {...}}``) merged."""
        own = params.get(name)
        if own is not None and not isinstance(own, dict):
            raise InvalidInputError(f"options for '{name}' must be a JSON object.")
        request = {key: value for key, value in params.items() if key not in tasks}
        request.update(own or {})
        return request

    def check_batch_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The checked options of a batch inference (allowed only when the server keeps predictions)."""
        if not self.options.save_predictions:
            raise ForbiddenError(
                "batch inference keeps every prediction in the datastore, and this server does not keep predictions "
                "(start it with --conf save_predictions true)."
            )
        options = check_options(request, BATCH_OPTIONS, "batch inference")
        if options.get("save_label") is False:
            raise InvalidInputError("save_label: batch inference always keeps its predictions; it cannot be false.")
        return options

    # -- tasks ----------------------------------------------------------------------------------------------------

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run an infer task on a datastore image (or an upload).

        Unknown model, unknown image or a path instead of an image id -> 404; bad option or unusable image -> 422;
        saving a prediction when the server does not keep predictions -> 403; no model file -> 503. A kept
        prediction goes under the label tag ``maxquery_prediction``, never ``final``.
        """
        model = request.get("model")
        with http_errors(f"inference with model '{shown(model)}'"):
            self._require(model, self._infers, "model")
            datastore = datastore or self.datastore()
            given = {key: value for key, value in request.items() if key not in ("model", "image")}
            options = check_options(given, INFER_OPTIONS, "inference", dropped=INFER_IGNORED)
            image = request.get("image")
            uploaded = is_uploaded_input()
            save = self._check_save_label(options, uploaded)
            options.pop("save_label", None)
            options.pop("label_tag", None)
            if uploaded:
                if not isinstance(image, str):
                    raise InvalidInputError("the uploaded image could not be read.")
                uri = image
            else:
                uri = self.image_uri(image, datastore)
            # MONAI Label treats an existing path as an input file: it then neither looks the image up nor saves.
            result = super().infer({**options, "model": model, "image": uri}, datastore)
            if save and result.get("file"):
                label_id = datastore.save_label(
                    image, result["file"], PREDICTION_TAG, {"model": model, "params": result.get("params")}
                )
                result.update({"label": label_id, "tag": PREDICTION_TAG})
            return result

    def infer_wsi(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Whole-slide inference is not for CT volumes: refused (HTTP 422)."""
        with http_errors("whole-slide inference"):
            raise InvalidInputError("whole-slide inference is not supported by this app; use POST /infer/{model}.")

    def batch_infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Infer on many datastore images, keeping each prediction under the label tag ``maxquery_prediction``."""
        with http_errors("batch inference"):
            self._require(request.get("model"), self._infers, "model")
            options = self.check_batch_request(request)
            options["label_tag"] = PREDICTION_TAG
            options["multi_gpu"] = bool(options.get("multi_gpu", False)) and torch.cuda.device_count() > 0
            options.setdefault("device", self.options.device)

            def infer_one(single: dict[str, Any], store: Datastore | None = None) -> dict[str, Any]:
                kept = {key: value for key, value in single.items() if key not in BATCH_ONLY}
                kept.update({"model": single["model"], "save_label": True})
                return self.infer(kept, store)

            return self._batch_infer(options, datastore or self.datastore(), infer_one)

    def scoring(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Run a scoring method (unknown method or image -> 404, bad option -> 422, no model file -> 503)."""
        method = request.get("method")
        with http_errors(f"scoring with method '{shown(method)}'"):
            self._require(method, self._scoring_methods, "scoring method")
            merged = self._merged_request(request, self._scoring_methods, method)
            return super().scoring(merged, datastore)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run an active-learning strategy (unknown strategy -> 404, bad option -> 422)."""
        strategy = request.get("strategy") or "random"
        with http_errors(f"active learning with strategy '{shown(strategy)}'"):
            self._require(strategy, self._strategies, "strategy")
            check_options(request, STRATEGY_OPTIONS, "active learning")
            return super().next_sample(request)

    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run a trainer (unknown model -> 404, no usable labels or bad options -> 422)."""
        model = request.get("model")
        with http_errors(f"training of model '{shown(model)}'"):
            self._require(model, self._trainers, "trainer")
            merged = self._merged_request(request, self._trainers, model)
            self._trainers[model].check_request(merged)
            return super().train(merged)

    def async_scoring(self, method: str | None, params: dict | None = None) -> dict[str, Any]:
        """Scoring triggered by MONAI Label (start-up, after training/sampling); skipped without a model file."""
        if not self.store.model_available():
            logger.info("no model file at %s: automatic OOD scoring skipped.", self.store.model_path)
            return {}
        return super().async_scoring(method, params)
