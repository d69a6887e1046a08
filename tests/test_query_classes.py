"""Every inlier class gets cluster centres of its own: two tumour types must not share one class mix."""

from __future__ import annotations

import pytest
import torch

from bundle.losses import MaxQueryCriterion
from bundle.networks import MaskTransformer

SIZE = (32, 32, 16)
QUERIES_PER_CLASS = [2, 2, 2, 2]  # background, organ, tumour A, tumour B
QD_GROUPS = [[2, [0]], [2, [1]], [4, [2, 3]]]  # the QD loss keeps one group for all tumours


def two_tumour_phantom(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An organ slab holding a bright round tumour (class 2) and a dark one (class 3), with noise."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in SIZE], indexing="ij"))
    label = torch.zeros(SIZE, dtype=torch.long)
    label[4:28, 6:26, 2:14] = 1
    for cls, (cx, cy) in ((2, (10, 12)), (3, (21, 19))):
        jitter = torch.randint(-2, 3, (2,), generator=g).float()
        centre = torch.tensor([cx, cy, 8.0]) + torch.cat([jitter, torch.zeros(1)])
        radii2 = torch.tensor([16.0, 16.0, 9.0]).view(3, 1, 1, 1)
        label[((grid - centre.view(3, 1, 1, 1)) ** 2 / radii2).sum(0) <= 1] = cls
    intensity = torch.tensor([0.0, 0.5, 1.0, 0.2])
    image = intensity[label] + 0.08 * torch.randn(SIZE, generator=g)
    return image[None, None], label[None, None]


def nearest_query_classes(net: MaskTransformer, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel class of the nearest query (argmax affinity) and each query's class distribution ``S``."""
    net.eval()
    with torch.no_grad():
        out = net.forward_all(image)[-1]
    class_probs = out["class_logits"].softmax(-1)[0]  # (N, K)
    nearest = out["affinity"].argmax(1)[0]  # (*spatial)
    return class_probs.argmax(-1)[nearest], class_probs


def train_two_tumour_model(seed: int, queries_per_class: list[int] | None) -> MaskTransformer:
    """40 steps on four two-tumour phantoms, with fixed query classes or (``None``) a learnt class head."""
    torch.manual_seed(seed)
    classes = {"queries_per_class": queries_per_class} if queries_per_class else {"num_queries": 8}
    net = MaskTransformer(
        num_classes=4,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        filters=[8, 16, 32],
        embed_dim=16,
        num_layers=2,
        num_heads=2,
        num_feature_levels=2,
        **classes,
    )
    criterion = MaxQueryCriterion(4, query_groups=QD_GROUPS, num_queries=8, include_background=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    batch = [two_tumour_phantom(s) for s in range(4)]
    images, labels = torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])
    for _ in range(40):
        net.train()
        optimizer.zero_grad()
        criterion(net(images), labels).backward()
        optimizer.step()
    return net


def own_query_shares(net: MaskTransformer) -> dict[int, float]:
    """For each tumour class, the share of its voxels (unseen case) whose nearest query has that class."""
    image, label = two_tumour_phantom(seed=99)
    nearest_class, _ = nearest_query_classes(net, image)
    return {cls: float((nearest_class[label[0, 0] == cls] == cls).float().mean()) for cls in (2, 3)}


@pytest.mark.slow
def test_each_tumour_type_gets_its_own_queries():
    net = train_two_tumour_model(0, QUERIES_PER_CLASS)
    _, class_probs = nearest_query_classes(net, two_tumour_phantom(seed=99)[0])
    # no two classes share a class mix: every query's class distribution is one-hot and every class has queries
    assert torch.equal(class_probs.argmax(-1), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    for cls, share in own_query_shares(net).items():
        assert share > 0.8, f"only {share:.0%} of class-{cls} voxels lie nearest to a class-{cls} query"


@pytest.mark.slow
def test_the_check_catches_the_collapse_of_a_learnt_class_head():
    """The same problem with a learnt class head: the tumour queries settle on one shared class mix, and the check
    above sees it (one tumour type is nearest to queries of the other type)."""
    net = train_two_tumour_model(0, None)
    _, class_probs = nearest_query_classes(net, two_tumour_phantom(seed=99)[0])
    tumour_mix = class_probs[4:, 2:]
    assert float((tumour_mix - tumour_mix.mean(0)).abs().max()) < 0.05, "the tumour queries did not collapse"
    assert min(own_query_shares(net).values()) < 0.5


def test_fixed_query_classes_make_segmentation_the_class_mass():
    """With fixed classes ``Z_k`` is exactly the assignment mass of the class-``k`` queries."""
    torch.manual_seed(0)
    net = MaskTransformer(
        num_classes=3,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        filters=[4, 8, 8],
        queries_per_class=[1, 2, 3],
        embed_dim=8,
        num_layers=1,
        num_heads=2,
        num_feature_levels=1,
    ).eval()
    assert net.num_queries == 6 and net.head.class_mlp is None
    with torch.no_grad():
        out = net.forward_all(torch.rand(1, 1, 8, 8, 8))[-1]
    m = out["query_probs"]
    expected = torch.stack([m[:, :1].sum(1), m[:, 1:3].sum(1), m[:, 3:].sum(1)], dim=1)
    torch.testing.assert_close(out["pred"], expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"queries_per_class": [2, 2]}, "each of the 3 classes"),
        ({"queries_per_class": [2, 0, 2]}, "each of the 3 classes"),
        ({"queries_per_class": [2, 2, 2], "num_queries": 5}, "sums to 6"),
    ],
)
def test_queries_per_class_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskTransformer(num_classes=3, kernel_size=[3, 3, 3], strides=[1, 2, 2], filters=[4, 8, 8], **kwargs)


@pytest.mark.parametrize("queries_per_class", [[1, 2, 3], None])
def test_evidence_logits_give_z_and_a_real_energy(queries_per_class):
    """``softmax(l) = Z``, and Energy ``-logsumexp l = -logsumexp_n R`` is not constant (unlike ``l = log Z``)."""
    torch.manual_seed(0)
    kwargs = dict(num_classes=3, kernel_size=[3, 3, 3], strides=[1, 2, 2], filters=[4, 8, 8], embed_dim=8)
    kwargs.update(num_layers=1, num_heads=2, num_feature_levels=1)
    if queries_per_class is None:
        kwargs["num_queries"] = 6
    else:
        kwargs["queries_per_class"] = queries_per_class
    net = MaskTransformer(**kwargs).eval()
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        z = net(x)[:, :3]
        net.eval_output = "logits"
        out = net(x)
        affinity = net.forward_all(x)[-1]["affinity"]
    logits, anomaly = out[:, :3], out[:, 3:]
    torch.testing.assert_close(logits.softmax(1), z, atol=1e-5, rtol=1e-4)
    energy = -torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(energy, -torch.logsumexp(affinity, dim=1), atol=1e-4, rtol=1e-4)
    assert float(energy.std()) > 1e-3
    torch.testing.assert_close(anomaly[:, 0], -affinity.amax(1))
