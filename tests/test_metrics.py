"""Tests of the OOD localisation / detection metrics on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bundle.metrics import ball, case_auroc, case_ood_metrics, fpr_at_tpr, ood_mask, pixel_ood_metrics, roi_mask
from bundle.metrics.ood import case_auroc_by_size


def test_roi_is_dilated_ground_truth_foreground():
    label = np.zeros((9, 9, 9), dtype=np.int16)
    label[4, 4, 4] = 1  # organ voxel
    label[0, 0, 0] = 5  # OOD lesion voxel
    roi = roi_mask(label, ood_values=[5], margin_voxels=0)
    assert roi.sum() == 2
    roi = roi_mask(label, ood_values=[5], margin_voxels=2)
    # Euclidean ball of radius 2 has 33 voxels; the corner voxel's ball is clipped to one octant (11 voxels)
    assert ball(2).sum() == 33 and roi.sum() == 33 + 11
    assert roi[4, 4, 6] and not roi[4, 6, 6]
    # a leading channel axis is kept and only the spatial axes are dilated
    assert roi_mask(torch.from_numpy(label)[None], [5], 2).shape == (1, 9, 9, 9)
    # restricting the inlier foreground values (e.g. only the organ) still includes the OOD lesion
    assert roi_mask(label, [5], 0, foreground_values=[2]).sum() == 1
    assert ood_mask(label, [5, 6]).sum() == 1


def test_perfect_separation():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    is_ood = np.array([0, 0, 0, 1, 1], dtype=bool)
    m = pixel_ood_metrics(scores, is_ood)
    assert m["auroc"] == 1.0 and m["aupr"] == 1.0 and m["fpr95"] == 0.0
    assert m["num_voxels"] == 5 and m["num_ood"] == 2


def test_inverted_and_tied_scores():
    is_ood = np.array([0, 0, 1, 1], dtype=bool)
    m = pixel_ood_metrics(np.array([0.9, 0.8, 0.1, 0.2]), is_ood)
    assert m["auroc"] == 0.0 and m["fpr95"] == 1.0
    tied = pixel_ood_metrics(np.full(4, 0.5), is_ood)  # ties count one half
    assert tied["auroc"] == 0.5 and tied["aupr"] == 0.5 and tied["fpr95"] == 1.0


def test_hand_computed_values():
    # negatives 0.1, 0.4, 0.6; positives 0.5, 0.7 -> pairs won: (0.5>0.1, 0.5>0.4, 0.7>all) = 5 of 6
    scores = np.array([0.1, 0.4, 0.6, 0.5, 0.7])
    is_ood = np.array([0, 0, 0, 1, 1], dtype=bool)
    m = pixel_ood_metrics(scores, is_ood)
    assert m["auroc"] == pytest.approx(5 / 6)
    # AP: ranks 0.7 (P=1, R=.5), 0.6 (neg), 0.5 (P=2/3, R=1) -> 0.5*1 + 0.5*2/3
    assert m["aupr"] == pytest.approx(0.5 + 1 / 3)
    # TPR reaches 0.95 (both positives) at threshold 0.5, where 1 of 3 negatives is above -> FPR 1/3
    assert m["fpr95"] == pytest.approx(1 / 3)
    assert fpr_at_tpr(is_ood, scores, 0.5) == 0.0


def test_roi_restricts_and_lists_are_pooled():
    # case 1 has a far-away background voxel with a huge score; the ROI excludes it
    s1, y1 = np.array([0.1, 0.9, 5.0]), np.array([0, 1, 0], dtype=bool)
    r1 = np.array([1, 1, 0], dtype=bool)
    s2, y2, r2 = np.array([[0.2, 0.8]]), np.array([[0, 1]], dtype=bool), np.ones((1, 2), dtype=bool)
    assert pixel_ood_metrics([s1, s2], [y1, y2])["auroc"] < 1.0
    pooled = pixel_ood_metrics([s1, torch.from_numpy(s2)], [y1, y2], [r1, r2])
    assert pooled["auroc"] == 1.0 and pooled["num_voxels"] == 4


def test_undefined_metrics_are_nan_with_warning():
    with pytest.warns(UserWarning, match="undefined"):
        m = pixel_ood_metrics(np.array([0.1, 0.2]), np.zeros(2, dtype=bool))
    assert math.isnan(m["auroc"]) and math.isnan(m["fpr95"])
    with pytest.raises(ValueError, match="do not match"):
        pixel_ood_metrics(np.zeros(3), np.zeros(2, dtype=bool))


def test_case_level_auroc():
    assert case_auroc([0.1, 0.2, 0.3], [0.5, 0.6]) == 1.0
    assert case_auroc([0.1, 0.5], [0.5, 0.6]) == pytest.approx(0.875)  # one tied pair counts 1/2
    m = case_ood_metrics([0.1, float("-inf")], [float("inf"), 0.2])  # infinities (empty-foreground modes) are fine
    assert m["auroc"] == 1.0 and m["fpr95"] == 0.0
    with pytest.raises(ValueError, match="need inlier and OOD"):
        case_auroc([], [0.3])


def test_case_auroc_by_size_scores_each_bin_against_every_inlier_case():
    inlier = [0.0, 1.0, 2.0, 3.0]
    # the two small OOD cases score among the inliers, the two large ones above all of them
    bins = case_auroc_by_size(inlier, [1.5, 0.5, 9.0, 8.0], [100, 120, 600, 260], [250, 500])
    assert [(b["min_size"], b["max_size"], b["cases"]) for b in bins] == [(0, 250, 2), (250, 500, 1), (500, None, 1)]
    assert bins[0]["auroc"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert bins[1]["auroc"] == bins[2]["auroc"] == 1.0
    empty = case_auroc_by_size(inlier, [9.0], [600], [250, 500])
    assert empty[0]["cases"] == 0 and np.isnan(empty[0]["auroc"])


@pytest.mark.parametrize("edges", [[500, 250], [0, 250], [250, 250]])
def test_case_auroc_by_size_refuses_bad_edges(edges):
    with pytest.raises(ValueError, match="strictly increasing"):
        case_auroc_by_size([0.0], [1.0], [10], edges)


def test_case_auroc_by_size_needs_a_size_per_ood_case():
    with pytest.raises(ValueError, match="2 OOD sizes for 1 OOD scores"):
        case_auroc_by_size([0.0], [1.0], [10, 20], [250])
