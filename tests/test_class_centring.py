"""Class-centred MaxQuery: class means fitted on inlier cases, and an unseen lesion told from the known tumours."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from handler_steps import run_handler_steps
from monai.data import MetaTensor

from bundle.handlers import OODCalibrationHandler, OODEvaluationHandler
from bundle.ood import (
    CLASS_MEANS_KEY,
    CalibrationError,
    ClassCentredAnomalyd,
    calibrated_class_means,
    centre_by_class,
    class_anomaly_sums,
    class_means,
)
from bundle.ood.class_centring import check_class_means

CLASSES = {0: "background", 1: "organ", 2: "tumour"}
# A model whose inlier tumours lie far from their centres (high anomaly) and whose unseen lesion, taken for organ,
# lies further from the organ centres than the organ does, but not as far as the known tumours lie from theirs.
BACKGROUND, ORGAN, TUMOUR, UNSEEN = -40.0, -30.0, -10.0, -20.0


def _case(name: str, ood: bool) -> tuple[dict, dict]:
    """A 10^3 case: organ block with a 2^3 lesion, an inlier tumour (segmented as such) or an unseen one (taken for
    organ); the anomaly map holds one value per tissue."""
    label = torch.zeros(1, 10, 10, 10)
    label[0, 2:8, 2:8, 2:8] = 1
    label[0, 4:6, 4:6, 4:6] = 4 if ood else 2
    segmentation = torch.where(label == 4, torch.ones_like(label), label).long()
    probs = torch.nn.functional.one_hot(segmentation[0], 3).permute(3, 0, 1, 2).float() * 0.9 + 0.1 / 3
    values = {0: BACKGROUND, 1: ORGAN, 2: TUMOUR, 4: UNSEEN}
    anomaly = torch.zeros_like(label)
    for value, level in values.items():
        anomaly[label == value] = level
    meta = {"filename_or_obj": f"/data/{name}.nii.gz"}
    item = {"pred": MetaTensor(probs, meta=meta), "ood": anomaly, "label": label, "ood_score": anomaly.max().item()}
    return item, {"image": MetaTensor(torch.zeros(1, 10, 10, 10), meta=meta), "ood_case": torch.tensor(int(ood))}


def test_class_sums_count_the_predicted_classes_of_the_foreground_and_its_margin():
    item, _ = _case("in", False)
    sums, counts = class_anomaly_sums(item["ood"], item["pred"], margin_voxels=1)
    # 6^3 predicted foreground (8 tumour voxels), dilated by one face-connected step: 6 faces of 6x6 background voxels
    assert counts.tolist() == [6 * 36, 216 - 8, 8]
    assert (sums / counts).tolist() == [BACKGROUND, ORGAN, TUMOUR]
    assert class_anomaly_sums(item["ood"], item["pred"], margin_voxels=0)[1].tolist() == [0, 208, 8]


def test_a_class_never_predicted_has_no_mean_and_is_refused():
    with pytest.raises(CalibrationError, match=r"class\(es\) \[2\] were never predicted"):
        class_means(np.array([1.0, 2.0, 0.0]), np.array([1, 1, 0]))


@pytest.mark.parametrize(
    ("means", "match"),
    [
        ({"0": 1.0, "x": 2.0}, "class key 'x'"),
        ({"0": 1.0, "1": math.nan, "2": 0.0}, "class 1 must be a finite number"),
        ({"0": 1.0, "1": True, "2": 0.0}, "class 1 must be a finite number"),
        ({"0": 1.0, "2": 0.0}, r"classes \[0, 2\] given; expected exactly \[0, 1, 2\]"),
        ([1.0, 2.0, 3.0], "must be a non-empty object"),
    ],
)
def test_malformed_class_means_are_refused_by_name(means, match):
    with pytest.raises(CalibrationError, match=match):
        check_class_means(means, 3)


def test_centring_subtracts_the_mean_of_each_voxels_predicted_class():
    logits = torch.tensor([[[3.0, 0.0]], [[0.0, 0.0]], [[0.0, 5.0]]])  # (K=3, 1, 2): background, then tumour
    anomaly = torch.tensor([[[1.0, 1.0]]])
    centred = centre_by_class(anomaly, logits, {0: -1.0, 1: 0.0, 2: 4.0})
    assert centred.tolist() == [[[2.0, -3.0]]]
    data = ClassCentredAnomalyd("ood", "pred", {"0": -1.0, "1": 0.0, "2": 4.0})(
        {"ood": MetaTensor(anomaly, meta={"filename_or_obj": "a.nii.gz"}), "pred": logits}
    )
    assert data["ood_centred"].tolist() == [[[2.0, -3.0]]] and data["ood_centred"].meta["filename_or_obj"] == "a.nii.gz"
    assert data["ood"].tolist() == [[[1.0, 1.0]]]  # the MaxQuery map itself is kept


def test_calibrated_centring_ranks_an_unseen_lesion_above_the_known_tumours(tmp_path):
    calibration_path = tmp_path / "ood_calibration.json"
    calibrate = OODCalibrationHandler(str(calibration_path), class_mean_key="ood", class_mean_margin_voxels=1)
    run_handler_steps(
        [_case(f"val_{i}", False) for i in range(3)], calibrate._reset, calibrate._collect, calibrate._save
    )
    means = calibrated_class_means(str(calibration_path))
    assert means == {0: BACKGROUND, 1: ORGAN, 2: TUMOUR}
    assert json.loads(calibration_path.read_text())[CLASS_MEANS_KEY] == {"0": BACKGROUND, "1": ORGAN, "2": TUMOUR}

    cases = [_case("in_a", False), _case("in_b", False), _case("ood_a", True), _case("ood_b", True)]
    evaluate = OODEvaluationHandler(
        str(tmp_path / "eval"), CLASSES, [4], roi_margin_voxels=1, anomaly_class_means=means
    )
    run_handler_steps(cases, evaluate._reset, evaluate._collect, evaluate._finish)
    metrics = evaluate.metrics
    # MaxQuery puts the known tumours above the unseen lesion; centred, the unseen lesion is 10 above its class's
    # inlier mean and the tumours sit at theirs
    assert metrics["near_ood"]["maxquery"] == 0.0 and metrics["near_ood"]["maxquery_centred"] == 1.0
    assert metrics["pixel_ood"]["maxquery_centred"]["auroc"] == 1.0
    assert list(metrics["pixel_ood"])[:2] == ["maxquery", "maxquery_centred"]
    assert "maxquery_centred" not in metrics["skipped_scores"]


def test_the_centred_score_is_skipped_with_the_reason_where_it_cannot_be_computed(tmp_path):
    cases = [_case("in_a", False), _case("ood_a", True)]
    without_means = OODEvaluationHandler(str(tmp_path / "a"), CLASSES, [4])
    run_handler_steps(cases, without_means._reset, without_means._collect, without_means._finish)
    assert "recalibrate" in without_means.metrics["skipped_scores"]["maxquery_centred"]
    assert "maxquery_centred" not in without_means.metrics["pixel_ood"]
    means = {0: BACKGROUND, 1: ORGAN, 2: TUMOUR}
    no_map = OODEvaluationHandler(str(tmp_path / "b"), CLASSES, [4], anomaly_key=None, anomaly_class_means=means)
    assert "no anomaly map" in no_map.skipped["maxquery_centred"]
    chosen = OODEvaluationHandler(str(tmp_path / "c"), CLASSES, [4], methods=["msp"], anomaly_class_means=means)
    assert chosen.methods == ["msp"] and "maxquery_centred" not in chosen.skipped
    with pytest.raises(CalibrationError, match="expected exactly"):
        OODEvaluationHandler(str(tmp_path / "d"), CLASSES, [4], anomaly_class_means={0: 1.0, 1: 2.0})


def test_a_calibration_without_usable_class_means_gives_none_and_says_why(tmp_path, caplog):
    path = tmp_path / "ood_calibration.json"
    path.write_text(json.dumps({"threshold": 1.0, "voxel_threshold": 2.0}))
    with caplog.at_level("WARNING"):
        assert calibrated_class_means(str(path)) is None
    assert "has no anomaly_class_means" in caplog.text
    assert calibrated_class_means(str(tmp_path / "missing.json")) is None
    path.write_text(json.dumps({"threshold": 1.0, CLASS_MEANS_KEY: {"0": "low"}}))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert calibrated_class_means(str(path)) is None
    assert "class 0 must be a finite number" in caplog.text
    # the means of another model's calibration are not used
    (tmp_path / "model.pt").write_bytes(b"weights")
    path.write_text(json.dumps({"threshold": 1.0, "model_sha256": "0" * 64, CLASS_MEANS_KEY: {"0": 1.0}}))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert calibrated_class_means(str(path), str(tmp_path / "model.pt")) is None
    assert "another model" in caplog.text
