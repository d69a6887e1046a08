"""Out-of-distribution scoring: voxel scores, dictionary transforms, case scores, threshold calibration and
suspected-OOD marking."""

from __future__ import annotations

from .calibration import (
    CalibrationError,
    OODThresholds,
    calibrate_threshold,
    calibrated_thresholds,
    empirical_fpr,
    load_calibration,
    save_calibration,
)
from .case_score import CaseOODScored, case_ood_score, foreground_from_prediction
from .scores import SCORE_FUNCTIONS, energy, entropy, max_logit, maxquery, msp, ood_score, rba
from .suspected import MarkSuspectedOODd
from .transforms import OODScored, SplitPredictiond

__all__ = [
    "SCORE_FUNCTIONS",
    "CalibrationError",
    "CaseOODScored",
    "MarkSuspectedOODd",
    "OODScored",
    "OODThresholds",
    "SplitPredictiond",
    "calibrate_threshold",
    "calibrated_thresholds",
    "case_ood_score",
    "empirical_fpr",
    "energy",
    "entropy",
    "foreground_from_prediction",
    "load_calibration",
    "max_logit",
    "maxquery",
    "msp",
    "ood_score",
    "rba",
    "save_calibration",
]
