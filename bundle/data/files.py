"""File look-ups used by the configs, failing early with the path and the problem in the message."""

from __future__ import annotations

import glob
import os
from pathlib import Path

__all__ = ["list_images", "require_file"]


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Return ``path`` as a string if it is an existing file, else raise ``FileNotFoundError`` naming it.

    Args:
        path: the file that must exist.
        what: what the file is, for the message (e.g. ``"model checkpoint"``).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{what} not found: {path}. Train the bundle first (configs/train.json) or point to an existing file."
        )
    return str(path)


def list_images(folder: str | os.PathLike, pattern: str = "*.nii.gz", key: str = "image") -> list[dict[str, str]]:
    """List ``{key: path}`` items for every image matching ``pattern`` in ``folder``, sorted by name.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no matching image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(glob.glob(str(folder / pattern)))
    if not paths:
        raise ValueError(f"no image matching '{pattern}' in {folder}")
    return [{key: path} for path in paths]
