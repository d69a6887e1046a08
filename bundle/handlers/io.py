"""Small helpers shared by the handlers: case names and all-or-nothing file writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from monai.data import MetaTensor

__all__ = ["atomic_write_text", "case_name"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")


def case_name(item: Mapping, batch_item: Mapping | None = None, keys: tuple[str, ...] = ("image", "pred")) -> str:
    """The case identifier of one decollated item: its image file name without the image extension."""
    for source in (batch_item, item):
        if not isinstance(source, Mapping):
            continue
        for key in keys:
            value = source.get(key)
            if isinstance(value, MetaTensor) and value.meta.get("filename_or_obj"):
                return strip_image_suffix(Path(str(value.meta["filename_or_obj"])).name)
    raise KeyError(f"cannot name the case: none of {keys} carries 'filename_or_obj' metadata.")


def strip_image_suffix(name: str) -> str:
    """``case_01.nii.gz`` -> ``case_01``."""
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
