"""Tests of the query-balance loss: the queries of a class share its voxels, each voxel on one of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bundle.losses import MaxQueryCriterion, QueryBalanceLoss

COUNTS = [1, 1, 4, 4]  # background, organ, two tumour classes with four queries each
STARTS = [0, 1, 2, 6]


def assignments(label: torch.Tensor, query_of_voxel: torch.Tensor) -> torch.Tensor:
    """One-hot ``(B, 10, V)`` assignments putting voxel ``v`` on query ``STARTS[label] + query_of_voxel``."""
    index = torch.tensor(STARTS)[label] + query_of_voxel
    return F.one_hot(index, sum(COUNTS)).movedim(-1, 1).float()


def tumour_label(voxels: int = 16) -> torch.Tensor:
    label = torch.zeros(2, voxels, dtype=torch.long)
    label[:, : voxels // 2] = 2
    label[0, voxels // 2 : voxels // 2 + 4] = 3
    return label


def test_balance_is_zero_exactly_when_the_queries_share_the_class_one_voxel_each():
    label = tumour_label()
    loss = QueryBalanceLoss(COUNTS)
    assert loss.classes == [2, 3]  # classes with a single query have nothing to balance
    cycle = torch.arange(label.numel()).reshape(label.shape) % 4
    assert loss.loss_flat(assignments(label, cycle), label).item() == pytest.approx(0.0, abs=1e-6)
    # collapse: every voxel of a class on its first query (what the trained model does)
    collapsed = assignments(label, torch.zeros_like(label))
    assert loss.loss_flat(collapsed, label).item() == pytest.approx(1.0, abs=1e-6)
    # coinciding centres: every voxel spread evenly over its class's queries, all queries "used" but no split
    even = collapsed.clone()
    for k in (2, 3):
        member = (label == k).unsqueeze(1).expand_as(even).clone()
        member[:, [q for q in range(10) if not STARTS[k] <= q < STARTS[k] + 4]] = False
        even[member] = 0.25
    assert loss.loss_flat(even, label).item() == pytest.approx(1.0, abs=1e-6)
    # half of the queries in use, voxels one-hot: information log 2 of log 4
    halves = assignments(label, torch.arange(label.numel()).reshape(label.shape) % 2)
    assert loss.loss_flat(halves, label).item() == pytest.approx(0.5, abs=1e-6)


def test_balance_reads_the_share_within_the_class_and_skips_other_voxels():
    label = tumour_label()
    cycle = assignments(label, torch.arange(label.numel()).reshape(label.shape) % 4)
    loss = QueryBalanceLoss(COUNTS)
    # mass moved to another class's queries, in proportion: the renormalised share is unchanged
    diluted = cycle * 0.3
    diluted[:, 0] += 0.7
    assert loss.loss_flat(diluted, label).item() == pytest.approx(0.0, abs=1e-5)
    # outlier-exposure voxels (valid False) and classes not chosen do not count
    broken = cycle.clone()
    broken[0, :, 9] = 0.0
    broken[0, STARTS[3], 9] = 1.0  # two of class 3's four voxels on its first query: shares 2/4, 0, 1/4, 1/4
    assert loss.loss_flat(broken, label).item() > 0.1
    valid = torch.ones_like(label, dtype=torch.bool)
    valid[0, 8:12] = False  # class 3 is absent once its voxels are masked out
    assert loss.loss_flat(broken, label, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert QueryBalanceLoss(COUNTS, classes=[2]).loss_flat(broken, label).item() == pytest.approx(0.0, abs=1e-6)
    assert loss.loss_flat(cycle, torch.zeros_like(label)).item() == 0.0  # no voxel of a balanced class


def test_balance_gradient_brings_idle_queries_into_use():
    torch.manual_seed(0)
    label = torch.full((1, 32), 2)
    logits = torch.zeros(1, 10, 32)
    logits[:, 2] = 3.0  # collapsed on the first tumour query
    logits = (logits + 0.1 * torch.randn_like(logits)).requires_grad_()
    loss = QueryBalanceLoss(COUNTS)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(150):
        optimiser.zero_grad()
        value = loss.loss_flat(logits.softmax(1), label)
        value.backward()
        optimiser.step()
    share = logits.softmax(1)[0, 2:6].mean(1)
    # from 1 (all voxels on one query) to a split into four one-hot groups, every query taking at least 4 of the
    # 32 voxels (the voxels are one-hot by then, so the split freezes short of exact equality)
    assert value.item() < 0.15
    assert (share > 0.1).all(), f"every query of the class takes a share, got {share.tolist()}"


def test_balance_checks_its_arguments():
    with pytest.raises(ValueError, match="single query"):
        QueryBalanceLoss(COUNTS, classes=[0, 2])
    with pytest.raises(ValueError, match="subset"):
        QueryBalanceLoss(COUNTS, classes=[4])
    with pytest.raises(ValueError, match="10 queries"):
        QueryBalanceLoss(COUNTS).loss_flat(torch.rand(1, 8, 4), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        QueryBalanceLoss(COUNTS).loss_flat(torch.rand(1, 10, 4), torch.zeros(1, 5, dtype=torch.long))


def test_criterion_adds_the_balance_of_the_final_layer():
    label = tumour_label().reshape(2, 1, 4, 4, 1)
    flat = label.flatten(1)
    m = assignments(flat, torch.zeros_like(flat)).reshape(2, 10, 4, 4, 1)  # collapsed: balance loss 1
    z = F.one_hot(label[:, 0], 4).movedim(-1, 1).float()
    outputs = {"pred": z, "query_probs": m}
    groups = [[1, [0]], [1, [1]], [8, [2, 3]]]
    base = MaxQueryCriterion(4, groups, num_queries=10)(outputs, label)
    balanced = MaxQueryCriterion(4, groups, num_queries=10, balance_weight=0.5, queries_per_class=COUNTS)
    torch.testing.assert_close(balanced(outputs, label), base + 0.5)
    with pytest.raises(ValueError, match="queries_per_class"):
        MaxQueryCriterion(4, groups, balance_weight=1.0)
    with pytest.raises(KeyError, match="query_probs"):
        balanced({"pred": z}, label)


def test_train_config_wires_the_balance_of_the_tumour_queries(tmp_path):
    from monai.bundle import ConfigParser

    from bundle.configs import config_files
    from bundle.data.phantom import generate_dataset

    root = Path(__file__).resolve().parents[1]
    generate_dataset(tmp_path, seed=3, num_train=2, num_val=1, num_test=0, num_ood=0, shape=(32, 32, 8))
    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=root))
    parser.read_meta(str(root / "metadata.json"))
    parser.update({"bundle_root": str(root), "dataset_dir": str(tmp_path)})
    criterion = parser.get_parsed_content("loss")
    assert criterion.balance_weight == 1.0 and criterion.balance_loss.classes == [2, 3]  # the tumour classes
    parser["balance_weight"] = 0.0
    assert parser.get_parsed_content("loss", lazy=False).balance_loss is None
