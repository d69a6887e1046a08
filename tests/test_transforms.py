"""Bundle transforms: input validation names the problem; the stacked output splits into Z and A."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from bundle.transforms import InvalidVolumeError, ValidateVolumed


def _load(tmp_path, image: np.ndarray, label: np.ndarray | None = None) -> dict:
    data = {}
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "img.nii.gz")
    data["image"] = str(tmp_path / "img.nii.gz")
    keys = ["image"]
    if label is not None:
        nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "lbl.nii.gz")
        data["label"] = str(tmp_path / "lbl.nii.gz")
        keys.append("label")
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])(data)


def test_valid_volume_passes_unchanged(tmp_path):
    item = _load(tmp_path, np.zeros((8, 8, 4), np.int16), np.ones((8, 8, 4), np.uint8))
    out = ValidateVolumed("image", label_keys="label", allowed_labels=[0, 1, 2, 3])(item)
    assert out["image"] is item["image"] and out["label"] is item["label"]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((8, 8), "must be a single-channel 3D volume"), ((8, 8, 1), "is not a 3D volume")],
    ids=["two_dimensional", "one_voxel_thin"],
)
def test_an_image_that_is_not_3d_is_refused_with_its_file_name(tmp_path, shape, message):
    item = _load(tmp_path, np.zeros(shape, np.int16))
    with pytest.raises(InvalidVolumeError, match=rf"img\.nii\.gz: 'image' {message}"):
        ValidateVolumed("image")(item)


def test_label_values_outside_the_classes_are_named(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[2, 2, 2] = 7
    item = _load(tmp_path, np.zeros((8, 8, 4), np.int16), label)
    with pytest.raises(InvalidVolumeError, match=r"lbl\.nii\.gz.*\[7\]"):
        ValidateVolumed("image", label_keys="label", allowed_labels=[0, 1, 2, 3])(item)


def test_label_shape_mismatch_is_refused(tmp_path):
    item = _load(tmp_path, np.zeros((8, 8, 4), np.int16), np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(InvalidVolumeError, match="does not match the image shape"):
        ValidateVolumed("image", label_keys="label")(item)


def test_non_finite_image_is_refused():
    image = torch.zeros(1, 4, 4, 4)
    image[0, 1, 1, 1] = float("nan")
    with pytest.raises(InvalidVolumeError, match="NaN"):
        ValidateVolumed("image")({"image": image})


def test_given_names_replace_the_file_paths_in_messages(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[2, 2, 2] = 7
    item = _load(tmp_path, np.zeros((8, 8, 4), np.int16), label)
    names = {"image": "image of 'case_01'", "label": "label of 'case_01'"}
    with pytest.raises(InvalidVolumeError) as refused:
        ValidateVolumed("image", label_keys="label", allowed_labels=[0, 1], names=names)(item)
    message = str(refused.value)
    assert message.startswith("label of 'case_01' holds values [7]"), message
    assert str(tmp_path) not in message and "lbl.nii.gz" not in message
    flat = _load(tmp_path, np.zeros((8, 8), np.int16))
    with pytest.raises(InvalidVolumeError, match=r"^image of 'case_01' must be a single-channel 3D volume"):
        ValidateVolumed("image", names=names)(flat)


def test_check_returns_the_values_of_each_label(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[2, 2, 2], label[3, 3, 3] = 3, 1
    item = _load(tmp_path, np.zeros((8, 8, 4), np.int16), label)
    assert ValidateVolumed("image", label_keys="label", allowed_labels=[0, 1, 3]).check(item) == {"label": [0, 1, 3]}


def _save_and_load(tmp_path, image_affine: np.ndarray, label_affine: np.ndarray | None = None) -> dict:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), image_affine), tmp_path / "img.nii.gz")
    data, keys = {"image": str(tmp_path / "img.nii.gz")}, ["image"]
    if label_affine is not None:
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), label_affine), tmp_path / "lbl.nii.gz")
        data["label"], keys = str(tmp_path / "lbl.nii.gz"), ["image", "label"]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])(data)


def test_a_label_shifted_off_its_image_grid_is_refused(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    shifted = affine.copy()
    shifted[0, 3] = 10.0  # the label's grid is 10 mm away from the image's
    with pytest.raises(InvalidVolumeError, match=r"lbl\.nii\.gz.*not its geometry.*10 mm"):
        ValidateVolumed("image", label_keys="label")(_save_and_load(tmp_path, affine, shifted))
    header_rounding = affine.copy()
    header_rounding[0, 3] = 1e-4
    ValidateVolumed("image", label_keys="label")(_save_and_load(tmp_path, affine, header_rounding))


def test_an_image_whose_voxel_axes_are_not_independent_is_refused(tmp_path):
    singular = np.diag([2.0, 2.0, 3.0, 1.0])
    singular[:3, 1] = singular[:3, 0]  # the second voxel axis points along the first
    with pytest.raises(InvalidVolumeError, match=r"img\.nii\.gz.*singular direction matrix"):
        ValidateVolumed("image")(_save_and_load(tmp_path, singular))
