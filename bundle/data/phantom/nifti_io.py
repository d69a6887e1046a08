"""Byte-reproducible NIfTI writing (fixed header fields, gzip without a timestamp)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["nifti_bytes", "write_nifti"]


def nifti_bytes(array: np.ndarray, affine: np.ndarray, dtype: type | np.dtype) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes of ``array`` with a scanner-space qform/sform and mm units."""
    data = np.asarray(array).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr["descrip"] = b"MaxQuery phantom CT"
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    return img.to_bytes()


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype: type | np.dtype) -> Path:
    """Write ``array`` as ``.nii.gz`` (or ``.nii``); identical inputs always give identical bytes.

    The gzip member is written with ``mtime=0`` and no file name, unlike a plain ``nibabel.save``, whose gzip
    header records the current time.
    """
    path = Path(path)
    raw = nifti_bytes(array, affine, dtype)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    path.write_bytes(raw)
    return path
