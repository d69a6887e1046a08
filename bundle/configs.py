"""The bundle's config files and how they layer.

The model definition (geometry, intensity window, backbone, network, queries, organ localiser and the transforms
that training and inference share) is written once, in ``configs/common.json``; ``train.json`` and
``inference.json`` are layered on it (``--config_file "['configs/common.json','configs/train.json']"``), and
``evaluate.json``, ``baseline_dynunet.json`` and ``multi_gpu_train.json`` on top of ``train.json``. The model-zoo
package (:mod:`bundle.scripts.package`) writes ``train.json`` and ``inference.json`` flattened, so a packaged
bundle has no ``common.json`` and each of its configs stands alone, as the zoo expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["COMMON_CONFIG", "config_files", "flatten_configs", "write_flat_config"]

#: the layer every config of the repository builds on
COMMON_CONFIG = "common.json"


def config_files(*names: str, root: str | os.PathLike = ".") -> list[str]:
    """The files to read for the configs ``names`` (in layering order), ``configs/common.json`` first where the
    bundle has one.

    Args:
        names: config file names under ``configs/`` (``"train.json"``, ``"evaluate.json"``...).
        root: the bundle root.

    Raises:
        FileNotFoundError: a named config does not exist.
    """
    folder = Path(root) / "configs"
    files = [folder / name for name in names]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"bundle config not found: {', '.join(missing)}; is {Path(root)} the bundle root?")
    common = folder / COMMON_CONFIG
    if common.is_file() and COMMON_CONFIG not in names:
        files.insert(0, common)
    return [str(path) for path in files]


def flatten_configs(*names: str, root: str | os.PathLike = ".") -> dict[str, Any]:
    """The config that ``names`` layered on ``common.json`` make, as one standalone dict (``+`` merges applied)."""
    return ConfigParser.load_config_files(config_files(*names, root=root))


def write_flat_config(path: str | os.PathLike, *names: str, root: str | os.PathLike = ".") -> None:
    """Write :func:`flatten_configs` of ``names`` to ``path`` as JSON."""
    Path(path).write_text(json.dumps(flatten_configs(*names, root=root), indent=4) + "\n")
