"""Tests of outlier exposure: the synthetic anomalies (foreign tissue, altered lesions) and the MaxQuery margin loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scipy import ndimage

from bundle.configs import config_files
from bundle.losses import MaxQueryCriterion, MaxQueryMarginLoss
from bundle.transforms import RandAlteredLesiond, RandForeignTissueAnomalyd


def _patch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 32, 32, 16, generator=gen) * 0.2 + 0.4
    image[:, :6] = 0.05  # dark tissue the blob can borrow
    label = torch.zeros(1, 32, 32, 16)
    label[0, 8:26, 8:26, 3:13] = 1
    label[0, 12:16, 12:16, 6:9] = 2
    return {"image": MetaTensor(image), "label": MetaTensor(label)}


def test_anomaly_is_painted_inside_the_organ_and_labelled():
    data = _patch()
    transform = RandForeignTissueAnomalyd(keys="image", prob=1.0, anomaly_label=255)
    painted = 0
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform(dict(data))
        blob = out["label"][0] == 255
        assert blob.any()
        # only organ voxels become anomaly; the tumour and the background keep their labels
        assert (data["label"][0][blob] == 1).all()
        assert (out["label"][0] == 2).sum() == (data["label"][0] == 2).sum()
        changed = (out["image"] - data["image"]).abs()[0] > 1e-6
        assert (data["label"][0][changed] == 1).all(), "pixels outside the organ were painted"
        painted += int(changed[blob].float().mean() > 0.5)
        assert isinstance(out["image"], MetaTensor) and out["image"].shape == data["image"].shape
    assert painted >= 8


def test_anomaly_transform_skips_patches_without_organ_and_honours_prob():
    data = _patch()
    data["label"] = MetaTensor(torch.zeros_like(data["label"]))
    out = RandForeignTissueAnomalyd(keys="image", prob=1.0)(dict(data))
    assert torch.equal(out["image"], data["image"]) and torch.equal(out["label"], data["label"])
    out = RandForeignTissueAnomalyd(keys="image", prob=0.0)(_patch())
    assert not (out["label"] == 255).any()
    with pytest.raises(ValueError, match="anomaly_label"):
        RandForeignTissueAnomalyd(keys="image", organ_label=1, anomaly_label=1)


def test_altered_lesion_keeps_the_tumour_shape_changes_its_look_and_labels_it_an_outlier():
    data = _patch()
    tumour = data["label"][0] == 2
    data["image"][0][tumour] -= 0.15  # a dark tumour
    transform = RandAlteredLesiond(keys="image", prob=1.0, tumour_labels=(2, 3), anomaly_label=255)
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform(dict(data))
        assert torch.equal(out["label"][0] == 255, tumour), "the outlier is exactly the tumour"
        assert ((out["label"][0] == 1) == (data["label"][0] == 1)).all(), "the organ keeps its label"
        changed = (out["image"] - data["image"]).abs()[0]
        assert changed[tumour].mean() > 0.01
        far = torch.ones_like(tumour)
        far[8:22, 8:22, 3:12] = False  # beyond the blurred edge of the tumour
        assert changed[far].max() == 0.0


def test_altered_lesion_makes_a_structured_lesion_in_a_patch_without_tumour():
    data = _patch()
    data["label"] = MetaTensor(torch.where(data["label"] == 2, 1.0, data["label"]))
    transform = RandAlteredLesiond(keys="image", prob=1.0)
    sizes = []
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform(dict(data))
        blob = out["label"][0] == 255
        sizes.append(int(blob.sum()))
        assert (data["label"][0][blob] == 1).all()
        if blob.any():
            assert (out["image"] - data["image"]).abs()[0][blob].mean() > 0.005
    assert sum(size > 0 for size in sizes) >= 8
    with pytest.raises(ValueError, match="inlier class"):
        RandAlteredLesiond(keys="image", tumour_labels=(2, 3), anomaly_label=3)


def test_margin_loss_is_zero_exactly_when_the_margins_hold():
    loss = MaxQueryMarginLoss(inlier_margin=0.8, outlier_margin=0.4)
    target = torch.tensor([[0, 0, 0, 1, 0]])
    outlier = torch.tensor([[False, False, False, False, True]])
    good = torch.tensor([[[0.9, 0.9, 0.9, 0.2, 0.1], [0.1, 0.1, 0.1, 0.85, 0.3]]])  # (B=1, N=2, V=5)
    assert loss(good, target, outlier).item() == 0.0
    organ_far = good.clone()
    organ_far[0, 1, 3] = 0.5
    # the inlier term is a mean over classes: one far organ voxel weighs as much as three background voxels
    assert loss(organ_far, target, outlier).item() == pytest.approx(0.3**2 / 2)
    background_far = good.clone()
    background_far[0, 0, 0] = 0.5
    assert loss(background_far, target, outlier).item() == pytest.approx(0.3**2 / 3 / 2)
    outlier_near = good.clone()
    outlier_near[0, 1, 4] = 0.9
    assert loss(outlier_near, target, outlier).item() == pytest.approx(0.5**2)
    with pytest.raises(ValueError, match="margins"):
        MaxQueryMarginLoss(inlier_margin=0.3, outlier_margin=0.4)


def test_margin_loss_gradient_separates_outliers_from_inliers():
    torch.manual_seed(0)
    embed = torch.nn.functional.normalize(torch.randn(64, 8), dim=1).requires_grad_()
    centres = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    outlier = torch.zeros(1, 64, dtype=torch.bool)
    outlier[0, :16] = True
    target = torch.zeros(1, 64, dtype=torch.long)
    loss_fn = MaxQueryMarginLoss(0.8, 0.2)
    optimiser = torch.optim.SGD([embed], lr=0.5)
    for _ in range(200):
        similarity = (torch.nn.functional.normalize(embed, dim=1) @ centres.T).T[None]  # (1, N, V)
        optimiser.zero_grad()
        loss_fn(similarity, target, outlier).backward()
        optimiser.step()
    nearest = (torch.nn.functional.normalize(embed, dim=1) @ centres.T).amax(1)
    # MaxQuery = -nearest: every outlier now scores above every inlier
    assert (-nearest[:16]).min() > (-nearest[16:]).max()


def test_criterion_leaves_outliers_out_of_the_segmentation_and_pushes_them_from_the_centres():
    criterion = MaxQueryCriterion(
        num_classes=4,
        query_groups=[[2, [0]], [2, [1]], [4, [2, 3]]],
        deep_supervision_weights=None,
        include_background=False,
        queries_per_class=[2, 2, 2, 2],
        outlier_label=255,
        margin_weight=1.0,
    )
    label = torch.ones(1, 1, 4, 4, 2)
    label[0, 0, 0, 0, 0] = 255
    pred = torch.zeros(1, 4, 4, 4, 2)
    pred[:, 1] = 1.0
    pred[0, :, 0, 0, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # the outlier voxel is called a tumour: not penalised
    query_probs = torch.zeros(1, 8, 4, 4, 2)
    query_probs[:, 2] = 1.0
    query_probs[0, :, 0, 0, 0] = 0.0
    query_probs[0, 0, 0, 0, 0] = 1.0  # nor is its assignment to a background query
    similarity = torch.full((1, 8, 4, 4, 2), -1.0)
    similarity[:, 2] = 0.9
    outputs = {"pred": pred, "query_probs": query_probs, "query_similarity": similarity}
    # only its nearness to a centre is penalised
    assert criterion(outputs, label).item() == pytest.approx((0.9 - 0.4) ** 2, abs=1e-4)
    similarity[0, 2, 0, 0, 0] = 0.1
    assert criterion(outputs, label).item() == pytest.approx(0.0, abs=1e-4)
    # without outlier exposure the same voxel would be a wrongly segmented organ voxel
    plain = MaxQueryCriterion(num_classes=4, deep_supervision_weights=None, include_background=False)
    assert plain(outputs, torch.ones(1, 1, 4, 4, 2)).item() > 0.1
    with pytest.raises(ValueError, match="inlier class"):
        MaxQueryCriterion(num_classes=4, outlier_label=2)


def test_valid_mask_leaves_voxels_out_of_dice_and_cross_entropy():
    from bundle.losses import dice_ce_from_probs

    probs = torch.rand(2, 3, 50, generator=torch.Generator().manual_seed(0)).softmax(1)
    target = torch.randint(0, 3, (2, 50), generator=torch.Generator().manual_seed(1))
    valid = torch.rand(2, 50, generator=torch.Generator().manual_seed(2)) > 0.3
    masked = dice_ce_from_probs(probs, target, valid=valid, batch=True)
    # the same as the loss of the valid voxels alone (batch Dice pools them)
    kept = dice_ce_from_probs(probs.permute(1, 0, 2)[:, valid][None], target[valid][None], batch=True)
    torch.testing.assert_close(masked, kept)
    garbage = target.clone()
    garbage[~valid] = (garbage[~valid] + 1) % 3
    torch.testing.assert_close(dice_ce_from_probs(probs, garbage, valid=valid), masked)


def _large_tumour_patch() -> dict:
    data = _patch()
    label = torch.zeros(1, 32, 32, 16)
    label[0, 6:28, 6:28, 2:14] = 1
    label[0, 10:22, 10:22, 4:12] = 3
    data["label"] = MetaTensor(label)
    return data


def test_structure_only_alteration_keeps_the_lesions_own_level_and_labels_all_of_it():
    data = _large_tumour_patch()
    tumour = data["label"][0] == 3
    transform = RandAlteredLesiond(keys="image", prob=1.0, structure_only_prob=1.0, spacing=(2.0, 2.0, 3.0))
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform(dict(data))
        assert torch.equal(out["label"][0] == 255, tumour), "the whole lesion is the outlier, not only its structure"
        change = (out["image"] - data["image"])[0]
        assert change[tumour].abs().max() > 0.04, "something no inlier shows was added"
        # neither the contrast nor the texture changed: most of the lesion keeps its own intensities
        assert (change[tumour].abs() < 0.02).float().mean() > 0.3


def test_shell_lies_along_the_lesions_outline():
    data = _large_tumour_patch()
    tumour = (data["label"][0] == 3).numpy()
    depth = ndimage.distance_transform_edt(tumour, sampling=(2.0, 2.0, 3.0))
    transform = RandAlteredLesiond(
        keys="image",
        prob=1.0,
        structure_only_prob=1.0,
        spacing=(2.0, 2.0, 3.0),
        blob_count=(0, 0),
        foci_count=(0, 0),
        rim_thickness_mm=(2.0, 2.0),
        rim_continuity=(1.0, 1.0),
    )
    shells = 0
    for seed in range(10):
        transform.set_random_state(seed)
        change = (transform(dict(data))["image"] - data["image"])[0].abs().numpy()
        assert change[depth > 6.0].max() < 1e-3, "the core of the lesion is untouched"
        if change.max() > 1e-3:
            shells += 1
            assert change[(depth > 0) & (depth <= 2.0)].mean() > 0.02
    assert shells >= 3, "a shell is drawn in about half of the alterations"


def _small_and_large_tumour_patch() -> dict:
    data = _large_tumour_patch()
    data["label"][0, 24:27, 24:27, 12:14] = 2  # 18 voxels, inside the organ, apart from the large tumour
    return data


def test_lesions_under_the_size_floor_keep_their_class_and_look():
    data = _small_and_large_tumour_patch()
    small = data["label"][0] == 2
    large = data["label"][0] == 3
    floored = RandAlteredLesiond(keys="image", prob=1.0, min_voxels=100, spacing=(2.0, 2.0, 3.0))
    unfloored = RandAlteredLesiond(keys="image", prob=1.0, min_voxels=8, spacing=(2.0, 2.0, 3.0))
    small_altered = 0
    for seed in range(20):
        floored.set_random_state(seed)
        out = floored(dict(data))
        assert torch.equal(out["label"][0] == 255, large), "only the lesion above the floor becomes an outlier"
        assert (out["label"][0][small] == 2).all()
        assert (out["image"] - data["image"]).abs()[0][small].max() == 0.0
        unfloored.set_random_state(seed)
        small_altered += int((unfloored(dict(data))["label"][0][small] == 255).all())
    assert small_altered > 0, "without the floor the small lesion is altered too"


def test_train_config_wires_the_size_floor():
    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=Path(__file__).resolve().parents[1]))
    parser["outlier_exposure"]["min_lesion_voxels"] = 120
    altered = [t for t in parser.get_parsed_content("train#random_transforms") if isinstance(t, RandAlteredLesiond)]
    assert [t.min_voxels for t in altered] == [120]
