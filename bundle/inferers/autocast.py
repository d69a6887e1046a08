"""Mixed precision on the CPU: a forward pass under bfloat16 autocast, its outputs handed back in float32.

MONAI's engines autocast only on CUDA (``amp=True`` uses ``torch.autocast("cuda")`` and a gradient scaler). On a CPU
with native bfloat16 arithmetic (AMX tiles or AVX-512 BF16), running the network's convolutions and matrix products in
bfloat16 shortens a training step of the bundle's mask transformer by about a third and one of the organ localiser
by more than half (``benchmarks/cpu_amp.py``). bfloat16 keeps float32's exponent range, so no gradient scaler is
needed; the loss is computed in float32 on the outputs this inferer returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["AutocastInferer", "cpu_has_fast_bf16", "outputs_to_float32"]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX tiles or AVX-512 BF16).

    Elsewhere bfloat16 autocast is emulated and slower than float32, so the configs enable it only where this holds.
    """
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def outputs_to_float32(outputs: Any) -> Any:
    """``outputs`` with every reduced-precision floating tensor cast to float32, through dicts, lists and tuples."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() and outputs.dtype != torch.float64 else outputs
    if isinstance(outputs, Mapping):
        return type(outputs)({key: outputs_to_float32(value) for key, value in outputs.items()})
    if isinstance(outputs, Sequence) and not isinstance(outputs, str):
        return type(outputs)(outputs_to_float32(value) for value in outputs)
    return outputs


class AutocastInferer(Inferer):
    """Run ``inferer`` under ``torch.autocast`` on CPU inputs and return its outputs in float32.

    Inputs on another device pass through unchanged: on CUDA the engines' own ``amp`` flag autocasts.

    Args:
        inferer: the inferer of the pass (default ``SimpleInferer``).
        enabled: autocast at all; the configs set it from :func:`cpu_has_fast_bf16`.
        dtype: the autocast dtype, ``torch.bfloat16`` (or its name, ``"bfloat16"``).
    """

    def __init__(
        self, inferer: Inferer | None = None, enabled: bool = True, dtype: torch.dtype | str = torch.bfloat16
    ) -> None:
        super().__init__()
        resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if resolved not in (torch.bfloat16, torch.float16):
            raise ValueError(f"AutocastInferer dtype must be bfloat16 or float16, got {dtype!r}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.enabled = bool(enabled)
        self.dtype = resolved

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """``inferer(inputs, network)``, autocast in :attr:`dtype` when enabled and ``inputs`` are on the CPU."""
        if not self.enabled or inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(device_type="cpu", dtype=self.dtype):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return outputs_to_float32(outputs)
