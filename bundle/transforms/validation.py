"""Input checks that stop a run early with a message naming the file, the key and the problem."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "InvalidVolumeError",
    "ValidateVolumed",
    "read_error_reason",
    "geometry_problem",
    "label_geometry_problem",
    "source_name",
]

#: how far (mm) a label's voxel-to-world affine may differ from its image's
AFFINE_TOLERANCE_MM = 1e-2


class InvalidVolumeError(ValueError):
    """An image or label that the bundle cannot use; the message names the file and the problem."""


def source_name(data: Mapping[Hashable, object], key: Hashable) -> str:
    """The file an item was loaded from, for error messages (falls back to the key)."""
    value = data.get(key)
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if name:
            return str(name)
    meta = data.get(f"{key}_meta_dict")
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return f"<{key}>"


def read_error_reason(error: BaseException) -> str | None:
    """Plain words for the low-level errors of a file that cannot be read, or ``None`` for any other error.

    A cut-short copy surfaces as ``EOFError: Compressed file ended before the end-of-stream marker was reached`` or a
    zlib error, an empty file as ``Empty file``; neither says what a user must fix.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, EOFError | zlib.error | gzip.BadGzipFile) or "end-of-stream" in text:
            return "the file is truncated or corrupt (an interrupted copy?)"
        if "Empty file" in text or "file is empty" in text.lower():
            return "the file is empty"
        error = error.__cause__ or error.__context__
    return None


def geometry_problem(affine: object) -> str | None:
    """Why a voxel-to-world affine cannot be resampled, or ``None`` when it can.

    Reorientation and resampling need positive voxel spacings and independent voxel axes: a singular direction
    matrix otherwise fails deep inside MONAI (``Unable to find out axis ... in start_ornt``).
    """
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        return "has no finite 4x4 voxel-to-world affine"
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if (spacing < 1e-6).any():
        return f"has a voxel spacing that is not positive ({', '.join(f'{v:.6g}' for v in spacing)} mm)"
    directions = axes / spacing
    if abs(np.linalg.det(directions)) < 1e-3:
        return "has a singular direction matrix (its voxel axes are not independent), so it cannot be reoriented"
    return None


def label_geometry_problem(label_affine: object, image_affine: object) -> str | None:
    """Why a label with its image's shape is still not on its image's grid, or ``None`` when it is.

    The affines may differ by :data:`AFFINE_TOLERANCE_MM` (and a relative ``1e-4``), the rounding of file headers.
    """
    label, image = np.asarray(label_affine, dtype=np.float64), np.asarray(image_affine, dtype=np.float64)
    if label.shape == image.shape and np.allclose(label, image, atol=AFFINE_TOLERANCE_MM, rtol=1e-4):
        return None
    difference = float(np.abs(label - image).max()) if label.shape == image.shape else float("inf")
    return (
        f"has the image's shape but not its geometry (the voxel-to-world affine differs by up to {difference:.3g} mm); "
        "save the label on the image's grid"
    )


class ValidateVolumed(MapTransform):
    """Check channel-first volumes right after loading, before anything is written or cached.

    Checks that each image key holds a single-channel 3D volume with finite values and a usable geometry (positive
    spacing, independent voxel axes: :func:`geometry_problem`), that each label key holds integer values from
    ``allowed_labels`` only, and that labels share the image's spatial shape and affine
    (:func:`label_geometry_problem`).

    Args:
        keys: the image keys to check.
        label_keys: the label keys to check (may be empty, e.g. for inference).
        allowed_labels: label values a label map may contain; ``None`` skips the value check.
        spatial_dims: expected number of spatial dimensions.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        allowed_labels: Sequence[int] | None = None,
        spatial_dims: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        self.allowed_labels = None if allowed_labels is None else sorted({int(v) for v in allowed_labels})
        self.spatial_dims = spatial_dims

    def _check_shape(self, data: Mapping[Hashable, object], key: Hashable) -> tuple[int, ...]:
        array = data[key]
        shape = tuple(array.shape)
        if len(shape) != self.spatial_dims + 1 or shape[0] != 1:
            raise InvalidVolumeError(
                f"{source_name(data, key)}: '{key}' must be a single-channel {self.spatial_dims}D volume, "
                f"got an array of shape {shape[1:] if len(shape) > 1 else shape} with {shape[0]} channel(s)."
            )
        if min(shape[1:]) < 2:
            raise InvalidVolumeError(
                f"{source_name(data, key)}: '{key}' is not a volume: spatial shape {shape[1:]} has a dimension < 2."
            )
        return shape[1:]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        image_shape: tuple[int, ...] | None = None
        image_affine = None
        for key in self.key_iterator(d):
            image_shape = self._check_shape(d, key)
            values = torch.as_tensor(d[key])
            if not bool(torch.isfinite(values).all()):
                raise InvalidVolumeError(f"{source_name(d, key)}: '{key}' contains NaN or infinite values.")
            if isinstance(d[key], MetaTensor):
                image_affine = d[key].affine
                problem = geometry_problem(image_affine)
                if problem:
                    raise InvalidVolumeError(f"{source_name(d, key)}: '{key}' {problem}.")
        for key in self.label_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"label key '{key}' is missing from the data item (keys: {sorted(map(str, d))}).")
            label_shape = self._check_shape(d, key)
            if image_shape is not None and label_shape != image_shape:
                raise InvalidVolumeError(
                    f"{source_name(d, key)}: label shape {label_shape} does not match the image shape {image_shape}."
                )
            if image_affine is not None and isinstance(d[key], MetaTensor):
                problem = label_geometry_problem(d[key].affine, image_affine)
                if problem:
                    raise InvalidVolumeError(f"{source_name(d, key)}: label '{key}' {problem}.")
            values = np.unique(np.asarray(torch.as_tensor(d[key]).detach().cpu()))
            if not np.all(np.equal(np.mod(values, 1), 0)):
                raise InvalidVolumeError(f"{source_name(d, key)}: label '{key}' holds non-integer values.")
            if self.allowed_labels is not None:
                unexpected = sorted(set(values.astype(int).tolist()) - set(self.allowed_labels))
                if unexpected:
                    raise InvalidVolumeError(
                        f"{source_name(d, key)}: label '{key}' holds values {unexpected} outside the dataset's "
                        f"labels {self.allowed_labels}."
                    )
        return d
