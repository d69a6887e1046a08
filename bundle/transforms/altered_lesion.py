"""Synthetic lesion-like anomalies for outlier exposure: inlier tumours whose appearance is altered.

An unseen tumour type is near-OOD: it looks more like the known tumours than like anything else in the organ, so a
network that only learns "lesion versus organ" maps it onto the inlier tumour centres. Foreign tissue pasted into
the organ (:class:`~bundle.transforms.RandForeignTissueAnomalyd`) is far-OOD and does not teach the difference. Here
the outliers are lesions: a real inlier tumour of the patch keeps its shape and position, and its appearance is
changed in ways no inlier type shows, drawn at random from generic operations on the image (no OOD lesion type, and
nothing of the phantom's lesion vocabulary, is used):

- its contrast to the organ is reversed or exaggerated (``contrast_factor``);
- structure is added inside it: a few smooth blobs of random size and of random sign and strength
  (``blob_count``, ``blob_sigma_mm``, ``blob_amplitude``);
- its texture is replaced by correlated noise of another grain and strength (``texture_amplitude``);
- a shell is drawn inside its outline, whole or broken, brighter or darker than the lesion (``rim_thickness_mm``,
  ``rim_amplitude``, ``rim_continuity``): a capsule or a peripheral ring;
- small, dense foci are scattered inside it (``foci_count``, ``foci_radius_mm``, ``foci_amplitude``).

Blobs, shells and foci are "structure". Usually the contrast or the texture (or both) change, so that no part of
the lesion keeps an inlier look, and structure is added with probability one half. With probability
``structure_only_prob`` the lesion instead keeps its own contrast and texture and only gains structure: an unseen
type can share a known type's enhancement and differ in what lies inside it (a necrotic centre in a hyperenhancing
mass, calcified foci in a hypoattenuating one), and the network must then judge the lesion as a whole, since the
whole lesion is labelled. A patch without an inlier tumour gets a lobulated blob in the organ instead, given a new
texture and added structure (never a plain shift, which would make a pdac- or pnet-like lesion). The altered voxels
get ``anomaly_label``: no inlier class, left out of the segmentation losses and pushed from every cluster centre by
the MaxQuery margin loss.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from scipy import ndimage

from .anomaly_synthesis import SyntheticAnomalyTransform

__all__ = ["RandAlteredLesiond"]


class RandAlteredLesiond(SyntheticAnomalyTransform):
    """Alter the appearance of an inlier tumour of a (patch, label) pair and label it as an outlier.

    Args:
        keys: the image key (channel-first, windowed intensities).
        label_key: the label map key (channel-first index map).
        organ_label: label value of the organ.
        tumour_labels: label values of the inlier tumour types.
        anomaly_label: label value written on the altered lesion (must not be an inlier class).
        prob: probability of altering a lesion in a patch.
        spacing: voxel spacing of the patch in mm (the training ``pixdim``).
        contrast_factor: the lesion-to-organ contrast is multiplied by a factor drawn from
            ``[-high, -low] U [low2, high2]`` given as ``[[-high, -low], [low2, high2]]``.
        blob_count: range of the number of added blobs.
        blob_sigma_mm: range of the blobs' size (Gaussian sigma, mm).
        blob_amplitude: range of the blobs' absolute strength, in image units (0.1 is 50 HU with the default
            window); the sign is random.
        texture_amplitude: range of the strength of the replaced texture, in image units.
        rim_thickness_mm: range of the thickness of the shell drawn inside the lesion's outline.
        rim_amplitude: range of the shell's absolute strength, in image units; the sign is random.
        rim_continuity: range of the fraction of the outline the shell covers (1 = a closed capsule).
        foci_count: range of the number of dense foci.
        foci_radius_mm: range of the foci's radius.
        foci_amplitude: range of the foci's strength (added, bright), in image units.
        structure_only_prob: probability that an inlier tumour keeps its contrast and texture and only gains
            structure (blobs, a shell or foci); 0 always changes its contrast or texture.
        lesion_radius_mm: range of the radius of the blob made in a patch without an inlier tumour.
        min_voxels: tumours (or organs, for a made blob) with fewer voxels in the patch are left alone.
        allow_missing_keys: do not raise on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        organ_label: int = 1,
        tumour_labels: Sequence[int] = (2, 3),
        anomaly_label: int = 255,
        prob: float = 0.5,
        spacing: Sequence[float] = (2.0, 2.0, 3.0),
        contrast_factor: Sequence[Sequence[float]] = ((-1.5, -0.5), (1.8, 3.0)),
        blob_count: Sequence[int] = (1, 5),
        blob_sigma_mm: Sequence[float] = (1.5, 4.0),
        blob_amplitude: Sequence[float] = (0.08, 0.4),
        texture_amplitude: Sequence[float] = (0.03, 0.1),
        rim_thickness_mm: Sequence[float] = (1.5, 4.0),
        rim_amplitude: Sequence[float] = (0.05, 0.2),
        rim_continuity: Sequence[float] = (0.3, 1.0),
        foci_count: Sequence[int] = (1, 4),
        foci_radius_mm: Sequence[float] = (1.0, 2.5),
        foci_amplitude: Sequence[float] = (0.2, 0.8),
        structure_only_prob: float = 0.0,
        lesion_radius_mm: Sequence[float] = (5.0, 14.0),
        min_voxels: int = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        tumour_labels = [int(v) for v in tumour_labels]
        inliers = (organ_label, *tumour_labels)
        super().__init__(keys, label_key, anomaly_label, inliers, prob, spacing, allow_missing_keys)
        self.organ_label = int(organ_label)
        self.tumour_labels = tumour_labels
        self.contrast_factor = [tuple(float(v) for v in pair) for pair in contrast_factor]
        self.blob_count = (int(blob_count[0]), int(blob_count[1]))
        self.blob_sigma_mm = tuple(float(v) for v in blob_sigma_mm)
        self.blob_amplitude = tuple(float(v) for v in blob_amplitude)
        self.texture_amplitude = tuple(float(v) for v in texture_amplitude)
        self.rim_thickness_mm = tuple(float(v) for v in rim_thickness_mm)
        self.rim_amplitude = tuple(float(v) for v in rim_amplitude)
        self.rim_continuity = tuple(float(v) for v in rim_continuity)
        self.foci_count = (int(foci_count[0]), int(foci_count[1]))
        self.foci_radius_mm = tuple(float(v) for v in foci_radius_mm)
        self.foci_amplitude = tuple(float(v) for v in foci_amplitude)
        if not 0.0 <= structure_only_prob <= 1.0:
            raise ValueError(f"structure_only_prob must lie in [0, 1], got {structure_only_prob}.")
        self.structure_only_prob = float(structure_only_prob)
        self.lesion_radius_mm = tuple(float(v) for v in lesion_radius_mm)
        self.min_voxels = int(min_voxels)

    def _made_lesion(self, organ: np.ndarray) -> np.ndarray | None:
        """A lobulated blob inside the organ (for patches without an inlier tumour)."""
        candidates = np.argwhere(organ)
        if len(candidates) < self.min_voxels:
            return None
        centre = candidates[self.R.randint(len(candidates))]
        q, _ = self.lobulated_distance(organ.shape, centre, self.lesion_radius_mm, 0.25)
        lesion = (q < 1.0) & organ
        return lesion if lesion.sum() >= self.min_voxels else None

    def _distance_mm(self, shape: tuple[int, ...], centre: np.ndarray) -> np.ndarray:
        """Physical distance (mm) of every voxel of a patch from ``centre``."""
        offsets = [(np.arange(n) - c) * sp for n, c, sp in zip(shape, centre, self.spacing[: len(shape)], strict=True)]
        return np.sqrt(sum(o * o for o in np.meshgrid(*offsets, indexing="ij")))

    def _blobs(self, lesion: np.ndarray) -> np.ndarray:
        """Smooth blobs of random sign and strength centred inside the lesion."""
        added = np.zeros(lesion.shape, dtype=np.float32)
        inside = np.argwhere(lesion)
        for _ in range(self.R.randint(self.blob_count[0], self.blob_count[1] + 1)):
            centre = inside[self.R.randint(len(inside))]
            sigma = self.R.uniform(*self.blob_sigma_mm)
            bump = np.exp(-0.5 * (self._distance_mm(lesion.shape, centre) / sigma) ** 2)
            amplitude = self.R.uniform(*self.blob_amplitude) * self.R.choice([-1.0, 1.0])
            added += (amplitude * bump).astype(np.float32)
        return added

    def _rim(self, lesion: np.ndarray) -> np.ndarray:
        """A shell inside the lesion's outline, covering a random fraction of it, of random sign."""
        spacing = self.spacing[: lesion.ndim]
        depth = ndimage.distance_transform_edt(lesion, sampling=spacing)
        # the outermost voxel layer lies one voxel deep: half the coarsest spacing keeps it in however thin a shell
        shell = lesion & (depth <= self.R.uniform(*self.rim_thickness_mm) + 0.5 * max(spacing))
        continuity = self.R.uniform(*self.rim_continuity)
        if continuity < 1.0 and shell.any():
            # a smooth random field thresholded at its quantile keeps whole arcs of the shell, not scattered voxels
            field = self.smooth_noise(lesion.shape, 4.0 / spacing)
            shell &= field >= np.quantile(field[shell], 1.0 - continuity)
        amplitude = self.R.uniform(*self.rim_amplitude) * self.R.choice([-1.0, 1.0])
        return (amplitude * ndimage.gaussian_filter(shell.astype(np.float32), 0.5)).astype(np.float32)

    def _foci(self, lesion: np.ndarray) -> np.ndarray:
        """Small dense foci at random points of the lesion."""
        added = np.zeros(lesion.shape, dtype=np.float32)
        inside = np.argwhere(lesion)
        for _ in range(self.R.randint(self.foci_count[0], self.foci_count[1] + 1)):
            centre = inside[self.R.randint(len(inside))]
            radius = self.R.uniform(*self.foci_radius_mm)
            # at least the centre voxel is dense, however coarse the grid
            focus = np.clip(1.5 - self._distance_mm(lesion.shape, centre) / max(radius, 1e-3), 0.0, 1.0)
            added = np.maximum(added, (self.R.uniform(*self.foci_amplitude) * focus).astype(np.float32))
        return added

    def _structure(self, lesion: np.ndarray) -> np.ndarray:
        """Blobs, a shell or foci (a non-empty random subset of the three) added inside the lesion."""
        kinds = self.R.uniform(size=3) < 0.5
        if not kinds.any():
            kinds[self.R.randint(3)] = True
        added = np.zeros(lesion.shape, dtype=np.float32)
        for make, chosen in zip((self._blobs, self._rim, self._foci), kinds, strict=True):
            if chosen:
                added += make(lesion)
        return added

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label_np = self.label_map(d)
        organ = label_np == self.organ_label
        if organ.sum() < self.min_voxels:
            return d
        present = [v for v in self.tumour_labels if (label_np == v).sum() >= self.min_voxels]
        if present:
            components, count = ndimage.label(label_np == present[self.R.randint(len(present))])
            sizes = ndimage.sum_labels(np.ones_like(components), components, index=range(1, count + 1))
            big = [i + 1 for i, size in enumerate(sizes) if size >= self.min_voxels]
            if not big:
                return d
            lesion = components == big[self.R.randint(len(big))]
            made = False
        else:
            lesion = self._made_lesion(organ)
            if lesion is None:
                return d
            made = True
        # ops: (contrast, structure, texture). A made lesion gets a new texture and structure; an inlier tumour
        # either only gains structure, or has its contrast or its texture (or both) changed, so that no part of
        # it keeps an inlier look without something inside it that no inlier type shows
        ops = self.R.uniform(size=3) < 0.5
        if made:
            ops[1] = ops[2] = True
        elif self.R.uniform() < self.structure_only_prob:
            ops[:] = (False, True, False)
        elif not (ops[0] or ops[2]):
            ops[2 * self.R.randint(2)] = True
        low, high = self.contrast_factor[self.R.randint(len(self.contrast_factor))]
        factor = self.R.uniform(low, high)
        texture_sigma = self.R.uniform(0.5, 2.5, size=lesion.ndim)
        texture = self.smooth_noise(lesion.shape, texture_sigma) * self.R.uniform(*self.texture_amplitude)
        structure = self._structure(lesion) if ops[1] else None
        soft = np.clip(ndimage.gaussian_filter(lesion.astype(np.float32), 0.7), 0.0, 1.0)
        soft = np.maximum(soft, lesion.astype(np.float32))

        def painter(channel: np.ndarray) -> np.ndarray:
            level = float(np.median(channel[organ]))
            altered = channel.copy()
            if ops[0]:
                altered = level + factor * (altered - level)
            if ops[2]:
                altered = ndimage.gaussian_filter(altered, 1.0) + texture.astype(np.float32)
            if structure is not None:
                altered = altered + structure
            return channel * (1.0 - soft) + altered * soft

        self.paint(d, painter)
        self.mark(d, lesion)
        return d
