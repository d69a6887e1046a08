"""Phantom CT benchmark generator: case planning, rendering and the Medical Segmentation Decathlon layout writer.

Command line::

    python -m bundle.data.phantom --out data/phantom_pancreas --seed 0 \\
        --num-train 24 --num-val 6 --num-test 10 --num-ood 10 [--task pancreas|liver] [--spec FILE] \\
        [--preview] [--overwrite]

writes ``imagesTr/``, ``labelsTr/`` (training and validation cases), ``imagesTs/``, ``labelsTs/`` (inlier test
and OOD test cases), ``dataset.json`` and ``phantom_cases.json`` (per-case acquisition and lesion details).
The same seed, spec and arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.data.phantom.anatomy import draw_anatomy, sample_patient
from bundle.data.phantom.canvas import Canvas
from bundle.data.phantom.lesion_spec import ORGANS, PhantomSpec, SpecError, load_spec, spec_from_dict
from bundle.data.phantom.lesions import paint_lesions
from bundle.data.phantom.nifti_io import write_nifti
from bundle.data.phantom.scanner import acquire, sample_acquisition

__all__ = ["SPLITS", "CasePlan", "RenderedCase", "generate_dataset", "main", "plan_cases", "render_case"]

#: Case lists written to ``dataset.json``.
SPLITS = ("training", "validation", "test", "test_ood")
_TAG = {"training": "tr", "validation": "va", "test": "ts", "test_ood": "ood"}
_DIRS = {
    "training": ("imagesTr", "labelsTr"),
    "validation": ("imagesTr", "labelsTr"),
    "test": ("imagesTs", "labelsTs"),
    "test_ood": ("imagesTs", "labelsTs"),
}
METADATA_FILE = "phantom_cases.json"


@dataclass(frozen=True)
class CasePlan:
    """What one case will contain.

    Attributes:
        name: case identifier (file stem).
        split: one of :data:`SPLITS`.
        index: position within its split (selects the case's random stream).
        lesions: lesion type names, one per lesion; the first ``required`` are always placed.
        required: how many leading lesions must be present.
    """

    name: str
    split: str
    index: int
    lesions: tuple[str, ...]
    required: int


@dataclass
class RenderedCase:
    """A rendered case: CT image (int16 HU), label map (uint8), affine and metadata."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    meta: dict


# ----------------------------------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, types) -> object:
    weights = np.array([t.frequency for t in types], dtype=float)
    return types[int(rng.choice(len(types), p=weights / weights.sum()))]


def _inlier_split(spec: PhantomSpec, rng: np.random.Generator, n: int, cover_all: bool) -> list[tuple[tuple, int]]:
    types = spec.inlier_types
    n_free = int(round(n * spec.tumour_free_fraction))
    if cover_all:
        n_free = min(n_free, max(0, n - len(types)))
    primaries = list(types) if cover_all else []
    while len(primaries) < n - n_free:
        primaries.append(_pick(rng, types))
    cases: list[tuple[tuple, int]] = [((), 0)] * n_free
    for t in primaries[: n - n_free]:
        names = [t.name] * int(rng.integers(t.count[0], t.count[1] + 1))
        if len(types) > 1 and rng.uniform() < 0.15:  # occasionally a second inlier type in the same case
            other = _pick(rng, [o for o in types if o is not t])
            names.append(other.name)
        cases.append((tuple(names), 1))
    order = rng.permutation(len(cases))
    return [cases[i] for i in order]


def _ood_split(spec: PhantomSpec, rng: np.random.Generator, n: int) -> list[tuple[tuple, int]]:
    types = list(spec.ood_types)
    primaries = [types[i] for i in rng.permutation(len(types))][:n]
    while len(primaries) < n:
        primaries.append(_pick(rng, types))
    cases = []
    for t in primaries:
        names = [t.name] * int(rng.integers(t.count[0], t.count[1] + 1))
        required = 1
        if rng.uniform() < spec.ood_inlier_cooccurrence:
            names.append(_pick(rng, spec.inlier_types).name)
        cases.append((tuple(names), required))
    order = rng.permutation(len(cases))
    return [cases[i] for i in order]


def plan_cases(spec: PhantomSpec, seed: int, counts: dict[str, int]) -> list[CasePlan]:
    """Decide the lesion content of every case.

    Guarantees: every inlier class is present in ``training`` (when it has at least as many cases as there are
    inlier types); OOD types occur only in ``test_ood``, every ``test_ood`` case has at least one OOD lesion and
    every OOD type occurs when ``test_ood`` has at least as many cases as there are OOD types; a fraction
    ``tumour_free_fraction`` of the inlier cases has no tumour.

    Args:
        spec: the validated spec.
        seed: dataset seed.
        counts: number of cases per split.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    plans: list[CasePlan] = []
    for split in SPLITS:
        n = int(counts.get(split, 0))
        if n == 0:
            continue
        if split == "test_ood":
            content = _ood_split(spec, rng, n)
        else:
            content = _inlier_split(spec, rng, n, cover_all=split == "training")
        for i, (names, required) in enumerate(content):
            plans.append(CasePlan(f"{spec.organ}_{_TAG[split]}_{i:03d}", split, i, names, required))
    return plans


# ----------------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------------


def _case_rng(seed: int, plan: CasePlan) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 + SPLITS.index(plan.split), plan.index)))


def render_case(spec: PhantomSpec, plan: CasePlan, seed: int, shape: Sequence[int] | None = None) -> RenderedCase:
    """Render one case: anatomy, lesions, scanner; returns the image, label map and metadata.

    Args:
        spec: the validated spec.
        plan: what the case contains.
        seed: dataset seed (the case's random stream is derived from it, its split and index).
        shape: force the voxel grid shape (tiny test volumes); ``None`` draws a realistic spacing.
    """
    rng = _case_rng(seed, plan)
    patient = sample_patient(rng)
    acq = sample_acquisition(rng, patient, spec.organ, shape)
    canvas = Canvas(acq.grid, patient.frame, rng)
    draw_anatomy(canvas, patient, spec.organ, rng)
    types = [spec.type_by_name(n) for n in plan.lesions]
    organ = canvas.organ > 0.5
    # lesion HU offsets are relative to the organ's parenchyma as rendered in this case (texture, fat, phase)
    organ_hu = float(np.median(canvas.hu[organ])) if organ.any() else patient.hu[spec.organ]
    lesions = paint_lesions(canvas, types, organ_hu, rng, required=plan.required)
    image = acquire(canvas.hu, acq, rng)
    label = (canvas.organ > 0.5).astype(np.uint8)
    for lesion in reversed(lesions):  # earlier (required) lesions are written last so they are never hidden
        view = label[lesion.box]
        view[lesion.mask] = lesion.type.value
    present = {int(v) for v in np.unique(label)}
    for lesion in lesions[: plan.required]:
        if lesion.type.value not in present:  # pragma: no cover - guarded by construction
            raise RuntimeError(f"{plan.name}: lesion {lesion.type.name} vanished from the label map")
    if len(lesions) < plan.required:
        raise ValueError(
            f"{plan.name}: the {spec.organ} covers {int(organ.sum())} voxels on a {list(acq.grid.shape)} grid, "
            "too few to place its lesions; use a larger shape"
        )
    grid = acq.grid
    meta = {
        "name": plan.name,
        "split": plan.split,
        "shape": list(grid.shape),
        "spacing_mm": [round(s, 4) for s in grid.spacing],
        "phase": patient.phase,
        "noise_sd_hu": round(acq.noise_sd, 2),
        "organ_hu": round(organ_hu, 1),
        "oral_contrast": patient.oral_contrast,
        "lesions": [les.summary() for les in lesions],
    }
    return RenderedCase(image=image, label=label, affine=grid.affine(), meta=meta)


def _write_case(args: tuple) -> dict:
    spec, plan, seed, shape, root = args
    case = render_case(spec, plan, seed, shape)
    img_dir, lab_dir = _DIRS[plan.split]
    write_nifti(Path(root) / img_dir / f"{plan.name}.nii.gz", case.image, case.affine, np.int16)
    write_nifti(Path(root) / lab_dir / f"{plan.name}.nii.gz", case.label, case.affine, np.uint8)
    meta = dict(case.meta)
    meta["image"] = f"./{img_dir}/{plan.name}.nii.gz"
    meta["label"] = f"./{lab_dir}/{plan.name}.nii.gz"
    return meta


# ----------------------------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------------------------


def _resolve_spec(spec: PhantomSpec | dict | str | Path | None, task: str | None) -> PhantomSpec:
    if isinstance(spec, PhantomSpec):
        if task is not None and spec.organ != task:
            raise SpecError(f"key 'organ' of the spec is {spec.organ!r} but the task is {task!r}")
        return spec
    if isinstance(spec, dict):
        resolved = spec_from_dict(spec, source="<dict>")
        if task is not None and resolved.organ != task:
            raise SpecError(f"key 'organ' of the spec is {resolved.organ!r} but the task is {task!r}")
        return resolved
    return load_spec(spec, task=task)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory {out} is not empty; pass --overwrite (overwrite=True) to replace it"
            )
        if not (out / "dataset.json").is_file():
            raise FileExistsError(f"refusing to overwrite {out}: it is not empty and holds no dataset.json")


def _swap_in(tmp: Path, out: Path) -> None:
    """Atomically move the finished dataset into place; an existing one is replaced only once all is written."""
    if not out.exists():
        os.rename(tmp, out)
        return
    backup = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, backup)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train: int = 24,
    num_val: int = 6,
    num_test: int = 10,
    num_ood: int = 10,
    task: str | None = None,
    spec: PhantomSpec | dict | str | Path | None = None,
    shape: Sequence[int] | None = None,
    preview: bool = False,
    overwrite: bool = False,
    num_workers: int = 1,
) -> Path:
    """Generate a phantom dataset in Medical Segmentation Decathlon layout.

    Args:
        out_dir: dataset folder to create; it must not exist or be empty unless ``overwrite``.
        seed: dataset seed; same seed + spec + arguments give byte-identical files.
        num_train: number of ``training`` cases (0, or at least the number of inlier types).
        num_val: number of ``validation`` cases.
        num_test: number of inlier ``test`` cases.
        num_ood: number of ``test_ood`` cases (each holds at least one OOD lesion).
        task: organ of interest (``pancreas`` or ``liver``); ``None`` takes it from the spec (default spec:
            pancreas).
        spec: a spec file, parsed JSON object or :class:`PhantomSpec`; ``None`` uses the task's default spec.
        shape: force every case onto this voxel grid shape (for tiny test volumes); ``None`` draws a realistic
            per-case spacing (about 1.5-2.25 mm in-plane, 2.5-5 mm slices).
        preview: also write ``preview.png`` (axial slices through each lesion type with label contours).
        overwrite: replace an existing dataset folder (only once the new one is complete).
        num_workers: parallel processes (results do not depend on it).

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
        SpecError: malformed spec.
        ValueError: inconsistent case counts.
    """
    resolved = _resolve_spec(spec, task)
    counts = {"training": num_train, "validation": num_val, "test": num_test, "test_ood": num_ood}
    for key, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"number of {key} cases must be a non-negative integer, got {n!r}")
    if 0 < num_train < len(resolved.inlier_types):
        n_types = len(resolved.inlier_types)
        raise ValueError(f"num_train must be 0 or at least {n_types} so that every inlier class appears in training")
    if num_ood > 0 and not resolved.ood_types:
        raise ValueError("num_ood > 0 needs at least one lesion type with role 'ood' in the spec")
    if sum(counts.values()) == 0:
        raise ValueError("nothing to generate: all case counts are 0")
    out = Path(out_dir).expanduser().resolve()
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    plans = plan_cases(resolved, int(seed), counts)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / d).mkdir()
        jobs = [(resolved, p, int(seed), shape, str(tmp)) for p in plans]
        if num_workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                metas = list(pool.map(_write_case, jobs))
        else:
            metas = [_write_case(j) for j in jobs]
        _write_json(tmp, resolved, metas, int(seed), shape)
        if preview:
            from bundle.data.phantom.preview import write_preview

            write_preview(tmp, metas, resolved, tmp / "preview.png")
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(root: Path, spec: PhantomSpec, metas: list[dict], seed: int, shape) -> None:
    lists: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for m in metas:
        lists[m["split"]].append({"image": m["image"], "label": m["label"]})
    n_test = len(lists["test"]) + len(lists["test_ood"])
    dataset = {
        "name": spec.name or f"phantom_{spec.organ}",
        "description": spec.description or f"Phantom abdominal CT, organ of interest: {spec.organ}",
        "reference": "MaxQuery phantom CT generator (bundle.data.phantom)",
        "licence": "CC-BY-4.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": spec.labels(),
        "ood_labels": spec.ood_labels(),
        "numTraining": len(lists["training"]) + len(lists["validation"]),
        "numTest": n_test,
        "training": lists["training"],
        "validation": lists["validation"],
        "test": lists["test"],
        "test_ood": lists["test_ood"],
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    detail = {
        "generator": "bundle.data.phantom",
        "seed": seed,
        "organ": spec.organ,
        "shape": list(shape) if shape is not None else None,
        "spec_source": Path(spec.source).name if spec.source else "",
        "lesion_types": [
            {"name": t.name, "role": t.role, "label_value": t.value, "description": t.description}
            for t in spec.lesion_types
        ],
        "cases": metas,
    }
    (root / METADATA_FILE).write_text(json.dumps(detail, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bundle.data.phantom",
        description="Generate a phantom abdominal CT benchmark (MSD layout) with inlier and OOD tumour types.",
    )
    ap.add_argument("--out", required=True, help="dataset folder to create (must be empty unless --overwrite)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    ap.add_argument("--num-train", type=int, default=24, help="training cases (default 24)")
    ap.add_argument("--num-val", type=int, default=6, help="validation cases (default 6)")
    ap.add_argument("--num-test", type=int, default=10, help="inlier test cases (default 10)")
    ap.add_argument("--num-ood", type=int, default=10, help="OOD test cases (default 10)")
    ap.add_argument("--task", choices=ORGANS, default=None, help="organ of interest (default: pancreas, or the spec's)")
    ap.add_argument("--spec", default=None, help="lesion-type spec JSON (default: the task's built-in spec)")
    ap.add_argument(
        "--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="force a voxel grid shape (tests)"
    )
    ap.add_argument("--workers", type=int, default=1, help="parallel processes (output does not depend on it)")
    ap.add_argument("--preview", action="store_true", help="also write preview.png")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate_dataset(
            args.out,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            num_ood=args.num_ood,
            task=args.task,
            spec=args.spec,
            shape=args.shape,
            preview=args.preview,
            overwrite=args.overwrite,
            num_workers=args.workers,
        )
    except (FileExistsError, FileNotFoundError, SpecError, ValueError) as err:
        print(f"phantom: error: {err}", file=sys.stderr)
        return 2
    n = args.num_train + args.num_val + args.num_test + args.num_ood
    print(f"wrote {n} cases to {out} in {time.perf_counter() - start:.1f} s")
    return 0
