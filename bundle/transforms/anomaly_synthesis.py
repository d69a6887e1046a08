"""What the synthetic-anomaly transforms share: reading the patch, lobulated blobs, writing image and label back."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

__all__ = ["SyntheticAnomalyTransform"]


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)


class SyntheticAnomalyTransform(RandomizableTransform, MapTransform):
    """Base of the dictionary transforms that paint a synthetic anomaly into a (patch, label) pair.

    Args:
        keys: the image key(s) to paint (channel-first, windowed intensities).
        label_key: the label map key (channel-first index map).
        anomaly_label: label value written on the anomaly (must not be an inlier class).
        inlier_labels: label values the anomaly label must differ from.
        prob: probability of painting an anomaly.
        spacing: voxel spacing of the patch in mm (the training ``pixdim``).
        allow_missing_keys: do not raise on missing keys.
    """

    backend = [torch.Tensor.__name__, np.ndarray.__name__]

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        anomaly_label: int,
        inlier_labels: Sequence[int],
        prob: float,
        spacing: Sequence[float],
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if int(anomaly_label) in {int(v) for v in inlier_labels}:
            raise ValueError(f"anomaly_label {anomaly_label} is an inlier class ({sorted(inlier_labels)}).")
        self.label_key = label_key
        self.anomaly_label = int(anomaly_label)
        self.spacing = np.asarray(spacing, dtype=float)

    def label_map(self, data: dict) -> np.ndarray:
        """The patch's label map without its channel axis, rounded to integers."""
        return np.round(_numpy(data[self.label_key])[0])

    def smooth_noise(self, shape: tuple[int, ...], sigma_vox) -> np.ndarray:
        """Gaussian-smoothed white noise of unit standard deviation."""
        field = ndimage.gaussian_filter(self.R.normal(size=shape), sigma=sigma_vox, mode="wrap")
        return field / (field.std() + 1e-6)

    def lobulated_distance(
        self, shape: tuple[int, ...], centre: np.ndarray, radius_mm: Sequence[float], irregularity: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised distance to a random ellipsoid's centre (< 1 inside), its outline perturbed by smooth noise,
        and the ellipsoid's radii in voxels."""
        radius = self.R.uniform(*radius_mm) * self.R.uniform(0.7, 1.0, size=len(shape))
        radius_vox = np.maximum(radius / self.spacing[: len(shape)], 1.0)
        axes = [(np.arange(n) - c) / r for n, c, r in zip(shape, centre, radius_vox, strict=True)]
        q = np.sqrt(sum(g * g for g in np.meshgrid(*axes, indexing="ij")))
        if irregularity > 0:
            q = q + irregularity * self.smooth_noise(shape, radius_vox / 2.0)
        return q, radius_vox

    def paint(self, data: dict, painter: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the first channel of every image key by ``painter(channel)``, clipped to the channel's range and
        kept in the key's type (a MetaTensor keeps its metadata)."""
        for key in self.key_iterator(data):
            image = data[key]
            img = _numpy(image).astype(np.float32)
            channel = img[0]
            out = img.copy()
            out[0] = np.clip(painter(channel), float(channel.min()), float(channel.max()))
            if isinstance(image, torch.Tensor):
                new = torch.as_tensor(out, dtype=image.dtype, device=image.device)
                data[key] = image.clone().copy_(new) if hasattr(image, "meta") else new
            else:
                data[key] = out

    def mark(self, data: dict, mask: np.ndarray) -> None:
        """Write ``anomaly_label`` on ``mask`` in the label map, kept in the label's type."""
        label: Hashable = data[self.label_key]
        new_label = _numpy(label).copy()
        new_label[0][mask] = self.anomaly_label
        if isinstance(label, torch.Tensor):
            data[self.label_key] = label.clone().copy_(torch.as_tensor(new_label, dtype=label.dtype))
        else:
            data[self.label_key] = new_label.astype(label.dtype)
