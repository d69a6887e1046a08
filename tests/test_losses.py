"""Tests of the segmentation loss, the query-distribution loss and the combined criterion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from bundle.losses import (
    MaxQueryCriterion,
    ProbabilityDiceCELoss,
    QueryCompactnessLoss,
    QueryDistributionLoss,
    parse_query_groups,
)

GROUPS = [[2, [0]], [2, [1]], [4, [2, 3]]]  # 8 queries; tumour classes 2 and 3 share a group
N = 8


def label_map(seed: int = 0, shape=(2, 1, 8, 8, 8), k: int = 4) -> torch.Tensor:
    return torch.randint(0, k, shape, generator=torch.Generator().manual_seed(seed))


def perfect_query_probs(label: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Assignments putting ``peak`` mass on the first query of each voxel's group (rest spread over others)."""
    first_query_of_group = torch.tensor([0, 2, 4, 4])  # class -> first query index of its group
    idx = first_query_of_group[label[:, 0]]
    onehot = F.one_hot(idx, N).movedim(-1, 1).float()
    return peak * onehot + (1 - peak) * (1 - onehot) / (N - 1)


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_matches_monai_and_ce_matches_nll(batch, include_background):
    probs = torch.rand(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1)).softmax(1)
    label = label_map()
    ref = DiceLoss(include_background=include_background, to_onehot_y=True, batch=batch, smooth_nr=1e-5, smooth_dr=1e-5)
    dice = ProbabilityDiceCELoss(ce_weight=0.0, batch=batch, include_background=include_background)
    torch.testing.assert_close(dice(probs, label), ref(probs, label))
    # channels-last memory (as the network's training outputs) gives the same value
    channels_last = probs.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(dice(channels_last, label), ref(probs, label))
    ce = ProbabilityDiceCELoss(dice_weight=0.0)(probs, label.float())  # float labels (as loaded) are accepted
    torch.testing.assert_close(ce, F.nll_loss(torch.log(probs), label[:, 0]))


def test_segmentation_loss_zero_for_perfect_prediction_and_safe_for_zeros():
    label = label_map()
    onehot = F.one_hot(label[:, 0], 4).movedim(-1, 1).float()
    loss = ProbabilityDiceCELoss()(onehot, label)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    wrong = ProbabilityDiceCELoss()(onehot.roll(1, dims=1), label)  # exact zeros on the true class: finite
    assert torch.isfinite(wrong) and wrong > 10


def test_segmentation_loss_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="label values"):
        ProbabilityDiceCELoss()(torch.full((1, 3, 4, 4, 4), 1 / 3), torch.full((1, 1, 4, 4, 4), 5))


def test_qd_loss_zero_for_perfect_grouped_assignment():
    label = label_map()
    qd = QueryDistributionLoss(GROUPS, num_queries=N, num_classes=4)
    assert qd(perfect_query_probs(label), label).item() == pytest.approx(0.0, abs=1e-5)
    # any split of the mass inside the right group is still perfect
    probs = perfect_query_probs(label)
    shifted = probs.clone()
    shifted[:, 4], shifted[:, 5] = probs[:, 4] * 0.3, probs[:, 4] * 0.7
    assert qd(shifted, label).item() == pytest.approx(0.0, abs=1e-5)


def test_qd_loss_grows_monotonically_as_assignment_worsens():
    label = label_map()
    qd = QueryDistributionLoss(GROUPS, num_queries=N, num_classes=4)
    good = perfect_query_probs(label)
    # the wrong assignment: every voxel to the first query of the *next* group
    bad = perfect_query_probs((label + 1) % 3)
    losses = [qd((1 - a) * good + a * bad, label).item() for a in (0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0)]
    assert all(b > a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[0] < 1e-4 < 1.0 < losses[-1]


def test_qd_group_probabilities_sum_queries_of_each_group():
    probs = torch.rand(1, N, 3, 3, 3).softmax(1)
    groups = QueryDistributionLoss(GROUPS).group_probs(probs)
    torch.testing.assert_close(groups[:, 0], probs[:, :2].sum(1))
    torch.testing.assert_close(groups[:, 1], probs[:, 2:4].sum(1))
    torch.testing.assert_close(groups[:, 2], probs[:, 4:].sum(1))
    label = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    assert QueryDistributionLoss(GROUPS).group_target(label).tolist() == [[0, 1, 2, 2]]


@pytest.mark.parametrize(
    "groups, match",
    [
        ([[2, [0]], [2, [1]], [3, [2, 3]]], "sum to the number of queries"),
        ([[2, [0]], [2, [1]], [4, [1, 3]]], "appears in groups"),
        ([[2, [0]], [2, [1]], [4, [3]]], "missing \\[2\\]"),
        ([[0, [0]], [8, [1, 2, 3]]], "positive integer"),
        ([[8, [0, 1, 2, 3]]], "at least two"),
        ([[4, [0]], [4]], "must be \\[n_queries"),
    ],
)
def test_query_group_validation(groups, match):
    with pytest.raises(ValueError, match=match):
        parse_query_groups(groups, num_queries=N, num_classes=4)


def test_qd_loss_checks_query_count_at_call_time():
    qd = QueryDistributionLoss(GROUPS)
    with pytest.raises(ValueError, match="sum to the number of queries"):
        qd(torch.rand(1, 6, 4, 4, 4).softmax(1), torch.zeros(1, 1, 4, 4, 4))


def fake_outputs(label: torch.Tensor, layers: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(layers):
        m = torch.rand(2, N, 8, 8, 8, generator=gen).softmax(1).requires_grad_()
        s = torch.rand(2, N, 4, generator=gen).softmax(-1)
        z = torch.einsum("bnxyz,bnk->bkxyz", m, s)
        prefix = "" if i == layers - 1 else f"aux_{i}_"
        out[f"{prefix}pred"], out[f"{prefix}query_probs"] = z, m
    return out


def test_criterion_combines_layers_with_normalised_weights():
    label = label_map()
    out = fake_outputs(label)
    seg, qd = ProbabilityDiceCELoss(), QueryDistributionLoss(GROUPS)
    per_layer = [
        seg(out[p], label) + 0.5 * qd(out[q], label)
        for p, q in [("aux_0_pred", "aux_0_query_probs"), ("aux_1_pred", "aux_1_query_probs"), ("pred", "query_probs")]
    ]
    auto = MaxQueryCriterion(4, GROUPS, qd_weight=0.5, num_queries=N)(out, label)
    w = torch.tensor([0.25, 0.5, 1.0])
    torch.testing.assert_close(auto, (w * torch.stack(per_layer)).sum() / w.sum())
    final_only = MaxQueryCriterion(4, GROUPS, qd_weight=0.5, deep_supervision_weights=None)(out, label)
    torch.testing.assert_close(final_only, per_layer[-1])
    explicit = MaxQueryCriterion(4, GROUPS, qd_weight=0.5, deep_supervision_weights=[1, 1, 2])(out, label)
    torch.testing.assert_close(explicit, (per_layer[0] + per_layer[1] + 2 * per_layer[2]) / 4)
    with pytest.raises(ValueError, match="3 layers"):
        MaxQueryCriterion(4, GROUPS, deep_supervision_weights=[1, 1])(out, label)


def test_criterion_without_qd_is_pure_segmentation_loss():
    label = label_map()
    out = fake_outputs(label)
    no_groups = MaxQueryCriterion(4, None, deep_supervision_weights=None)(out, label)
    zero_weight = MaxQueryCriterion(4, GROUPS, qd_weight=0.0, deep_supervision_weights=None)(out, label)
    torch.testing.assert_close(no_groups, ProbabilityDiceCELoss()(out["pred"], label))
    torch.testing.assert_close(zero_weight, no_groups)
    # a plain tensor (eval output cat[Z, A]) gets the segmentation loss of its first K channels
    combined = torch.cat([out["pred"], torch.zeros(2, 1, 8, 8, 8)], 1)
    torch.testing.assert_close(MaxQueryCriterion(4, GROUPS)(combined, label), no_groups)


def test_criterion_is_float32_and_differentiable_under_autocast():
    label = label_map()
    out = {k: v.detach().bfloat16().requires_grad_() for k, v in fake_outputs(label).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = MaxQueryCriterion(4, GROUPS)(out, label)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert out["query_probs"].grad is not None and out["aux_0_pred"].grad is not None


def test_criterion_rejects_bad_configuration():
    with pytest.raises(ValueError, match="deep_supervision_weights"):
        MaxQueryCriterion(4, GROUPS, deep_supervision_weights="linear")
    with pytest.raises(ValueError, match="sum to the number of queries"):
        MaxQueryCriterion(4, GROUPS, num_queries=16)


def test_criterion_drives_monai_supervised_trainer():
    from monai.engines import SupervisedTrainer

    from bundle.networks import MaskTransformer

    torch.manual_seed(0)
    net = MaskTransformer(
        num_classes=4,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        filters=[4, 8, 8],
        num_queries=N,
        embed_dim=8,
        num_layers=2,
        num_heads=2,
        num_feature_levels=1,
    )
    data = [{"image": torch.randn(1, 1, 8, 8, 8), "label": label_map(shape=(1, 1, 8, 8, 8)).float()}] * 2
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=MaxQueryCriterion(4, GROUPS, num_queries=N),
        decollate=False,
    )
    before = net.decoder.query_feat.detach().clone()
    trainer.run()
    loss = trainer.state.output["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert not torch.equal(before, net.decoder.query_feat)


def centred_similarity(label: torch.Tensor, counts=(2, 2, 2, 2), spread: float = 0.0) -> torch.Tensor:
    """Cosine similarities of voxels lying on the first centre of their class (``spread`` moves them off it)."""
    classes = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    first = torch.tensor([sum(counts[:k]) for k in range(len(counts))])
    similarity = torch.full((label.shape[0], len(classes), *label.shape[2:]), -0.5)
    similarity.scatter_(1, first[label], 1.0 - spread)
    return similarity


def test_compactness_is_zero_exactly_when_every_voxel_sits_on_a_centre_of_its_class():
    label = label_map(seed=3)
    loss = QueryCompactnessLoss([2, 2, 2, 2])
    assert loss(centred_similarity(label), label).item() == pytest.approx(0.0, abs=1e-6)
    # on a centre of another class: the loss is 1 - (-0.5)
    assert loss(centred_similarity((label + 1) % 4), label).item() == pytest.approx(1.5)
    assert loss(centred_similarity(label, spread=0.2), label).item() == pytest.approx(0.2, abs=1e-6)


def test_compactness_weighs_every_present_class_equally():
    label = torch.zeros(1, 1, 10, 10, 1, dtype=torch.long)
    label[0, 0, 0, 0] = 2  # one tumour voxel among 99 background ones
    similarity = centred_similarity(label)
    similarity[:, 4:6, 0, 0] = 0.0  # the tumour voxel is far from both tumour centres
    # mean over classes (background 0, tumour 1), not over voxels (0.01)
    assert QueryCompactnessLoss([2, 2, 2, 2])(similarity, label).item() == pytest.approx(0.5)


def test_compactness_gradient_pulls_the_nearest_centre_of_the_own_class_only():
    label = label_map(seed=4, shape=(1, 1, 4, 4, 4))
    similarity = torch.rand(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    QueryCompactnessLoss([2, 2, 2, 2])(similarity, label).backward()
    grad = similarity.grad[0].flatten(1)  # (N, V)
    own = torch.repeat_interleave(torch.arange(4), 2)[:, None] == label.flatten()[None]
    assert (grad[~own] == 0).all() and (grad[own] <= 0).all()
    assert ((grad < 0).sum(0) == 1).all(), "exactly one centre (the nearest of the voxel's class) is pulled"


def test_compactness_of_chosen_classes_ignores_the_others():
    label = label_map(seed=6)
    normal = QueryCompactnessLoss([2, 2, 2, 2], classes=[0, 1])
    similarity = centred_similarity(label)
    tumour = label[:, 0] >= 2
    similarity.movedim(1, -1)[tumour] = 0.0  # the tumour voxels are far from every centre
    assert normal(similarity, label).item() == pytest.approx(0.0, abs=1e-6)
    assert QueryCompactnessLoss([2, 2, 2, 2])(similarity, label).item() > 0.4
    similarity.movedim(1, -1)[label[:, 0] == 1] = 0.0  # now the organ is loose: counted as one of two classes
    assert normal(similarity, label).item() == pytest.approx(0.5, abs=1e-6)
    only_tumours = label.clone().clamp_min(2)
    assert normal(similarity, only_tumours).item() == 0.0  # no voxel of a pulled class in the batch
    with pytest.raises(ValueError, match="subset"):
        QueryCompactnessLoss([2, 2, 2, 2], classes=[4])


def test_criterion_adds_the_compactness_of_the_final_layer():
    label = label_map(seed=5)
    z, m = F.one_hot(label[:, 0], 4).movedim(-1, 1).float(), perfect_query_probs(label)
    outputs = {"pred": z, "query_probs": m, "query_similarity": centred_similarity(label, spread=0.3)}
    base = MaxQueryCriterion(4, GROUPS, num_queries=N)(outputs, label)
    with_compactness = MaxQueryCriterion(4, GROUPS, num_queries=N, compactness_weight=2.0, queries_per_class=[2] * 4)
    torch.testing.assert_close(with_compactness(outputs, label), base + 2.0 * 0.3)
    with pytest.raises(ValueError, match="queries_per_class"):
        MaxQueryCriterion(4, GROUPS, compactness_weight=1.0)
    with pytest.raises(KeyError, match="query_similarity"):
        with_compactness({"pred": z, "query_probs": m}, label)
