"""Training by recipe (`bundle.scripts.recipe`) and the extra-dataset keys of `configs/train.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from test_bundle import TINY

from bundle.configs import config_files
from bundle.data import DatasetError, load_datalists
from bundle.data.phantom import generate_dataset
from bundle.scripts.recipe import RecipeError, load_recipe, main, run_recipe, stage_status

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPE = [48, 48, 16]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "tiny"
    generate_dataset(out, seed=3, num_train=4, num_val=2, num_test=2, num_ood=2, shape=TINY_SHAPE)
    return out


def _write(tmp_path: Path, stages: list[dict], **extra) -> Path:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"stages": stages, **extra}))
    return path


def _phantom(name: str, **counts) -> dict:
    args = {"seed": 7, "num_train": 0, "num_val": 0, "num_test": 0, "num_ood": 0, "shape": TINY_SHAPE, **counts}
    return {"name": name, "kind": "phantom", "phantom": args}


def test_shipped_recipe_is_well_formed_and_ends_in_a_calibration():
    recipe = load_recipe(REPO / "recipes" / "shipped_model.json")
    stages = recipe["stages"]
    assert stages[-1]["kind"] == "calibrate"
    trained = [s for s in stages if s["kind"] == "train"]
    assert trained[0].get("init") is None and all("init" in s for s in trained[1:])
    # the shipped weights were trained without the query-balance loss (on by default since 0.9.1)
    assert recipe["common_overrides"]["balance_weight"] == 0


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a", "kind": "train", "init": "b"}, {"name": "b", "kind": "train"}], "'b' is not an earlier stage"),
        ([_phantom("d", num_train=2), {"name": "a", "kind": "train", "init": "d"}], "is a phantom stage"),
        ([{"name": "a", "kind": "train", "extra_train_data": ["a"]}], "not an earlier stage"),
        ([{"name": "a", "kind": "train", "overrides": {"ckpt_dir": "/tmp/x"}}], "set by the runner"),
        ([{"name": "a", "kind": "train", "epochs": 3}], "unknown key(s) ['epochs']"),
        ([{"name": "a", "kind": "train"}, {"name": "a", "kind": "train"}], "used twice"),
        ([{"name": "../a", "kind": "train"}], "path separators"),
        ([{"name": "a", "kind": "fit"}], "unknown kind 'fit'"),
        ([{"name": "a", "kind": "train"}, {"name": "m", "kind": "average", "average": ["a"]}], "at least two"),
        ([{"name": "a", "kind": "calibrate"}], "model: None is not an earlier stage"),
    ],
)
def test_malformed_recipes_are_refused_naming_stage_and_key(tmp_path, stages, message):
    with pytest.raises(RecipeError, match="recipe.json") as err:
        load_recipe(_write(tmp_path, stages))
    assert message in str(err.value)


def test_unknown_until_and_missing_recipe_are_named(tmp_path, capsys):
    path = _write(tmp_path, [{"name": "a", "kind": "train"}])
    with pytest.raises(RecipeError, match="--until 'b' is not a stage"):
        run_recipe(path, tmp_path / "work", until="b", dry_run=True)
    assert main([str(tmp_path / "none.json"), "--work_dir", str(tmp_path / "work")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_stage_status_sees_finished_and_interrupted_stages(tmp_path):
    stage = {"name": "a", "kind": "train"}
    assert stage_status(stage, tmp_path) == "todo"
    (tmp_path / "a" / "models").mkdir(parents=True)
    (tmp_path / "a" / "models" / "training_state.pt").write_bytes(b"state")
    assert stage_status(stage, tmp_path) == "resume"
    (tmp_path / "a" / "stage.json").write_text("{}")
    assert stage_status(stage, tmp_path) == "done"


def test_extra_datasets_join_the_training_and_calibration_lists(dataset, tmp_path):
    extra = tmp_path / "extra"
    generate_dataset(extra, seed=5, num_train=2, num_val=3, num_test=0, num_ood=0, shape=TINY_SHAPE)
    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=REPO))
    parser.update(
        {
            "bundle_root": str(REPO),
            "dataset_dir": str(dataset),
            "extra_train_dataset_dirs": [str(extra)],
            "extra_calibration_dataset_dirs": [str(extra)],
        }
    )
    train = parser.get_parsed_content("train_datalist")
    calibration = parser.get_parsed_content("calibration_datalist")
    assert len(train) == 4 + 2 and sum(str(extra) in case["image"] for case in train) == 2
    assert len(calibration) == 2 + 3 and sum(str(extra) in case["image"] for case in calibration) == 3


def test_extra_dataset_with_other_labels_or_a_bare_path_is_refused(dataset, tmp_path):
    other = tmp_path / "other"
    generate_dataset(other, seed=5, num_train=2, num_val=0, num_test=0, num_ood=0, shape=TINY_SHAPE)
    spec = json.loads((other / "dataset.json").read_text())
    spec["labels"] = {**spec["labels"], "3": "cyst"}  # another class under the same value
    (other / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match="inlier labels .* differ"):
        load_datalists([other], "training", labels_like=dataset)
    with pytest.raises(DatasetError, match="got the single path"):
        load_datalists(str(dataset), "training")
    assert load_datalists([], "training") == []


@pytest.mark.slow
def test_recipe_trains_averages_calibrates_and_resumes_nothing_twice(dataset, tmp_path, capsys):
    stages = [
        _phantom("more", num_train=2, num_val=2),
        {"name": "localiser", "kind": "localiser", "overrides": {"localiser_train#max_epochs": 1}},
        {"name": "base", "kind": "train", "overrides": {"train#trainer#max_epochs": 1}},
        {
            "name": "more_cases",
            "kind": "train",
            "init": "base",
            "extra_train_data": ["more"],
            "overrides": {"train#trainer#max_epochs": 1, "learning_rate": 0.0005},
        },
        {"name": "mean", "kind": "average", "average": ["base", "more_cases"]},
        {"name": "final", "kind": "calibrate", "model": "mean", "extra_calibration_data": ["more"]},
    ]
    path = _write(tmp_path, stages, common_overrides={"balance_weight": 0})
    work = tmp_path / "work"
    tiny = [token for key, value in TINY.items() for token in (f"--{key}", value)]
    argv = [str(path), "--work_dir", str(work), "--bundle_root", str(REPO), "--dataset_dir", str(dataset)]
    argv += ["--val_interval", "1", *tiny]

    assert main(argv) == 0
    assert capsys.readouterr().out.count("| ran |") == len(stages)
    base = torch.load(work / "base" / "models" / "model.pt", map_location="cpu")
    more = torch.load(work / "more_cases" / "models" / "model.pt", map_location="cpu")
    mean = torch.load(work / "mean" / "models" / "model.pt", map_location="cpu")
    key = next(k for k, v in mean.items() if v.is_floating_point() and not torch.equal(base[k], more[k]))
    torch.testing.assert_close(mean[key], (base[key].double() + more[key].double()).div(2).to(mean[key].dtype))
    calibration = json.loads((work / "final" / "models" / "ood_calibration.json").read_text())
    assert calibration["num_cases"] == 2 + 2  # the dataset's validation cases and the phantom stage's
    record = json.loads((work / "more_cases" / "stage.json").read_text())
    assert record["kind"] == "train" and record["seconds"] > 0

    mtime = (work / "mean" / "models" / "model.pt").stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out.count("| done |") == len(stages)
    assert (work / "mean" / "models" / "model.pt").stat().st_mtime_ns == mtime
