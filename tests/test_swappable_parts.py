"""The backbone, decoder and head of the mask transformer can be given ready-made, also from a nested config."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from bundle.configs import config_files, flatten_configs
from bundle.networks import (
    DynUNetBackbone,
    FeatureBackbone,
    MaskClassificationHead,
    MaskTransformer,
    QueryTransformerDecoder,
    load_weights,
)

K = 3
FLAT = {"spatial_dims": 3, "num_classes": K, "num_queries": 6, "embed_dim": 8, "num_layers": 2, "num_heads": 2}
LEVELS = {"num_feature_levels": 2}


class TinyBackbone(nn.Module):
    """Two plain convolution levels: a half-resolution feature, a full-resolution feature and the embedding."""

    def __init__(self, in_channels: int = 1, embed_dim: int = 8, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv3d(in_channels, width, 3, padding=1)
        self.down = nn.Conv3d(width, 2 * width, 3, stride=2, padding=1)
        self.proj = nn.Conv3d(width, embed_dim, 1)
        self.feature_channels = [2 * width, width]
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        fine = torch.relu(self.stem(x))
        coarse = torch.relu(self.down(fine))
        return [coarse, fine], self.proj(fine)


class NoChannels(nn.Module):
    """Breaks the contract: no ``feature_channels``."""

    embed_dim = 8

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return [x], x


def _parse(network_def: dict) -> MaskTransformer:
    parser = ConfigParser({"network_def": network_def})
    return parser.get_parsed_content("network_def")


def test_a_custom_backbone_from_a_config_trains_and_evaluates():
    torch.manual_seed(0)
    config = {
        "_target_": "bundle.networks.MaskTransformer",
        **FLAT,
        "num_feature_levels": 2,
        "backbone": {"_target_": f"{__name__}.TinyBackbone", "embed_dim": "@network_def#embed_dim"},
    }
    model = _parse(config)
    assert isinstance(model.backbone, TinyBackbone) and isinstance(model.backbone, FeatureBackbone)
    image = torch.randn(2, 1, 8, 8, 4)
    out = model.train()(image)
    assert out["pred"].shape == (2, K, 8, 8, 4) and out["query_probs"].shape == (2, 6, 8, 8, 4)
    assert "aux_0_pred" in out
    out["pred"].sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    with torch.no_grad():
        assert model.eval()(image).shape == (2, K + 1, 8, 8, 4)


def test_ready_decoder_and_head_are_used_as_given():
    torch.manual_seed(0)
    decoder = QueryTransformerDecoder([8], embed_dim=8, num_queries=4, num_layers=1, num_heads=2)
    head = MaskClassificationHead(8, K, query_classes=[0, 1, 2, 2])
    flat = {**FLAT, "num_queries": None, "num_layers": 1}
    model = MaskTransformer(**flat, backbone=TinyBackbone(), decoder=decoder, head=head)
    assert model.decoder is decoder and model.head is head
    assert (model.num_queries, model.num_layers, model.num_feature_levels) == (4, 1, 1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 8, 8, 4)).shape == (1, K + 1, 8, 8, 4)


@pytest.mark.parametrize(
    ("parts", "flat", "message"),
    [
        ({"backbone": NoChannels()}, {}, "lacks feature_channels"),
        ({"backbone": nn.Identity()}, {}, "lacks feature_channels, embed_dim"),
        ({"backbone": TinyBackbone(embed_dim=6)}, {}, "embed_dim=6 differs"),
        ({"backbone": TinyBackbone()}, {"num_feature_levels": 3}, "returns 2 feature levels"),
        ({"backbone": TinyBackbone()}, {"filters": [8, 16, 16]}, "filters=.*only builds the default backbone"),
        (
            {"backbone": TinyBackbone(), "decoder": QueryTransformerDecoder([4], 8, num_layers=2, num_heads=2)},
            {},
            r"expects feature_channels=\[4\]",
        ),
        ({"head": MaskClassificationHead(8, K + 1)}, {}, "num_classes=4"),
        ({"head": nn.Linear(8, 8)}, {}, "lacks embed_dim, num_classes"),
    ],
)
def test_parts_that_break_the_contract_are_refused(parts, flat, message):
    with pytest.raises(ValueError, match=message):
        MaskTransformer(**{**FLAT, **flat}, **parts)


def test_the_default_parts_keep_their_flat_construction():
    torch.manual_seed(0)
    flat = MaskTransformer(**FLAT, **LEVELS, kernel_size=[3, 3, 3], strides=[1, 2, 2], filters=[4, 8, 8])
    torch.manual_seed(0)
    backbone = DynUNetBackbone(3, 1, 8, [3, 3, 3], [1, 2, 2], filters=[4, 8, 8])
    nested = MaskTransformer(**FLAT, **LEVELS, backbone=backbone)
    assert list(flat.state_dict()) == list(nested.state_dict())
    # redundant flat arguments that agree with the given backbone are accepted
    MaskTransformer(**FLAT, **LEVELS, filters=[4, 8, 8], backbone=backbone)


def test_the_shipped_model_loads_strictly_into_the_flat_and_the_nested_config(repo_root):
    parser = ConfigParser()
    parser.read_config(config_files("inference.json", root=repo_root))
    parser.read_meta(str(repo_root / "metadata.json"))
    parser.update({"bundle_root": str(repo_root), "device": torch.device("cpu")})
    nested = parser.get_parsed_content("network_def")
    assert isinstance(nested.backbone, DynUNetBackbone)
    assert isinstance(parser["network_def"]["backbone"], dict)
    load_weights(nested, repo_root / "models" / "model.pt")

    # the same network from flat arguments, as the configs held it before the backbone was nested
    flat = copy.deepcopy(parser.get("network_def"))
    backbone = flat.pop("backbone")
    flat.update({k: backbone[k] for k in ("in_channels", "kernel_size", "strides", "filters")})
    parser.update({"network_def": flat})
    parser.parse(reset=True)
    network = load_weights(parser.get_parsed_content("network_def"), repo_root / "models" / "model.pt")
    assert isinstance(network.backbone, DynUNetBackbone)
    with torch.no_grad():
        x = torch.randn(1, 1, *parser["patch_size"], generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(network(x), nested(x))


def test_the_model_definition_is_written_once(repo_root):
    common = json.loads((repo_root / "configs" / "common.json").read_text())
    for name in ("train", "inference"):
        own = json.loads((repo_root / "configs" / f"{name}.json").read_text())
        redefined = sorted(set(own) & set(common))
        assert not redefined, f"configs/{name}.json redefines {redefined} of configs/common.json"
    for key in ("network_def", "backbone", "queries_per_class", "patch_size", "pixdim", "localiser"):
        assert key in common
    flat = [flatten_configs(f"{name}.json", root=repo_root) for name in ("train", "inference")]
    assert flat[0]["network_def"] == flat[1]["network_def"] == common["network_def"]
    assert common["network_def"]["backbone"]["_target_"] == "bundle.networks.DynUNetBackbone"


def test_a_stale_flat_backbone_override_is_refused(repo_root):
    parser = ConfigParser()
    parser.read_config(config_files("inference.json", root=repo_root))
    parser.read_meta(str(repo_root / "metadata.json"))
    parser.update({"bundle_root": str(repo_root), "network_def#filters": [8, 8, 16, 16]})
    # MONAI wraps the constructor's error; the cause names the problem
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("network_def")
    assert "filters=[8, 8, 16, 16] only builds the default backbone" in str(info.value.__cause__)
