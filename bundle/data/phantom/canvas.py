"""A voxel canvas on which the phantom anatomy is painted with partial-volume compositing.

Coordinates: patient space in mm, ``u`` towards the patient's left, ``v`` towards posterior, ``w`` towards
superior. Array index ``i`` follows ``u``, ``j`` follows ``v`` and ``k`` follows ``w``; the NIfTI affine
maps this to RAS (``x = -u``, ``y = -v``, ``z = w``).

Internal anatomy is described in a *canonical* frame (an average abdomen); each case maps the canonical frame
onto its own body by a per-axis scaling plus a smooth random deformation, so that every case gets its own
organ shapes and positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bundle.data.phantom.random_fields import correlated_noise, smooth_curve

__all__ = ["Canvas", "Frame", "Grid", "ellipsoid_sdf", "rotation", "smooth_max", "smooth_min"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid in patient space.

    Attributes:
        shape: voxels along (u, v, w).
        spacing: voxel size in mm along (u, v, w).
        origin: patient coordinates (mm) of voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1-D patient coordinates of the voxel centres along each axis (float32)."""
        return tuple(
            (o + s * np.arange(n)).astype(np.float32)
            for o, s, n in zip(self.origin, self.spacing, self.shape, strict=True)
        )  # type: ignore[return-value]

    def affine(self) -> np.ndarray:
        """4x4 voxel-to-RAS affine (mm)."""
        sx, sy, sz = self.spacing
        u0, v0, w0 = self.origin
        return np.array(
            [[-sx, 0.0, 0.0, -u0], [0.0, -sy, 0.0, -v0], [0.0, 0.0, sz, w0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
        )


@dataclass(frozen=True)
class Frame:
    """Per-axis affine map from patient (world) space to the canonical anatomy frame.

    ``canonical = (world - offset) / scale`` per axis (before the random deformation).
    """

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def to_world(self, point: Sequence[float]) -> np.ndarray:
        """Canonical point(s) to world (ignoring the deformation)."""
        p = np.asarray(point, dtype=np.float64)
        return p * np.asarray(self.scale) + np.asarray(self.offset)


def rotation(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles (radians) about the u, v and w axes."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def ellipsoid_sdf(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    center: Sequence[float],
    radii: Sequence[float],
    rot: np.ndarray | None = None,
) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an ellipsoid, exact along rays from its centre."""
    dx, dy, dz = x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2])
    if rot is not None:
        r = rot.T.astype(np.float32)
        dx, dy, dz = (
            r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz,
            r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
            r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz,
        )
    q = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2) + np.float32(1e-6)
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    return (dist * (1.0 - 1.0 / q)).astype(np.float32, copy=False)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of two SDFs) with blend radius ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (smooth intersection) with blend radius ``k`` mm."""
    return -smooth_min(-a, -b, k)


class Canvas:
    """HU volume plus bookkeeping, painted structure by structure.

    Attributes:
        grid: the voxel grid.
        frame: world-to-canonical map.
        hu: float32 HU volume being painted (starts as air).
        free: fraction of each voxel that is still free visceral fat (space organs and bowel may fill).
        organ: occupancy of the organ of interest; later non-internal structures erode it.
        uc, vc, wc: canonical (deformed) coordinates of every voxel (float32).
        pv_width: width (mm) of the partial-volume ramp at structure boundaries.
    """

    def __init__(self, grid: Grid, frame: Frame, rng: np.random.Generator, warp_mm: float = 4.0) -> None:
        self.grid = grid
        self.frame = frame
        shape = grid.shape
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.free = np.zeros(shape, dtype=np.float32)
        self.organ = np.zeros(shape, dtype=np.float32)
        self.cavity = np.full(shape, 1e3, dtype=np.float32)
        self._stored: dict[str, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
        self.pv_width = float(np.mean(grid.spacing))
        u, v, w = grid.axes()
        self.u, self.v, self.w = u, v, w
        corr = [40.0 / s for s in grid.spacing]
        self.warp_mm = float(warp_mm)
        du = correlated_noise(rng, shape, corr) * np.float32(warp_mm / 2.0)
        dv = correlated_noise(rng, shape, corr) * np.float32(warp_mm / 2.0)
        dw = correlated_noise(rng, shape, corr) * np.float32(warp_mm / 2.0)
        (su, sv, sw), (ou, ov, ow) = frame.scale, frame.offset
        self.uc = du + ((u - ou) / su)[:, None, None]
        self.vc = dv + ((v - ov) / sv)[None, :, None]
        self.wc = dw + ((w - ow) / sw)[None, None, :]
        # shared tissue textures (unit variance): fine grain, 4 mm blobs, 12 mm shading
        self.tex_fine = correlated_noise(rng, shape, [max(0.45, 0.9 / s) for s in grid.spacing])
        self.tex_mid = correlated_noise(rng, shape, [4.0 / s for s in grid.spacing])
        self.tex_coarse = correlated_noise(rng, shape, [12.0 / s for s in grid.spacing])

    # ---------------------------------------------------------------------------------------------------------------
    # regions
    # ---------------------------------------------------------------------------------------------------------------
    def region(self, lo: Sequence[float], hi: Sequence[float], pad: float = 0.0) -> tuple[slice, slice, slice] | None:
        """Index box covering a canonical bounding box (plus ``pad`` mm and the deformation margin)."""
        a = self.frame.to_world(lo)
        b = self.frame.to_world(hi)
        margin = pad + 3.0 * self.warp_mm * max(self.frame.scale) + self.pv_width
        out = []
        for ax in range(3):
            wlo, whi = min(a[ax], b[ax]) - margin, max(a[ax], b[ax]) + margin
            o, s, n = self.grid.origin[ax], self.grid.spacing[ax], self.grid.shape[ax]
            i0 = max(0, int(np.floor((wlo - o) / s)))
            i1 = min(n, int(np.ceil((whi - o) / s)) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Canonical coordinates inside an index box."""
        return self.uc[sl], self.vc[sl], self.wc[sl]

    def store(self, name: str, sl: tuple[slice, slice, slice], sdf: np.ndarray) -> None:
        """Keep the signed distance of a structure for later queries (:meth:`stored`)."""
        self._stored[name] = (sl, sdf)

    def stored(self, name: str, sl: tuple[slice, slice, slice]) -> np.ndarray:
        """Signed distance of a stored structure over box ``sl`` (+1000 mm where it was not evaluated)."""
        out = np.full(tuple(s.stop - s.start for s in sl), 1e3, dtype=np.float32)
        if name not in self._stored:
            return out
        ssl, sdf = self._stored[name]
        inter = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, ssl, strict=True)]
        if any(s.stop <= s.start for s in inter):
            return out
        dst = tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(inter, sl, strict=True))
        src = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, ssl, strict=True))
        out[dst] = sdf[src]
        return out

    # ---------------------------------------------------------------------------------------------------------------
    # painting
    # ---------------------------------------------------------------------------------------------------------------
    def occupancy(self, sdf: np.ndarray, width: float | None = None) -> np.ndarray:
        """Partial-volume occupancy from a signed distance (linear ramp of ``width`` mm)."""
        width = self.pv_width if width is None else max(float(width), 1e-3)
        return np.clip(np.float32(0.5) - sdf / np.float32(width), 0.0, 1.0)

    def paint(
        self,
        sl: tuple[slice, slice, slice] | None,
        sdf: np.ndarray,
        value: float | np.ndarray,
        *,
        fill_free: bool = False,
        internal: bool = False,
        organ: bool = False,
        becomes_free: bool = False,
        width: float | None = None,
    ) -> np.ndarray:
        """Composite a structure into the canvas.

        Args:
            sl: index box the ``sdf`` and ``value`` arrays cover.
            sdf: signed distance (mm, negative inside).
            value: HU of the structure (scalar or array over the box).
            fill_free: only fill what is still free visceral fat (the structure is displaced by organs).
            internal: the structure lies inside the organ of interest and does not remove it from its label.
            organ: this is the organ of interest (its occupancy is recorded).
            becomes_free: the structure is space other structures may fill (the abdominal cavity).
            width: partial-volume ramp width in mm (default: one voxel).

        Returns:
            The effective occupancy painted (0..1) over the box.
        """
        if sl is None:
            return np.zeros((0, 0, 0), dtype=np.float32)
        occ = self.occupancy(sdf, width)
        free = self.free[sl]
        if fill_free:
            occ *= free
        hu = self.hu[sl]
        hu += occ * (np.asarray(value, dtype=np.float32) - hu)
        if becomes_free:
            free += occ * (1.0 - free)
        else:
            free -= occ * free if not fill_free else occ
            np.clip(free, 0.0, 1.0, out=free)
        org = self.organ[sl]
        if organ:
            org += occ * (1.0 - org)
        elif not internal:
            org *= 1.0 - occ
        return occ

    # ---------------------------------------------------------------------------------------------------------------
    # tubes
    # ---------------------------------------------------------------------------------------------------------------
    def tube(
        self,
        control: np.ndarray,
        radii: Sequence[float] | np.ndarray,
        step_mm: float = 6.0,
        pad: float = 0.0,
        sl: tuple[slice, slice, slice] | None = None,
    ) -> tuple[tuple[slice, slice, slice] | None, np.ndarray, np.ndarray]:
        """Signed distance to a smooth tube through canonical control points with per-point radii.

        Args:
            control: (n, 3) canonical control points.
            radii: (n,) radii in mm at the control points.
            step_mm: segment length of the sampled centreline.
            pad: extra margin (mm) of the returned box.
            sl: evaluate over this index box instead of the tube's own box.

        Returns:
            ``(box, sdf, param)``: the index box, the signed distance over it, and the position along the tube
            (fractional index of the sampled centreline, useful to interpolate per-point attributes).
        """
        pts = smooth_curve(np.column_stack([np.asarray(control, float), np.asarray(radii, float)]), step_mm)
        centre, rad = pts[:, :3], pts[:, 3]
        rmax = float(rad.max())
        if sl is None:
            sl = self.region(centre.min(0), centre.max(0), pad=rmax + pad)
        if sl is None:
            return None, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32)
        x, y, z = self.coords(sl)
        best = np.full(x.shape, 1e4, dtype=np.float32)
        param = np.zeros(x.shape, dtype=np.float32)
        base = np.array([s.start for s in sl])
        for i in range(len(centre) - 1):
            a, b = centre[i], centre[i + 1]
            ra, rb = rad[i], rad[i + 1]
            sub = self.region(np.minimum(a, b), np.maximum(a, b), pad=max(ra, rb) + pad)
            if sub is None:
                continue
            loc = tuple(
                slice(max(s.start, r.start) - o, min(s.stop, r.stop) - o) for s, r, o in zip(sub, sl, base, strict=True)
            )
            if any(s.stop <= s.start for s in loc):
                continue
            xs, ys, zs = x[loc], y[loc], z[loc]
            ab = (b - a).astype(np.float32)
            l2 = float(ab @ ab) + 1e-6
            t = ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1] + (zs - a[2]) * ab[2]) / np.float32(l2)
            np.clip(t, 0.0, 1.0, out=t)
            dx = xs - (a[0] + t * ab[0])
            dy = ys - (a[1] + t * ab[1])
            dz = zs - (a[2] + t * ab[2])
            d = np.sqrt(dx * dx + dy * dy + dz * dz) - (ra + t * (rb - ra))
            cur = best[loc]
            better = d < cur
            cur[better] = d[better]
            param[loc][better] = (i + t)[better]
        return sl, best, param
