"""The OOD benchmark's comparison with the best baseline and its markdown report."""

from __future__ import annotations

import pytest

from benchmarks.ood_benchmark import best_baseline, markdown


def model(pixel: dict[str, tuple[float, float, float]], case: dict[str, float], timings: dict) -> dict:
    return {
        "metrics": {
            "dice": {"pancreas": 0.8, "pdac": 0.1},
            "pixel_ood": {m: {"auroc": a, "aupr": p, "fpr95": f} for m, (a, p, f) in pixel.items()},
            "case_ood": {m: {"auroc": v} for m, v in case.items()},
        },
        "timings": timings,
    }


RESULTS = {
    "a_dynunet": model({"msp": (0.70, 0.20, 0.30)}, {"msp": 0.9}, {"train_s": 1.0, "train_machine": "GPU X"}),
    "c_mask_transformer_qd": model(
        {"maxquery": (0.99, 0.90, 0.01), "entropy": (0.75, 0.10, 0.50)},
        {"maxquery": 1.0, "entropy": 0.6},
        {"train_s": 2.0, "evaluate_s": 3.0, "train_machine": "GPU X"},
    ),
}


def test_best_baseline_takes_each_metric_from_any_model_but_never_maxquery():
    best = best_baseline(RESULTS)
    assert best == pytest.approx({"auroc": 0.75, "aupr": 0.20, "fpr95": 0.30, "case_auroc": 0.9})
    # the class-centred MaxQuery is the method's own score, not a baseline
    ours = model(
        {"maxquery": (0.99, 0.90, 0.01), "maxquery_centred": (0.98, 0.8, 0.02), "entropy": (0.75, 0.10, 0.50)},
        {"maxquery": 1.0, "maxquery_centred": 0.99, "entropy": 0.6},
        {},
    )
    assert best_baseline({**RESULTS, "c_mask_transformer_qd": ours}) == best


def test_markdown_reports_every_score_the_training_machine_and_missing_timings():
    report = {
        "machine": "CPU Y",
        "seeds": {"training": 0},
        "settings": {"max_epochs": 150},
        "classes": ["pancreas", "pdac"],
        "models": RESULTS,
        "targets": {"auroc": (0.99, True), "fpr95": (0.40, False)},
    }
    text = markdown(report)
    assert "Trained on: GPU X. Report made on: CPU Y." in text
    assert "| c_mask_transformer_qd | maxquery | 0.990 | 0.900 | 0.010 | 1.000 | - |" in text  # no near-OOD figure
    RESULTS["c_mask_transformer_qd"]["metrics"]["near_ood"] = {"maxquery": 0.7, "entropy": float("nan")}
    try:
        text = markdown(report)
    finally:
        del RESULTS["c_mask_transformer_qd"]["metrics"]["near_ood"]
    assert "| c_mask_transformer_qd | maxquery | 0.990 | 0.900 | 0.010 | 1.000 | 0.700 |" in text
    assert "| c_mask_transformer_qd | entropy | 0.750 | 0.100 | 0.500 | 0.600 | - |" in text
    assert "| a_dynunet | 0.800 | 0.100 | 1.0 | - |" in text  # no evaluation time recorded
    assert "- auroc: 0.990 (yes)" in text and "- fpr95: 0.400 (no)" in text


def test_a_model_left_out_is_taken_from_an_earlier_report_and_marked(tmp_path):
    import json

    from benchmarks.ood_benchmark import reference_results

    earlier = tmp_path / "results.json"
    earlier.write_text(json.dumps({"models": RESULTS}))
    taken = reference_results(earlier, ["a_dynunet", "b_not_in_the_report"])
    assert list(taken) == ["a_dynunet"] and taken["a_dynunet"]["metrics"] == RESULTS["a_dynunet"]["metrics"]
    report = {
        "machine": "CPU Y",
        "seeds": {"training": 0},
        "settings": {},
        "classes": ["pancreas", "pdac"],
        "models": {**taken, "c_mask_transformer_qd": RESULTS["c_mask_transformer_qd"]},
        "targets": {},
    }
    assert f"a_dynunet: the figures of `{earlier}` (not re-evaluated in this run)." in markdown(report)


def test_markdown_shows_the_plain_argmax_dice_beside_the_delivered_segmentation():
    grown = model({"maxquery": (0.9, 0.5, 0.2)}, {"maxquery": 0.8}, {"train_s": 2.0})
    grown["metrics"]["dice_argmax"] = {"pancreas": 0.85, "pdac": 0.05}
    report = {
        "machine": "CPU Y",
        "seeds": {},
        "settings": {},
        "classes": ["pancreas", "pdac"],
        "models": {"c_mask_transformer_qd": grown, "a_dynunet": RESULTS["a_dynunet"]},
        "targets": {},
    }
    text = markdown(report)
    assert "| c_mask_transformer_qd | 0.800 | 0.100 | 2.0 | - |" in text
    assert "| c_mask_transformer_qd, plain argmax | 0.850 | 0.050 | | |" in text
    assert "a_dynunet, plain argmax" not in text  # no offsets: one segmentation


def report_with(ours: dict) -> dict:
    """A report comparing ``ours`` (model c) with the reference DynUNet."""
    return {
        "machine": "CPU Y",
        "seeds": {},
        "settings": {},
        "classes": ["pancreas", "pdac"],
        "models": {"a_dynunet": RESULTS["a_dynunet"], "c_mask_transformer_qd": ours},
        "targets": {},
    }


def test_markdown_breaks_the_ood_figures_down_by_lesion_type():
    def by_type(pixel: tuple[float, ...], case: tuple[float, ...]) -> dict:
        scores = ("maxquery", "entropy", "msp")
        return {
            "cases": 3,
            "voxels": 900,
            "pixel_auroc": dict(zip(scores, pixel, strict=True)),
            "case_auroc": dict(zip(scores, case, strict=True)),
        }

    ours = model(
        {"maxquery": (0.9, 0.5, 0.2), "entropy": (0.8, 0.3, 0.4), "msp": (0.7, 0.2, 0.5)},
        {"maxquery": 0.8, "entropy": 0.7, "msp": 0.6},
        {"train_s": 2.0},
    )
    ours["metrics"]["by_ood_type"] = {
        "cyst": by_type((0.99, 0.8, 0.7), (1.0, 0.9, 0.8)),
        "spt": by_type((0.61, 0.7, 0.5), (0.5, 0.6, 0.4)),
    }
    ours["metrics"]["by_ood_type"]["cyst"]["pixel_auroc_vs_inlier_tumours"] = {"maxquery": 0.93, "entropy": 0.5}
    report = report_with(ours)
    text = markdown(report)
    # MaxQuery and the model's best other score (entropy); the DynUNet's evaluation has no breakdown
    assert "| OOD type | cases | voxels | c_mask_transformer_qd maxquery | c_mask_transformer_qd entropy |" in text
    assert "| spt | 3 | 900 | 0.610 / 0.50 | 0.700 / 0.60 |" in text
    assert "| cyst | 3 | 900 | 0.990 / 0.930 / 1.00 | 0.800 / 0.500 / 0.90 |" in text  # against the tumours too
    assert "| all OOD types | - | - | 0.900 / 0.80 | 0.800 / 0.70 |" in text  # the pooled figures first
    ours["metrics"]["near_ood"] = {"maxquery": 0.7, "entropy": 0.55}
    assert "| all OOD types | - | - | 0.900 / 0.700 / 0.80 | 0.800 / 0.550 / 0.70 |" in markdown(report)
    del ours["metrics"]["by_ood_type"]
    assert "OOD type" not in markdown(report)


def test_report_tables_case_auroc_by_ood_size():
    ours = model({"maxquery": (0.9, 0.5, 0.2)}, {"maxquery": 0.8}, {"train_s": 2.0})
    ours["metrics"]["by_ood_size"] = [
        {"min_voxels": 0, "max_voxels": 250, "cases": 7, "case_auroc": {"maxquery": 0.537, "msp": 0.351}},
        {"min_voxels": 250, "max_voxels": None, "cases": 23, "case_auroc": {"maxquery": 0.855, "msp": 0.596}},
    ]
    report = report_with(ours)
    text = markdown(report)
    # only the evaluation with the breakdown has columns; every one of its scores, in its order
    assert "| OOD voxels | c_mask_transformer_qd maxquery | c_mask_transformer_qd msp |" in text
    assert "| under 250 (7 cases) | 0.54 | 0.35 |" in text
    assert "| 250 and more (23 cases) | 0.85 | 0.60 |" in text
    del ours["metrics"]["by_ood_size"]
    assert "OOD voxels" not in markdown(report)
