"""Tests of the mask transformer: output contract, soft-clustering invariants, gradients, inference utilities."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from bundle.networks import DynUNetBackbone, MaskClassificationHead, MaskTransformer, split_prediction

K = 3
TINY = {
    "spatial_dims": 3,
    "in_channels": 1,
    "num_classes": K,
    "kernel_size": [3, 3, 3, 3],
    "strides": [1, 2, 2, 2],
    "filters": [8, 16, 16, 24],
    "num_queries": 6,
    "embed_dim": 16,
    "num_layers": 3,
    "num_heads": 2,
    "num_feature_levels": 2,
}


def tiny_model(**overrides) -> MaskTransformer:
    torch.manual_seed(0)
    return MaskTransformer(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def model() -> MaskTransformer:
    return tiny_model()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))


def test_backbone_returns_decoder_features_coarse_to_fine():
    backbone = DynUNetBackbone(3, 1, 12, [3, 3, 3, 3], [1, 2, 2, 2], filters=[8, 16, 16, 24])
    features, embedding = backbone(torch.randn(1, 1, 16, 16, 8))
    assert [f.shape[1] for f in features] == backbone.feature_channels == [16, 16, 8]
    assert [tuple(f.shape[2:]) for f in features] == [(4, 4, 2), (8, 8, 4), (16, 16, 8)]
    assert backbone.feature_strides == [(4, 4, 4), (2, 2, 2), (1, 1, 1)]
    assert embedding.shape == (1, 12, 16, 16, 8)
    assert not any(k.startswith(("skip_layers", "output_block")) for k in backbone.state_dict())


def test_eval_output_contract(model, image):
    model.eval()
    with torch.no_grad():
        out = model(image)
        layers = model.forward_all(image)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, K + 1, 16, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    z, a = split_prediction(out, K)
    assert z.shape == (2, K, 16, 16, 16) and a.shape == (2, 1, 16, 16, 16)
    torch.testing.assert_close(z.sum(1), torch.ones(2, 16, 16, 16))
    assert (z >= 0).all()
    # A is minus the maximal (temperature-scaled) affinity, the same R that feeds M
    affinity = layers[-1]["affinity"]
    torch.testing.assert_close(a, -affinity.amax(1, keepdim=True))
    torch.testing.assert_close(layers[-1]["query_probs"], torch.softmax(affinity, dim=1))
    # Z = sum_n M[n] S[n, k]
    s = torch.softmax(layers[-1]["class_logits"], dim=-1)
    torch.testing.assert_close(z, torch.einsum("bnxyz,bnk->bkxyz", layers[-1]["query_probs"], s))


def test_train_output_contract(model, image):
    model.train()
    out = model(image)
    n, layers = TINY["num_queries"], TINY["num_layers"]
    expected = {"pred", "ood", "query_probs", "query_similarity"} | {
        f"aux_{i}_{s}" for i in range(layers - 1) for s in ("pred", "query_probs")
    }
    assert set(out) == expected
    assert out["pred"].shape == (2, K, 16, 16, 16) and out["ood"].shape == (2, 1, 16, 16, 16)
    for key in ["query_probs"] + [f"aux_{i}_query_probs" for i in range(layers - 1)]:
        assert out[key].shape == (2, n, 16, 16, 16)
        torch.testing.assert_close(out[key].sum(1), torch.ones(2, 16, 16, 16))  # M sums to 1 over queries
    for key in ["pred"] + [f"aux_{i}_pred" for i in range(layers - 1)]:
        torch.testing.assert_close(out[key].sum(1), torch.ones(2, 16, 16, 16))  # Z sums to 1 over classes
    # the deep-supervision outputs are those of the individual decoder layers
    with torch.no_grad():
        per_layer = model.forward_all(image, all_layers=True)
    for i in range(layers - 1):
        torch.testing.assert_close(out[f"aux_{i}_pred"], per_layer[i]["pred"])
    torch.testing.assert_close(out["query_probs"], per_layer[-1]["query_probs"])
    # the similarities are the final affinities without the temperature: cosines with normalised embeddings
    similarity = out["query_similarity"].detach()
    torch.testing.assert_close(similarity / model.head.temperature, per_layer[-1]["affinity"])
    assert similarity.abs().max() <= 1.0 + 1e-5
    model.eval()


def test_no_deep_supervision_returns_final_layer_only(image):
    net = tiny_model(deep_supervision=False).train()
    assert set(net(image)) == {"pred", "ood", "query_probs", "query_similarity"}


def test_gradients_reach_queries_and_backbone(image):
    from bundle.losses import MaxQueryCriterion

    net = tiny_model().train()
    label = torch.randint(0, K, (2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(2))
    criterion = MaxQueryCriterion(K, query_groups=[[2, [0]], [2, [1]], [2, [2]]])
    criterion(net(image), label).backward()
    for name in (
        "decoder.query_feat",
        "decoder.query_pos",
        "backbone.input_block.conv1.conv.weight",
        "backbone.bottleneck.conv1.conv.weight",
        "backbone.pixel_proj.weight",
        "head.log_scale",
    ):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("normalize, temperature", [(True, None), (True, 0.05), (False, None), (False, 2.0)])
def test_embedding_normalisation_and_temperature(image, normalize, temperature):
    net = tiny_model(normalize_embeddings=normalize, temperature=temperature).eval()
    learnable = any(name == "head.log_scale" for name, _ in net.named_parameters())
    assert learnable == (temperature is None)
    expected_t = temperature if temperature is not None else (0.1 if normalize else 1.0)
    assert net.head.temperature == pytest.approx(expected_t, rel=1e-5)
    with torch.no_grad():
        layer = net.forward_all(image)[-1]
    if normalize:  # cosine affinities scaled by 1 / temperature
        assert layer["affinity"].abs().max() <= 1.0 / expected_t + 1e-4
    torch.testing.assert_close(layer["pred"].sum(1), torch.ones(2, 16, 16, 16))


def test_head_affinity_on_hand_made_embeddings():
    head = MaskClassificationHead(embed_dim=2, num_classes=2, normalize_embeddings=True, temperature=0.5)
    pixels = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, -1.0]]])  # (B=1, V=3, D=2)
    with torch.no_grad():
        for layer in head.mask_mlp.layers:  # make the centre MLP the identity
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
        queries = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # centres along x and y (ReLU keeps them)
        affinity, _ = head(queries, head.embed_pixels(pixels.transpose(1, 2)))
    cos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-(2**-0.5), -(2**-0.5)]])
    torch.testing.assert_close(affinity[0], cos / 0.5)
    torch.testing.assert_close(head.anomaly(affinity)[0, :, 0], torch.tensor([-2.0, -2.0, 2**0.5]))


def test_the_anomaly_map_adds_the_class_uncertainty_in_cosine_units(image):
    plain, weighted = tiny_model().eval(), tiny_model(anomaly_uncertainty_weight=0.5).eval()
    with torch.no_grad():
        z, a = split_prediction(plain(image), K)
        z_weighted, a_weighted = split_prediction(weighted(image), K)
        layer = weighted.forward_all(image)[-1]
    torch.testing.assert_close(z_weighted, z)  # the segmentation does not change, only the map
    entropy = -torch.special.xlogy(z, z).sum(1, keepdim=True)
    torch.testing.assert_close(a_weighted, a + 0.5 / weighted.head.temperature * entropy)
    torch.testing.assert_close(layer["ood"], a_weighted)
    weighted.train()
    torch.testing.assert_close(weighted(image)["ood"], a_weighted)


def test_an_ambiguous_voxel_as_near_to_a_centre_outranks_a_confident_one():
    """Two voxels at the same cosine to their nearest centre: MaxQuery ties them; the class uncertainty does not."""
    model = tiny_model(queries_per_class=[2, 2, 2], num_queries=None, anomaly_uncertainty_weight=0.5)
    scale = 1.0 / model.head.temperature
    # voxel 0: near a class-0 centre only; voxel 1: as near to a class-0 and a class-1 centre
    cosine = torch.tensor([[[0.9, -0.5, -0.5, -0.5, -0.5, -0.5], [0.9, -0.5, 0.9, -0.5, -0.5, -0.5]]])
    affinity = cosine * scale
    _, z = model.head.assign(affinity, model.head.fixed_class_logits[None])
    anomaly = model.anomaly(affinity, z)[0, :, 0]
    torch.testing.assert_close(model.head.anomaly(affinity)[0, 0], model.head.anomaly(affinity)[0, 1])
    assert anomaly[1] > anomaly[0]
    torch.testing.assert_close(anomaly[1] - anomaly[0], scale * 0.5 * (_entropy(z[0, 1]) - _entropy(z[0, 0])))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum()


def test_split_prediction_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="channels"):
        split_prediction(torch.zeros(1, 3, 4, 4, 4), num_classes=3)


def test_sliding_window_inference_larger_than_window(model):
    model.eval()
    image = torch.randn(1, 1, 40, 24, 16, generator=torch.Generator().manual_seed(3))
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        out = inferer(image, model)
    assert out.shape == (1, K + 1, 40, 24, 16)
    z, a = split_prediction(out, K)
    torch.testing.assert_close(z.sum(1), torch.ones(1, 40, 24, 16))
    assert torch.isfinite(a).all()


def test_autocast_outputs_float32(model, image):
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(image)
    assert out.dtype == torch.float32
    z, a = split_prediction(out, K)
    torch.testing.assert_close(z.sum(1), torch.ones(2, 16, 16, 16))
    assert torch.isfinite(a).all()


def test_invalid_configuration_errors():
    with pytest.raises(ValueError, match="num_feature_levels"):
        MaskTransformer(**{**TINY, "num_feature_levels": 4})
    with pytest.raises(ValueError, match="divisible"):
        MaskTransformer(**{**TINY, "num_heads": 3})
    with pytest.raises(ValueError, match="temperature"):
        MaskTransformer(**{**TINY, "temperature": 0.0})
    for weight in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="anomaly_uncertainty_weight"):
            MaskTransformer(**{**TINY, "anomaly_uncertainty_weight": weight})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_sliding_window(model):
    net = model.cuda().eval()
    image = torch.randn(1, 1, 32, 24, 16, device="cuda")
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        out = inferer(image, net)
    assert out.dtype == torch.float32
    z, _ = split_prediction(out, K)
    torch.testing.assert_close(z.sum(1), torch.ones(1, 32, 24, 16, device="cuda"))
    model.cpu()
