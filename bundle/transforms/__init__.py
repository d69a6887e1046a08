"""MONAI dictionary transforms specific to the bundle's inputs."""

from .validation import InvalidVolumeError, ValidateVolumed, source_name

__all__ = ["InvalidVolumeError", "ValidateVolumed", "source_name"]
