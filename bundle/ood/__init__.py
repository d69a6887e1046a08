"""Out-of-distribution scoring: the registry of voxel scores (each declares the network output it consumes),
dictionary transforms, map smoothing, case scores, threshold calibration, the class-centred MaxQuery and
suspected-OOD marking."""

from __future__ import annotations

from .calibration import (
    CalibrationError,
    OODThresholds,
    calibrate_threshold,
    calibrated_hysteresis_offsets,
    calibrated_thresholds,
    check_case_score,
    empirical_fpr,
    load_calibration,
    save_calibration,
)
from .case_score import CaseOODScored, case_ood_score, eroded_foreground, foreground_from_prediction
from .class_centring import (
    CLASS_CENTRED_SCORE,
    CLASS_MEANS_KEY,
    ClassCentredAnomalyd,
    calibrated_class_means,
    centre_by_class,
    class_anomaly_sums,
    class_means,
)
from .scores import (
    SCORE_FUNCTIONS,
    SCORE_INPUTS,
    SCORES,
    OODScore,
    class_inputs,
    energy,
    entropy,
    max_logit,
    maxquery,
    msp,
    ood_score,
    rba,
    register_score,
)
from .smoothing import SmoothOODMapd, grid_spacing, smooth_score_map
from .suspected import MarkSuspectedOODd
from .transforms import OODScored, SplitPredictiond

__all__ = [
    "CLASS_CENTRED_SCORE",
    "CLASS_MEANS_KEY",
    "SCORES",
    "SCORE_FUNCTIONS",
    "SCORE_INPUTS",
    "CalibrationError",
    "CaseOODScored",
    "ClassCentredAnomalyd",
    "MarkSuspectedOODd",
    "OODScore",
    "OODScored",
    "OODThresholds",
    "SmoothOODMapd",
    "SplitPredictiond",
    "calibrate_threshold",
    "calibrated_class_means",
    "calibrated_hysteresis_offsets",
    "calibrated_thresholds",
    "check_case_score",
    "case_ood_score",
    "centre_by_class",
    "class_anomaly_sums",
    "class_inputs",
    "class_means",
    "empirical_fpr",
    "energy",
    "entropy",
    "eroded_foreground",
    "foreground_from_prediction",
    "grid_spacing",
    "load_calibration",
    "max_logit",
    "maxquery",
    "msp",
    "ood_score",
    "rba",
    "register_score",
    "save_calibration",
    "smooth_score_map",
]
