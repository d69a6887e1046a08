"""Bundle handlers on hand-made outputs: metrics that must come out exactly, calibration, the case table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from handler_steps import run_handler_steps
from monai.data import MetaTensor

from bundle.handlers import OODCalibrationHandler, OODCaseWriter, OODEvaluationHandler, format_metrics_table
from bundle.ood import (
    SCORES,
    CalibrationError,
    calibrated_thresholds,
    check_case_score,
    load_calibration,
    register_score,
)

CLASSES = {0: "background", 1: "organ", 2: "tumour"}


def _case(name: str, ood: bool, anomaly_on_lesion: float) -> tuple[dict, dict]:
    """An 8^3 case: organ block, a lesion (inlier tumour or OOD value 4), a perfect segmentation of the inlier part."""
    label = torch.zeros(1, 8, 8, 8)
    label[0, 2:6, 2:6, 2:6] = 1
    label[0, 3:5, 3:5, 3:5] = 4 if ood else 2
    segmentation = label.clamp_max(2).long()  # the OOD lesion is segmented as a tumour, as a model would
    probs = torch.nn.functional.one_hot(segmentation[0], 3).permute(3, 0, 1, 2).float() * 0.9 + 0.1 / 3
    anomaly = torch.zeros(1, 8, 8, 8)
    anomaly[0, 3:5, 3:5, 3:5] = anomaly_on_lesion
    meta = {"filename_or_obj": f"/data/{name}.nii.gz"}
    item = {"pred": MetaTensor(probs, meta=meta), "ood": anomaly, "label": label, "ood_score": anomaly.max().item()}
    return item, {"image": MetaTensor(torch.zeros(1, 8, 8, 8), meta=meta), "ood_case": torch.tensor(int(ood))}


def test_evaluation_scores_a_perfect_maxquery_map_as_perfect(tmp_path):
    cases = [_case("in_a", False, 0.0), _case("in_b", False, 0.0), _case("ood_a", True, 5.0), _case("ood_b", True, 4.0)]
    handler = OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], roi_margin_voxels=1, save_scores=True)
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    maxquery = metrics["pixel_ood"]["maxquery"]
    assert (maxquery["auroc"], maxquery["aupr"], maxquery["fpr95"]) == (1.0, 1.0, 0.0)
    assert metrics["case_ood"]["maxquery"]["auroc"] == 1.0
    assert metrics["dice"] == {"organ": pytest.approx(1.0), "tumour": pytest.approx(1.0)}
    assert metrics["num_cases"] == {"test": 2, "test_ood": 2}
    assert metrics["num_roi_voxels"]["ood"] == 2 * 8  # two OOD cases with a 2^3 lesion each
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "per_case.csv").open())}
    assert rows["ood_a"]["group"] == "test_ood" and rows["in_a"]["dice_organ"] == "1.000000"
    assert np.load(tmp_path / "roi_scores.npz")["is_ood"].sum() == 16


def test_each_ood_type_is_scored_on_its_own(tmp_path):
    # type 4 (cyst) is scored far above the inlier tissue, type 5 (pseudopapillary) below every organ voxel
    cases = [_case("in_a", False, 0.0), _case("in_b", False, 0.0), _case("cyst", True, 5.0), _case("spt", True, -5.0)]
    cases[3][0]["label"][cases[3][0]["label"] == 4] = 5
    both = _case("both", True, 5.0)
    both[0]["label"][0, 3:5, 3:5, 3] = 5  # half of its lesion is of type 5, with the same high score
    cases.append(both)
    handler = OODEvaluationHandler(
        str(tmp_path), CLASSES, ood_labels=[4, 5, 6], roi_margin_voxels=1, ood_label_names={4: "cyst", 5: "spt"}
    )
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    by_type = json.loads((tmp_path / "metrics.json").read_text())["by_ood_type"]
    assert list(by_type) == ["cyst", "spt"]  # type 6 has no voxel
    assert (by_type["cyst"]["cases"], by_type["cyst"]["voxels"]) == (2, 8 + 4)
    assert by_type["cyst"]["pixel_auroc"]["maxquery"] == 1.0 and by_type["cyst"]["case_auroc"]["maxquery"] == 1.0
    # the 4 type-5 voxels of "both" rank above every inlier voxel, the 8 of "spt" below every one
    assert by_type["spt"]["pixel_auroc"]["maxquery"] == pytest.approx(4 / 12, abs=0.01)
    # case scores: "spt" ties with the inliers (its organ's 0 is its top score), "both" ranks above them
    assert by_type["spt"]["cases"] == 2 and by_type["spt"]["case_auroc"]["maxquery"] == 0.75
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "per_case.csv").open())}
    assert (rows["both"]["ood_types"], rows["spt"]["ood_types"], rows["in_a"]["ood_types"]) == ("cyst;spt", "spt", "")


def test_case_auroc_by_ood_size_separates_the_missed_small_lesions(tmp_path):
    # the 2^3 OOD lesion scores like the inlier tissue, the 4x4x2 one far above it: pooled 0.75, by size 0.5 and 1
    cases = [_case("in_a", False, 0.0), _case("in_b", False, 0.0), _case("small", True, 0.0), _case("large", True, 5.0)]
    large = cases[3][0]
    large["label"][0, 2:6, 2:6, 3:5] = 4
    large["ood"][0, 2:6, 2:6, 3:5] = 5.0
    handler = OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], roi_margin_voxels=1, ood_size_edges=[10])
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["case_ood"]["maxquery"]["auroc"] == 0.75
    small, big = metrics["by_ood_size"]
    assert (small["min_voxels"], small["max_voxels"], small["cases"]) == (0, 10, 1)
    assert (big["min_voxels"], big["max_voxels"], big["cases"]) == (10, None, 1)
    assert small["case_auroc"]["maxquery"] == 0.5 and big["case_auroc"]["maxquery"] == 1.0
    assert metrics["settings"]["ood_size_edges"] == [10]


def test_bad_size_edges_are_refused_before_evaluating(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], ood_size_edges=[500, 250])


def test_near_ood_compares_ood_lesions_with_the_inlier_tumours_alone(tmp_path):
    # the OOD lesions score above the organ but level with (cyst) or below (spt) the inlier tumours, as a model that
    # takes an unseen type for a known tumour would: high pooled pixel AUROC, chance or worse against the tumours
    cases = [_case("in_a", False, 3.0), _case("in_b", False, 3.0), _case("cyst", True, 3.0), _case("spt", True, 2.0)]
    cases[3][0]["label"][cases[3][0]["label"] == 4] = 5
    handler = OODEvaluationHandler(
        str(tmp_path),
        CLASSES,
        ood_labels=[4, 5],
        roi_margin_voxels=1,
        ood_label_names={4: "cyst", 5: "spt"},
        save_scores=True,
    )
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pixel_ood"]["maxquery"]["auroc"] > 0.9
    assert metrics["near_ood"]["maxquery"] == pytest.approx(0.25)  # cyst voxels tie with the tumours, spt below
    by_type = metrics["by_ood_type"]
    assert by_type["cyst"]["pixel_auroc_vs_inlier_tumours"]["maxquery"] == pytest.approx(0.5)
    assert by_type["spt"]["pixel_auroc_vs_inlier_tumours"]["maxquery"] == 0.0
    assert by_type["spt"]["pixel_auroc"]["maxquery"] > 0.9  # against the organ as well, spt looks anomalous
    saved = np.load(tmp_path / "roi_scores.npz")
    assert saved["inlier_tumour"].sum() == 2 * 8 and not (saved["inlier_tumour"] & saved["is_ood"]).any()
    assert "vs tumours" in format_metrics_table(metrics)


def test_near_ood_is_nan_without_inlier_tumours(tmp_path):
    cases = [_case("ood_a", True, 5.0)]
    handler = OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], roi_margin_voxels=1)
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    assert np.isnan(json.loads((tmp_path / "metrics.json").read_text())["near_ood"]["maxquery"])


def test_smoothing_changes_the_pixel_scores_of_every_method_but_not_the_case_scores(tmp_path):
    cases = [_case("in_a", False, 0.0), _case("ood_a", True, 5.0)]
    gen = torch.Generator().manual_seed(0)
    for item, _ in cases:
        probs = item["pred"].as_tensor() + 0.2 * torch.rand(item["pred"].shape, generator=gen)  # uneven confidence
        probs = probs / probs.sum(0, keepdim=True)
        item["pred"] = MetaTensor(probs, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    results = {}
    for sigma in (0.0, 2.0):
        out = tmp_path / f"sigma_{sigma}"
        handler = OODEvaluationHandler(
            str(out), CLASSES, ood_labels=[4], roi_margin_voxels=1, save_scores=True, smoothing_sigma_mm=sigma
        )
        run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
        results[sigma] = (
            json.loads((out / "metrics.json").read_text()),
            list(csv.DictReader((out / "per_case.csv").open())),
            np.load(out / "roi_scores.npz"),
        )
    (_, raw_rows, raw_scores), (metrics, rows, scores) = results[0.0], results[2.0]
    assert metrics["settings"]["smoothing_sigma_mm"] == 2.0
    for method in ("maxquery", "msp", "entropy"):
        assert not np.allclose(raw_scores[method], scores[method]), f"{method} was not smoothed"
        assert [r[f"score_{method}"] for r in rows] == [r[f"score_{method}"] for r in raw_rows]


@pytest.fixture
def score_registry():
    """The score registry, restored after the test (registering is global)."""
    saved = dict(SCORES)
    yield SCORES
    SCORES.clear()
    SCORES.update(saved)


def _negative_max_probability(x: torch.Tensor, dim: int = 1, keepdim: bool = True) -> torch.Tensor:
    return -x.amax(dim=dim, keepdim=keepdim)


def test_a_registered_score_is_evaluated_without_touching_the_evaluation(tmp_path, score_registry):
    register_score("neg_max_prob", _negative_max_probability, "probabilities")
    cases = [_case("in_a", False, 0.0), _case("ood_a", True, 5.0)]
    handler = OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], roi_margin_voxels=1, save_scores=True)
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["pixel_ood"]) == ["maxquery", "msp", "max_logit", "energy", "entropy", "rba", "neg_max_prob"]
    assert metrics["pixel_ood"]["neg_max_prob"]["auroc"] == metrics["pixel_ood"]["msp"]["auroc"]  # msp - 1
    assert set(metrics["case_ood"]["neg_max_prob"]) == {"auroc"}
    assert list(metrics["skipped_scores"]) == ["maxquery_centred"]  # no class means: nothing else is left out
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "per_case.csv").open())}
    assert float(rows["in_a"]["score_neg_max_prob"]) == pytest.approx(float(rows["in_a"]["score_msp"]) - 1.0)
    assert "neg_max_prob" in np.load(tmp_path / "roi_scores.npz").files


def test_a_duplicate_name_or_an_unknown_input_is_refused(score_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_score("msp", _negative_max_probability, "probabilities")
    with pytest.raises(ValueError, match="must be one of"):
        register_score("odin", _negative_max_probability, "features")
    with pytest.raises(ValueError, match="non-empty name"):
        register_score("", _negative_max_probability, "logits")
    with pytest.raises(ValueError, match="unknown OOD score"):
        OODEvaluationHandler(".", CLASSES, ood_labels=[4], methods=["odin"])
    assert "odin" not in SCORES and SCORES["msp"].consumes == "probabilities"


def test_a_score_of_an_output_the_network_lacks_is_skipped_with_the_reason(tmp_path, score_registry):
    register_score("neg_max_affinity", _negative_max_probability, "affinities")
    cases = [_case("in_a", False, 0.0), _case("ood_a", True, 5.0)]
    # a per-voxel head (DynUNet baseline): no anomaly map and no affinities
    handler = OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], anomaly_key=None)
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["pixel_ood"]) == ["msp", "max_logit", "energy", "entropy", "rba"]
    assert set(metrics["skipped_scores"]) == {"maxquery", "maxquery_centred", "neg_max_affinity"}
    assert "no query affinities" in metrics["skipped_scores"]["neg_max_affinity"]
    assert "skipped" in format_metrics_table(metrics)
    # a network that gives them gets the score: R (N=2 queries) under affinity_key
    for item, _ in cases:
        item["affinity"] = torch.zeros(2, 8, 8, 8)
    cases[1][0]["affinity"][:, 3:5, 3:5, 3:5] = -1.0  # the OOD lesion is far from every query
    handler = OODEvaluationHandler(str(tmp_path), CLASSES, ood_labels=[4], roi_margin_voxels=1, affinity_key="affinity")
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    assert handler.metrics["pixel_ood"]["neg_max_affinity"]["auroc"] == 1.0
    assert list(handler.metrics["skipped_scores"]) == ["maxquery_centred"]


def test_calibration_flags_at_most_the_target_fraction_of_inlier_cases(tmp_path):
    cases = [_case(f"val_{i}", False, float(i)) for i in range(20)]
    handler = OODCalibrationHandler(str(tmp_path / "calibration.json"), target_fpr=0.1)
    run_handler_steps(cases, handler._reset, handler._collect, handler._save)
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    scores = np.array(calibration["case_scores"])
    assert (scores > calibration["threshold"]).mean() <= 0.1
    assert calibration["num_cases"] == 20 and np.isfinite(calibration["voxel_threshold"])


def test_a_case_threshold_is_only_used_with_the_case_score_it_was_calibrated_for(tmp_path):
    path = tmp_path / "calibration.json"
    fitted = {"top_k_fraction": 0.05, "erode_voxels": 1}
    handler = OODCalibrationHandler(str(path), target_fpr=0.1, case_score_settings=fitted)
    run_handler_steps(
        [_case(f"val_{i}", False, float(i)) for i in range(20)], handler._reset, handler._collect, handler._save
    )
    calibration = json.loads(path.read_text())
    assert calibration["case_score_settings"] == fitted

    same = calibrated_thresholds(path, case_score_settings={"top_k_fraction": 0.05, "erode_voxels": 1})
    assert same.case_threshold == calibration["threshold"] and same.warning is None
    for other in ({"top_k_fraction": 0.01, "erode_voxels": 1}, {"top_k_fraction": 0.05, "erode_voxels": 0}):
        refused = calibrated_thresholds(path, case_score_settings=other)
        # the voxel threshold reads the anomaly map, which the case score does not change
        assert refused.case_threshold is None and refused.voxel_threshold == calibration["voxel_threshold"]
        assert "another case score" in refused.warning
    # written before the settings were recorded: used as it is
    del calibration["case_score_settings"]
    path.write_text(json.dumps(calibration))
    assert calibrated_thresholds(path, case_score_settings=fitted).case_threshold == calibration["threshold"]


def test_case_writer_leaves_the_flag_empty_for_a_threshold_of_another_case_score(tmp_path):
    calibration = {"threshold": 2.5, "voxel_threshold": 1.0}
    calibration["case_score_settings"] = {"top_k_fraction": 0.01, "erode_voxels": 0}
    (tmp_path / "calibration.json").write_text(json.dumps(calibration))
    settings = {"top_k_fraction": 0.05, "erode_voxels": 1}
    path = str(tmp_path / "calibration.json")
    writer = OODCaseWriter(str(tmp_path / "out"), calibration_path=path, case_score_settings=settings)
    run_handler_steps(
        [_case("low", False, 1.0), _case("high", True, 3.0)], writer._started, writer._collect, writer._write
    )
    rows = list(csv.DictReader((tmp_path / "out" / "ood_cases.csv").open()))
    assert [(r["case"], r["flag"]) for r in rows] == [("high", ""), ("low", "")]


@pytest.mark.parametrize(
    "settings",
    [
        {"top_k_fraction": 0.0, "erode_voxels": 1},
        {"top_k_fraction": 0.05},
        {"top_k_fraction": 0.05, "erode_voxels": -1},
    ],
)
def test_malformed_case_score_settings_are_refused_by_name(tmp_path, settings):
    with pytest.raises(CalibrationError, match="top_k_fraction|erode_voxels"):
        check_case_score({"threshold": 1.0}, settings)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"threshold": 1.0, "voxel_threshold": 2.0, "case_score_settings": settings}))
    with pytest.raises(CalibrationError, match="case_score_settings"):
        load_calibration(path)


def test_case_writer_flags_against_the_calibrated_threshold(tmp_path):
    (tmp_path / "calibration.json").write_text(json.dumps({"threshold": 2.5, "voxel_threshold": 1.0}))
    writer = OODCaseWriter(str(tmp_path / "out"), calibration_path=str(tmp_path / "calibration.json"))
    run_handler_steps(
        [_case("low", False, 1.0), _case("high", True, 3.0)], writer._started, writer._collect, writer._write
    )
    rows = list(csv.DictReader((tmp_path / "out" / "ood_cases.csv").open()))
    assert [(r["case"], r["flag"]) for r in rows] == [("high", "1"), ("low", "0")]


@pytest.mark.parametrize(("max_epochs", "validated"), [(3, [3]), (7, [5, 7]), (10, [5, 10])])
def test_validation_runs_at_the_interval_and_after_the_last_epoch(max_epochs, validated):
    from ignite.engine import Engine, Events
    from monai.engines import SupervisedEvaluator

    from bundle.handlers import FinalEpochValidationHandler

    trainer = Engine(lambda engine, batch: None)
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=[{"image": torch.zeros(1, 1)}], network=torch.nn.Identity()
    )
    seen = []
    evaluator.add_event_handler(Events.STARTED, lambda _: seen.append(trainer.state.epoch))
    FinalEpochValidationHandler(interval=5, validator=evaluator).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    assert seen == validated
