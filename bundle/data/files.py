"""File look-ups that fail early with the path in the message, and all-or-nothing writes."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text", "list_images", "require_file"]


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


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` by calling ``write`` on a temporary file in the same folder, then renaming it into place.

    Readers, and a crash part-way, see either the previous file or the complete new one, never part of it.

    Args:
        path: the destination; its folder is created if needed.
        write: writes the content to the binary file object it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` all or nothing, see :func:`atomic_write`."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
