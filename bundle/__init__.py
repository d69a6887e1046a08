"""MaxQuery: mask-transformer CT segmentation with out-of-distribution tumour localisation."""

__version__ = "0.1.0"
