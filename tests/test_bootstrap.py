"""Case-bootstrap intervals: binned metrics against scikit-learn, interval behaviour, the saved case index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from handler_steps import run_handler_steps
from monai.data import MetaTensor
from sklearn.metrics import average_precision_score, roc_auc_score

from bundle.handlers import OODEvaluationHandler
from bundle.metrics import (
    ScoreHistograms,
    bootstrap_case_auroc,
    bootstrap_evaluation,
    bootstrap_mean,
    bootstrap_pixel_metrics,
    case_weights,
    fpr_at_tpr,
    lead_interval,
)


def synthetic(num_cases: int, seed: int = 0, voxels: int = 400, separation: float = 1.5):
    """Half inlier, half OOD cases; OOD cases hold a lesion of higher scores; cases differ by a random offset."""
    rng = np.random.default_rng(seed)
    groups = np.array(["test"] * (num_cases // 2) + ["test_ood"] * (num_cases - num_cases // 2))
    case_index = np.repeat(np.arange(num_cases), voxels)
    is_ood = np.zeros(case_index.size, bool)
    for case in np.flatnonzero(groups == "test_ood"):
        is_ood[case * voxels : case * voxels + rng.integers(10, 60)] = True
    offset = rng.normal(0.0, 0.5, num_cases)[case_index]
    scores = rng.normal(0.0, 1.0, case_index.size) + separation * is_ood + offset
    return scores.astype(np.float32), is_ood, case_index, groups


@pytest.mark.parametrize("num_bins", [256, 4096])
def test_binned_point_estimate_matches_sklearn(num_bins):
    scores, is_ood, case_index, _ = synthetic(40)
    histograms = ScoreHistograms(scores, is_ood, case_index, num_bins=num_bins)
    assert histograms.exact == (num_bins == 4096 and np.unique(scores).size <= 4096)
    point = histograms.metrics()
    assert point["auroc"] == pytest.approx(roc_auc_score(is_ood, scores), abs=0.005)
    assert point["aupr"] == pytest.approx(average_precision_score(is_ood, scores), abs=0.005)
    assert point["fpr95"] == pytest.approx(fpr_at_tpr(is_ood, scores), abs=0.005)


def test_few_distinct_scores_are_exact_with_ties():
    scores, is_ood, case_index, _ = synthetic(20)
    tied = np.round(scores, 1)  # a few dozen values, many ties between OOD and inlier voxels
    point = ScoreHistograms(tied, is_ood, case_index).metrics()
    assert point["auroc"] == pytest.approx(roc_auc_score(is_ood, tied), abs=1e-12)
    assert point["aupr"] == pytest.approx(average_precision_score(is_ood, tied), abs=1e-12)
    assert point["fpr95"] == pytest.approx(fpr_at_tpr(is_ood, tied), abs=1e-12)


def test_unit_weights_give_the_point_estimate_and_infinite_scores_keep_their_order():
    scores, is_ood, case_index, _ = synthetic(10)
    scores[is_ood.nonzero()[0][:5]] = np.inf
    histograms = ScoreHistograms(scores, is_ood, case_index, num_bins=128)
    ones = histograms.metrics(np.ones((3, 10)))
    assert all(ones[key] == pytest.approx(np.full(3, value)) for key, value in histograms.metrics().items())
    finite = np.where(np.isinf(scores), scores[np.isfinite(scores)].max() + 1, scores)
    assert histograms.metrics()["auroc"] == pytest.approx(roc_auc_score(is_ood, finite), abs=0.005)


def test_case_weights_resample_within_groups_and_are_reproducible():
    groups = np.array(["test"] * 3 + ["test_ood"] * 5)
    weights = case_weights(groups, num_replicates=200, seed=3)
    assert weights.shape == (200, 8)
    assert np.all(weights[:, :3].sum(1) == 3) and np.all(weights[:, 3:].sum(1) == 5)
    np.testing.assert_array_equal(weights, case_weights(groups, num_replicates=200, seed=3))
    assert not np.array_equal(weights, case_weights(groups, num_replicates=200, seed=4))


def test_intervals_contain_the_point_estimate_and_shrink_with_more_cases():
    widths = []
    for num_cases in (10, 80):
        scores, is_ood, case_index, groups = synthetic(num_cases, seed=1)
        intervals = bootstrap_pixel_metrics(scores, is_ood, case_index, groups, num_replicates=300)
        for interval in intervals.values():
            assert interval["low"] <= interval["value"] <= interval["high"] and interval["replicates"] == 300
        widths.append(intervals["auroc"]["high"] - intervals["auroc"]["low"])
    assert widths[1] < 0.7 * widths[0]  # about 1 / sqrt(8) of the width with 8 times the cases


def test_perfect_separation_gives_a_degenerate_interval_at_one():
    scores, is_ood, case_index, groups = synthetic(12, separation=100.0)
    pixel = bootstrap_pixel_metrics(scores, is_ood, case_index, groups, num_replicates=100)
    assert (pixel["auroc"]["low"], pixel["auroc"]["high"]) == (1.0, 1.0)
    assert (pixel["aupr"]["low"], pixel["fpr95"]["high"]) == (1.0, 0.0)
    case = bootstrap_case_auroc([0.1, 0.2, 0.3, 0.9, 1.0, 1.1], [0, 0, 0, 1, 1, 1], num_replicates=100)
    assert (case["value"], case["low"], case["high"]) == (1.0, 1.0, 1.0)


def test_case_auroc_and_mean_match_the_plain_estimates_and_are_deterministic():
    rng = np.random.default_rng(0)
    scores, ood = rng.normal(size=30), np.arange(30) >= 12
    scores[ood] += 1.0
    scores[0] = scores[20]  # a tie across the groups counts half
    first = bootstrap_case_auroc(scores, ood, num_replicates=500, seed=7)
    assert first["value"] == pytest.approx(roc_auc_score(ood, scores), abs=1e-12)
    assert first == bootstrap_case_auroc(scores, ood, num_replicates=500, seed=7)
    assert first != bootstrap_case_auroc(scores, ood, num_replicates=500, seed=8)
    dice = np.where(ood, np.nan, rng.uniform(0.5, 0.9, 30))
    mean = bootstrap_mean(dice, groups=ood, num_replicates=500)
    assert mean["value"] == pytest.approx(np.nanmean(dice)) and mean["low"] < mean["value"] < mean["high"]


def test_evaluation_intervals_are_deterministic():
    scores, is_ood, case_index, groups = synthetic(16)
    case_scores = {"a": np.array([scores[case_index == c].max() for c in range(16)])}
    kwargs = {"roi_scores": {"a": scores}, "is_ood": is_ood, "case_index": case_index, "case_scores": case_scores}
    first = bootstrap_evaluation(groups, **kwargs, num_replicates=200, seed=5)
    assert first == bootstrap_evaluation(groups, **kwargs, num_replicates=200, seed=5)
    assert set(first["pixel_ood"]["a"]) == {"auroc", "aupr", "fpr95"} and "auroc" in first["case_ood"]["a"]
    assert first["bootstrap"]["num_cases"] == {"test": 8, "test_ood": 8}


def test_lead_is_the_paired_difference_and_resolves_a_real_gap_but_not_a_copy():
    scores, is_ood, case_index, groups = synthetic(40, seed=3)
    rng = np.random.default_rng(4)
    weaker = scores - 0.8 * is_ood + rng.normal(0.0, 0.3, scores.size).astype(np.float32)  # OOD voxels pulled down
    twin = scores + rng.normal(0.0, 0.05, scores.size).astype(np.float32)  # the same score up to small noise

    def per_case(s):
        return np.array([s[case_index == c].max() for c in range(40)])

    roi = {"ref": scores, "weaker": weaker, "twin": twin}
    out = bootstrap_evaluation(
        groups,
        roi_scores=roi,
        is_ood=is_ood,
        case_index=case_index,
        case_scores={name: per_case(s) for name, s in roi.items()},
        num_replicates=400,
        reference="ref",
    )
    assert out["lead"]["reference"] == "ref" and set(out["lead"]["over"]) == {"weaker", "twin"}
    gap, copy = out["lead"]["over"]["weaker"], out["lead"]["over"]["twin"]
    assert set(gap) == {"auroc", "aupr", "fpr95", "case_auroc"}
    for key in ("auroc", "aupr"):
        assert gap[key]["value"] == pytest.approx(
            out["pixel_ood"]["ref"][key]["value"] - out["pixel_ood"]["weaker"][key]["value"]
        )
    # lower FPR95 is better: the lead is the other's FPR95 minus the reference's
    assert gap["fpr95"]["value"] == pytest.approx(
        out["pixel_ood"]["weaker"]["fpr95"]["value"] - out["pixel_ood"]["ref"]["fpr95"]["value"]
    )
    assert gap["auroc"]["low"] > 0 and gap["auroc"]["share_ahead"] == 1.0
    # a near copy is not resolved: its paired interval straddles 0 and is far narrower than either unpaired one
    assert copy["auroc"]["low"] < 0 < copy["auroc"]["high"]
    unpaired = out["pixel_ood"]["ref"]["auroc"]["high"] - out["pixel_ood"]["ref"]["auroc"]["low"]
    assert copy["auroc"]["high"] - copy["auroc"]["low"] < 0.25 * unpaired
    assert 0.0 < copy["auroc"]["share_ahead"] < 1.0


def test_lead_interval_signs_and_a_missing_reference():
    ref, other = np.array([0.9, 0.8, np.nan, 0.85]), np.array([0.8, 0.85, 0.7, 0.8])
    higher = lead_interval(ref, other, 0.86, 0.82, confidence=0.5)
    assert higher["value"] == pytest.approx(0.04) and higher["replicates"] == 3
    assert higher["share_ahead"] == pytest.approx(2 / 3)
    lower = lead_interval(ref, other, 0.86, 0.82, lower_is_better=True, confidence=0.5)
    assert lower["value"] == pytest.approx(-0.04) and lower["share_ahead"] == pytest.approx(1 / 3)
    scores, is_ood, case_index, groups = synthetic(8)
    with pytest.raises(ValueError, match="reference 'maxquery'"):
        bootstrap_evaluation(
            groups, roi_scores={"a": scores}, is_ood=is_ood, case_index=case_index, reference="maxquery"
        )


def _case(name: str, ood: bool, anomaly_on_lesion: float) -> tuple[dict, dict]:
    """An 8^3 case with an organ block and a lesion (inlier tumour 2 or OOD value 4) segmented as a tumour."""
    label = torch.zeros(1, 8, 8, 8)
    label[0, 2:6, 2:6, 2:6] = 1
    label[0, 3:5, 3:5, 3:5] = 4 if ood else 2
    probs = torch.nn.functional.one_hot(label[0].clamp_max(2).long(), 3).permute(3, 0, 1, 2).float() * 0.9 + 0.1 / 3
    anomaly = torch.rand(1, 8, 8, 8)
    anomaly[0, 3:5, 3:5, 3:5] += anomaly_on_lesion
    meta = {"filename_or_obj": f"/data/{name}.nii.gz"}
    item = {"pred": MetaTensor(probs, meta=meta), "ood": anomaly, "label": label}
    return item, {"image": MetaTensor(torch.zeros(1, 8, 8, 8), meta=meta), "ood_case": torch.tensor(int(ood))}


def test_saved_case_index_feeds_the_benchmark_intervals_and_report(tmp_path):
    from benchmarks.ood_benchmark import bootstrap_intervals, markdown

    torch.manual_seed(0)
    cases = [_case(f"ood_{i}", True, 0.5 + i / 4) for i in range(4)] + [_case(f"in_{i}", False, 0.0) for i in range(4)]
    evaluation = tmp_path / "c" / "evaluation"
    handler = OODEvaluationHandler(
        str(evaluation), {0: "background", 1: "organ", 2: "tumour"}, [4], roi_margin_voxels=1, save_scores=True
    )
    run_handler_steps(cases, handler._reset, handler._collect, handler._finish)
    saved = np.load(evaluation / "roi_scores.npz")
    assert saved["case_index"].dtype == np.int32 and saved["case_index"].size == saved["is_ood"].size
    assert saved["case_names"].tolist() == [f"ood_{i}" for i in range(4)] + [f"in_{i}" for i in range(4)]
    assert saved["case_groups"].tolist() == ["test_ood"] * 4 + ["test"] * 4
    assert not saved["is_ood"][saved["case_index"] >= 4].any()  # inlier cases hold no OOD voxel

    intervals = bootstrap_intervals(tmp_path, "c", num_replicates=100)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    for method, values in metrics["pixel_ood"].items():
        for key in ("auroc", "aupr", "fpr95"):
            assert intervals["pixel_ood"][method][key]["value"] == pytest.approx(values[key], abs=0.005)
        assert intervals["case_ood"][method]["auroc"]["value"] == pytest.approx(metrics["case_ood"][method]["auroc"])
    assert intervals["dice"]["organ"]["value"] == pytest.approx(metrics["dice"]["organ"], abs=1e-6)

    maxquery = metrics["pixel_ood"]["maxquery"]
    model = {"metrics": metrics, "timings": {}, "intervals": intervals}
    report = {"machine": "M", "seeds": {}, "settings": {}, "classes": ["organ", "tumour"], "targets": {}}
    text = markdown({**report, "models": {"c": model}})
    low, high = intervals["pixel_ood"]["maxquery"]["auroc"]["low"], intervals["pixel_ood"]["maxquery"]["auroc"]["high"]
    assert f"| c | maxquery | {maxquery['auroc']:.3f} [{low:.3f}, {high:.3f}] |" in text
    assert "percentile intervals of a bootstrap over cases (100 replicates" in text
    # MaxQuery's paired lead over each other score: its difference, in the report's lead table
    lead = intervals["lead"]["over"]["max_logit"]["auroc"]
    assert intervals["lead"]["reference"] == "maxquery" and "maxquery" not in intervals["lead"]["over"]
    pair = intervals["pixel_ood"]["maxquery"]["auroc"]["value"] - intervals["pixel_ood"]["max_logit"]["auroc"]["value"]
    assert lead["value"] == pytest.approx(pair)
    assert f"| c | maxquery over max_logit | {lead['value']:+.3f} [{lead['low']:+.3f}, {lead['high']:+.3f}]" in text
    plain = markdown({**report, "models": {"c": {"metrics": metrics, "timings": {}}}})
    assert "[" not in plain.split("Settings")[1] and "bootstrap" not in plain and "lead" not in plain

    from benchmarks.score_lead import main as score_lead

    out = tmp_path / "lead.json"
    saved_lead = score_lead([str(evaluation), "--num_replicates", "100", "--out", str(out)])
    assert saved_lead[str(evaluation)]["lead"] == intervals["lead"]
    assert json.loads(out.read_text())[str(evaluation)]["lead"]["over"]["max_logit"]["auroc"] == lead
    with pytest.raises(SystemExit):
        score_lead([str(tmp_path)])  # no per_case.csv there
