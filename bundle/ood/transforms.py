"""MONAI dictionary transforms for voxel-wise OOD scores on per-sample, channel-first predictions."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .scores import QUERY_INPUT_TYPES, SCORES, ood_score

__all__ = ["OODScored", "SplitPredictiond"]


class SplitPredictiond(MapTransform):
    """Split the mask transformer's evaluation output ``cat[Z, A]`` ``(K+1, *spatial)`` into two keys.

    Args:
        keys: key(s) of the combined prediction.
        num_classes: number ``K`` of inlier classes.
        prob_key: where to store ``Z`` (``K`` channels); ``None`` overwrites the input key. With several input
            keys use a sequence of the same length.
        ood_key: where to store the anomaly map ``A`` (1 channel); same conventions.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        prob_key: str | Sequence[str] | None = None,
        ood_key: str | Sequence[str] = "ood",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.prob_keys = _per_key(prob_key, self.keys, "prob_key")
        self.ood_keys = _per_key(ood_key, self.keys, "ood_key")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Apply to one sample dictionary."""
        d = dict(data)
        for key, prob_key, ood_key in self.key_iterator(d, self.prob_keys, self.ood_keys):
            x = d[key]
            if x.shape[0] != self.num_classes + 1:
                raise ValueError(
                    f"'{key}' has {x.shape[0]} channels; expected K + 1 = {self.num_classes + 1} (probabilities + "
                    "anomaly map)."
                )
            d[ood_key] = x[self.num_classes :]
            d[prob_key if prob_key is not None else key] = x[: self.num_classes]
        return d


class OODScored(MapTransform):
    """Compute a voxel-wise OOD score map (higher = more OOD) from a channel-first prediction ``(C, *spatial)``.

    The result is a one-channel ``(1, *spatial)`` tensor (a MetaTensor with the input's meta data when the input is
    one), stored under ``output_key``.

    Args:
        keys: key(s) of the input prediction.
        method: a name in :data:`bundle.ood.scores.SCORES`, e.g. ``"maxquery"``, ``"msp"``, ``"max_logit"``,
            ``"energy"``, ``"entropy"`` or ``"rba"``.
        input_type: what the input is (see :func:`bundle.ood.scores.ood_score`): ``"probabilities"`` or
            ``"logits"`` for scores of class outputs, ``"affinities"`` or ``"anomaly"`` for scores of query outputs;
            ``None`` picks ``"probabilities"`` for a class score and the consumed output for a query score
            (``"anomaly"`` for ``maxquery``).
        output_key: where to store the score; ``None`` overwrites the input key; a sequence gives one per key.
        num_classes: if given, the input is the mask transformer's combined output ``cat[Z, A]``: scores of class
            outputs use the first ``num_classes`` channels, scores of query outputs (``maxquery``) channel
            ``num_classes``.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        method: str,
        input_type: str | None = None,
        output_key: str | Sequence[str] | None = None,
        num_classes: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if method not in SCORES:
            raise ValueError(f"unknown OOD score {method!r}; choose from {sorted(SCORES)}.")
        self.query_score = SCORES[method].consumes in QUERY_INPUT_TYPES
        if input_type is None:
            input_type = SCORES[method].consumes if self.query_score else "probabilities"
        self.method = method
        self.input_type = input_type
        self.num_classes = num_classes
        self.output_keys = _per_key(output_key, self.keys, "output_key")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Apply to one sample dictionary."""
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            x = d[key]
            if not isinstance(x, torch.Tensor):
                x = torch.as_tensor(x)
            if self.num_classes is not None:
                if x.shape[0] != self.num_classes + 1:
                    raise ValueError(
                        f"'{key}' has {x.shape[0]} channels; with num_classes={self.num_classes} the input must be "
                        f"cat[Z, A] with {self.num_classes + 1} channels."
                    )
                x = x[self.num_classes :] if self.query_score else x[: self.num_classes]
            d[out_key if out_key is not None else key] = ood_score(x, self.method, dim=0, input_type=self.input_type)
        return d


def _per_key(value: str | Sequence[str] | None, keys: tuple, name: str) -> list[str | None]:
    if value is None or isinstance(value, str):
        if isinstance(value, str) and len(keys) > 1:
            raise ValueError(f"{name}={value!r} is a single key but there are {len(keys)} input keys; pass a list.")
        return [value] * len(keys)
    value = list(value)
    if len(value) != len(keys):
        raise ValueError(f"{name} has {len(value)} entries for {len(keys)} input keys.")
    return value
