"""The lesion-size census on a hand-made dataset whose lesion sizes are known."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.lesion_sizes import ANY_OOD, census, largest_lesions, main


def _write(folder: Path, name: str, label: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), str(folder / name))
    return name


def _dataset(tmp_path: Path) -> Path:
    small, large, two = (np.zeros((12, 12, 8), np.uint8) for _ in range(3))
    small[2:4, 2:4, 2:4] = 3  # one pnet of 8 voxels
    large[1:9, 1:9, 1:3] = 3  # one pnet of 128 voxels
    large[10, 10, 5] = 2  # one pdac voxel
    two[0:2, 0:2, 0:2] = 3  # 8 voxels ...
    two[5:10, 5:10, 5:7] = 3  # ... and 50, apart: the largest counts
    cyst, mixed = np.zeros((12, 12, 8), np.uint8), np.zeros((12, 12, 8), np.uint8)
    cyst[1:5, 1:5, 1:3] = 4  # one cyst of 32 voxels
    mixed[1:4, 1:4, 1:2] = 4  # a cyst of 9 voxels touching ...
    mixed[4:6, 1:4, 1:2] = 5  # ... a metastasis of 6: one unseen lesion of 15 voxels
    items = [
        {"image": _write(tmp_path, f"i{i}.nii.gz", a), "label": _write(tmp_path, f"c{i}.nii.gz", a)}
        for i, a in enumerate((small, large, two))
    ]
    ood_items = [
        {"image": _write(tmp_path, f"oi{i}.nii.gz", a), "label": _write(tmp_path, f"o{i}.nii.gz", a)}
        for i, a in enumerate((cyst, mixed))
    ]
    meta = {
        "labels": {"0": "background", "1": "pancreas", "2": "pdac", "3": "pnet"},
        "ood_labels": {"4": "cyst", "5": "metastasis"},
        "test": items,
        "test_ood": ood_items,
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path


def test_largest_lesion_is_the_largest_connected_one():
    label = np.zeros((6, 6, 6), np.uint8)
    label[0, 0, 0] = label[1, 1, 1] = 3  # touching only at a corner: two lesions
    label[4:6, 4:6, 4:6] = 3
    assert largest_lesions(label, {"pdac": [2], "pnet": [3]}) == {"pnet": 8}


def test_census_counts_cases_holding_only_small_lesions(tmp_path: Path):
    result = census(_dataset(tmp_path), small_voxels=60)["test"]
    assert result["cases"] == 3
    pnet, pdac = result["classes"]["pnet"], result["classes"]["pdac"]
    assert (pnet["cases_with_class"], pnet["cases_only_small"]) == (3, 2)
    assert pnet["largest_lesion_quartiles"] == pytest.approx(np.percentile([8, 128, 50], [25, 50, 75]))
    assert (pdac["cases_with_class"], pdac["cases_only_small"]) == (1, 1)


def test_missing_label_file_is_named(tmp_path: Path):
    dataset = _dataset(tmp_path)
    (dataset / "c1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="c1.nii.gz"):
        main(["--dataset_dirs", str(dataset), "--out", str(tmp_path / "report.json")])


def test_ood_census_counts_each_type_and_the_merged_lesion(tmp_path: Path):
    result = census(_dataset(tmp_path), small_voxels=20)
    assert set(result) == {"test", "test_ood"}
    ood = result["test_ood"]["classes"]
    assert set(ood) == {"cyst", "metastasis", ANY_OOD}
    assert (ood["cyst"]["cases_with_class"], ood["cyst"]["cases_only_small"]) == (2, 1)
    assert (ood["metastasis"]["cases_with_class"], ood["metastasis"]["cases_only_small"]) == (1, 1)
    # the touching cyst and metastasis are one unseen lesion of 15 voxels
    assert ood[ANY_OOD]["largest_lesion_quartiles"] == pytest.approx(np.percentile([32, 15], [25, 50, 75]))
    assert ood[ANY_OOD]["cases_only_small"] == 1
    assert "pnet" not in ood and "cyst" not in result["test"]["classes"]
