"""Checks of uploaded and stored volumes, run before anything is written or trained on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImaged

from bundle.transforms.validation import geometry_problem, label_geometry_problem

from .errors import InvalidInputError, short_error

__all__ = ["LABEL_EXTENSIONS", "VOLUME_EXTENSIONS", "check_image", "check_label", "load_volume", "volume_extension"]

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
LABEL_EXTENSIONS = (*VOLUME_EXTENSIONS, ".bin")


def volume_extension(filename: str, allowed: Iterable[str] = VOLUME_EXTENSIONS, what: str = "file") -> str:
    """The extension of ``filename`` among ``allowed`` (longest match), else an ``InvalidInputError``."""
    allowed = sorted(allowed, key=len, reverse=True)
    for extension in allowed:
        if filename.lower().endswith(extension):
            return extension
    suffix = "".join(Path(filename).suffixes) or "(none)"
    raise InvalidInputError(
        f"{what}: unsupported file type '{suffix}'; expected a 3D volume with one of the extensions "
        f"{', '.join(allowed)}."
    )


def load_volume(path: str, what: str) -> MetaTensor:
    """Load ``path`` as a channel-first volume and check it is a single-channel 3D volume with finite values.

    Args:
        path: the file.
        what: how to name the file in error messages (e.g. ``"uploaded image 'case_01'"``).

    Raises:
        InvalidInputError: unreadable file, not 3D, several channels, a dimension below 2 voxels, NaN/inf values, a
            geometry that cannot be resampled (the bundle's :func:`~bundle.transforms.validation.geometry_problem`).
    """
    try:
        data = LoadImaged(keys="volume", image_only=True)({"volume": path})
        volume = EnsureChannelFirstd(keys="volume")(data)["volume"]
    except Exception as error:
        reason = short_error(error)
        raise InvalidInputError(f"{what}: cannot read the file as a medical image volume ({reason}).") from error
    shape = tuple(volume.shape)
    if len(shape) != 4 or shape[0] != 1:
        spatial = shape[1:] if len(shape) > 1 else shape
        raise InvalidInputError(
            f"{what} is not a single-channel 3D volume: got spatial shape {spatial} with {shape[0]} channel(s)."
        )
    if min(shape[1:]) < 2:
        raise InvalidInputError(f"{what} is not a 3D volume: spatial shape {shape[1:]} has a dimension below 2.")
    if not bool(torch.isfinite(volume).all()):
        raise InvalidInputError(f"{what} contains NaN or infinite values.")
    problem = geometry_problem(volume.affine)
    if problem:
        raise InvalidInputError(f"{what} {problem}.")
    return volume


def check_image(path: str, what: str) -> MetaTensor:
    """Check an image file (see :func:`load_volume`) and return it."""
    return load_volume(path, what)


def check_label(label_path: str, image_path: str, allowed_values: Iterable[int], what: str) -> list[int]:
    """Check that a label map fits its image and holds only allowed values; return the values present.

    Raises:
        InvalidInputError: unreadable label, not 3D, spatial shape or geometry (affine) unlike the image's,
            non-integer values or values outside ``allowed_values``.
    """
    label = load_volume(label_path, what)
    image = load_volume(image_path, f"{what}: its image")
    if label.shape[1:] != image.shape[1:]:
        raise InvalidInputError(
            f"{what} has spatial shape {tuple(label.shape[1:])}, but its image has {tuple(image.shape[1:])}; "
            "a label map must be on the image's voxel grid."
        )
    problem = label_geometry_problem(label.affine, image.affine)
    if problem:
        raise InvalidInputError(f"{what} {problem}.")
    values = np.unique(np.asarray(label))
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise InvalidInputError(f"{what} holds non-integer values; a label map holds class indices.")
    values = sorted(int(v) for v in values)
    allowed = sorted({int(v) for v in allowed_values})
    unexpected = sorted(set(values) - set(allowed))
    if unexpected:
        raise InvalidInputError(f"{what} holds label values {unexpected} outside the allowed values {allowed}.")
    return values
