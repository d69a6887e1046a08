"""Placement and rendering of lesions described by :class:`~bundle.data.phantom.lesion_spec.LesionType` entries.

A lesion is a randomly rotated ellipsoid inside the organ of interest whose outline is perturbed by smooth
random lobulation (``shape_irregularity``), whose HU is the organ's mean plus ``hu_offset`` with a correlated
texture (``heterogeneity``, ``texture_mm``), blended into the organ over a margin that is sharp or infiltrative
(``margin_sharpness``), with optional internal structure: septa (Voronoi walls), a necrotic core, a rim
(continuous or nodular) and calcifications. Every appearance parameter comes from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bundle.data.phantom.canvas import Canvas, rotation
from bundle.data.phantom.lesion_spec import LesionType
from bundle.data.phantom.random_fields import correlated_noise

__all__ = ["Lesion", "paint_lesions"]


@dataclass
class Lesion:
    """A lesion placed in a case.

    Attributes:
        type: its lesion type.
        center: world position (mm) of its centre.
        center_voxel: voxel index of its centre.
        diameter_mm: nominal diameter.
        hu_offset: drawn HU offset of its solid part relative to the organ mean.
        box: index box of its label mask.
        mask: label mask (voxels whose centre lies inside the lesion) over ``box``.
    """

    type: LesionType
    center: np.ndarray
    center_voxel: tuple[int, int, int]
    diameter_mm: float
    hu_offset: float
    box: tuple[slice, slice, slice]
    mask: np.ndarray

    def summary(self) -> dict:
        """JSON-friendly description."""
        return {
            "type": self.type.name,
            "role": self.type.role,
            "label_value": self.type.value,
            "diameter_mm": round(self.diameter_mm, 1),
            "hu_offset": round(self.hu_offset, 1),
            "center_voxel": [int(i) for i in self.center_voxel],
            "voxels": int(self.mask.sum()),
        }


def _fourier_field(rng: np.random.Generator, x, y, z, n: int, k_range: tuple[float, float]) -> np.ndarray:
    """Sum of ``n`` random plane waves over normalised coordinates (unit variance on average)."""
    out = np.zeros(x.shape, dtype=np.float32)
    for _ in range(n):
        d = rng.normal(size=3)
        d *= rng.uniform(*k_range) / np.linalg.norm(d)
        out += np.cos(d[0] * x + d[1] * y + d[2] * z + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out * np.float32(np.sqrt(2.0 / n))


def _depth_map(organ: np.ndarray, spacing) -> tuple[tuple[slice, ...], np.ndarray] | None:
    objs = ndimage.find_objects(organ.astype(np.uint8))
    if not objs or objs[0] is None:
        return None
    box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(objs[0], organ.shape, strict=True))
    return box, ndimage.distance_transform_edt(organ[box], sampling=spacing).astype(np.float32)


def _choose_centre(
    rng: np.random.Generator, depth: np.ndarray, box, radius: float, placed: list[tuple[np.ndarray, float]], spacing
) -> tuple[np.ndarray, float] | None:
    """Pick a voxel deep enough in the organ, away from lesions already placed."""
    dmax = float(depth.max())
    if dmax <= 0:
        return None
    thresh = min(0.5 * radius, 0.6 * dmax)
    cand = np.argwhere(depth >= thresh)
    if len(cand) == 0:
        cand = np.argwhere(depth > 0)
    offset = np.array([s.start for s in box])
    sp = np.asarray(spacing)
    for _ in range(40):
        idx = cand[int(rng.integers(len(cand)))]
        pos = (idx + offset) * sp
        d = float(depth[tuple(idx)])
        r = min(radius, 1.6 * d + 3.0)
        if all(np.linalg.norm(pos - q) >= r + rq + 2.0 for q, rq in placed):
            return idx + offset, r
    return None


def paint_lesions(
    cv: Canvas, types: list[LesionType], organ_hu: float, rng: np.random.Generator, required: int = 0
) -> list[Lesion]:
    """Place lesions of the given types inside the organ of interest and paint them.

    Args:
        cv: the canvas, with the organ of interest already painted.
        types: one entry per lesion to place (a type may repeat).
        organ_hu: the organ's mean HU in this case (lesion HU offsets are relative to it).
        rng: random generator.
        required: the first ``required`` lesions must be placed (they are allowed to touch earlier ones if no
            free spot is found); later ones are dropped when they do not fit.

    Returns:
        The lesions placed, in painting order.
    """
    organ = cv.organ > 0.5
    dm = _depth_map(organ, cv.grid.spacing)
    if dm is None:
        return []
    box, depth = dm
    spacing = np.asarray(cv.grid.spacing)
    origin = np.asarray(cv.grid.origin)
    placed: list[tuple[np.ndarray, float]] = []
    out: list[Lesion] = []
    for n, ltype in enumerate(types):
        diameter = float(rng.uniform(*ltype.size_mm))
        choice = _choose_centre(rng, depth, box, diameter / 2.0, placed, spacing)
        if choice is None and n < required:
            idx = np.unravel_index(int(np.argmax(depth)), depth.shape)
            choice = (np.asarray(idx) + [s.start for s in box], min(diameter / 2.0, 1.6 * float(depth.max()) + 3.0))
        if choice is None:
            continue
        vox, radius = choice
        radius = max(radius, 0.5 * float(spacing.min()))
        jitter = rng.uniform(-0.3, 0.3, 3) * spacing
        world_idx = vox * spacing + jitter  # offsets from the grid origin, in mm
        placed.append((world_idx, radius))
        lesion = _paint_one(cv, ltype, vox, origin + world_idx, radius, organ_hu, rng)
        out.append(lesion)
    return out


def _paint_one(
    cv: Canvas, lt: LesionType, vox: np.ndarray, centre: np.ndarray, radius: float, organ_hu: float, rng
) -> Lesion:
    spacing = np.asarray(cv.grid.spacing)
    margin_w = cv.pv_width + (1.0 - lt.margin_sharpness) * 6.0
    half = radius * 1.6 + margin_w + 2.0 * spacing.max()
    lo = np.maximum(0, np.floor((centre - half - np.asarray(cv.grid.origin)) / spacing).astype(int))
    hi = np.minimum(cv.grid.shape, np.ceil((centre + half - np.asarray(cv.grid.origin)) / spacing).astype(int) + 1)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    u, v, w = (cv.u[sl[0]], cv.v[sl[1]], cv.w[sl[2]])
    x = (u - np.float32(centre[0]))[:, None, None]
    y = (v - np.float32(centre[1]))[None, :, None]
    z = (w - np.float32(centre[2]))[None, None, :]
    x, y, z = np.broadcast_arrays(x, y, z)
    radii = radius * np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)])
    rot = rotation(*rng.uniform(-np.pi, np.pi, 3)).T.astype(np.float32)
    lx = (rot[0, 0] * x + rot[0, 1] * y + rot[0, 2] * z) / np.float32(radii[0])
    ly = (rot[1, 0] * x + rot[1, 1] * y + rot[1, 2] * z) / np.float32(radii[1])
    lz = (rot[2, 0] * x + rot[2, 1] * y + rot[2, 2] * z) / np.float32(radii[2])
    q = np.sqrt(lx * lx + ly * ly + lz * lz)
    # outline: lobulation (low frequency) and spiculation (high frequency) scaled by shape_irregularity
    irr = lt.shape_irregularity
    pert = 0.22 * _fourier_field(rng, lx, ly, lz, 6, (1.5, 3.5)) + 0.08 * _fourier_field(rng, lx, ly, lz, 8, (5.0, 9.0))
    qp = q + np.float32(irr) * pert
    f = (qp - 1.0) * np.float32(radius)  # approx signed distance (mm)
    mask = f < 0
    if not mask.any():
        mask[tuple(int(i) - s.start for i, s in zip(vox, sl, strict=True))] = True
    # HU of the solid component and its texture
    offset = float(rng.uniform(*lt.hu_offset))
    tex_sigma = [lt.texture_mm / s for s in spacing]
    value = np.float32(organ_hu + offset) + np.float32(lt.heterogeneity) * correlated_noise(rng, f.shape, tex_sigma)
    depth = -f
    ramp = np.float32(max(cv.pv_width * 0.5, 0.8))
    if lt.septa is not None:
        n_cells = int(rng.integers(lt.septa.count[0], lt.septa.count[1] + 1))
        seeds = rng.normal(size=(n_cells, 3))
        seeds *= (rng.uniform(0.0, 1.0, n_cells) ** (1 / 3) / np.linalg.norm(seeds, axis=1))[:, None]
        seeds = seeds * radii[None, :] @ rot  # local -> world offsets (rot is world->local)
        dists = np.stack([np.sqrt((x - sx) ** 2 + (y - sy) ** 2 + (z - sz) ** 2) for sx, sy, sz in seeds], axis=0)
        dists.sort(axis=0)
        gap = (dists[1] - dists[0]) * 0.5
        thick = float(rng.uniform(*lt.septa.thickness_mm))
        walls = np.clip((np.float32(thick / 2.0) - gap) / ramp + 0.5, 0.0, 1.0)
        value += walls * np.float32(rng.uniform(*lt.septa.hu_offset))
    if lt.necrotic_core is not None:
        frac = float(rng.uniform(*lt.necrotic_core.fraction))
        qc = q + np.float32(0.1) * _fourier_field(rng, lx, ly, lz, 5, (2.0, 4.0))
        core = np.clip((np.float32(frac) - qc) * np.float32(radius) / ramp + 0.5, 0.0, 1.0)
        value += core * np.float32(rng.uniform(*lt.necrotic_core.hu_offset))
    if lt.rim_enhancement is not None:
        rim = lt.rim_enhancement
        thick = float(rng.uniform(*rim.thickness_mm))
        shell = np.clip((np.float32(thick) - depth) / ramp + 0.5, 0.0, 1.0) * (depth > -margin_w)
        if rim.continuity < 1.0:
            nod = _fourier_field(rng, lx, ly, lz, 6, (2.5, 4.5))
            cut = np.quantile(nod[mask], 1.0 - rim.continuity) if mask.sum() > 4 else 0.0
            shell = shell * np.clip((nod - np.float32(cut)) * 2.0 + 0.5, 0.0, 1.0)
        value += shell.astype(np.float32) * np.float32(rng.uniform(*rim.hu_offset))
    calc = lt.calcifications
    if calc is not None and rng.uniform() < calc.probability:
        for _ in range(int(rng.integers(calc.count[0], calc.count[1] + 1))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            rad = {"central": rng.uniform(0.0, 0.3), "peripheral": rng.uniform(0.75, 0.9)}.get(
                calc.location, rng.uniform(0.0, 0.8)
            )
            pos = (direction * rad * radii) @ rot
            size = float(rng.uniform(*calc.size_mm)) / 2.0
            dist = np.sqrt((x - pos[0]) ** 2 + (y - pos[1]) ** 2 + (z - pos[2]) ** 2) - np.float32(size)
            occ = np.clip(0.5 - dist / np.float32(cv.pv_width), 0.0, 1.0)
            value += occ * (np.float32(rng.uniform(*calc.hu)) - value)
    cv.paint(sl, f, value, internal=True, width=margin_w)
    return Lesion(
        type=lt,
        center=centre,
        center_voxel=tuple(int(i) for i in vox),
        diameter_mm=2.0 * radius,
        hu_offset=offset,
        box=sl,
        mask=mask,
    )
