"""Checks of uploaded and stored volumes, run before anything is written or trained on."""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImaged
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.utils.others.generic import remove_file

from bundle.transforms.validation import InvalidVolumeError, ValidateVolumed

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


def _read_volume(path: str, what: str) -> MetaTensor:
    """Load ``path`` as a channel-first volume, else an ``InvalidInputError`` naming ``what`` and the reason."""
    try:
        data = LoadImaged(keys="volume", image_only=True)({"volume": path})
        return EnsureChannelFirstd(keys="volume")(data)["volume"]
    except Exception as error:
        reason = short_error(error)
        raise InvalidInputError(f"{what}: cannot read the file as a medical image volume ({reason}).") from error


def _validated(checks: ValidateVolumed, data: dict[str, MetaTensor]) -> dict[Hashable, list[int]]:
    """Run the bundle's checks on ``data``; their failure is an input error of the client (HTTP 422).

    ``checks`` names each volume by its ``what`` (``names``), never by the server path it was loaded from.
    """
    try:
        return checks.check(data)
    except InvalidVolumeError as error:
        raise InvalidInputError(str(error)) from error


def load_volume(path: str, what: str) -> MetaTensor:
    """Load ``path`` as a channel-first volume and check it with the bundle's
    :class:`~bundle.transforms.validation.ValidateVolumed`, as training and inference do.

    Args:
        path: the file.
        what: how to name the file in error messages (e.g. ``"uploaded image 'case_01'"``).

    Raises:
        InvalidInputError: unreadable file, not 3D, several channels, a dimension below 2 voxels, NaN/inf values, a
            geometry that cannot be resampled (the bundle's :func:`~bundle.transforms.validation.geometry_problem`).
    """
    volume = _read_volume(path, what)
    _validated(ValidateVolumed("volume", names={"volume": what}), {"volume": volume})
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
    label = _read_volume(label_path, what)
    image_what = f"{what}: its image"
    image = _read_volume(image_path, image_what)
    checks = ValidateVolumed(
        "image", label_keys="label", allowed_labels=allowed_values, names={"image": image_what, "label": what}
    )
    values = _validated(checks, {"image": image, "label": label})["label"]
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
