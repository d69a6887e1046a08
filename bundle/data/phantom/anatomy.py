"""Abdominal anatomy of the phantom: patient sampling and painting of every structure.

Structures (in painting order): body outline with skin, subcutaneous fat, abdominal wall muscle and the
visceral-fat cavity; paraspinal, psoas and quadratus muscles; the lumbar spine (vertebral bodies with cortex,
discs, neural arch, processes, canal); lower ribs; kidneys (cortex, medulla, sinus fat, pelvis); aorta, IVC,
portal/mesenteric/splenic/renal/celiac vessels; liver (with hepatic and portal venous branches); gallbladder;
spleen; pancreas (lobulated, with duct); stomach, duodenum, colon and small-bowel loops (wall, fluid, gas with
air-fluid levels, stool); mesenteric strands. HU values depend on the contrast phase of the case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bundle.data.phantom.canvas import Canvas, Frame, ellipsoid_sdf, rotation, smooth_max, smooth_min

__all__ = ["ORGAN_Z_RANGE", "PHASES", "Body", "Patient", "draw_anatomy", "sample_patient"]

#: Contrast phases with their probability.
PHASES = {"non_contrast": 0.15, "arterial": 0.30, "portal_venous": 0.55}

#: Canonical craniocaudal extent (mm) of each organ of interest, used to place the scan range.
ORGAN_Z_RANGE = {"pancreas": (-50.0, 40.0), "liver": (-48.0, 106.0)}

# unenhanced HU (mean, sd of the per-case draw)
_BASE_HU = {
    "fat": (-102.0, 6.0),
    "visceral_fat": (-96.0, 6.0),
    "skin": (30.0, 5.0),
    "muscle": (48.0, 4.0),
    "liver": (58.0, 5.0),
    "pancreas": (44.0, 4.0),
    "spleen": (46.0, 3.0),
    "kidney_cortex": (32.0, 3.0),
    "kidney_medulla": (30.0, 3.0),
    "blood": (42.0, 3.0),
    "bowel_wall": (38.0, 4.0),
    "bowel_fluid": (12.0, 5.0),
    "bile": (8.0, 4.0),
    "csf": (12.0, 3.0),
    "cord": (34.0, 3.0),
    "disc": (82.0, 6.0),
    "cancellous": (255.0, 35.0),
    "cortical": (820.0, 90.0),
    "arch": (560.0, 70.0),
    "cartilage": (130.0, 15.0),
    "stool": (-30.0, 20.0),
}

# contrast enhancement (HU added) per phase, before the per-case dose factor
_ENHANCEMENT = {
    "non_contrast": {},
    "arterial": {
        "aorta": 240.0,
        "portal": 95.0,
        "ivc": 30.0,
        "hepatic_vein": 20.0,
        "liver": 16.0,
        "pancreas": 72.0,
        "spleen": 70.0,
        "kidney_cortex": 160.0,
        "kidney_medulla": 40.0,
        "bowel_wall": 45.0,
        "muscle": 8.0,
        "skin": 10.0,
    },
    "portal_venous": {
        "aorta": 135.0,
        "portal": 150.0,
        "ivc": 110.0,
        "hepatic_vein": 130.0,
        "liver": 56.0,
        "pancreas": 58.0,
        "spleen": 75.0,
        "kidney_cortex": 140.0,
        "kidney_medulla": 120.0,
        "bowel_wall": 50.0,
        "muscle": 10.0,
        "skin": 15.0,
    },
}


@dataclass(frozen=True)
class Body:
    """World-space body outline (mm): half width, anterior/posterior half depths and layer thicknesses."""

    half_width: float
    ant_depth: float
    post_depth: float
    fat_lat: float
    fat_ant: float
    fat_post: float
    muscle_lat: float
    muscle_ant: float
    muscle_post: float
    taper: float
    harmonics: tuple = ((), ())

    def cavity(self) -> tuple[float, float, float]:
        """Half width, anterior and posterior half depth of the abdominal cavity."""
        return (
            self.half_width - 2.0 - self.fat_lat - self.muscle_lat,
            self.ant_depth - 2.0 - self.fat_ant - self.muscle_ant,
            self.post_depth - 2.0 - self.fat_post - self.muscle_post,
        )


@dataclass
class Patient:
    """Everything random about one patient (anatomy and contrast), drawn by :func:`sample_patient`.

    ``landmarks`` collects canonical positions (kidney hila, portal confluence, ...) while the anatomy is painted,
    so that later structures attach to earlier ones.
    """

    body: Body
    frame: Frame
    phase: str
    hu: dict[str, float]
    organ_scale: float
    pancreas_fat: float
    mesentery: float
    aortic_calcification: float
    oral_contrast: bool
    spine_phase: float
    diaphragm: tuple[float, float]
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)


# canonical cavity: half width 105 mm, anterior wall at v = -78, vertebral body centre at v = +18
_CAV_HALF_WIDTH = 105.0
_CAV_ANT = -78.0
_VB_V = 18.0
_SPINOUS_TIP_V = 83.0


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw a patient: habitus, organ scale, contrast phase and tissue HU."""
    adiposity = float(rng.beta(2.0, 2.2))
    half_width = float(rng.uniform(112.0, 140.0))
    body = Body(
        half_width=half_width,
        ant_depth=float(rng.uniform(0.70, 0.86) * half_width),
        post_depth=float(rng.uniform(0.66, 0.76) * half_width),
        fat_lat=float(6.0 + 28.0 * adiposity + rng.uniform(-3, 3)),
        fat_ant=float(7.0 + 30.0 * adiposity + rng.uniform(-3, 3)),
        fat_post=float(6.0 + 22.0 * adiposity + rng.uniform(-2, 2)),
        muscle_lat=float(rng.uniform(9.0, 14.0)),
        muscle_ant=float(rng.uniform(7.0, 11.0)),
        muscle_post=float(rng.uniform(8.0, 12.0)),
        taper=float(rng.uniform(-0.04, 0.06)),
        harmonics=(
            (2, 3, 4, 5, 7),
            tuple(
                (float(rng.uniform(0.5, 3.0) / np.sqrt(k)), float(rng.uniform(0, 6.3)), float(rng.normal(0, 0.3)))
                for k in (2, 3, 4, 5, 7)
            ),
        ),
    )
    cav_w, cav_a, _ = body.cavity()
    su = cav_w / _CAV_HALF_WIDTH
    v_ant = -cav_a
    # place the spine so that the spinous process tip reaches the posterior subcutaneous fat
    k = (_SPINOUS_TIP_V - _VB_V) / (_VB_V - _CAV_ANT)
    v_vb = (body.post_depth - 2.0 - body.fat_post + 2.0 + k * v_ant) / (1.0 + k)
    sv = (v_vb - v_ant) / (_VB_V - _CAV_ANT)
    sw = float(rng.uniform(0.9, 1.1))
    frame = Frame(scale=(su, sv, sw), offset=(0.0, v_ant - _CAV_ANT * sv, 0.0))

    phase_names = list(PHASES)
    phase = phase_names[int(rng.choice(len(phase_names), p=list(PHASES.values())))]
    dose = float(rng.uniform(0.8, 1.2))
    hu = {name: float(rng.normal(mean, sd)) for name, (mean, sd) in _BASE_HU.items()}
    for name in ("aorta", "portal", "ivc", "hepatic_vein"):
        hu[name] = hu["blood"] + rng.normal(0.0, 2.0)
    for name, enh in _ENHANCEMENT[phase].items():
        hu[name] += dose * enh * float(rng.uniform(0.9, 1.1))
    age = float(rng.uniform(0.0, 1.0))
    hu["cancellous"] -= 70.0 * age
    return Patient(
        body=body,
        frame=frame,
        phase=phase,
        hu=hu,
        organ_scale=float(rng.uniform(0.9, 1.1)),
        pancreas_fat=float(np.clip(rng.normal(0.08 + 0.15 * age, 0.05), 0.0, 0.3)),
        mesentery=float(rng.uniform(0.4, 1.0)),
        aortic_calcification=float(max(0.0, age - 0.4) * 1.6),
        oral_contrast=bool(rng.uniform() < 0.2),
        spine_phase=float(rng.uniform(0.0, 36.0)),
        diaphragm=(float(rng.uniform(100.0, 108.0)), float(rng.uniform(84.0, 94.0))),
    )


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def _tex(cv: Canvas, sl, mean: float, fine: float = 0.0, mid: float = 0.0, coarse: float = 0.0) -> np.ndarray:
    out = np.float32(mean) + np.float32(fine) * cv.tex_fine[sl]
    if mid:
        out += np.float32(mid) * cv.tex_mid[sl]
    if coarse:
        out += np.float32(coarse) * cv.tex_coarse[sl]
    return out


def _shell(sdf: np.ndarray, thickness: float, outer, inner, ramp: float) -> np.ndarray:
    """Value of a walled structure: ``outer`` within ``thickness`` mm of the surface, ``inner`` deeper."""
    t = np.clip((-sdf - thickness) / np.float32(max(ramp, 1e-3)) + 0.5, 0.0, 1.0)
    return outer + (inner - outer) * t


def _capsule2d(x: np.ndarray, y: np.ndarray, a, b, r: float) -> np.ndarray:
    ab = np.array(b, float) - np.array(a, float)
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2) - np.float32(r)


def _ellipse2d(x: np.ndarray, y: np.ndarray, c, radii) -> np.ndarray:
    dx, dy = x - np.float32(c[0]), y - np.float32(c[1])
    q = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2) + np.float32(1e-6)
    return np.sqrt(dx * dx + dy * dy) * (1.0 - 1.0 / q)


def _jit(rng: np.random.Generator, point, sd: float = 5.0) -> np.ndarray:
    return np.asarray(point, float) + rng.normal(0.0, sd, size=3)


def _slab(z: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Signed distance (mm) to the slab lo <= z <= hi."""
    return np.maximum(lo - z, z - hi)


def _dome(p: Patient, x: np.ndarray, y: np.ndarray, recess: bool = False) -> np.ndarray:
    """Canonical height (w, mm) of the diaphragm; with ``recess`` the lower edge of the costophrenic recesses."""
    right, left = p.diaphragm
    base = left + (right - left) / (1.0 + np.exp(np.clip(x / 15.0, -30.0, 30.0)))
    r2 = ((np.abs(x) - 45.0) / 55.0) ** 2 + ((y + 5.0) / np.where(y > -5.0, np.float32(70.0), np.float32(110.0))) ** 2
    height = base - 30.0 * r2
    if recess:
        height = height - 70.0 * np.clip(r2 - 0.45, 0.0, 0.6)
    return height.astype(np.float32)


def _z_range_c(cv: Canvas) -> tuple[float, float]:
    w = cv.w
    sw, ow = cv.frame.scale[2], cv.frame.offset[2]
    return float((w[0] - ow) / sw) - 20.0, float((w[-1] - ow) / sw) + 20.0


# ----------------------------------------------------------------------------------------------------------------------
# body wall, muscles, skeleton
# ----------------------------------------------------------------------------------------------------------------------


def _draw_body(cv: Canvas, p: Patient) -> None:
    b = p.body
    uu = cv.u[:, None, None]
    vv = cv.v[None, :, None]
    taper = (1.0 + b.taper * cv.w / 100.0)[None, None, :].astype(np.float32)
    expo = np.where(vv < 0, np.float32(2.2), np.float32(3.2))
    rr = np.sqrt(uu * uu + vv * vv)
    # smooth outline irregularity: a few angular harmonics drifting slowly along z
    theta = np.arctan2(vv, uu)
    pert = np.zeros(np.broadcast_shapes(theta.shape, (1, 1, len(cv.w))), dtype=np.float32)
    for k, amp in zip(b.harmonics[0], b.harmonics[1], strict=True):
        phase = amp[1] + amp[2] * cv.w[None, None, :] / 100.0
        pert += np.float32(amp[0]) * np.cos(k * theta + phase).astype(np.float32)

    def layer(a: float, ba: float, bp: float) -> np.ndarray:
        depth = np.where(vv < 0, np.float32(ba), np.float32(bp))
        rho = ((np.abs(uu) / (a * taper)) ** expo + (np.abs(vv) / depth) ** expo) ** (1.0 / expo) + np.float32(1e-6)
        return rr * (1.0 - 1.0 / rho) + pert

    full = (slice(None),) * 3
    cv.paint(full, layer(b.half_width, b.ant_depth, b.post_depth), _tex(cv, full, p.hu["skin"], 6.0))
    a1, ba1, bp1 = b.half_width - 2.0, b.ant_depth - 2.0, b.post_depth - 2.0
    cv.paint(full, layer(a1, ba1, bp1), _tex(cv, full, p.hu["fat"], 7.0, 3.0))
    a2, ba2, bp2 = a1 - b.fat_lat, ba1 - b.fat_ant, bp1 - b.fat_post
    cv.paint(full, layer(a2, ba2, bp2), _tex(cv, full, p.hu["muscle"], 6.0, 3.0))
    a3, ba3, bp3 = a2 - b.muscle_lat, ba2 - b.muscle_ant, bp2 - b.muscle_post
    cav = layer(a3, ba3, bp3)
    cv.cavity = cav
    cv.paint(full, cav, _tex(cv, full, p.hu["visceral_fat"], 8.0, 4.0), becomes_free=True)
    # linea alba: a thin fibrous-fat seam splitting the rectus muscles
    sl = cv.region((-8, -120, -400), (8, -40, 400))
    if sl is not None:
        x, y, _ = cv.coords(sl)
        seam = np.maximum(np.abs(x) - 1.5, np.maximum(-cav[sl], cav[sl] - b.muscle_ant + 0.5))
        seam = np.maximum(seam, y + 40.0)
        cv.paint(sl, seam, _tex(cv, sl, p.hu["fat"] + 40.0, 5.0))


def _draw_muscles(cv: Canvas, p: Patient, rng: np.random.Generator) -> None:
    zlo, zhi = _z_range_c(cv)
    mus = p.hu["muscle"]
    for side in (-1.0, 1.0):
        # erector spinae
        sl = cv.region((side * 55, 40, zlo), (side * 5, 85, zhi))
        if sl is not None:
            x, y, _ = cv.coords(sl)
            c = (side * rng.uniform(24, 30), rng.uniform(60, 64))
            f = _ellipse2d(x, y, c, (rng.uniform(20, 25), rng.uniform(15, 19))) + 1.5 * cv.tex_mid[sl]
            cv.paint(sl, f, _tex(cv, sl, mus, 6.0, 3.0))
        # quadratus lumborum
        ctrl = np.array([[side * 58, 46, 30], [side * 62, 48, -40], [side * 66, 46, -140]]) + rng.normal(0, 2, (3, 3))
        sl, f, _ = cv.tube(ctrl, [5.0, 11.0, 14.0], step_mm=12.0)
        if sl is not None:
            cv.paint(sl, f + 1.0 * cv.tex_mid[sl], _tex(cv, sl, mus, 6.0, 3.0))
        # psoas
        ctrl = np.array([[side * 29, 24, 45], [side * 34, 21, -20], [side * 42, 16, -140]]) + rng.normal(0, 2, (3, 3))
        sl, f, _ = cv.tube(ctrl, [5.0, 13.0, 22.0], step_mm=12.0)
        if sl is not None:
            cv.paint(sl, f + 1.0 * cv.tex_mid[sl], _tex(cv, sl, mus, 6.0, 3.0))


def _draw_spine(cv: Canvas, p: Patient) -> None:
    zlo, zhi = _z_range_c(cv)
    sl = cv.region((-55, -5, zlo), (55, 90, zhi))
    if sl is None:
        return
    x, y, z = cv.coords(sl)
    period = 36.0
    zc = np.mod(z - np.float32(p.spine_phase), np.float32(period))
    d_disc = np.minimum(np.maximum(-zc, zc - 9.0), period - zc)
    hu = p.hu
    vb = _ellipse2d(x, y, (0.0, _VB_V), (23.0, 16.0)) + 0.6 * cv.tex_mid[sl]
    cv.paint(sl, np.maximum(vb, d_disc), _tex(cv, sl, hu["disc"], 6.0))
    cv.paint(sl, np.maximum(vb, -d_disc), _tex(cv, sl, hu["cortical"], 40.0))
    cv.paint(sl, np.maximum(vb + 2.2, -d_disc + 1.6), _tex(cv, sl, hu["cancellous"], 30.0, 18.0))
    rc = np.sqrt(x * x + (y - 45.0) ** 2)
    arch = np.maximum(np.maximum(rc - 15.0, 9.5 - rc), 32.0 - y)
    cv.paint(sl, np.maximum(arch, _slab(zc, 11.0, 34.0)), _tex(cv, sl, hu["arch"], 50.0))
    spinous = _capsule2d(x, y, (0.0, 57.0), (0.0, _SPINOUS_TIP_V - 4.0), 4.0)
    cv.paint(sl, np.maximum(spinous, _slab(zc, 15.0, 35.0)), _tex(cv, sl, hu["arch"], 50.0))
    for side in (-1.0, 1.0):
        tp = _capsule2d(x, y, (side * 13.0, 43.0), (side * 38.0, 50.0), 3.2)
        cv.paint(sl, np.maximum(tp, _slab(zc, 15.0, 26.0)), _tex(cv, sl, hu["arch"], 50.0))
    cv.paint(sl, rc - 9.5, _tex(cv, sl, hu["csf"], 3.0))
    cv.paint(sl, _ellipse2d(x, y, (0.0, 44.0), (5.5, 4.5)), _tex(cv, sl, hu["cord"], 3.0))


def _draw_ribs(cv: Canvas, p: Patient, rng: np.random.Generator) -> None:
    _, zhi = _z_range_c(cv)
    b = p.body
    cav_w, cav_a, cav_p = b.cavity()
    su, sv, _ = cv.frame.scale
    a_c = cav_w / su
    front = _CAV_ANT
    back = _CAV_ANT + (cav_a + cav_p) / sv
    for k in range(5):
        w0 = 18.0 + 22.0 * k + rng.normal(0, 3)
        if w0 - 60 > zhi:
            break
        extent = [0.45, 0.6, 0.75, 0.85, 0.9][k]  # lower ribs are short (floating)
        for side in (-1.0, 1.0):
            theta = np.linspace(0.42 * np.pi, 0.42 * np.pi - extent * 0.95 * np.pi, 9)
            pts = []
            for i, th in enumerate(theta):
                cu, sn = np.cos(th), np.sin(th)
                depth = back if sn > 0 else -front
                expo = 3.2 if sn > 0 else 2.2
                rad = 1.0 / ((abs(cu) / a_c) ** expo + (abs(sn) / depth) ** expo) ** (1.0 / expo)
                rad += 6.0
                pts.append([side * rad * cu, rad * sn, w0 - 55.0 * (i / (len(theta) - 1)) * extent])
            pts = np.asarray(pts) + rng.normal(0, 1.0, (len(pts), 3))
            radii = np.full(len(pts), 4.8)
            sl, f, par = cv.tube(pts, radii, step_mm=8.0)
            if sl is None:
                continue
            frac = par / max(1.0, float(par.max()))
            marrow = np.where(frac > 0.8, np.float32(p.hu["cartilage"]), np.float32(p.hu["cancellous"] - 40.0))
            value = _shell(f, 1.4, _tex(cv, sl, p.hu["cortical"] - 150.0, 40.0), marrow, cv.pv_width)
            cv.paint(sl, f, value)


# ----------------------------------------------------------------------------------------------------------------------
# organs
# ----------------------------------------------------------------------------------------------------------------------


def _draw_kidneys(cv: Canvas, p: Patient, rng: np.random.Generator) -> None:
    hu = p.hu
    for side in (-1.0, 1.0):
        c = _jit(rng, (side * 68.0, 29.0, -6.0 if side > 0 else -20.0), 4.0)
        s = p.organ_scale * rng.uniform(0.92, 1.08)
        radii = np.array([23.0, 19.0, 50.0]) * s
        rot = rotation(rng.normal(0.25, 0.08), side * rng.uniform(0.12, 0.3), -side * rng.uniform(0.35, 0.65))
        medial = rot @ np.array([-side, 0.0, 0.0])
        lo, hi = c - radii.max() - 5, c + radii.max() + 5
        sl = cv.region(lo, hi)
        if sl is None:
            continue
        x, y, z = cv.coords(sl)
        f = ellipsoid_sdf(x, y, z, c, radii, rot) + 0.8 * cv.tex_mid[sl]
        notch = ellipsoid_sdf(x, y, z, c + medial * radii[0] * 1.05, (radii[0] * 0.5,) * 2 + (radii[2] * 0.35,), rot)
        f = smooth_max(f, -notch, 3.0)
        med = ellipsoid_sdf(x, y, z, c + medial * 3.0, radii * np.array([0.62, 0.62, 0.8]), rot)
        med = med + 2.5 * cv.tex_mid[sl]
        cortex = _tex(cv, sl, hu["kidney_cortex"], 5.0)
        medulla = _tex(cv, sl, hu["kidney_medulla"], 5.0)
        tmed = np.clip(-med / np.float32(cv.pv_width) + 0.5, 0.0, 1.0)
        value = cortex + (medulla - cortex) * tmed
        cv.paint(sl, f, value)
        sinus = ellipsoid_sdf(
            x, y, z, c + medial * radii[0] * 0.55, (radii[0] * 0.42, radii[1] * 0.5, radii[2] * 0.45), rot
        )
        cv.paint(sl, np.maximum(sinus, f + 1.5), _tex(cv, sl, hu["visceral_fat"] + 15.0, 8.0))
        pelvis = ellipsoid_sdf(
            x, y, z, c + medial * radii[0] * 0.7, (radii[0] * 0.22, radii[1] * 0.25, radii[2] * 0.18), rot
        )
        cv.paint(sl, pelvis, _tex(cv, sl, hu["bile"], 3.0))
        cv.store(f"kidney_{'left' if side > 0 else 'right'}", sl, f)
        p.landmarks[f"kidney_{side:+.0f}"] = c + medial * radii[0] * 0.9


def _draw_vessels(cv: Canvas, p: Patient, rng: np.random.Generator) -> None:
    hu = p.hu
    zlo, zhi = _z_range_c(cv)
    j = {name: rng.normal(0.0, 3.0, 3) for name in ("aorta", "ivc", "conf", "sma", "hilum", "spl")}
    aorta = np.array([[14, -11, zlo - 20], [13, -10, -40], [11, -8, 40], [9, -6, zhi + 20]]) + j["aorta"]
    ivc = np.array([[-24, -12, zlo - 20], [-24, -11, -30], [-22, -8, 30], [-17, -4, 95], [-12, 0, zhi + 20]]) + j["ivc"]
    conf = np.array([-8.0, -38.0, 0.0]) + j["conf"]
    hilum = np.array([-44.0, -24.0, 34.0]) + j["hilum"]

    # aorta with optional wall calcifications
    sl, f, par = cv.tube(aorta, [10.5, 11.0, 11.5, 12.0], step_mm=15.0)
    cv.paint(sl, f, _tex(cv, sl, hu["aorta"], 4.0))
    if p.aortic_calcification > 0:
        n = rng.poisson(6.0 * p.aortic_calcification)
        for _ in range(int(n)):
            wz = rng.uniform(zlo + 20, min(zhi, 40.0))
            t = (wz - aorta[0, 2]) / (aorta[-1, 2] - aorta[0, 2])
            cx = np.interp(t, np.linspace(0, 1, len(aorta)), aorta[:, 0])
            cy = np.interp(t, np.linspace(0, 1, len(aorta)), aorta[:, 1])
            ang = rng.uniform(0, 2 * np.pi)
            centre = np.array([cx + 10.5 * np.cos(ang), cy + 10.5 * np.sin(ang), wz])
            radii = (rng.uniform(1.0, 2.0), rng.uniform(1.0, 2.0), rng.uniform(2.0, 5.0))
            csl = cv.region(centre - 6, centre + 6)
            if csl is not None:
                x, y, z = cv.coords(csl)
                cv.paint(csl, ellipsoid_sdf(x, y, z, centre, radii), rng.uniform(500.0, 900.0))
    sl, f, _ = cv.tube(ivc, [10.0, 11.0, 11.5, 12.0, 12.0], step_mm=15.0)
    cv.paint(sl, f, _tex(cv, sl, hu["ivc"], 4.0))

    def vessel(ctrl, radii, value_key: str, internal: bool = False, step: float = 6.0) -> None:
        vsl, vf, _ = cv.tube(np.asarray(ctrl, float), radii, step_mm=step)
        cv.paint(vsl, vf, _tex(cv, vsl, hu[value_key], 4.0), internal=internal)

    # superior mesenteric vein / portal confluence / portal vein
    vessel([[-12, -50, zlo - 10], [-10, -45, -30], conf], [5.0, 5.5, 6.5], "portal")
    vessel([conf, conf + [-20, 4, 18], hilum], [7.0, 7.5, 7.0], "portal")
    # splenic vein along the back of the pancreas to the splenic hilum
    spl = np.array([[22, -30, 8], [52, -12, 18], [68, 12, 26], [72, 28, 38]], float) + j["spl"]
    vessel(np.vstack([conf, spl]), [5.0, 4.5, 4.5, 4.5, 4.5], "portal")
    # superior mesenteric artery, celiac trunk and branches
    a_sma = aorta[1] + (aorta[2] - aorta[1]) * 0.65
    vessel(
        [a_sma, [6, -35, a_sma[2] - 10] + j["sma"], [5, -46, -30] + j["sma"], [3, -52, zlo - 10]],
        [3.5, 3.5, 3.2, 3.0],
        "aorta",
    )
    a_cel = aorta[2] + (aorta[3] - aorta[2]) * 0.05
    cel = a_cel + np.array([-3.0, -24.0, 2.0])
    vessel([a_cel, cel, [-30, -40, 28], hilum + [2, -6, -2]], [3.2, 3.0, 2.8, 2.5], "aorta")
    vessel([cel, [30, -38, 24], [52, -22, 30], [70, 14, 38]], [3.0, 2.8, 2.8, 2.5], "aorta")
    # renal veins and arteries (the left renal vein passes between the aorta and the SMA)
    kl = p.landmarks.get("kidney_+1", np.array([46.0, 22.0, -6.0]))
    kr = p.landmarks.get("kidney_-1", np.array([-46.0, 22.0, -20.0]))
    vessel(
        [kl, [30, -8, kl[2] + 1], [14, -27, kl[2] + 2], [-2, -25, kl[2] + 2], [-18, -13, kl[2] + 2]], [4.5] * 5, "ivc"
    )
    vessel([kr, [-30, 8, kr[2] + 2], [-22, -6, kr[2] + 3]], [4.5] * 3, "ivc")
    vessel([[13, -6, kl[2] - 6], [30, 10, kl[2] - 5], kl + [0, 4, -4]], [3.0, 2.8, 2.5], "aorta")
    vessel([[10, -4, kr[2] - 4], [-10, 4, kr[2] - 2], [-30, 12, kr[2] - 2], kr + [0, 4, -3]], [3.0] * 4, "aorta")
    p.landmarks["confluence"] = conf
    p.landmarks["hilum"] = hilum
    p.landmarks["splenic_vein"] = spl


def _draw_liver(cv: Canvas, p: Patient, rng: np.random.Generator, organ: str) -> None:
    s = p.organ_scale
    c1 = _jit(rng, (-52, -8, 36), 4.0)
    r1 = np.array([60.0, 74.0, 66.0]) * s * rng.uniform(0.93, 1.07, 3)
    c2 = _jit(rng, (4, -46, 50), 5.0)
    r2 = np.array([54.0, 27.0, 36.0]) * s * rng.uniform(0.9, 1.1, 3)
    c3 = _jit(rng, (-68, 8, -6), 4.0)
    r3 = np.array([31.0, 38.0, 38.0]) * s * rng.uniform(0.9, 1.1, 3)
    lo = np.minimum.reduce([c1 - r1, c2 - r2, c3 - r3]) - 6
    hi = np.maximum.reduce([c1 + r1, c2 + r2, c3 + r3]) + 6
    sl = cv.region(lo, hi)
    if sl is None:
        return
    x, y, z = cv.coords(sl)
    f1 = ellipsoid_sdf(x, y, z, c1, r1, rotation(0.0, 0.0, rng.normal(0, 0.1)))
    f2 = ellipsoid_sdf(x, y, z, c2, r2, rotation(0.0, rng.normal(0.15, 0.08), rng.normal(-0.2, 0.1)))
    f3 = ellipsoid_sdf(x, y, z, c3, r3)
    f = smooth_min(smooth_min(f1, f2, 18.0), f3, 15.0) + 2.0 * cv.tex_coarse[sl]
    f = smooth_max(f, cv.cavity[sl] + 2.0, 4.0)
    f = smooth_max(f, z - (_dome(p, x, y) - 4.0), 4.0)
    value = _tex(cv, sl, p.hu["liver"], 5.0, 2.0, 3.0)
    cv.paint(sl, f, value, fill_free=True, organ=organ == "liver")
    cv.store("liver", sl, f)
    internal = organ == "liver"
    # hepatic veins draining into the IVC, portal branches from the hilum
    top = np.array([-18.0, -6.0, 88.0]) + rng.normal(0, 3, 3)
    hilum = p.landmarks["hilum"]
    branches = [
        ([top, [-45, 4, 70], [-80, 12, 50]], [5.5, 4.5, 2.5], "hepatic_vein"),
        ([top, [-36, -26, 68], [-52, -55, 46]], [5.0, 4.0, 2.5], "hepatic_vein"),
        ([top, [-10, -30, 72], [10, -55, 60]], [4.5, 3.5, 2.2], "hepatic_vein"),
        ([hilum, [-62, -12, 38], [-86, 0, 20]], [5.5, 4.2, 2.5], "portal"),
        ([hilum, [-62, -30, 30], [-78, -40, 6]], [4.5, 3.5, 2.2], "portal"),
        ([hilum, [-22, -40, 44], [12, -52, 48]], [4.5, 3.5, 2.2], "portal"),
    ]
    for ctrl, radii, key in branches:
        ctrl = np.asarray(ctrl, float) + np.vstack([np.zeros(3), rng.normal(0, 4, (len(ctrl) - 1, 3))])
        vsl, vf, _ = cv.tube(ctrl, radii, step_mm=6.0)
        if vsl is None:
            continue
        vf = np.maximum(vf, cv.stored("liver", vsl) + 1.5)
        cv.paint(vsl, vf, _tex(cv, vsl, p.hu[key], 4.0), internal=internal)
    # gallbladder under the liver
    c = _jit(rng, (-46, -56, -6), 4.0)
    radii = np.array([13.0, 13.0, 28.0]) * rng.uniform(0.8, 1.15, 3)
    gsl = cv.region(c - radii.max() - 4, c + radii.max() + 4)
    if gsl is not None and rng.uniform() < 0.85:
        x, y, z = cv.coords(gsl)
        gf = ellipsoid_sdf(x, y, z, c, radii, rotation(rng.normal(0.6, 0.15), rng.normal(0.2, 0.1), 0.0))
        gf = np.maximum(gf, cv.cavity[gsl] + 3.0)
        value = _shell(gf, 1.6, _tex(cv, gsl, p.hu["bowel_wall"], 4.0), _tex(cv, gsl, p.hu["bile"], 3.0), cv.pv_width)
        cv.paint(gsl, gf, value)


def _draw_spleen(cv: Canvas, p: Patient, rng: np.random.Generator) -> None:
    c = _jit(rng, (78, 38, 42), 4.0)
    radii = np.array([21.0, 46.0, 42.0]) * p.organ_scale * rng.uniform(0.85, 1.15, 3)
    sl = cv.region(c - radii.max() - 6, c + radii.max() + 6)
    if sl is None:
        return
    x, y, z = cv.coords(sl)
    f = ellipsoid_sdf(x, y, z, c, radii, rotation(0.0, 0.0, rng.normal(-0.55, 0.1))) + 1.2 * cv.tex_mid[sl]
    hollow = ellipsoid_sdf(x, y, z, c + np.array([-32.0, -18.0, 0.0]), (26.0, 30.0, 40.0))
    f = smooth_max(smooth_max(f, -hollow, 4.0), cv.cavity[sl] + 2.0, 3.0)
    f = smooth_max(f, z - (_dome(p, x, y) - 4.0), 4.0)
    cv.paint(sl, f, _tex(cv, sl, p.hu["spleen"], 5.0, 2.0), fill_free=True)


def _draw_pancreas(cv: Canvas, p: Patient, rng: np.random.Generator, organ: str) -> None:
    s = p.organ_scale
    conf = p.landmarks["confluence"]
    ctrl = np.array(
        [[-38, -30, -34], [-37, -31, -14], [-10, -51, -2], [22, -44, 8], [52, -25, 18], [66, -2, 26]], float
    )
    ctrl[1:] += rng.normal(0, 3.0, (5, 3))
    ctrl[2] = conf + np.array([-2.0, -13.0, -2.0]) + rng.normal(0, 1.5, 3)
    ctrl[3, 1] = min(ctrl[3, 1], p.landmarks["splenic_vein"][0, 1] - 12.0)
    radii = np.array([12.5, 15.0, 9.5, 11.0, 10.5, 8.5]) * s * rng.uniform(0.88, 1.12, 6)
    unc = np.array([ctrl[1] + [0, 2, -4], [-15, -24, -27] + rng.normal(0, 2, 3)])
    lo = np.minimum(ctrl.min(0), unc.min(0)) - radii.max() - 6
    hi = np.maximum(ctrl.max(0), unc.max(0)) + radii.max() + 6
    sl = cv.region(lo, hi)
    if sl is None:
        return
    _, f_main, _ = cv.tube(ctrl, radii, step_mm=5.0, sl=sl)
    _, f_unc, _ = cv.tube(unc, [radii[1] * 0.6, 7.0 * s], step_mm=5.0, sl=sl)
    lob = cv.tex_mid[sl]
    f = smooth_min(f_main, f_unc, 5.0) + np.float32(rng.uniform(1.2, 2.2)) * lob
    ff = np.float32(p.pancreas_fat) * np.clip(lob - 0.5, 0.0, 1.0)
    base = _tex(cv, sl, p.hu["pancreas"], 6.0, 0.0, 2.0)
    value = base + ff * (np.float32(p.hu["fat"]) - base)
    cv.paint(sl, f, value, fill_free=True, organ=organ == "pancreas")
    cv.store("pancreas", sl, f)
    # main pancreatic duct
    _, f_duct, _ = cv.tube(ctrl[1:], np.full(5, rng.uniform(1.0, 1.7)), step_mm=5.0, sl=sl)
    f_duct = np.maximum(f_duct, f + 2.0)
    cv.paint(sl, f_duct, _tex(cv, sl, p.hu["bile"] + 8.0, 3.0), internal=organ == "pancreas")
    p.landmarks["pancreas_head"] = ctrl[1]


def _bowel_value(cv: Canvas, sl, f: np.ndarray, y: np.ndarray, level: np.ndarray, wall_t: float, content, p: Patient):
    gas = _tex(cv, sl, -990.0, 8.0)
    tg = np.clip((level - y) / np.float32(1.0) + 0.5, 0.0, 1.0)
    lumen = content + (gas - content) * tg
    return _shell(f, wall_t, _tex(cv, sl, p.hu["bowel_wall"], 5.0), lumen, cv.pv_width)


def _draw_gi(cv: Canvas, p: Patient, rng: np.random.Generator) -> None:
    hu = p.hu
    fluid_hu = hu["bowel_fluid"] if not p.oral_contrast else float(rng.uniform(160.0, 320.0))
    # stomach: fundus/body plus antrum to the pylorus
    c = _jit(rng, (50, -30, 58), 5.0)
    radii = np.array([33.0, 32.0, 42.0]) * rng.uniform(0.85, 1.15, 3)
    pylorus = np.array([-18.0, -50.0, 8.0]) + rng.normal(0, 3, 3)
    antrum = np.array([[44, -42, 26], [18, -56, 14], [-4, -56, 10], pylorus], float) + np.vstack(
        [rng.normal(0, 3, (3, 3)), np.zeros(3)]
    )
    sl = cv.region(np.minimum(c - radii, antrum.min(0) - 24), np.maximum(c + radii, antrum.max(0) + 24))
    if sl is not None:
        x, y, z = cv.coords(sl)
        fs = ellipsoid_sdf(x, y, z, c, radii, rotation(0.0, rng.normal(-0.3, 0.1), 0.0))
        _, fa, _ = cv.tube(antrum, [22.0, 16.0, 12.0, 9.0], step_mm=6.0, sl=sl)
        f = smooth_min(fs, fa, 8.0) + 1.2 * cv.tex_mid[sl]
        f = np.maximum(f, cv.cavity[sl] + 2.0)
        level = np.float32(c[1] - radii[1] * rng.uniform(0.3, 0.9))
        food = _tex(cv, sl, rng.uniform(15.0, 45.0), 8.0, 10.0) if rng.uniform() < 0.4 else _tex(cv, sl, fluid_hu, 5.0)
        cv.paint(sl, f, _bowel_value(cv, sl, f, y, level, 3.5, food, p), fill_free=True)

    # duodenal C-loop around the pancreatic head
    head = p.landmarks.get("pancreas_head", np.array([-37.0, -31.0, -14.0]))
    duo = np.array(
        [
            pylorus,
            [-46, -42, 6],
            [-62, -26, -6],
            [-62, -20, -32],
            [-44, -22, -52],
            [0, -36, -58],
            [22, -32, -46],
            [28, -38, -30],
        ],
        float,
    )
    duo[2:5, 0] = np.minimum(duo[2:5, 0], head[0] - 25.0)
    duo[1:] += rng.normal(0, 2.0, (7, 3))
    _draw_loop(cv, p, rng, duo, rng.uniform(10.0, 12.5), fluid_hu, rng.uniform(0.0, 0.4))

    # colon (ascending, transverse, descending) with stool and gas
    zlo, _ = _z_range_c(cv)
    colon = np.array(
        [
            [-84, -16, zlo - 10],
            [-84, -24, -40],
            [-76, -46, -20],
            [-45, -64, -32],
            [0, -68, -44],
            [48, -62, -28],
            [84, -34, 12],
            [88, -8, -30],
            [88, 2, zlo - 10],
        ],
        float,
    )
    colon[1:-1] += rng.normal(0, 4.0, (7, 3))
    rad = rng.uniform(15.0, 21.0)
    sl, f, par = cv.tube(colon, np.full(len(colon), rad), step_mm=8.0)
    if sl is not None:
        f = np.maximum(f + 1.5 * cv.tex_mid[sl], cv.cavity[sl] + 2.0)
        x, y, z = cv.coords(sl)
        bubbles = (cv.tex_fine[sl] + cv.tex_mid[sl]) > np.float32(rng.uniform(1.8, 2.6))
        stool = _tex(cv, sl, hu["stool"], 35.0, 25.0)
        stool = np.where(bubbles, np.float32(-900.0), stool)
        level = np.float32(-1e4) if rng.uniform() < 0.3 else y.min() + rng.uniform(5.0, 20.0)
        cv.paint(sl, f, _bowel_value(cv, sl, f, y, np.float32(level), 2.0, stool, p), fill_free=True)

    # small-bowel loops
    n_loops = int(rng.integers(7, 12))
    for _ in range(n_loops):
        upper = rng.uniform() < 0.3
        start = (
            np.array([rng.uniform(15, 70), rng.uniform(-62, -25), rng.uniform(-30, 5)])
            if upper
            else np.array([rng.uniform(-60, 70), rng.uniform(-68, -15), rng.uniform(-120, -35)])
        )
        pts = [start]
        direction = rng.normal(0, 1, 3)
        for _ in range(int(rng.integers(4, 8))):
            direction = direction / np.linalg.norm(direction) * 0.6 + rng.normal(0, 1, 3) * 0.8
            direction /= np.linalg.norm(direction)
            nxt = pts[-1] + direction * rng.uniform(18, 30)
            nxt[0] = np.clip(nxt[0], -75, 80)
            nxt[1] = np.clip(nxt[1], -72, 0)
            pts.append(nxt)
        collapsed = rng.uniform() < 0.35
        radius = rng.uniform(5.0, 7.0) if collapsed else rng.uniform(9.0, 13.0)
        content = hu["bowel_wall"] - 8.0 if collapsed else fluid_hu
        _draw_loop(cv, p, rng, np.asarray(pts), radius, content, 0.0 if collapsed else rng.uniform(0.0, 0.5))


def _draw_loop(
    cv: Canvas, p: Patient, rng: np.random.Generator, ctrl: np.ndarray, radius: float, content: float, gas: float
):
    sl, f, _ = cv.tube(ctrl, np.full(len(ctrl), radius), step_mm=6.0)
    if sl is None:
        return
    f = np.maximum(f + 0.8 * cv.tex_mid[sl], cv.cavity[sl] + 2.0)
    x, y, z = cv.coords(sl)
    level = np.float32(y.min() + 2.0 * radius * gas) if gas > 0.02 else np.float32(-1e4)
    # the air-fluid level is local to this loop: use the anterior-most point of the lumen near each voxel
    if gas > 0.02:
        inside = f < 0
        if inside.any():
            level = np.float32(y[inside].min() + 2.0 * radius * gas)
    cv.paint(sl, f, _bowel_value(cv, sl, f, y, level, 2.0, _tex(cv, sl, content, 5.0), p), fill_free=True)


def _draw_thorax(cv: Canvas, p: Patient) -> None:
    """Lung bases and heart above the diaphragm, lung in the posterior costophrenic recesses."""
    _, zhi = _z_range_c(cv)
    lo_w = min(p.diaphragm) - 30.0 - 45.0
    if zhi < lo_w:
        return
    sl = cv.region((-130, -130, lo_w), (130, 130, zhi))
    if sl is None:
        return
    x, y, z = cv.coords(sl)
    cav = cv.cavity[sl]
    lung = _tex(cv, sl, -860.0, 25.0, 15.0) + np.clip(cv.tex_fine[sl] - 2.1, 0.0, 1.0) * np.float32(800.0)
    muscle = _tex(cv, sl, p.hu["muscle"], 5.0)
    dome = _dome(p, x, y)
    mediastinum = np.where(y > -25.0, 30.0 - np.abs(x - 5.0), np.float32(-1e3))
    thorax = np.maximum(np.maximum(cav, dome - z), mediastinum)
    cv.paint(sl, thorax, _shell(thorax, 3.5, muscle, lung, cv.pv_width))
    recess = np.maximum(np.maximum(cav, _dome(p, x, y, recess=True) - z), np.maximum(-y - 10.0, mediastinum))
    cv.paint(sl, recess, _shell(recess, 2.5, muscle, lung, cv.pv_width), fill_free=True)
    heart = ellipsoid_sdf(x, y, z, (18.0, -38.0, max(p.diaphragm) + 45.0), (58.0, 42.0, 55.0))
    heart = np.maximum(heart, dome + 5.0 - z)
    cv.paint(
        sl, heart, _shell(heart, 2.0, _tex(cv, sl, p.hu["visceral_fat"], 6.0), _tex(cv, sl, p.hu["ivc"], 6.0), 2.0)
    )


def _draw_mesentery(cv: Canvas, p: Patient) -> None:
    strands = np.clip(1.0 - np.abs(cv.tex_mid) / np.float32(0.09), 0.0, 1.0)
    strands *= np.float32(70.0 * p.mesentery)
    vessels = np.clip(cv.tex_fine - 2.4, 0.0, 1.0) * np.float32(0.3 * (p.hu["portal"] + 80.0))
    cv.hu += cv.free * (strands + vessels)


def draw_anatomy(cv: Canvas, p: Patient, organ: str, rng: np.random.Generator) -> None:
    """Paint the whole abdomen of patient ``p`` onto ``cv``; ``organ`` is the organ of interest (label 1)."""
    _draw_body(cv, p)
    _draw_muscles(cv, p, rng)
    _draw_spine(cv, p)
    _draw_ribs(cv, p, rng)
    _draw_kidneys(cv, p, rng)
    _draw_vessels(cv, p, rng)
    _draw_liver(cv, p, rng, organ)
    _draw_spleen(cv, p, rng)
    _draw_pancreas(cv, p, rng, organ)
    _draw_thorax(cv, p)
    _draw_gi(cv, p, rng)
    _draw_mesentery(cv, p)
