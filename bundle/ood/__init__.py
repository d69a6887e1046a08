"""Out-of-distribution scoring: the registry of voxel scores (each declares the network output it consumes),
dictionary transforms, map smoothing, case scores, threshold calibration and suspected-OOD marking."""

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
    "SCORES",
    "SCORE_FUNCTIONS",
    "SCORE_INPUTS",
    "CalibrationError",
    "CaseOODScored",
    "MarkSuspectedOODd",
    "OODScore",
    "OODScored",
    "OODThresholds",
    "SmoothOODMapd",
    "SplitPredictiond",
    "calibrate_threshold",
    "calibrated_hysteresis_offsets",
    "calibrated_thresholds",
    "check_case_score",
    "case_ood_score",
    "class_inputs",
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
