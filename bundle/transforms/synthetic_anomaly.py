"""Synthetic anomalies for outlier exposure: foreign tissue blended into the organ of a training patch.

MaxQuery flags a voxel whose embedding lies near no inlier cluster centre, but a network trained on inlier labels
only has no reason to keep unusual tissue away from the centres: the segmentation and QD losses act on
``M = softmax_n(R)``, which ignores how close the nearest centre is. Outlier exposure (Hendrycks et al., ICLR 2019)
shows the network examples of "not any inlier class". Lesion types the model has never seen are by definition not
available, so the examples are made from the training image itself, as in foreign patch interpolation (Tan et al.,
MOOD 2020) and the pasted anomalies of PEBAL and Mask2Anomaly: an irregular blob inside the organ is replaced by
tissue cut from elsewhere in the same patch (fat, vessel, bowel wall, bone, organ), with its intensity rescaled
and shifted to sit around the organ's own level, so that it is foreign by structure rather than by brightness
alone. Nothing here knows the phantom's lesion vocabulary or any OOD type.

The blob's voxels get the label ``anomaly_label`` (outside the inlier classes), which
:class:`~bundle.losses.MaxQueryCriterion` reads as "no inlier class": left out of the segmentation and QD losses,
pushed away from every cluster centre by the MaxQuery margin loss.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection

from .anomaly_synthesis import SyntheticAnomalyTransform

__all__ = ["RandForeignTissueAnomalyd"]


class RandForeignTissueAnomalyd(SyntheticAnomalyTransform):
    """Blend an irregular blob of foreign tissue into the organ of a (patch, label) pair and label it.

    With probability ``prob``, a centre is drawn among the organ voxels (label ``organ_label``). The blob is an
    ellipsoid of radius ``radius_mm`` (per axis ``spacing`` apart) whose outline is perturbed by a smooth random
    field. Its content is the image shifted by a random offset of at least the blob's radius (other tissue of the
    same patch), remapped as ``organ_level + shift + scale * (tissue - tissue_mean)``, and blended in with a soft
    edge and opacity ``opacity``. Blob voxels that were organ get ``anomaly_label``; inlier tumour voxels are left
    as they are (the blob is blended only into organ voxels).

    Args:
        keys: the image key(s) to paint (channel-first, windowed intensities).
        label_key: the label map key (channel-first index map).
        organ_label: label value of the organ that hosts the blob.
        anomaly_label: label value written on the blob (must not be an inlier class).
        prob: probability of painting a blob.
        spacing: voxel spacing of the patch in mm (the training ``pixdim``).
        radius_mm: range of the blob's radius in mm.
        intensity_scale: range of the contrast factor applied to the foreign tissue.
        intensity_shift: range of the offset from the organ's level, in image units (0.1 is 50 HU with the
            default [-200, 300] window).
        opacity: range of the blend opacity at the blob's centre.
        irregularity: amplitude of the outline perturbation (0 = ellipsoid).
        min_organ_voxels: patches with fewer organ voxels are left unchanged.
        allow_missing_keys: do not raise on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        organ_label: int = 1,
        anomaly_label: int = 255,
        prob: float = 0.5,
        spacing: Sequence[float] = (2.0, 2.0, 3.0),
        radius_mm: Sequence[float] = (5.0, 15.0),
        intensity_scale: Sequence[float] = (0.5, 2.0),
        intensity_shift: Sequence[float] = (-0.12, 0.12),
        opacity: Sequence[float] = (0.6, 1.0),
        irregularity: float = 0.3,
        min_organ_voxels: int = 50,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_key, anomaly_label, (organ_label,), prob, spacing, allow_missing_keys)
        for name, pair in (
            ("radius_mm", radius_mm),
            ("intensity_scale", intensity_scale),
            ("intensity_shift", intensity_shift),
            ("opacity", opacity),
        ):
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"{name} must be a [low, high] range, got {list(pair)}.")
        if radius_mm[0] <= 0 or opacity[0] < 0 or opacity[1] > 1:
            raise ValueError("radius_mm must be positive and opacity within [0, 1].")
        self.organ_label = int(organ_label)
        self.radius_mm = tuple(float(r) for r in radius_mm)
        self.intensity_scale = tuple(float(s) for s in intensity_scale)
        self.intensity_shift = tuple(float(s) for s in intensity_shift)
        self.opacity = tuple(float(o) for o in opacity)
        self.irregularity = float(irregularity)
        self.min_organ_voxels = int(min_organ_voxels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        organ = self.label_map(d) == self.organ_label
        candidates = np.argwhere(organ)
        if len(candidates) < self.min_organ_voxels:
            return d
        centre = candidates[self.R.randint(len(candidates))]
        q, radius_vox = self.lobulated_distance(organ.shape, centre, self.radius_mm, self.irregularity)
        weight = np.clip((1.0 - q) / 0.25, 0.0, 1.0) * organ
        blob = weight > 0.5
        if not blob.any():
            return d
        radius = float(radius_vox.mean())
        shift = [
            int(self.R.choice([-1, 1]) * self.R.uniform(min(radius, n / 2), max(radius, n / 2) + 1))
            for n in organ.shape
        ]
        blend = (self.R.uniform(*self.opacity) * weight).astype(np.float32)
        scale = self.R.uniform(*self.intensity_scale)
        offset = self.R.uniform(*self.intensity_shift)

        def painter(channel: np.ndarray) -> np.ndarray:
            tissue = np.roll(channel, shift, axis=tuple(range(channel.ndim)))
            foreign = float(channel[organ].mean()) + offset + scale * (tissue - float(tissue[blob].mean()))
            return channel * (1.0 - blend) + foreign.astype(np.float32) * blend

        self.paint(d, painter)
        self.mark(d, blob)
        return d
