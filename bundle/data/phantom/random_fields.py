"""Smooth random fields used for texture, CT noise and shape deformation of the phantom."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["correlated_noise", "smooth_curve"]


def correlated_noise(
    rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float], *, normalise: bool = True
) -> np.ndarray:
    """Gaussian-filtered white noise with unit variance (float32).

    Large correlation lengths are generated on a coarser grid and linearly upsampled, which keeps the cost
    independent of the correlation length.

    Args:
        rng: the random generator (consumed deterministically).
        shape: output shape.
        sigma_vox: Gaussian sigma per axis, in voxels of the output grid.
        normalise: rescale to zero mean and unit standard deviation.
    """
    shape = tuple(int(n) for n in shape)
    factors = [max(1, int(s // 3.0)) for s in sigma_vox]
    small = [int(np.ceil(n / f)) + (2 if f > 1 else 0) for n, f in zip(shape, factors, strict=True)]
    field = rng.standard_normal(small, dtype=np.float32)
    field = ndimage.gaussian_filter(
        field, [s / f for s, f in zip(sigma_vox, factors, strict=True)], mode="wrap", truncate=3.0
    )
    for axis, f in enumerate(factors):
        if f > 1:
            field = _upsample(field, axis, f, shape[axis])
    field = np.ascontiguousarray(field[: shape[0], : shape[1], : shape[2]])
    if normalise:
        field -= field.mean(dtype=np.float64)
        std = float(field.std(dtype=np.float64))
        if std > 0:
            field /= std
    return field


def _upsample(field: np.ndarray, axis: int, factor: int, size: int) -> np.ndarray:
    """Linear upsampling of one axis by an integer factor (separable, cheap)."""
    pos = np.arange(size, dtype=np.float64) / factor
    i0 = np.minimum(pos.astype(np.int64), field.shape[axis] - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * field.ndim
    shape[axis] = size
    w = w.reshape(shape)
    a = np.take(field, i0, axis=axis)
    b = np.take(field, i0 + 1, axis=axis)
    return a + (b - a) * w


def smooth_curve(control: np.ndarray, step_mm: float = 6.0) -> np.ndarray:
    """Centripetal-free Catmull-Rom interpolation of control points, resampled about every ``step_mm``.

    Args:
        control: (n, d) control points (n >= 2); extra per-point attributes may be appended as columns and
            are interpolated the same way (the step uses the first three columns).
        step_mm: approximate spacing of the returned points.

    Returns:
        (m, d) points passing through the control points.
    """
    control = np.asarray(control, dtype=np.float64)
    if len(control) < 3:
        length = float(np.linalg.norm(control[-1, :3] - control[0, :3]))
        n = max(2, int(np.ceil(length / step_mm)) + 1)
        t = np.linspace(0.0, 1.0, n)[:, None]
        return control[0] + t * (control[-1] - control[0])
    padded = np.vstack([2 * control[0] - control[1], control, 2 * control[-1] - control[-2]])
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        length = float(np.linalg.norm(p2[:3] - p1[:3]))
        n = max(2, int(np.ceil(length / step_mm)) + 1)
        t = np.linspace(0.0, 1.0, n)[:-1, None]
        t2, t3 = t * t, t * t * t
        pts = 0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
        out.append(pts)
    out.append(control[-1:])
    return np.vstack(out)
