"""Spatial smoothing of voxel OOD maps, with a kernel given in millimetres.

A voxel score is a noisy, independent decision per voxel, while a lesion is a compact object many voxels wide: a
Gaussian filter on the score map averages each voxel with its neighbours, so that isolated high scores in normal
tissue fall and the scores across a lesion agree. Anomaly-segmentation methods smooth their maps for the same reason
(e.g. PatchCore's Gaussian filter on the patch-score map). The kernel is given in millimetres and converted per axis
with the grid's spacing, so that anisotropic grids are smoothed the same physical distance along every axis. A
kernel whose full width at half maximum (``2.355 * sigma``) stays below the smallest lesion of interest keeps small
lesions visible.

The voxel map is smoothed, not the case score: the evaluation and the inference take the case score from the
unsmoothed map (see :class:`~bundle.ood.CaseOODScored`), and every score of a report is smoothed alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = ["SmoothOODMapd", "grid_spacing", "smooth_score_map"]


def grid_spacing(image: torch.Tensor, name: str = "image") -> tuple[float, ...]:
    """The voxel spacing (mm) of a channel-first MetaTensor ``(C, *spatial)``, from its affine.

    Raises:
        ValueError: ``image`` carries no affine (a plain tensor or array).
    """
    if not isinstance(image, MetaTensor):
        raise ValueError(
            f"'{name}' has no voxel spacing (a {type(image).__name__}, not a MetaTensor with an affine); smoothing an "
            "OOD map in millimetres needs one."
        )
    return tuple(float(v) for v in image.pixdim[: image.ndim - 1])


def smooth_score_map(score: torch.Tensor, spacing: Sequence[float], sigma_mm: float) -> torch.Tensor:
    """Gaussian-smooth a voxel score map ``(*spatial)`` or ``(1, *spatial)`` with a kernel of ``sigma_mm`` millimetres.

    Edges are extended with the nearest voxel's score (no zero padding, which would pull the scores at the border of
    the map towards 0). ``sigma_mm = 0`` returns the map unchanged.

    Args:
        score: the voxel scores.
        spacing: the voxel spacing in mm along each spatial axis.
        sigma_mm: the Gaussian's standard deviation in mm.

    Returns:
        a tensor of the input's shape, dtype and device (a MetaTensor keeps its meta data).
    """
    if sigma_mm < 0:
        raise ValueError(f"sigma_mm must be >= 0, got {sigma_mm}.")
    if sigma_mm == 0:
        return score
    spatial = score.shape[1:] if score.ndim == len(spacing) + 1 else score.shape
    if len(spatial) != len(spacing) or (score.ndim == len(spacing) + 1 and score.shape[0] != 1):
        raise ValueError(
            f"a score map (*spatial) or (1, *spatial) with {len(spacing)} spatial axes is needed, "
            f"got {tuple(score.shape)}."
        )
    if any(s <= 0 for s in spacing):
        raise ValueError(f"voxel spacing must be positive, got {tuple(spacing)}.")
    values = torch.as_tensor(score).detach().cpu().float().numpy().reshape(spatial)
    sigma_vox = [sigma_mm / float(s) for s in spacing]
    smoothed = torch.from_numpy(ndimage.gaussian_filter(values, sigma_vox, mode="nearest").astype(np.float32))
    smoothed = smoothed.reshape(score.shape).to(device=score.device, dtype=score.dtype)
    if isinstance(score, MetaTensor):
        return MetaTensor(smoothed, meta=score.meta, applied_operations=score.applied_operations)
    return smoothed


class SmoothOODMapd(MapTransform):
    """Gaussian-smooth channel-first voxel OOD maps ``(1, *spatial)`` with a kernel in millimetres.

    The spacing is read from each map's affine (a MetaTensor), so the transform works on any grid: the model's, or
    the input's after the prediction is pasted back.

    Args:
        keys: the OOD map key(s).
        sigma_mm: the Gaussian's standard deviation in mm; 0 leaves the maps unchanged.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(self, keys: KeysCollection, sigma_mm: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if sigma_mm < 0:
            raise ValueError(f"sigma_mm must be >= 0, got {sigma_mm}.")
        self.sigma_mm = float(sigma_mm)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Apply to one sample dictionary."""
        d = dict(data)
        if self.sigma_mm == 0:
            return d
        for key in self.key_iterator(d):
            d[key] = smooth_score_map(d[key], grid_spacing(d[key], str(key)), self.sigma_mm)
        return d
