"""Keys of the items that a failed case leaves in an engine's output."""

CASE_ERROR_KEY = "case_error"
CASE_NAME_KEY = "case"

__all__ = ["CASE_ERROR_KEY", "CASE_NAME_KEY"]
