"""MONAI dictionary transforms specific to the bundle's inputs."""

from .organ_region import LocaliseOrgand, PasteOrganRegiond, box_with_margin, largest_component
from .validation import InvalidVolumeError, ValidateVolumed, source_name

__all__ = [
    "InvalidVolumeError",
    "LocaliseOrgand",
    "PasteOrganRegiond",
    "ValidateVolumed",
    "box_with_margin",
    "largest_component",
    "source_name",
]
