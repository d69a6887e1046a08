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
        names: how to name a key's volume in messages, instead of its file and key (:func:`source_name`), e.g. a
            case name where the file's path must not be shown (a server's answer to a client).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        allowed_labels: Sequence[int] | None = None,
        spatial_dims: int = 3,
        allow_missing_keys: bool = False,
        names: Mapping[Hashable, str] | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        self.allowed_labels = None if allowed_labels is None else sorted({int(v) for v in allowed_labels})
        self.spatial_dims = spatial_dims
        self.names = dict(names or {})

    def _subject(self, data: Mapping[Hashable, object], key: Hashable) -> str:
        """How a message names the volume of ``key``: its given name, else its file and key."""
        if key in self.names:
            return self.names[key]
        role = "label " if key in self.label_keys else ""
        return f"{source_name(data, key)}: {role}'{key}'"

    def _check_shape(self, data: Mapping[Hashable, object], key: Hashable) -> tuple[int, ...]:
        array = data[key]
        shape = tuple(array.shape)
        if len(shape) != self.spatial_dims + 1 or shape[0] != 1:
            raise InvalidVolumeError(
                f"{self._subject(data, key)} must be a single-channel {self.spatial_dims}D volume, "
                f"got an array of shape {shape[1:] if len(shape) > 1 else shape} with {shape[0]} channel(s)."
            )
        if min(shape[1:]) < 2:
            raise InvalidVolumeError(
                f"{self._subject(data, key)} is not a {self.spatial_dims}D volume: spatial shape {shape[1:]} has a "
                "dimension < 2."
            )
        return shape[1:]

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        """Check ``data`` and return a shallow copy of it, unchanged.

        Raises:
            InvalidVolumeError: a volume that fails a check; the message names it and the problem.
            KeyError: a label key is missing (unless ``allow_missing_keys``).
        """
        d = dict(data)
        self.check(d)
        return d

    def check(self, data: Mapping[Hashable, object]) -> dict[Hashable, list[int]]:
        """Check ``data`` (as :meth:`__call__`) and return the values each label key holds, ascending.

        The values are found anyway by the checks; a caller that needs them (to store or report them) is spared a
        second pass over the labels.

        Raises:
            InvalidVolumeError: a volume that fails a check; the message names it and the problem.
            KeyError: a label key is missing (unless ``allow_missing_keys``).
        """
        image_shape: tuple[int, ...] | None = None
        image_affine = None
        for key in self.key_iterator(data):
            image_shape = self._check_shape(data, key)
            values = torch.as_tensor(data[key])
            if not bool(torch.isfinite(values).all()):
                raise InvalidVolumeError(f"{self._subject(data, key)} contains NaN or infinite values.")
            if isinstance(data[key], MetaTensor):
                image_affine = data[key].affine
                problem = geometry_problem(image_affine)
                if problem:
                    raise InvalidVolumeError(f"{self._subject(data, key)} {problem}.")
        found: dict[Hashable, list[int]] = {}
        for key in self.label_keys:
            if key not in data:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"label key '{key}' is missing from the data item (keys: {sorted(map(str, data))}).")
            label_shape = self._check_shape(data, key)
            if image_shape is not None and label_shape != image_shape:
                raise InvalidVolumeError(
                    f"{self._subject(data, key)} has spatial shape {label_shape}, which does not match the image shape "
                    f"{image_shape}; a label map must be on the image's voxel grid."
                )
            if image_affine is not None and isinstance(data[key], MetaTensor):
                problem = label_geometry_problem(data[key].affine, image_affine)
                if problem:
                    raise InvalidVolumeError(f"{self._subject(data, key)} {problem}.")
            values = np.unique(np.asarray(torch.as_tensor(data[key]).detach().cpu()))
            if not np.all(np.equal(np.mod(values, 1), 0)):
                raise InvalidVolumeError(
                    f"{self._subject(data, key)} holds non-integer values; a label map holds class indices."
                )
            found[key] = sorted(int(v) for v in values)
            if self.allowed_labels is not None:
                unexpected = sorted(set(found[key]) - set(self.allowed_labels))
                if unexpected:
                    raise InvalidVolumeError(
                        f"{self._subject(data, key)} holds values {unexpected} outside the allowed labels "
                        f"{self.allowed_labels}."
                    )
        return found
