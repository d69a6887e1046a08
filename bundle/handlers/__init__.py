"""Ignite handlers wired by the bundle configs: OOD calibration, the case table, the evaluation report, checkpoint
loading with named errors, the best model saved atomically, resumable training and validation at the last epoch."""

from .best_model import BestModelSaver
from .calibration import OODCalibrationHandler
from .case_writer import OODCaseWriter
from .checkpoint_loader import NamedCheckpointLoader
from .evaluation import BASELINE_METHODS, ROI_VOXEL_KEYS, OODEvaluationHandler, format_metrics_table
from .training_state import ResumeTraining, TrainingStateSaver
from .validation import FinalEpochValidationHandler

__all__ = [
    "BestModelSaver",
    "BASELINE_METHODS",
    "ROI_VOXEL_KEYS",
    "FinalEpochValidationHandler",
    "NamedCheckpointLoader",
    "OODCalibrationHandler",
    "OODCaseWriter",
    "OODEvaluationHandler",
    "ResumeTraining",
    "TrainingStateSaver",
    "format_metrics_table",
]
