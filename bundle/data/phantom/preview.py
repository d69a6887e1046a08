"""Preview montage of a phantom dataset: axial slices through each lesion type with label contours."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data.phantom.lesion_spec import PhantomSpec

__all__ = ["write_preview"]

_WINDOW = (-135.0, 215.0)  # abdominal soft-tissue window (W350 / L40)


def _pick_cases(metas: list[dict], spec: PhantomSpec, per_type: int) -> list[tuple[str, list[dict]]]:
    rows = []
    for t in list(spec.inlier_types) + list(spec.ood_types):
        with_type = [m for m in metas if any(les["type"] == t.name for les in m["lesions"])]
        # prefer cases where this type is the only lesion type
        with_type.sort(key=lambda m: (len({les["type"] for les in m["lesions"]}) > 1, m["name"]))
        rows.append((t.name, with_type[:per_type]))
    return rows


def write_preview(root: str | Path, metas: list[dict], spec: PhantomSpec, path: str | Path, per_type: int = 2) -> Path:
    """Write a PNG montage: one row per lesion type, ``per_type`` cases, each as full slice plus zoom.

    Args:
        root: dataset folder holding the images and labels named in ``metas``.
        metas: per-case metadata as written to ``phantom_cases.json``.
        spec: the spec the dataset was generated from.
        path: PNG file to write.
        per_type: cases shown per lesion type.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    rows = [r for r in _pick_cases(metas, spec, per_type) if r[1]]
    if not rows:  # no lesions at all: show the first cases
        rows = [("no lesions", metas[:per_type])]
    ncol = 2 * per_type
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.6 * ncol, 2.75 * len(rows)), squeeze=False)
    fig.patch.set_facecolor("black")
    values = {t.name: t.value for t in spec.lesion_types}
    roles = {t.name: t.role for t in spec.lesion_types}
    for r, (type_name, cases) in enumerate(rows):
        for c in range(per_type):
            ax_full, ax_zoom = axes[r, 2 * c], axes[r, 2 * c + 1]
            for ax in (ax_full, ax_zoom):
                ax.set_axis_off()
            if c >= len(cases):
                continue
            meta = cases[c]
            image = np.asanyarray(nib.load(str(root / meta["image"])).dataobj)
            label = np.asanyarray(nib.load(str(root / meta["label"])).dataobj)
            value = values.get(type_name)
            target = label == value if value is not None else label > 0
            area = target.sum(axis=(0, 1))
            k = int(np.argmax(area)) if area.max() > 0 else label.shape[2] // 2
            img = image[:, :, k].T.astype(np.float32)
            lab = label[:, :, k].T
            sy, sx = float(meta["spacing_mm"][1]), float(meta["spacing_mm"][0])
            colour = "#ff4040" if roles.get(type_name) == "inlier" else "#ffd000"
            for ax, zoom in ((ax_full, False), (ax_zoom, True)):
                interp = "nearest" if zoom else "bilinear"
                ax.imshow(img, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], aspect=sy / sx, interpolation=interp)
                if (lab == 1).any():
                    ax.contour(lab == 1, [0.5], colors="#40c0ff", linewidths=0.6)
                for v in np.unique(lab):
                    if v >= 2:
                        col = (
                            colour
                            if v == value
                            else ("#ff4040" if roles.get(_name(values, v)) == "inlier" else "#ffd000")
                        )
                        ax.contour(lab == v, [0.5], colors=col, linewidths=0.8)
                if zoom:
                    ys, xs = np.nonzero(target[:, :, k].T if target.any() else lab > 0)
                    if len(xs):
                        cx, cy = xs.mean(), ys.mean()
                        half = 28.0 / sx
                        ax.set_xlim(cx - half, cx + half)
                        ax.set_ylim(cy + half * sx / sy, cy - half * sx / sy)
            role = roles.get(type_name, "")
            kind = f"OOD {value}" if role == "ood" else (f"class {value}" if role else "")
            ax_full.set_title(f"{type_name} ({kind})\n{meta['name']}", fontsize=8, color="white")
            ax_zoom.set_title(f"zoom 56 mm, {meta['phase'].replace('_', ' ')} phase", fontsize=8, color="white")
    fig.suptitle(
        f"phantom {spec.organ}: organ (blue), inlier tumour (red), OOD lesion (yellow)", color="white", fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=72, facecolor="black", metadata={"Software": None})
    plt.close(fig)
    return path


def _name(values: dict[str, int], v: int) -> str:
    for name, val in values.items():
        if val == int(v):
            return name
    return ""
