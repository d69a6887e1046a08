"""Phantom benchmark generator: layout, determinism, label semantics, HU realism, safe output handling, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.data.difficulty import intensity_detector_auroc
from bundle.data.phantom import SPLITS, generate_dataset, load_spec
from bundle.data.phantom import generate as phantom
from bundle.data.phantom.generate import plan_cases, render_case

TINY = (40, 32, 14)
COUNTS = {"num_train": 4, "num_val": 1, "num_test": 2, "num_ood": 4}


def _tiny(out: Path, seed: int = 0, **kwargs) -> Path:
    args = {**COUNTS, **kwargs}
    return generate_dataset(out, seed=seed, shape=TINY, **args)


def _nifti_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def _labels(root: Path, key: str) -> list[np.ndarray]:
    data = json.loads((root / "dataset.json").read_text())
    return [np.asanyarray(nib.load(root / item["label"]).dataobj) for item in data[key]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("phantom") / "ds", preview=True)


def test_msd_layout_and_dataset_json(tiny: Path):
    data = json.loads((tiny / "dataset.json").read_text())
    for key in ("name", "description", "tensorImageSize", "modality", "labels", "ood_labels", "numTraining", "numTest"):
        assert key in data
    assert data["tensorImageSize"] == "3D" and data["modality"] == {"0": "CT"}
    assert data["labels"] == {"0": "background", "1": "pancreas", "2": "pdac", "3": "pnet"}
    assert set(data["ood_labels"]) == {"4", "5", "6", "7"}
    assert [len(data[k]) for k in SPLITS] == [4, 1, 2, 4]
    assert data["numTraining"] == 5 and data["numTest"] == 6
    for key in SPLITS:
        sub = "Tr" if key in ("training", "validation") else "Ts"
        for item in data[key]:
            assert item["image"].startswith(f"./images{sub}/") and item["label"].startswith(f"./labels{sub}/")
            assert (tiny / item["image"]).is_file() and (tiny / item["label"]).is_file()
    png = (tiny / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_is_byte_identical_other_seed_differs(tiny: Path, tmp_path: Path):
    again = _nifti_files(_tiny(tmp_path / "again"))
    first = _nifti_files(tiny)
    assert again == first
    assert (tmp_path / "again" / "dataset.json").read_bytes() == (tiny / "dataset.json").read_bytes()
    other = _nifti_files(_tiny(tmp_path / "other", seed=1))
    assert other.keys() == first.keys()
    images = [k for k in first if k.startswith("images")]
    assert all(other[k] != first[k] for k in images)


def test_label_semantics(tiny: Path):
    data = json.loads((tiny / "dataset.json").read_text())
    ood_values = {int(v) for v in data["ood_labels"]}
    inlier_values = {int(v) for v in data["labels"]}
    for key in ("training", "validation", "test"):
        for lab in _labels(tiny, key):
            present = set(np.unique(lab).tolist())
            assert present <= inlier_values, f"{key} holds OOD/unknown labels {present - inlier_values}"
            assert 1 in present  # the organ is always there
    for lab in _labels(tiny, "test_ood"):
        present = set(np.unique(lab).tolist())
        assert present & ood_values, "a test_ood case without an OOD lesion"
        assert present <= inlier_values | ood_values
    in_training = set().union(*(set(np.unique(lab).tolist()) for lab in _labels(tiny, "training")))
    assert {2, 3} <= in_training


def test_plan_has_tumour_free_cases_and_covers_types():
    spec = load_spec(task="pancreas")
    plans = plan_cases(spec, 0, {"training": 20, "validation": 5, "test": 10, "test_ood": 8})
    by_split = {s: [p for p in plans if p.split == s] for s in SPLITS}
    assert any(not p.lesions for p in by_split["training"]) and any(not p.lesions for p in by_split["test"])
    ood_names = {t.name for t in spec.ood_types}
    for split in ("training", "validation", "test"):
        assert not any(set(p.lesions) & ood_names for p in by_split[split])
    assert all(p.lesions and p.lesions[0] in ood_names and p.required >= 1 for p in by_split["test_ood"])
    assert {p.lesions[0] for p in by_split["test_ood"]} == ood_names
    assert {n for p in by_split["training"] for n in p.lesions} == {t.name for t in spec.inlier_types}


@pytest.mark.parametrize("task", ["pancreas", "liver"])
def test_default_size_case_is_ct_like(task: str):
    spec = load_spec(task=task)
    plan = next(p for p in plan_cases(spec, 5, {"test_ood": 1}))
    case = render_case(spec, plan, seed=5)
    img, lab = case.image, case.label
    assert img.dtype == np.int16 and lab.dtype == np.uint8 and img.shape == lab.shape
    spacing = np.abs(np.diag(case.affine)[:3])
    assert 1.5 <= spacing[0] <= 2.25 and spacing[0] == spacing[1] and 2.5 <= spacing[2] <= 5.0
    extent = np.array(img.shape) * spacing
    assert 240 <= extent[0] <= 330 and 150 <= extent[2] <= 215
    # resampled to 2 x 2 x 3 mm the case is about 128 x 128 x 48-64 voxels
    assert 115 <= extent[0] / 2 <= 165 and 45 <= extent[2] / 3 <= 72
    corners = np.concatenate([img[:4, :4].ravel(), img[-4:, :4].ravel(), img[:4, -4:].ravel(), img[-4:, -4:].ravel()])
    assert -1024 <= np.median(corners) <= -970  # air
    assert np.percentile(img, 99.9) > 300 and img.max() < 3072  # bone present
    organ = lab == 1
    assert 20 <= np.median(img[organ]) <= 180  # soft tissue, any contrast phase
    fat = img[(img > -190) & (img < -30)]
    assert fat.size > 0.02 * img.size
    z = np.nonzero(organ.any(axis=(0, 1)))[0]
    assert z.min() > 0 and z.max() < img.shape[2] - 1  # organ fully inside the scan
    assert set(np.unique(lab).tolist()) & {4, 5, 6, 7}


def test_written_affine_matches_header_spacing(tiny: Path):
    meta = json.loads((tiny / phantom.METADATA_FILE).read_text())
    for case in meta["cases"]:
        for key in ("image", "label"):
            img = nib.load(tiny / case[key])
            assert img.shape == tuple(case["shape"])
            np.testing.assert_allclose(img.header.get_zooms(), case["spacing_mm"], rtol=1e-5)
            np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), img.header.get_zooms(), rtol=1e-5)
            assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        assert nib.load(tiny / case["image"]).get_data_dtype() == np.int16
        assert nib.load(tiny / case["label"]).get_data_dtype() == np.uint8


def test_refuses_non_empty_out_and_keeps_it(tmp_path: Path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        _tiny(out)
    with pytest.raises(FileExistsError, match="no dataset.json"):
        _tiny(out, overwrite=True)  # never wipe a folder that is not a dataset
    assert (out / "keep.txt").read_text() == "mine"
    assert phantom.main(["--out", str(out), "--shape", "32", "28", "10", "--num-train", "2"]) == 2


def test_failure_leaves_nothing_and_overwrite_keeps_old_dataset(tmp_path: Path, monkeypatch):
    good = _tiny(tmp_path / "ds", num_train=2, num_val=0, num_test=0, num_ood=1)
    before = _nifti_files(good)
    calls = {"n": 0}
    real = phantom._write_case

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(job)

    monkeypatch.setattr(phantom, "_write_case", flaky)
    with pytest.raises(RuntimeError):
        _tiny(tmp_path / "new", num_train=2, num_val=0, num_test=0, num_ood=1)
    assert not (tmp_path / "new").exists()
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        _tiny(good, seed=9, overwrite=True, num_train=2, num_val=0, num_test=0, num_ood=1)
    assert _nifti_files(good) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers
    monkeypatch.setattr(phantom, "_write_case", real)
    _tiny(good, seed=9, overwrite=True, num_train=2, num_val=0, num_test=0, num_ood=1)
    assert _nifti_files(good) != before


def test_cli_subprocess(tmp_path: Path, repo_root: Path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "bundle.data.phantom", "--out", str(out), "--seed", "2", "--task", "liver"]
    cmd += ["--num-train", "2", "--num-val", "0", "--num-test", "1", "--num-ood", "1", "--shape", "32", "28", "10"]
    res = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "dataset.json").read_text())
    assert data["labels"]["1"] == "liver" and len(data["test_ood"]) == 1
    assert phantom.main(["--out", str(out), "--shape", "32", "28", "10", "--num-train", "2"]) == 2


def test_trivial_intensity_detector_runs(tiny: Path):
    res = intensity_detector_auroc(tiny)
    assert res["num_positive"] > 0 and res["num_negative"] > 0
    assert 0.0 <= res["ood_auroc"] <= 1.0
    assert set(res["ood_auroc_per_type"]) <= {
        "serous_cystadenoma",
        "solid_pseudopapillary",
        "hypervascular_metastasis",
        "mass_forming_pancreatitis",
    }


def test_bad_counts_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="every inlier class"):
        _tiny(tmp_path / "x", num_train=1)
    with pytest.raises(ValueError, match="non-negative"):
        _tiny(tmp_path / "y", num_test=-1)
    assert not (tmp_path / "x").exists()
