"""The mask transformer exports for inference (TorchScript trace, as used by MONAI's ckpt_export, and torch.export)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from bundle.networks import MaskTransformer

CONFIG = {
    "spatial_dims": 3,
    "in_channels": 1,
    "num_classes": 3,
    "kernel_size": [3, 3, 3, 3],
    "strides": [1, 2, 2, 2],
    "filters": [8, 16, 16, 24],
    "num_queries": 6,
    "embed_dim": 16,
    "num_layers": 3,
    "num_heads": 2,
    "num_feature_levels": 2,
}


@pytest.fixture(scope="module")
def model_and_inputs() -> tuple[MaskTransformer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = MaskTransformer(**CONFIG).eval()
    gen = torch.Generator().manual_seed(1)
    return net, torch.randn(1, 1, 16, 16, 16, generator=gen), torch.randn(2, 1, 16, 16, 16, generator=gen)


def test_torchscript_trace_reproduces_outputs(model_and_inputs):
    net, example, other = model_and_inputs
    # optimized_execution(False): skip the profiling executor's warm-up recompilations (slow, irrelevant here)
    with warnings.catch_warnings(), torch.jit.optimized_execution(False):
        warnings.simplefilter("ignore")  # deprecation notices and instance-norm tracer warnings (as for DynUNet)
        traced = torch.jit.trace(net, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        with torch.no_grad():
            for x in (example, other):  # another batch size and content than the trace example
                torch.testing.assert_close(loaded(x), net(x))


def test_torch_export_reproduces_outputs(model_and_inputs):
    net, example, _ = model_and_inputs
    exported = torch.export.export(net, (example,))
    with torch.no_grad():
        x = example.flip(2)
        torch.testing.assert_close(exported.module()(x), net(x))
