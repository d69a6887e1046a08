"""Tests of voxel OOD scores, their dictionary transforms, case scores and threshold calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.ood import (
    SCORE_FUNCTIONS,
    SCORES,
    CalibrationError,
    CaseOODScored,
    OODScored,
    SplitPredictiond,
    calibrate_threshold,
    case_ood_score,
    class_inputs,
    empirical_fpr,
    energy,
    entropy,
    eroded_foreground,
    load_calibration,
    max_logit,
    maxquery,
    msp,
    ood_score,
    rba,
    save_calibration,
)

# two voxels (columns), three classes (rows): a confident voxel and an uncertain one
LOGITS = torch.tensor([[4.0, 0.5], [0.0, 0.4], [-1.0, 0.3]])


def test_maxquery_is_minus_max_affinity_on_hand_made_example():
    affinity = torch.tensor([[[0.9, -0.2, 0.1]], [[0.3, -0.5, 0.1]], [[-1.0, -0.3, 0.05]]])  # (N=3, 1, V=3)
    score = maxquery(affinity, dim=0)
    torch.testing.assert_close(score, torch.tensor([[[-0.9, 0.2, -0.1]]]))
    # an anomaly map A (already -max R) is passed through
    torch.testing.assert_close(maxquery(score, dim=0, input_type="anomaly"), score)
    with pytest.raises(ValueError, match="one channel"):
        maxquery(affinity, dim=0, input_type="anomaly")


def test_scores_from_logits_match_formulas():
    p = torch.softmax(LOGITS, dim=0)
    torch.testing.assert_close(msp(LOGITS, dim=0, input_type="logits"), 1 - p.max(0, keepdim=True).values)
    torch.testing.assert_close(max_logit(LOGITS, dim=0, input_type="logits"), -LOGITS.max(0, keepdim=True).values)
    torch.testing.assert_close(
        energy(LOGITS, dim=0, input_type="logits"), -torch.log(torch.exp(LOGITS).sum(0, keepdim=True))
    )
    torch.testing.assert_close(entropy(LOGITS, dim=0, input_type="logits"), -(p * torch.log(p)).sum(0, keepdim=True))
    torch.testing.assert_close(rba(LOGITS, dim=0, input_type="logits"), -torch.tanh(LOGITS).sum(0, keepdim=True))
    # by hand for the confident voxel: max logit 4 -> -4
    assert max_logit(LOGITS, dim=0, input_type="logits")[0, 0].item() == -4.0
    # the uncertain voxel is more OOD for the softmax-based scores (RbA instead rewards "all logits low")
    for method in ("msp", "max_logit", "energy", "entropy"):
        s = ood_score(LOGITS, method, dim=0, input_type="logits")
        assert s[0, 1] > s[0, 0], method


def test_registered_scores_on_logits_equal_their_functions_exactly():
    """The registry hands each built-in the output it consumes; on logits (the evaluation's input) nothing moves."""
    inputs = class_inputs(LOGITS, "logits", dim=0)
    for name in ("msp", "max_logit", "energy", "entropy", "rba"):
        score = SCORES[name]
        expected = SCORE_FUNCTIONS[name](LOGITS, dim=0, input_type="logits")
        assert torch.equal(score(inputs[score.consumes], dim=0), expected), name
    assert [s.consumes for s in SCORES.values()][:2] == ["anomaly", "probabilities"]
    affinity = torch.randn(3, 2, 2)
    assert torch.equal(ood_score(affinity, "maxquery", dim=0), maxquery(affinity, dim=0))  # R -> A = -max_n R


def test_scores_from_probabilities_use_log_probabilities():
    z = torch.tensor([[0.9, 0.4, 1.0], [0.1, 0.35, 0.0], [0.0, 0.25, 0.0]])  # (K=3, V=3), includes exact zeros
    log_z = torch.log(z.clamp_min(1e-6))
    torch.testing.assert_close(msp(z, dim=0), 1 - z.max(0, keepdim=True).values)
    torch.testing.assert_close(max_logit(z, dim=0), -log_z.max(0, keepdim=True).values)
    torch.testing.assert_close(rba(z, dim=0, input_type="probabilities"), -torch.tanh(log_z).sum(0, keepdim=True))
    h = [-sum(p * math.log(p) for p in col if p > 0) for col in ((0.9, 0.1), (0.4, 0.35, 0.25))]
    expected_entropy = torch.tensor([[h[0], h[1], 0.0]])
    torch.testing.assert_close(entropy(z, dim=0), expected_entropy, atol=1e-4, rtol=0)
    # energy on probabilities is -log(sum p) = 0: degenerate, as documented
    torch.testing.assert_close(energy(z, dim=0, input_type="probabilities"), torch.zeros(1, 3), atol=1e-5, rtol=0)


def test_batch_first_default_dim_and_keepdim():
    x = torch.randn(2, 4, 3, 3, 3)
    assert msp(x, input_type="logits").shape == (2, 1, 3, 3, 3)
    assert entropy(x.softmax(1), keepdim=False).shape == (2, 3, 3, 3)
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood_score(x, "odin")
    with pytest.raises(ValueError, match="input_type"):
        msp(x, input_type="probs")


def meta_prediction(k: int = 3) -> MetaTensor:
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(k, 4, 4, 4, generator=gen).softmax(0)
    a = torch.randn(1, 4, 4, 4, generator=gen)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    return MetaTensor(torch.cat([z, a]), affine=affine, meta={"filename_or_obj": "case_001.nii.gz"})


def test_ood_scored_on_combined_prediction_keeps_meta():
    pred = meta_prediction()
    out = OODScored(keys="pred", method="entropy", num_classes=3, output_key="ood_entropy")({"pred": pred})
    score = out["ood_entropy"]
    assert isinstance(score, MetaTensor) and score.shape == (1, 4, 4, 4)
    assert score.meta["filename_or_obj"] == "case_001.nii.gz"
    torch.testing.assert_close(score.affine, pred.affine)
    torch.testing.assert_close(score.as_tensor(), entropy(pred[:3].as_tensor(), dim=0))
    mq = OODScored(keys="pred", method="maxquery", num_classes=3, output_key="ood")({"pred": pred})["ood"]
    torch.testing.assert_close(mq.as_tensor(), pred[3:].as_tensor())
    assert out["pred"] is pred  # input untouched


def test_ood_scored_on_logits_and_split_prediction():
    logits = torch.randn(4, 5, 5, 5)
    out = OODScored(keys="logits", method="energy", input_type="logits", output_key="e")({"logits": logits})
    torch.testing.assert_close(out["e"], -torch.logsumexp(logits, 0, keepdim=True))
    split = SplitPredictiond(keys="pred", num_classes=3, ood_key="ood")({"pred": meta_prediction()})
    assert split["pred"].shape == (3, 4, 4, 4) and split["ood"].shape == (1, 4, 4, 4)
    assert split["ood"].meta["filename_or_obj"] == "case_001.nii.gz"
    with pytest.raises(ValueError, match="channels"):
        SplitPredictiond(keys="pred", num_classes=4)({"pred": meta_prediction()})


def test_case_score_top_k_inside_foreground():
    scores = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    fg = torch.zeros(1, 10, 10, dtype=torch.bool)
    fg[0, :5] = True  # voxels 0..49; the top 10% of them are 45..49
    assert case_ood_score(scores, fg, top_k_fraction=0.1) == pytest.approx(47.0)
    assert case_ood_score(scores, fg, top_k=1) == pytest.approx(49.0)
    assert case_ood_score(scores, None, top_k=2) == pytest.approx(98.5)
    assert case_ood_score(scores.numpy(), fg.numpy(), top_k=1000) == pytest.approx(24.5)  # capped at n voxels


def test_case_score_empty_foreground_modes():
    scores = torch.arange(10, dtype=torch.float32)
    empty = torch.zeros(10, dtype=torch.bool)
    assert case_ood_score(scores, empty, top_k=2) == pytest.approx(8.5)  # falls back to the whole volume
    assert case_ood_score(scores, empty, top_k=2, empty_foreground="neg_inf") == -math.inf
    assert math.isnan(case_ood_score(scores, empty, empty_foreground="nan"))
    with pytest.raises(ValueError, match="elements"):
        case_ood_score(scores, torch.ones(9, dtype=torch.bool))


def test_case_score_erosion_reads_the_organ_interior_not_its_border():
    # a 6^3 predicted organ whose border shell scores 9 (segmentation noise at the organ's edge) and whose interior
    # holds a 2^3 lesion scoring 5 over an interior of 0
    organ = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    organ[0, 1:7, 1:7, 1:7] = True
    scores = torch.where(organ, 9.0, 0.0)
    scores[0, 2:6, 2:6, 2:6] = 0.0
    scores[0, 3:5, 3:5, 3:5] = 5.0
    assert case_ood_score(scores, organ, top_k=8) == pytest.approx(9.0)  # the border wins
    assert case_ood_score(scores, organ, top_k=8, erode_voxels=1) == pytest.approx(5.0)  # the lesion does
    assert eroded_foreground(organ, 1).sum() == 4**3 and eroded_foreground(organ, 1).shape == organ.shape
    # an organ too thin to erode is scored whole, and the transform passes the setting on
    assert eroded_foreground(organ, 3).sum() == 6**3
    out = CaseOODScored(keys="ood", foreground_key="seg", top_k=8, erode_voxels=1)({"seg": organ.long(), "ood": scores})
    assert out["ood_score"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="erode_voxels"):
        case_ood_score(scores, organ, erode_voxels=-1)


def test_case_ood_scored_with_calibration_file(tmp_path):
    pred = meta_prediction()
    z = pred[:3].as_tensor()
    fg = z.argmax(0) > 0
    expected = case_ood_score(pred[3:], fg, top_k=3)
    path = save_calibration(tmp_path / "models" / "ood_calibration.json", {"threshold": expected - 1e-3})
    t = CaseOODScored(keys="ood", foreground_key="pred", num_classes=3, top_k=3, threshold=path)
    out = t({"pred": pred, "ood": pred[3:]})
    assert out["ood_score"] == pytest.approx(expected) and out["ood_flag"] is True
    out = CaseOODScored(keys="ood", foreground_key="pred", num_classes=3, top_k=3, threshold=expected)(
        {"pred": pred, "ood": pred[3:]}
    )
    assert out["ood_flag"] is False  # flag means strictly above the threshold
    seg = fg[None].long()  # a label map works as the foreground source too
    out = CaseOODScored(keys="ood", foreground_key="seg", top_k=3)({"seg": seg, "ood": pred[3:]})
    assert out["ood_score"] == pytest.approx(expected) and "ood_flag" not in out


def test_calibrated_threshold_gives_target_fpr():
    rng = np.random.default_rng(0)
    inliers = rng.normal(size=20_000)
    for fpr in (0.01, 0.05, 0.2):
        t = calibrate_threshold(inliers, target_fpr=fpr)
        assert fpr - 1 / 20_000 - 1e-9 <= empirical_fpr(inliers, t) <= fpr
        fresh = rng.normal(size=200_000)  # generalises to new inlier cases from the same distribution
        assert empirical_fpr(fresh, t) == pytest.approx(fpr, abs=0.01)


def test_calibration_errors_and_round_trip(tmp_path):
    with pytest.raises(CalibrationError, match="empty"):
        calibrate_threshold([])
    with pytest.raises(CalibrationError, match="NaN"):
        calibrate_threshold([0.1, float("nan")])
    with pytest.raises(CalibrationError, match="target_fpr"):
        calibrate_threshold([0.1, 0.2], target_fpr=1.0)
    data = {"threshold": 0.25, "target_fpr": 0.05, "method": "maxquery", "num_cases": 10}
    path = save_calibration(tmp_path / "cal.json", data)
    assert load_calibration(path) == data
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="calibration file not found"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(tmp_path / "bad.json")
    (tmp_path / "nothr.json").write_text(json.dumps({"method": "maxquery"}))
    with pytest.raises(CalibrationError, match="no 'threshold'"):
        load_calibration(tmp_path / "nothr.json")
    with pytest.raises(CalibrationError, match="finite number"):
        save_calibration(tmp_path / "inf.json", {"threshold": float("inf")})
