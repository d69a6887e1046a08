"""Scoring method: the case-level MaxQuery OOD score of every image, stored in the datastore's image info."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ..errors import NotFoundError
from ..infers.maxquery import MaxQueryInferTask
from ..options import (
    check_options,
    parse_bool,
    parse_device,
    parse_gpus,
    parse_name,
    parse_name_list,
    parse_text,
    shown,
)

__all__ = ["FLAG_KEY", "MODEL_KEY", "SCORE_KEY", "MaxQueryOODScoring"]

logger = logging.getLogger(__name__)

SCORE_KEY = "maxquery_ood_score"
FLAG_KEY = "maxquery_ood_flag"
MODEL_KEY = "maxquery_ood_model_version"
TIME_KEY = "maxquery_ood_ts"


class MaxQueryOODScoring(ScoringMethod):
    """Run the model on each datastore image and store its case OOD score and flag in the image info.

    Stored keys: ``maxquery_ood_score`` (``None`` when nothing is segmented), ``maxquery_ood_flag`` (score above the
    calibrated case threshold; ``None`` without calibration), ``maxquery_ood_model_version`` (the model file the
    score comes from) and ``maxquery_ood_ts``. Images already scored by the current model file are skipped unless
    the request says ``"force": true``; ``"images": [...]`` limits the run to some image ids of the datastore;
    ``"device"`` is ``cpu``, ``cuda`` or ``cuda:N``. Any other option is refused.

    Args:
        task: the inference task whose pipeline computes the score.
        default_device: device used when the request names none.
    """

    def __init__(self, task: MaxQueryInferTask, default_device: str) -> None:
        super().__init__("MaxQuery case OOD score (mean of the top anomaly values in the predicted organ/lesions)")
        self.task = task
        self.default_device = parse_device(default_device, "device")
        self.parsers = {
            "method": parse_name,
            "images": parse_name_list(),
            "device": parse_device,
            "force": parse_bool,
            "gpus": parse_gpus,
            "client_id": parse_text(200),
        }

    def check_request(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """The checked options of a scoring request (``images`` must name datastore images).

        Raises:
            InvalidInputError: an unknown option or a bad value (HTTP 422).
            NotFoundError: an image id that is not in the datastore (HTTP 404).
        """
        options = check_options(request, self.parsers, "scoring")
        if options.get("images"):
            known = set(datastore.list_images())
            unknown = [image_id for image_id in options["images"] if image_id not in known]
            if unknown:
                raise NotFoundError(f"image '{shown(unknown[0])}' not found in the datastore.")
        return options

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Score the requested (default: all) images; returns counts and per-image failures."""
        options = self.check_request(request, datastore)
        images = options.get("images") or datastore.list_images()
        device = options.get("device") or self.default_device
        return self.score_images(images, datastore, device, force=options.get("force", False))

    def score_images(
        self, image_ids: Iterable[str], datastore: Datastore, device: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Score ``image_ids`` (in sorted order) and store the results; an image that fails is reported, not fatal.

        Raises:
            ModelNotFoundError: there is no model file.
        """
        store = self.task.store
        store.require_model()
        device = parse_device(device or self.default_device, "device")
        version = store.model_version()
        case_threshold = store.thresholds().case_threshold
        scored: dict[str, float | None] = {}
        skipped, failed = [], {}
        known = set(datastore.list_images())
        for image_id in sorted(image_ids):
            if image_id not in known:
                failed[image_id] = "image not found in the datastore"
                continue
            info = datastore.get_image_info(image_id)
            if not force and info.get(MODEL_KEY) == version and SCORE_KEY in info:
                skipped.append(image_id)
                continue
            uri = datastore.get_image_uri(image_id)
            if not uri:
                failed[image_id] = "image not found in the datastore"
                continue
            try:
                score = self.task.case_score(uri, device)
            except Exception as error:
                logger.warning("OOD scoring of %s failed: %s", image_id, error)
                failed[image_id] = f"{type(error).__name__}: {error}"
                continue
            flag = None if score is None or case_threshold is None else bool(score > case_threshold)
            datastore.update_image_info(
                image_id, {SCORE_KEY: score, FLAG_KEY: flag, MODEL_KEY: version, TIME_KEY: int(time.time())}
            )
            scored[image_id] = score
            logger.info("OOD score of %s: %s (flag: %s)", image_id, score, flag)
        return {
            "scored": scored,
            "skipped": skipped,
            "failed": failed,
            "model_version": version,
            "ood_threshold": case_threshold,
        }
