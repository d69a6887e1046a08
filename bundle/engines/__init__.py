"""Engines of the bundle's workflows."""

from .case_isolation import CaseIsolatingDataset, CaseIsolatingEvaluator, error_case_name
from .keys import CASE_ERROR_KEY, CASE_NAME_KEY

__all__ = ["CASE_ERROR_KEY", "CASE_NAME_KEY", "CaseIsolatingDataset", "CaseIsolatingEvaluator", "error_case_name"]
