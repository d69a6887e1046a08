"""Out-of-distribution scoring: voxel scores, dictionary transforms, case scores and threshold calibration."""

from __future__ import annotations

from .calibration import CalibrationError, calibrate_threshold, empirical_fpr, load_calibration, save_calibration
from .case_score import CaseOODScored, case_ood_score, foreground_from_prediction
from .scores import SCORE_FUNCTIONS, energy, entropy, max_logit, maxquery, msp, ood_score, rba
from .transforms import OODScored, SplitPredictiond

__all__ = [
    "SCORE_FUNCTIONS",
    "CalibrationError",
    "CaseOODScored",
    "OODScored",
    "SplitPredictiond",
    "calibrate_threshold",
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
