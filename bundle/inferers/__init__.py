"""Inferers that wrap MONAI's: test-time mirroring and CPU mixed precision."""

from bundle.inferers.autocast import AutocastInferer, cpu_has_fast_bf16, outputs_to_float32
from bundle.inferers.mirror_ensemble import MirrorEnsembleInferer

__all__ = ["AutocastInferer", "MirrorEnsembleInferer", "cpu_has_fast_bf16", "outputs_to_float32"]
