"""Scanner model of the phantom: per-case field of view, voxel spacing, blur and correlated CT noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bundle.data.phantom.anatomy import ORGAN_Z_RANGE, Patient
from bundle.data.phantom.canvas import Grid
from bundle.data.phantom.random_fields import correlated_noise

__all__ = ["Acquisition", "acquire", "sample_acquisition"]

#: In-plane voxel size range (mm) and slice thickness range (mm) of the simulated scanners.
IN_PLANE_MM = (1.5, 2.25)
SLICE_MM = (2.5, 5.0)
#: Scan length (mm) per organ of interest.
SCAN_LENGTH_MM = {"pancreas": (150.0, 190.0), "liver": (170.0, 195.0)}


@dataclass(frozen=True)
class Acquisition:
    """Scanner settings of one case.

    Attributes:
        grid: voxel grid of the written image.
        noise_sd: standard deviation (HU) of the quantum noise.
        noise_sigma_vox: Gaussian correlation of the noise, in voxels.
        psf_sigma_vox: Gaussian point-spread function (in-plane blur, slice profile), in voxels.
        hu_shift: calibration offset (HU) added to the whole image.
    """

    grid: Grid
    noise_sd: float
    noise_sigma_vox: tuple[float, float, float]
    psf_sigma_vox: tuple[float, float, float]
    hu_shift: float


def sample_acquisition(
    rng: np.random.Generator, patient: Patient, organ: str, shape: Sequence[int] | None = None
) -> Acquisition:
    """Draw the scan range and scanner settings of a case.

    The scan covers the whole body cross-section and the organ of interest with a margin in z.

    Args:
        rng: random generator.
        patient: the patient (body size, anatomy frame).
        organ: organ of interest, which must lie fully inside the scan.
        shape: force this voxel grid shape (the spacing then follows from the field of view); used for
            tiny test volumes.
    """
    b = patient.body
    lo_u = -b.half_width - rng.uniform(5.0, 14.0)
    hi_u = b.half_width + rng.uniform(5.0, 14.0)
    lo_v = -b.ant_depth - rng.uniform(5.0, 14.0)
    hi_v = b.post_depth + rng.uniform(4.0, 10.0)
    sw, ow = patient.frame.scale[2], patient.frame.offset[2]
    zlo, zhi = (ow + sw * z for z in ORGAN_Z_RANGE[organ])
    margin = 8.0 + 2.0 * 4.0  # clearance plus the anatomy's deformation amplitude
    length = max(float(rng.uniform(*SCAN_LENGTH_MM[organ])), zhi - zlo + 2 * margin)
    slack = length - (zhi - zlo) - 2 * margin
    lo_w = zlo - margin - rng.uniform(0.0, slack)
    extent = (hi_u - lo_u, hi_v - lo_v, length)
    if shape is None:
        s_in = float(rng.uniform(*IN_PLANE_MM))
        spacing = (s_in, s_in, float(rng.choice([2.5, 3.0, 3.75, 4.0, 5.0])))
        dims = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing, strict=True))
    else:
        dims = tuple(int(n) for n in shape)
        if len(dims) != 3 or min(dims) < 4:
            raise ValueError(f"shape must be three sizes >= 4, got {shape!r}")
        spacing = tuple(float(e / n) for e, n in zip(extent, dims, strict=True))
    origin = (lo_u + spacing[0] / 2, lo_v + spacing[1] / 2, lo_w + spacing[2] / 2)
    grid = Grid(shape=dims, spacing=tuple(round(s, 4) for s in spacing), origin=tuple(round(o, 3) for o in origin))
    size = b.half_width / 126.0
    noise_sd = float(rng.uniform(8.0, 15.0) * size * np.sqrt(3.0 / spacing[2]) * np.sqrt(1.8 / spacing[0]))
    return Acquisition(
        grid=grid,
        noise_sd=noise_sd,
        noise_sigma_vox=(float(rng.uniform(0.6, 1.0)),) * 2 + (0.4,),
        psf_sigma_vox=(float(rng.uniform(0.3, 0.5)),) * 2 + (float(rng.uniform(0.2, 0.35)),),
        hu_shift=float(rng.uniform(-4.0, 4.0)),
    )


def acquire(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Blur, add correlated noise, quantise: the int16 CT image of a painted HU volume."""
    img = ndimage.gaussian_filter(hu, acq.psf_sigma_vox, mode="nearest", truncate=3.0)
    img += correlated_noise(rng, img.shape, acq.noise_sigma_vox) * np.float32(acq.noise_sd)
    img += np.float32(acq.hu_shift)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)
