"""DICOM conversions: CT volumes to DICOM series for a PACS."""

from .ct_series import CTSeries, read_volume, write_ct_series

__all__ = ["CTSeries", "read_volume", "write_ct_series"]
