"""The segmentation diagnostic's figures on a hand-made case whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.segmentation_diagnostics import diagnose, markdown
from bundle.transforms.hysteresis import log_scores
from tests.test_hysteresis import _lesion, _probabilities


def test_the_report_shows_the_rim_lost_to_the_organ_and_the_prior_making_a_false_lesion():
    lesion_free = np.where(_lesion() == 2, 1, _lesion())
    cases = [(log_scores(_probabilities()), _lesion()), (log_scores(_probabilities(core=False)), lesion_free)]
    report = diagnose(cases, [2], [0.0, 2.0])
    pdac = report["classes"]["2"]
    assert pdac["true_voxels"] == 125
    assert pdac["plain_argmax_share_to_class"] == pytest.approx([0.0, 98 / 125, 27 / 125])
    assert pdac["predicted_over_true_volume"] == pytest.approx(27 / 125)
    plain, grown = pdac["sweep"]
    assert plain["hysteresis_all_cases"] == plain["prior_all_cases"] == pytest.approx((2 * 27 / 152 + 1) / 2)
    # the prior grows the lesion but makes false lesions of the doubtful spots, one in the lesion-free case
    assert grown["prior_all_cases"] == pytest.approx((2 * 125 / (125 + 133) + 0.0) / 2)
    assert grown["hysteresis_all_cases"] == pytest.approx(1.0)
    assert grown["hysteresis_cases_with_class"] == pytest.approx(1.0)
    assert "| 2 | 0.484 | 0.969 | 1.000 | 1.000 |" in markdown(report, {0: "background", 1: "organ", 2: "tumour"})


def test_lesions_are_binned_by_size_and_counted_as_found_when_the_argmax_touches_them():
    label = np.ones((12, 12, 6), dtype=np.int64)
    label[0:2, 0:2, 0:2] = 2  # 8 voxels, found by one voxel
    label[4:10, 4:10, 1:5] = 2  # 144 voxels, missed
    values = np.zeros((3, *label.shape), dtype=np.float32)
    values[1] = 1.0
    values[2, 0, 0, 0] = 2.0
    small_case = np.ones_like(label)
    small_case[6:8, 6:8, 2] = 2  # a second case: one 4-voxel lesion, found whole
    small_values = np.zeros((3, *label.shape), dtype=np.float32)
    small_values[1] = 1.0
    small_values[2][small_case == 2] = 2.0
    report = diagnose([(values, label), (small_values, small_case)], [2], [0.0], size_bins=[10, 100])
    small, middle, large = report["classes"]["2"]["by_lesion_size"]
    assert (small["lesions"], small["detected"]) == (2, 1.0)
    assert middle["lesions"] == 0
    assert (large["lesions"], large["detected"]) == (1, 0.0)
    # the 8-voxel lesion shares its case with the 144-voxel one; the 4-voxel lesion is alone in its case
    assert (small["beside_larger"], small["beside_larger_detected"]) == (1, 1.0)
    assert large["beside_larger"] == 0
    # the cases are binned by their class volume: 4 voxels (Dice 1), 152 voxels (one of them found)
    assert (small["cases"], small["plain_dice"]) == (1, pytest.approx(1.0))
    assert (large["cases"], large["plain_dice"]) == (1, pytest.approx(2 / 153))
    assert "| >= 100 | 1 | 0.00 | 0 | nan | 1 | 0.013 |" in markdown(report, {0: "background", 1: "organ", 2: "tumour"})
