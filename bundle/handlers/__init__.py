"""Ignite handlers wired by the bundle configs: OOD calibration, the case table and the evaluation report."""

from .calibration import OODCalibrationHandler
from .case_writer import OODCaseWriter
from .evaluation import BASELINE_METHODS, OODEvaluationHandler, format_metrics_table
from .training_state import ResumeTraining, TrainingStateSaver

__all__ = [
    "BASELINE_METHODS",
    "OODCalibrationHandler",
    "OODCaseWriter",
    "OODEvaluationHandler",
    "ResumeTraining",
    "TrainingStateSaver",
    "format_metrics_table",
]
