"""Suspected-OOD marking: the predicted organ/lesion voxels whose anomaly exceeds the calibrated voxel threshold.

Command-line inference (``configs/inference.json``) and the MONAI Label app apply the same transform with the
thresholds of :func:`bundle.ood.calibration.calibrated_thresholds`, so both give the same label map.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["MarkSuspectedOODd"]


class MarkSuspectedOODd(MapTransform):
    """Relabel predicted organ/lesion voxels whose MaxQuery anomaly exceeds a threshold as "suspected OOD".

    Only voxels the model assigns to a foreground class (organ or an inlier tumour type) are considered: the
    anomaly map is meaningful where the model claims something is there, and background voxels far from the organ
    are not candidates for an unseen tumour type.

    Args:
        keys: keys of label maps (integer class per voxel, channel first), modified in place of a copy.
        anomaly_key: key of the anomaly map on the same grid.
        threshold: anomaly value above which a voxel is marked; ``None`` marks nothing.
        ood_value: the label value written for suspected OOD voxels.
        count_key: where to store the number of marked voxels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        anomaly_key: str,
        threshold: float | None,
        ood_value: int,
        count_key: str = "ood_voxels",
    ) -> None:
        super().__init__(keys)
        self.anomaly_key = anomaly_key
        self.threshold = threshold
        self.ood_value = ood_value
        self.count_key = count_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        anomaly = torch.as_tensor(d[self.anomaly_key])
        for key in self.key_iterator(d):
            label = d[key]
            if label.shape != anomaly.shape:
                raise ValueError(
                    f"label '{key}' of shape {tuple(label.shape)} and anomaly map '{self.anomaly_key}' of shape "
                    f"{tuple(anomaly.shape)} are not on the same grid."
                )
            if self.threshold is None:
                d[self.count_key] = 0
                continue
            suspected = (label > 0) & (anomaly.to(label.device) > self.threshold)
            label = label.clone()
            label[suspected] = self.ood_value
            d[key] = label
            d[self.count_key] = int(suspected.sum())
        return d
