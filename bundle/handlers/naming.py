"""Case names of post-processed items, as written in the output tables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from monai.data import MetaTensor

__all__ = ["case_name", "strip_image_suffix"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")


def case_name(item: Mapping, batch_item: Mapping | None = None, keys: tuple[str, ...] = ("image", "pred")) -> str:
    """The case identifier of one decollated item: its image file name without the image extension."""
    for source in (batch_item, item):
        if not isinstance(source, Mapping):
            continue
        for key in keys:
            value = source.get(key)
            if isinstance(value, MetaTensor) and value.meta.get("filename_or_obj"):
                return strip_image_suffix(str(value.meta["filename_or_obj"]))
    raise KeyError(f"cannot name the case: none of {keys} carries 'filename_or_obj' metadata.")


def strip_image_suffix(name: str | os.PathLike) -> str:
    """The case name of an image file name or path: ``/data/case_01.nii.gz`` -> ``case_01``."""
    name = Path(name).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
