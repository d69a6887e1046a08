"""Inferers that wrap MONAI's: test-time mirroring."""

from bundle.inferers.mirror_ensemble import MirrorEnsembleInferer

__all__ = ["MirrorEnsembleInferer"]
