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


def write_flat_config(
    path: str | os.PathLike, *names: str, root: str | os.PathLike = ".", meta_file: str | os.PathLike | None = None
) -> None:
    """Write :func:`flatten_configs` of ``names`` to ``path`` as JSON.

    Args:
        path: the file to write.
        names: the configs, as for :func:`config_files`.
        root: the bundle root.
        meta_file: with a metadata file, top-level entries computed from it (``@_meta_...``, e.g. ``num_classes``
            from the output channels) are written as their values, so that the file also works where a config is
            parsed without its metadata (MONAI Label's ``BundleInferTask`` does so).
    """
    config = flatten_configs(*names, root=root)
    if meta_file is not None:
        from_meta = [key for key, value in config.items() if isinstance(value, str) and "@_meta_" in value]
        if from_meta:
            parser = ConfigParser(config)
            parser.read_meta(str(meta_file))
            for key in from_meta:
                config[key] = parser.get_parsed_content(key)
    Path(path).write_text(json.dumps(config, indent=4) + "\n")
