"""Ignite handlers wired by the bundle configs: OOD calibration, the case table, the evaluation report, resumable
training and validation at the last epoch."""

from .calibration import OODCalibrationHandler
from .case_writer import OODCaseWriter
from .evaluation import BASELINE_METHODS, OODEvaluationHandler, format_metrics_table
from .training_state import ResumeTraining, TrainingStateSaver
from .validation import FinalEpochValidationHandler

__all__ = [
    "BASELINE_METHODS",
    "FinalEpochValidationHandler",
    "OODCalibrationHandler",
    "OODCaseWriter",
    "OODEvaluationHandler",
    "ResumeTraining",
    "TrainingStateSaver",
    "format_metrics_table",
]
