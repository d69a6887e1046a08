"""Lesion-balanced crop centres: every lesion of a case is drawn equally often, whatever its size."""

import numpy as np
import pytest
import torch
from monai.transforms import RandCropByLabelClassesd

from bundle.transforms import LesionBalancedClassIndicesd, lesion_balanced_class_indices


def _two_lesions() -> np.ndarray:
    label = np.ones((24, 24, 12), dtype=np.int64)  # organ
    label[:2] = 0
    label[3:11, 3:11, 2:10] = 3  # 512-voxel lesion
    label[18:20, 18:20, 5:7] = 3  # 8-voxel lesion of the same class
    label[14:16, 3:5, 3:5] = 2  # a lesion of another class
    return label


def _centre_counts(balance: bool, draws: int = 4000) -> tuple[int, int]:
    label = _two_lesions()
    indices = lesion_balanced_class_indices(label, num_classes=4, lesion_classes=[2, 3], balance_lesions=balance)
    rng = np.random.default_rng(0)
    picked = np.unravel_index(indices[3][rng.integers(len(indices[3]), size=draws)], label.shape)
    small = int(((picked[0] >= 18) & (picked[1] >= 18)).sum())
    return small, draws - small


def test_each_lesion_is_drawn_equally_often():
    small, large = _centre_counts(balance=True)
    assert abs(small / (small + large) - 0.5) < 0.03
    # without balancing a lesion is drawn in proportion to its volume (8 of 520 voxels)
    small, large = _centre_counts(balance=False)
    assert small / (small + large) < 0.03


def test_lists_hold_only_voxels_of_their_class_and_all_of_them():
    label = _two_lesions()
    balanced = lesion_balanced_class_indices(label, 4, [2, 3])
    plain = lesion_balanced_class_indices(label, 4, [2, 3], balance_lesions=False)
    flat = label.ravel()
    for c in range(4):
        assert np.all(flat[balanced[c]] == c)
        assert set(balanced[c].tolist()) == set(np.flatnonzero(flat == c).tolist())
        np.testing.assert_array_equal(plain[c], np.flatnonzero(flat == c))
    # one lesion of class 2: its list is its plain list; class 3's two lesions fill 512 entries each
    np.testing.assert_array_equal(balanced[2], plain[2])
    assert len(balanced[3]) == 2 * 512


def test_crop_uses_the_lists_and_consumes_them():
    label = torch.as_tensor(_two_lesions())[None]
    data = {"image": torch.rand(1, 24, 24, 12), "label": label}
    data = LesionBalancedClassIndicesd("label", num_classes=4, lesion_classes=[2, 3])(data)
    assert len(data["label_class_indices"]) == 4
    crop = RandCropByLabelClassesd(
        ["image", "label"],
        "label",
        spatial_size=[4, 4, 4],
        ratios=[0, 0, 0, 1],
        num_classes=4,
        num_samples=64,
        indices_key="label_class_indices",
    )
    crop.set_random_state(0)
    samples = crop(data)
    assert all("label_class_indices" not in s for s in samples)
    small = sum(int((s["label"] == 3).sum()) <= 8 for s in samples)
    assert 16 <= small <= 48  # about half the crops sit on the 8-voxel lesion


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="lesion classes"):
        LesionBalancedClassIndicesd("label", num_classes=3, lesion_classes=[3])
    with pytest.raises(ValueError, match="one label key"):
        LesionBalancedClassIndicesd(["label", "image"], num_classes=4, lesion_classes=[2])
    with pytest.raises(ValueError, match="'label' must be an index map"):
        LesionBalancedClassIndicesd("label", num_classes=4, lesion_classes=[2])({"label": torch.zeros(2, 4, 4, 4)})
