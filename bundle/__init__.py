"""MaxQuery: mask-transformer CT segmentation with out-of-distribution tumour localisation."""

# The one place of the version: pyproject.toml reads it, and metadata.json (the bundle's own record) must agree with
# it, which tests/test_shipped_model.py checks.
__version__ = "0.27.0"
