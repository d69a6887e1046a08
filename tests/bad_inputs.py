"""One table of bad inputs, written as real files, that the command line and the server must both refuse by name.

Each entry holds what a hospital export can really contain, and a fragment that the error message must hold (the
file or case is named as well, which each test checks on its own path).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["BAD_IMAGES", "BAD_LABELS", "write_bad_image", "write_bad_label"]

#: image problems: name -> a fragment of the message
BAD_IMAGES = {
    "flat": "3D",  # one slice of the volume, saved as a 2D image
    "two_channels": "channel",  # a multi-channel (4D) export
    "not_finite": "NaN",  # NaN voxels
    "singular": "singular",  # a direction matrix with two equal axes
    "empty": "the file is empty",  # a file of 0 bytes
    "truncated": "truncated or corrupt",  # a gzip stream cut short (an interrupted copy)
}
#: label problems (against a good image): name -> a fragment of the message
BAD_LABELS = {
    "label_shape": "shape",  # two rows short
    "label_shifted": "geometry",  # the image's shape, 10 mm away
    "label_values": "[7]",  # a value that is no class of the dataset
}


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def write_bad_image(kind: str, path: Path, image: np.ndarray, affine: np.ndarray) -> Path:
    """Write the bad image ``kind`` (a key of :data:`BAD_IMAGES`) made from a good ``image`` to ``path``."""
    if kind == "flat":
        return _save(path, image[:, :, image.shape[2] // 2], affine)
    if kind == "two_channels":
        return _save(path, np.stack([image, image], axis=-1), affine)
    if kind == "not_finite":
        bad = image.astype(np.float32)
        bad[0, 0, 0] = np.nan
        return _save(path, bad, affine)
    if kind == "singular":
        bad = affine.copy()
        bad[:3, 1] = bad[:3, 0]
        return _save(path, image, bad)
    if kind == "empty":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path
    if kind == "truncated":
        full = _save(path, image, affine).read_bytes()
        assert gzip.decompress(full)  # a whole file first, then cut
        path.write_bytes(full[: len(full) // 2])
        return path
    raise KeyError(f"unknown bad image {kind!r}; known: {sorted(BAD_IMAGES)}")


def write_bad_label(kind: str, path: Path, label: np.ndarray, affine: np.ndarray) -> Path:
    """Write the bad label ``kind`` (a key of :data:`BAD_LABELS`) made from a good ``label`` to ``path``."""
    if kind == "label_shape":
        return _save(path, label[:-2], affine)
    if kind == "label_shifted":
        shifted = affine.copy()
        shifted[:3, 3] += 10.0
        return _save(path, label, shifted)
    if kind == "label_values":
        bad = label.copy()
        bad[0, 0, 0] = 7
        return _save(path, bad, affine)
    raise KeyError(f"unknown bad label {kind!r}; known: {sorted(BAD_LABELS)}")
