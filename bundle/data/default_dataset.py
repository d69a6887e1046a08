"""The default dataset: the phantom benchmark under the bundle root, generated on first use."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ensure_dataset"]

logger = logging.getLogger(__name__)


def ensure_dataset(dataset_dir: str | os.PathLike, phantom: Mapping[str, Any] | None = None) -> str:
    """Return ``dataset_dir`` once it holds a ``dataset.json``, generating the phantom benchmark there if asked.

    Args:
        dataset_dir: an MSD-layout dataset folder.
        phantom: arguments of :func:`bundle.data.phantom.generate_dataset` (``seed``, ``task``, ``num_train``...).
            When given and the folder has no ``dataset.json``, the phantom dataset is generated there. When ``None``
            (a user's own dataset), a missing dataset is an error.

    Raises:
        FileNotFoundError: no ``dataset.json`` and no phantom to generate.
    """
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / "dataset.json").is_file():
        return str(dataset_dir)
    if phantom is None:
        raise FileNotFoundError(
            f"dataset not found: {dataset_dir / 'dataset.json'} does not exist. Point --dataset_dir to an MSD-layout "
            "folder with a dataset.json."
        )
    from bundle.data.phantom import generate_dataset

    logger.info("dataset %s not found: generating the phantom benchmark there (%s).", dataset_dir, dict(phantom))
    generate_dataset(dataset_dir, **phantom)
    return str(dataset_dir)
