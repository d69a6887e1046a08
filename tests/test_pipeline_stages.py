"""The main job's stages: which configs and overrides each `monai.bundle run` gets, and the refinement config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from bundle.configs import config_files
from bundle.scripts import pipeline
from bundle.transforms import RandAlteredLesiond

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def recorded_runs(monkeypatch, tmp_path):
    """Replace `monai.bundle.run` in the pipeline by a recorder; the evaluation step writes an empty metrics file."""
    calls = []

    def fake_run(config_file, run=None, **overrides):
        calls.append({"files": [Path(f).name for f in config_file], "run": run, **overrides})
        if "evaluate.json" in calls[-1]["files"]:
            out = Path(overrides["output_dir"])
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text("{}")

    monkeypatch.setattr(pipeline, "run", fake_run)
    monkeypatch.setattr(pipeline, "format_metrics_table", lambda metrics: "table")
    return calls


def _stage(calls, files):
    return [c for c in calls if c["files"] == files]


def test_refinement_follows_the_training_with_its_own_config_and_epochs(recorded_runs, tmp_path):
    pipeline.run_pipeline(REPO, run_dir=tmp_path, max_epochs=7, refine_epochs=3, overrides={"num_workers": 0})
    steps = [c["run"] for c in recorded_runs]
    names = [stage.name for stage in pipeline.STAGES]
    assert names == ["localiser", "mask_transformer", "refinement", "calibration"], "refinement before calibration"
    assert steps == [["$@dataset"], *(list(stage.steps) for stage in pipeline.STAGES), None]
    by_stage = dict(zip(names, recorded_runs[1:-1], strict=True))
    refine = by_stage["refinement"]
    assert refine["files"] == ["common.json", "train.json", "refine.json"]
    assert refine["refine_epochs"] == 3 and "train#trainer#max_epochs" not in refine
    assert refine["num_workers"] == 0 and refine["ckpt_dir"] == str(tmp_path / "models")
    assert by_stage["mask_transformer"]["files"] == ["common.json", "train.json"]
    assert by_stage["mask_transformer"]["train#trainer#max_epochs"] == 7
    # validated once, after its last epoch (the refinement's interval is its epoch count in refine.json)
    assert by_stage["mask_transformer"]["val_interval"] == 7
    assert all("val_interval" not in by_stage[stage] for stage in ("localiser", "refinement", "calibration"))
    assert all("refine_epochs" not in by_stage[stage] for stage in ("localiser", "mask_transformer", "calibration"))
    timings = json.loads((tmp_path / "eval" / "timings.json").read_text())["seconds"]
    assert list(timings) == ["dataset", *names, "evaluation", "total"]
    # the evaluation keeps its voxel scores, for MaxQuery's paired lead over the other scores
    assert recorded_runs[-1]["save_scores"] is True


def test_a_validation_interval_given_by_the_user_is_kept(recorded_runs, tmp_path):
    pipeline.run_pipeline(REPO, run_dir=tmp_path, max_epochs=7, overrides={"val_interval": 2})
    transformer = next(c for c in recorded_runs if "train#trainer#max_epochs" in c)
    assert transformer["train#trainer#max_epochs"] == 7 and transformer["val_interval"] == 2


def test_zero_refinement_epochs_skip_the_stage_and_impossible_counts_are_refused(recorded_runs, tmp_path):
    pipeline.run_pipeline(REPO, run_dir=tmp_path, refine_epochs=0)
    assert not _stage(recorded_runs, ["common.json", "train.json", "refine.json"])
    assert "refinement" not in json.loads((tmp_path / "eval" / "timings.json").read_text())["seconds"]
    with pytest.raises(ValueError, match="refine_epochs"):
        pipeline.run_pipeline(REPO, run_dir=tmp_path, refine_epochs=-1)
    with pytest.raises(ValueError, match="max_epochs"):
        pipeline.run_pipeline(REPO, run_dir=tmp_path, max_epochs=0)


def test_refine_config_continues_from_the_trained_model_with_compactness_and_outlier_exposure_alone(tmp_path):
    parser = ConfigParser()
    parser.read_meta(str(REPO / "metadata.json"))
    parser.read_config(config_files("train.json", "refine.json", root=REPO))
    parser["ckpt_dir"] = str(tmp_path)
    parser["class_names"] = {0: "background", 1: "pancreas", 2: "pdac", 3: "pnet"}
    parser["refine_epochs"] = 5
    assert parser.get_parsed_content("init_ckpt_path") == str(tmp_path / "model.pt")
    assert parser.get_parsed_content("train_localiser") is False
    assert parser.get_parsed_content("train#trainer#max_epochs") == 5
    assert parser.get_parsed_content("val_interval") == 5
    loss = parser.get_parsed_content("loss")
    assert loss.compactness_weight > 0 and loss.margin_weight > 0
    assert loss.balance_loss is None, "the query-balance loss helps the clusters form, not once they have"
    altered = [t for t in parser.get_parsed_content("train#random_transforms") if isinstance(t, RandAlteredLesiond)]
    assert altered and altered[0].prob > 0
    plain = ConfigParser()
    plain.read_config(config_files("train.json", root=REPO))
    assert plain["init_ckpt_path"] is None and plain["outlier_exposure"]["margin_weight"] == 0
    assert plain["balance_weight"] > 0
