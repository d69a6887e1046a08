"""Active-learning strategy: the unlabelled image the model finds most out-of-distribution."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..infers.maxquery import number_or_none
from ..options import OptionParser, check_options, parse_bool, parse_device, parse_name, parse_name_list, parse_text
from ..scoring.maxquery_ood import SCORE_KEY, MaxQueryOODScoring

__all__ = ["STRATEGY_OPTIONS", "MaxQueryOODStrategy"]

#: options of an active-learning request (for every strategy of the app)
STRATEGY_OPTIONS: dict[str, OptionParser] = {
    "strategy": parse_name,
    "label_tag": parse_name,
    "labels": parse_name_list(1000),
    "compute_missing": parse_bool,
    "device": parse_device,
    "client_id": parse_text(200),
}

logger = logging.getLogger(__name__)


class MaxQueryOODStrategy(Strategy):
    """Pick the unlabelled image with the highest stored case OOD score (``maxquery_ood_score``).

    Scores come from the ``maxquery_ood`` scoring method (run it first, or let MONAI Label run it after each
    training). Images without a score rank after every scored image; ties, and the unscored images among
    themselves, are ordered by image id, so the choice is deterministic. With ``"compute_missing": true`` in the
    request the missing scores are computed first (one model run per unscored image, in the request).

    Args:
        scoring: the scoring method used for ``compute_missing``.
    """

    def __init__(self, scoring: MaxQueryOODScoring) -> None:
        super().__init__("Unlabelled image with the highest MaxQuery case OOD score (unscored images last)")
        self.scoring = scoring

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        """The chosen image as ``{"id": ..., "maxquery_ood_score": ...}``, or ``None`` if all are labelled."""
        request = check_options(request, STRATEGY_OPTIONS, "active learning")
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        scores = {image_id: number_or_none(datastore.get_image_info(image_id).get(SCORE_KEY)) for image_id in images}
        missing = [image_id for image_id, score in scores.items() if score is None]
        if missing and request.get("compute_missing", False):
            self.scoring.score_images(missing, datastore, request.get("device"))
            for image_id in missing:
                scores[image_id] = number_or_none(datastore.get_image_info(image_id).get(SCORE_KEY))

        def rank(image_id: str) -> tuple[int, float, str]:
            score = scores[image_id]
            return (0, -score, image_id) if score is not None else (1, 0.0, image_id)

        chosen = min(images, key=rank)
        logger.info("maxquery_ood strategy: %s (score %s) among %d unlabelled", chosen, scores[chosen], len(images))
        return {"id": chosen, SCORE_KEY: scores[chosen], "scored": scores[chosen] is not None}
