"""Tests of the lesion-size weights: a small lesion pulls on the segmentation loss as hard as a large one."""

from __future__ import annotations

import pytest
import torch

from bundle.losses import MaxQueryCriterion, lesion_size_weights


def two_lesions() -> torch.Tensor:
    """One sample ``(1, 1, 12, 12, 4)``: a 6-voxel and a 64-voxel pdac (class 2), a 9-voxel pnet (class 3)."""
    label = torch.zeros(1, 1, 12, 12, 4, dtype=torch.long)
    label[0, 0, 0:2, 0:2, 0] = 2
    label[0, 0, 1, 0:2, 1] = 2
    label[0, 0, 4:8, 4:8, :] = 2
    label[0, 0, 9:12, 9:12, 0] = 3
    return label


def test_weights_are_the_clipped_inverse_lesion_size_per_class_component():
    label = two_lesions()
    label[0, 0, 2, 0:2, 0] = 2  # the small pdac now has 8 voxels
    weights = lesion_size_weights(label, classes=[2, 3], reference_voxels=32, max_weight=3.6).view(12, 12, 4)
    assert weights[0, 0, 0].item() == pytest.approx(3.6)  # 32 / 8 = 4, capped
    assert weights[5, 5, 2].item() == pytest.approx(1.0)  # 64 voxels: above the reference, no weight
    assert weights[10, 10, 0].item() == pytest.approx(32 / 9)
    assert weights[3, 8, 3].item() == pytest.approx(1.0)  # background
    # a class left out keeps weight 1; a sample's components are its own
    only_pdac = lesion_size_weights(label, classes=[2], reference_voxels=32, max_weight=8.0).view(12, 12, 4)
    assert only_pdac[10, 10, 0].item() == pytest.approx(1.0)
    batch = torch.cat([label, torch.zeros_like(label)])
    weights = lesion_size_weights(batch, classes=[2, 3], reference_voxels=32, max_weight=8.0)
    assert weights.shape == (2, 12 * 12 * 4)
    assert torch.all(weights[1] == 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference_voxels": 0, "max_weight": 2.0}, "reference_voxels"),
        ({"reference_voxels": 10, "max_weight": 0.5}, "max_weight"),
    ],
)
def test_bad_weight_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lesion_size_weights(two_lesions(), classes=[2], **kwargs)
    with pytest.raises(ValueError, match="shape"):
        lesion_size_weights(torch.zeros(12, 12, 4, dtype=torch.long), classes=[2], reference_voxels=10, max_weight=2.0)


def test_criterion_names_missing_or_wrong_lesion_classes():
    with pytest.raises(ValueError, match="lesion_classes"):
        MaxQueryCriterion(4, lesion_max_weight=4.0)
    with pytest.raises(ValueError, match="lesion_classes"):
        MaxQueryCriterion(4, lesion_classes=[0, 2], lesion_max_weight=4.0)
    with pytest.raises(ValueError, match="lesion_max_weight"):
        MaxQueryCriterion(4, lesion_classes=[2], lesion_max_weight=0.5)


def missed(label: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """Probabilities that are right everywhere (0.9 on the true class) but say background on ``voxels``."""
    predicted = label.clone()
    predicted[voxels] = 0
    probs = torch.full((1, 4, *label.shape[2:]), 0.1 / 3)
    return probs.scatter(1, predicted, 0.9)


def test_missing_a_small_lesion_costs_more_than_the_same_voxels_of_a_large_one_only_when_weighted():
    label = two_lesions()
    small = label == 2
    small[0, 0, 4:8, 4:8, :] = False  # the 6-voxel pdac
    large_part = torch.zeros_like(small)
    large_part[0, 0, 4:7, 4:6, 0] = True  # 6 voxels of the 64-voxel pdac
    assert int(small.sum()) == int(large_part.sum()) == 6
    plain = MaxQueryCriterion(4)
    weighted = MaxQueryCriterion(4, lesion_classes=[2, 3], lesion_reference_voxels=64, lesion_max_weight=8.0)
    miss_small, miss_large = missed(label, small), missed(label, large_part)
    # unweighted, the loss counts voxels: both mistakes cost the same
    assert plain(miss_small, label).item() == pytest.approx(plain(miss_large, label).item(), rel=1e-5)
    assert weighted(miss_small, label).item() > 1.5 * weighted(miss_large, label).item()
    # a perfect prediction costs nothing either way, and without lesions the weights change nothing
    exact = torch.nn.functional.one_hot(label[:, 0], 4).movedim(-1, 1).float()
    assert weighted(exact, label).item() == pytest.approx(0.0, abs=1e-4)
    organ_only = torch.zeros_like(label)
    organ_only[0, 0, 2:10, 2:10, 1:3] = 1
    probs = torch.softmax(torch.randn(1, 4, 12, 12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    assert weighted(probs, organ_only).item() == pytest.approx(plain(probs, organ_only).item(), rel=1e-6)
