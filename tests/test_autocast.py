"""Tests of CPU mixed precision: the forward pass runs in bfloat16, the outputs and the weights stay float32, a small
network still learns, and the configs use it for training only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer

from benchmarks.cpu_amp import time_attention, time_steps, training_networks
from bundle.configs import config_files
from bundle.inferers import AutocastInferer, cpu_has_fast_bf16, outputs_to_float32


class TwoHeadNetwork(torch.nn.Module):
    """A convolution whose output dtype is recorded, returning a dict as the mask transformer does in training."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.conv(x)
        self.seen_dtypes.append(logits.dtype)
        return {"pred": logits, "aux": [logits * 2.0]}


def test_enabled_runs_the_convolution_in_bfloat16_and_returns_float32():
    network = TwoHeadNetwork()
    outputs = AutocastInferer(enabled=True)(torch.rand(2, 1, 8, 8, 4), network)
    assert network.seen_dtypes == [torch.bfloat16]
    assert outputs["pred"].dtype == torch.float32 and outputs["aux"][0].dtype == torch.float32
    outputs["pred"].sum().backward()
    assert network.conv.weight.dtype == torch.float32 and network.conv.weight.grad.dtype == torch.float32
    assert network.conv.weight.grad.abs().sum() > 0


def test_disabled_is_exactly_the_plain_pass():
    network = TwoHeadNetwork()
    image = torch.rand(2, 1, 8, 8, 4)
    with torch.no_grad():
        plain = SimpleInferer()(image, network)
        autocast_off = AutocastInferer(enabled=False)(image, network)
    assert network.seen_dtypes == [torch.float32, torch.float32]
    assert torch.equal(plain["pred"], autocast_off["pred"])


def test_inputs_off_the_cpu_are_left_to_the_engines_amp():
    network = TwoHeadNetwork().to("meta")
    outputs = AutocastInferer(enabled=True)(torch.empty(1, 1, 4, 4, 4, device="meta"), network)
    assert network.seen_dtypes == [torch.float32] and outputs["pred"].dtype == torch.float32


def test_a_small_network_learns_under_bfloat16():
    """A voxel classifier learns an intensity threshold: the bfloat16 forward pass still gives useful gradients."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=0.02)
    inferer = AutocastInferer(enabled=True)
    image = torch.rand(4, 1, 8, 8, 8)
    label = (image[:, 0] > 0.5).long()
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(inferer(image, network), label)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    with torch.no_grad():
        accuracy = (network(image).argmax(1) == label).float().mean()
    assert losses[-1] < 0.4 * losses[0] and accuracy > 0.9


def test_reduced_precision_outputs_are_cast_back_and_others_kept():
    converted = outputs_to_float32(
        {"a": torch.ones(2, dtype=torch.bfloat16), "b": (torch.ones(2, dtype=torch.float16), torch.ones(2).long())}
    )
    assert converted["a"].dtype == torch.float32 and converted["b"][0].dtype == torch.float32
    assert converted["b"][1].dtype == torch.int64 and isinstance(converted["b"], tuple)
    assert outputs_to_float32(torch.ones(1, dtype=torch.float64)).dtype == torch.float64


def test_an_unknown_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="float32"):
        AutocastInferer(dtype="float32")
    assert AutocastInferer(dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("override", [None, False])
def test_the_configs_autocast_training_only(override):
    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=Path(__file__).resolve().parents[1]))
    parser["device"] = "$torch.device('cpu')"
    if override is not None:
        parser["cpu_amp"] = override
    expected = cpu_has_fast_bf16() if override is None else override
    for key in ("train#inferer", "localiser_train#trainer#inferer"):
        inferer = parser.get_parsed_content(key)
        assert isinstance(inferer, AutocastInferer) and inferer.enabled is expected
    assert not isinstance(parser.get_parsed_content("validate#inferer"), AutocastInferer)


def test_attention_runs_in_float32_under_cpu_autocast(monkeypatch):
    """CPU bfloat16 attention kernels are slower than float32 ones: under autocast the decoder attends in float32."""
    from bundle.networks.transformer_decoder import MultiHeadAttention

    seen: list[torch.dtype] = []
    attend = torch.nn.functional.scaled_dot_product_attention

    def recording_attention(q, k, v, **kwargs):
        seen.append(q.dtype)
        return attend(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_attention)
    torch.manual_seed(0)
    attention = MultiHeadAttention(16, 4)
    queries, voxels = torch.randn(2, 5, 16), torch.randn(2, 40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = attention(queries, voxels, voxels)
    plain = attention(queries, voxels, voxels)
    assert seen == [torch.float32, torch.float32]
    assert mixed.dtype == torch.bfloat16  # the output projection is autocast again
    torch.testing.assert_close(mixed.float(), plain, atol=0.05, rtol=0.05)
    mixed.float().sum().backward()
    assert attention.q_proj.weight.grad is not None and attention.q_proj.weight.grad.abs().sum() > 0


def test_the_speed_benchmark_times_both_precisions_of_the_configured_networks():
    networks = training_networks()
    assert set(networks) == {"mask_transformer", "localiser"}
    assert networks["mask_transformer"][2:4] == ((32, 32, 16), 8) and networks["localiser"][4] == 2
    network, loss, _, _, num_labels = networks["localiser"]
    seconds = time_steps(network, loss, (16, 16, 8), 1, num_labels, runs=1, warmup=0)
    assert set(seconds) == {"float32", "bfloat16"} and all(value > 0 for value in seconds.values())
    attention = time_attention(1, 4, 16, 64, 8, runs=1, warmup=0)
    assert set(attention) == {"float32", "bfloat16"} and all(value > 0 for value in attention.values())
