"""Reading MSD-layout datasets back: validation, clear errors, and loading through MONAI transforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle.data.datalist import (
    DatasetError,
    inlier_labels,
    load_datalist,
    load_dataset_json,
    ood_label_names,
    ood_label_values,
)
from bundle.data.phantom import generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datalist") / "ds"
    return generate_dataset(out, seed=4, num_train=2, num_val=1, num_test=1, num_ood=1, shape=(32, 28, 10))


def test_lists_resolve_to_existing_absolute_paths(dataset: Path):
    for key, n in (("training", 2), ("validation", 1), ("test", 1), ("test_ood", 1)):
        items = load_datalist(dataset, key)
        assert len(items) == n
        for item in items:
            for field in ("image", "label"):
                assert Path(item[field]).is_absolute() and Path(item[field]).is_file()
    assert inlier_labels(dataset) == {0: "background", 1: "pancreas", 2: "pdac", 3: "pnet"}
    assert ood_label_values(dataset) == [4, 5, 6, 7]
    names = ood_label_names(dataset)
    assert list(names) == [4, 5, 6, 7] and names[5] == "solid_pseudopapillary"


def test_monai_loads_matching_image_and_label(dataset: Path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    load = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"])])
    for key in ("training", "test_ood"):
        for item in load_datalist(dataset, key):
            out = load(item)
            assert out["image"].shape == out["label"].shape == (1, 32, 28, 10)
            np.testing.assert_allclose(out["image"].affine.numpy(), out["label"].affine.numpy())
            assert float(out["image"].min()) >= -1024


def test_errors_name_what_is_missing(dataset: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset_json(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        load_datalist(tmp_path / "empty", "training")
    with pytest.raises(DatasetError, match="'unlabelled'"):
        load_datalist(dataset, "unlabelled")
    broken = tmp_path / "broken"
    broken.mkdir()
    data = json.loads((dataset / "dataset.json").read_text())
    data["training"][0]["image"] = "./imagesTr/ghost.nii.gz"
    (broken / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="ghost.nii.gz"):
        load_datalist(broken, "training")
    data["ood_labels"] = {"1": "clash"}
    (broken / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="ood_labels"):
        load_dataset_json(broken)
    data = json.loads((dataset / "dataset.json").read_text())
    data["validation"] = []
    (broken / "dataset.json").write_text(json.dumps(data))
    assert load_datalist(broken, "validation") == []
    with pytest.raises(DatasetError, match="'validation' is empty"):
        load_datalist(broken, "validation", allow_empty=False)
    (broken / "dataset.json").write_text("{oops")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset_json(broken)


def test_plain_user_msd_dataset(dataset: Path, tmp_path: Path):
    user = tmp_path / "user"
    (user / "imagesTr").mkdir(parents=True)
    (user / "labelsTr").mkdir()
    (user / "imagesTs").mkdir()
    src = load_datalist(dataset, "training")[0]
    for sub, field in (("imagesTr", "image"), ("labelsTr", "label"), ("imagesTs", "image")):
        (user / sub / "case_1.nii.gz").write_bytes(Path(src[field]).read_bytes())
    (user / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "liver"},
                "training": [{"image": "./imagesTr/case_1.nii.gz", "label": "./labelsTr/case_1.nii.gz"}],
                "test": ["./imagesTs/case_1.nii.gz"],
            }
        )
    )
    assert ood_label_values(user) == [] and ood_label_names(user) == {}
    assert load_datalist(user, "test")[0]["image"] == str((user / "imagesTs" / "case_1.nii.gz").resolve())
    assert len(load_datalist(user, "training")) == 1
