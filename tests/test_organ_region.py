"""Organ-region cascade: the localiser's box, the crop's geometry and the paste back onto the full grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from bundle.transforms import LocaliseOrgand, PasteOrganRegiond, box_with_margin, largest_component
from bundle.transforms.organ_region import NOT_FOUND_MESSAGE


class ThresholdLocaliser(nn.Module):
    """A stand-in localiser: 'organ' wherever the (scaled) intensity is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.scale * (0.5 - x), self.scale * (x - 0.5)], dim=1)


def volume(organ: bool = True) -> MetaTensor:
    """A 40x36x20 image at 2x2x3 mm with a bright 'organ' block and a small bright speck far from it."""
    image = torch.zeros(1, 40, 36, 20)
    if organ:
        image[0, 10:22, 12:20, 6:12] = 1.0
        image[0, 36:38, 2:4, 1:3] = 1.0  # a smaller component the localiser must ignore
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-40.0, -30.0, 10.0], dtype=torch.float64)
    return MetaTensor(image, affine=affine)


def test_box_with_margin_maps_and_clips():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:4, 5:9, 0:1] = True
    assert box_with_margin(mask, [1, 1, 1]) == ([1, 4, 0], [5, 10, 2])
    assert box_with_margin(mask, [0, 0, 0], shape=[20, 20, 30], scale=[2, 2, 3]) == ([4, 10, 0], [8, 18, 3])
    assert box_with_margin(np.zeros((3, 3, 3), bool), [1, 1, 1]) is None


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((10, 10, 10), bool)
    mask[0:2, 0:2, 0:2] = True
    mask[5:9, 5:9, 5:9] = True
    kept = largest_component(mask)
    assert kept.sum() == 64 and not kept[0, 0, 0]


def test_localise_crops_the_organ_with_margin_and_keeps_world_coordinates():
    transform = LocaliseOrgand(
        "image", ThresholdLocaliser(), coarse_pixdim=[4.0, 4.0, 6.0], margin=[2, 2, 1], roi_size=[16, 16, 8]
    )
    image = volume()
    out = transform({"image": image})
    region = out["organ_region"]
    assert region["found"] and region["message"] == ""
    start, end = region["box_start"], region["box_end"]
    # the organ block (10:22, 12:20, 6:12) lies inside the box, the speck at (36, 2, 1) does not
    assert all(s <= lo and e >= hi for s, e, lo, hi in zip(start, end, (10, 12, 6), (22, 20, 12), strict=True))
    assert not (start[0] <= 36 < end[0] and start[1] <= 2 < end[1])
    crop = out["image"]
    assert list(crop.shape[1:]) == [e - s for s, e in zip(start, end, strict=True)]
    # the crop's first voxel sits where voxel `start` of the full image sits
    world = image.affine @ torch.tensor([*start, 1.0], dtype=torch.float64)
    torch.testing.assert_close(crop.affine[:, 3], world)
    assert region["full_shape"] == [40, 36, 20]


def test_localise_without_organ_keeps_the_whole_volume_and_says_so():
    transform = LocaliseOrgand("image", ThresholdLocaliser(), [4.0, 4.0, 6.0], [2, 2, 1], [16, 16, 8])
    out = transform({"image": volume(organ=False)})
    assert not out["organ_region"]["found"]
    assert out["organ_region"]["message"] == NOT_FOUND_MESSAGE
    assert tuple(out["image"].shape) == (1, 40, 36, 20)


def test_paste_puts_crops_back_with_background_and_lowest_anomaly_outside():
    image = volume()
    d = LocaliseOrgand("image", ThresholdLocaliser(), [4.0, 4.0, 6.0], [2, 2, 1], [16, 16, 8])({"image": image})
    crop_shape = d["image"].shape[1:]
    probs = torch.rand(3, *crop_shape).softmax(0)
    anomaly = torch.rand(1, *crop_shape) + 2.0
    d.update(pred=probs, ood=anomaly)
    out = PasteOrganRegiond(["pred", "ood"], fill=["background", "min"])(d)
    start, end = d["organ_region"]["box_start"], d["organ_region"]["box_end"]
    box = (slice(None),) + tuple(slice(s, e) for s, e in zip(start, end, strict=True))
    assert tuple(out["pred"].shape) == (3, 40, 36, 20)
    torch.testing.assert_close(out["pred"].as_tensor()[box], probs)
    outside = torch.ones(40, 36, 20, dtype=torch.bool)
    outside[box[1:]] = False
    assert torch.all(out["pred"][0][outside] == 1) and torch.all(out["pred"][1:][:, outside] == 0)
    assert torch.all(out["ood"][0][outside] == anomaly.min())
    torch.testing.assert_close(out["ood"].affine, image.affine)


def test_paste_rejects_an_output_of_the_wrong_size():
    d = LocaliseOrgand("image", ThresholdLocaliser(), [4.0, 4.0, 6.0], [2, 2, 1], [16, 16, 8])({"image": volume()})
    d["pred"] = torch.zeros(3, 5, 5, 5)
    with pytest.raises(ValueError, match="organ box"):
        PasteOrganRegiond("pred")(d)


def test_large_parts_of_a_split_organ_are_kept_and_specks_dropped():
    mask = np.zeros((20, 10, 10), bool)
    mask[0:6, 0:4, 0:4] = True  # 96 voxels
    mask[12:16, 0:4, 0:4] = True  # 64 voxels: the organ's other part
    mask[19, 9, 9] = True  # a speck
    kept = largest_component(mask, min_fraction=0.1)
    assert kept.sum() == 160 and not kept[19, 9, 9]


def test_cascade_outputs_invert_onto_the_input_grid(tmp_path):
    """Crop, paste and ``Invertd`` put each voxel back where it was, for an input that is not in RAS order."""
    import nibabel as nib
    from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, Spacingd

    data = np.zeros((40, 36, 20), np.float32)
    data[10:22, 12:20, 6:12] = 1.0
    data[12:14, 14:16, 8:10] = 0.8  # structure inside the organ, to check the placement
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, 3] = [60.0, 40.0, -20.0]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    localise = LocaliseOrgand("image", ThresholdLocaliser(), [4.0, 4.0, 6.0], [2, 2, 1], [16, 16, 8])
    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=[2.0, 2.0, 3.0]),
            localise,
        ]
    )
    d = preprocessing({"image": str(path)})
    d["pred"] = d["image"].clone()
    d = PasteOrganRegiond("pred", fill="min")(d)
    out = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert tuple(out.shape[1:]) == data.shape
    organ = data > 0
    np.testing.assert_allclose(np.asarray(out[0])[organ], data[organ], atol=1e-4)
