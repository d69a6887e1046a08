"""Checks of uploaded and stored volumes, run before anything is written or trained on."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImaged
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.utils.others.generic import remove_file

from bundle.transforms.validation import geometry_problem, label_geometry_problem

from .errors import InvalidInputError, short_error

__all__ = [
    "LABEL_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "CheckedLabel",
    "binary_label_to_volume",
    "check_image",
    "check_label",
    "label_volume_file",
    "load_checked_label",
    "load_volume",
    "volume_extension",
]

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


@dataclass(frozen=True)
class CheckedLabel:
    """A label map that passed :func:`load_checked_label`, with its image.

    Attributes:
        label: the label, channel-first, on the image's voxel grid (same spatial shape and affine, within the
            tolerance of :func:`~bundle.transforms.validation.label_geometry_problem`).
        image: the image, channel-first.
        values: the label values present, ascending.
    """

    label: MetaTensor
    image: MetaTensor
    values: list[int]


def load_checked_label(label_path: str, image_path: str, allowed_values: Iterable[int], what: str) -> CheckedLabel:
    """Load a label map and its image and check that the label fits the image and holds only allowed values.

    Args:
        label_path: the label file (NIfTI, NRRD).
        image_path: its image's file.
        allowed_values: label values the label may hold.
        what: how to name the label in error messages (e.g. ``"label for image 'case_01'"``).

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
    return CheckedLabel(label, image, values)


def check_label(label_path: str, image_path: str, allowed_values: Iterable[int], what: str) -> list[int]:
    """Check that a label map fits its image and holds only allowed values; return the values present.

    Raises:
        InvalidInputError: see :func:`load_checked_label`.
    """
    return load_checked_label(label_path, image_path, allowed_values, what).values


def binary_label_to_volume(label_filename: str, image_uri: str, what: str) -> str:
    """Convert a raw ``.bin`` label (one uint8 per voxel of the image, as OHIF sends) into a NIfTI file on the
    image's grid, with MONAI Label's :func:`~monailabel.datastore.utils.convert.binary_to_image`.

    Args:
        label_filename: the ``.bin`` file.
        image_uri: its image's file.
        what: how to name the label in error messages.

    Returns:
        The path of a temporary NIfTI file; the caller removes it.

    Raises:
        InvalidInputError: the file size is not one byte per image voxel (it would otherwise be reshaped wrongly
            or fail deep inside the conversion).
    """
    image = load_volume(image_uri, f"{what}: its image")
    expected, size = int(np.prod(image.shape[1:])), os.path.getsize(label_filename)
    if size != expected:
        raise InvalidInputError(
            f"{what}: a .bin label must hold one uint8 per image voxel ({expected} bytes for spatial shape "
            f"{tuple(image.shape[1:])}); got {size} bytes."
        )
    return binary_to_image(image_uri, label_filename)


@contextmanager
def label_volume_file(label_filename: str, image_uri: str, what: str) -> Iterator[tuple[str, str]]:
    """The uploaded label as a volume file and its extension, a raw ``.bin`` converted on the image's grid
    (:func:`binary_label_to_volume`) and removed afterwards.

    Raises:
        InvalidInputError: an extension that is not a label's, or a ``.bin`` of the wrong size.
    """
    extension = volume_extension(label_filename, LABEL_EXTENSIONS, what)
    if extension != ".bin":
        yield label_filename, extension
        return
    converted = binary_label_to_volume(label_filename, image_uri, what)
    try:
        yield converted, ".nii.gz"
    finally:
        remove_file(converted)
