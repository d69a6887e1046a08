"""MONAI dictionary transforms specific to the bundle's inputs."""

from .altered_lesion import RandAlteredLesiond
from .hysteresis import HysteresisArgmaxd, fit_hysteresis_offsets, hysteresis_argmax
from .lesion_sampling import LesionBalancedClassIndicesd, lesion_balanced_class_indices
from .organ_region import LocaliseOrgand, PasteOrganRegiond, box_with_margin, largest_component
from .synthetic_anomaly import RandForeignTissueAnomalyd
from .validation import (
    InvalidVolumeError,
    ValidateVolumed,
    geometry_problem,
    label_geometry_problem,
    read_error_reason,
    source_name,
)

__all__ = [
    "HysteresisArgmaxd",
    "InvalidVolumeError",
    "LesionBalancedClassIndicesd",
    "LocaliseOrgand",
    "PasteOrganRegiond",
    "RandAlteredLesiond",
    "RandForeignTissueAnomalyd",
    "ValidateVolumed",
    "box_with_margin",
    "fit_hysteresis_offsets",
    "hysteresis_argmax",
    "geometry_problem",
    "label_geometry_problem",
    "lesion_balanced_class_indices",
    "read_error_reason",
    "largest_component",
    "source_name",
]
