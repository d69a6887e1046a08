"""A tiny mask transformer must overfit one small phantom-like volume (organ sphere with a small tumour)."""

from __future__ import annotations

import pytest
import torch

from bundle.losses import MaxQueryCriterion
from bundle.networks import MaskTransformer, split_prediction

SIZE = 32
QUERY_GROUPS = [[2, [0]], [2, [1]], [2, [2]]]  # background, organ, tumour queries


def phantom() -> tuple[torch.Tensor, torch.Tensor]:
    """CT-like 32^3 volume: noisy background, a bright spherical organ, a slightly darker small tumour inside."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIZE, dtype=torch.float32)] * 3, indexing="ij"))

    def sphere(centre: tuple[int, int, int], radius: float) -> torch.Tensor:
        return ((grid - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)) ** 2).sum(0) <= radius**2

    label = torch.zeros(SIZE, SIZE, SIZE, dtype=torch.long)
    label[sphere((16, 16, 15), 10)] = 1
    label[sphere((19, 14, 17), 4)] = 2
    noise = 0.25 * torch.randn(SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    image = (label == 1).float() + 0.4 * (label == 2).float() + noise
    return image[None, None], label[None, None]


def dice(pred: torch.Tensor, label: torch.Tensor, c: int) -> float:
    p, t = pred == c, label == c
    return float(2 * (p & t).sum() / (p.sum() + t.sum()))


@pytest.mark.slow
def test_tiny_mask_transformer_overfits_phantom():
    torch.manual_seed(0)
    image, label = phantom()
    net = MaskTransformer(
        spatial_dims=3,
        in_channels=1,
        num_classes=3,
        kernel_size=[3, 3, 3, 3],
        strides=[1, 2, 2, 2],
        filters=[8, 16, 32, 32],
        num_queries=6,
        embed_dim=16,
        num_layers=3,
        num_heads=2,
        num_feature_levels=2,
    )
    criterion = MaxQueryCriterion(3, query_groups=QUERY_GROUPS, num_queries=6)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    best = (0.0, 0.0)
    for step in range(1, 201):
        net.train()
        optimizer.zero_grad()
        criterion(net(image), label).backward()
        optimizer.step()
        if step % 10 == 0:
            net.eval()
            with torch.no_grad():
                z, _ = split_prediction(net(image), 3)
            best = (dice(z.argmax(1, keepdim=True), label, 1), dice(z.argmax(1, keepdim=True), label, 2))
            if min(best) > 0.9:
                break
    assert min(best) > 0.9, f"organ / tumour Dice after {step} steps: {best}"
    # the QD loss routed tumour voxels to the tumour query group
    net.train()
    with torch.no_grad():
        query_probs = net(image)["query_probs"]
    tumour_group_mass = query_probs[:, 4:6].sum(1, keepdim=True)[label == 2]
    assert tumour_group_mass.mean() > 0.8
