"""The MONAI bundle served by the app: its location, configs, class names and user overrides."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from torch import nn

__all__ = ["BUNDLE_ROOT", "BundleConfig", "make_importable"]

# apps/maxquery/lib/bundle_config.py -> the repository root, which is also the bundle root.
BUNDLE_ROOT = Path(__file__).resolve().parents[3]


def make_importable(root: Path) -> None:
    """Put the bundle root on ``sys.path`` so that the configs' ``bundle.*`` targets import."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


@dataclass
class BundleConfig:
    """Reads the bundle's declarative configs, applying the same overrides to inference and training.

    Args:
        root: the bundle root (holds ``metadata.json`` and ``configs/``).
        overrides: config ids (``"patch_size"``, ``"network_def#filters"``...) and the values replacing them, for
            both ``configs/inference.json`` and ``configs/train.json``.
    """

    root: Path = BUNDLE_ROOT
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        for name in ("metadata.json", "configs/inference.json", "configs/train.json"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"bundle file not found: {self.root / name}; is {self.root} the bundle root?")
        make_importable(self.root)
        self.metadata: dict[str, Any] = json.loads((self.root / "metadata.json").read_text())
        self.inference = self.parser("inference.json")
        self.num_classes = int(self.inference.get_parsed_content("num_classes"))
        self.class_names = self._class_names()
        self._network_template: nn.Module | None = None

    def parser(self, config_name: str, extra_overrides: Mapping[str, Any] | None = None) -> ConfigParser:
        """A fresh parser of ``configs/<config_name>`` with the bundle root and the overrides set.

        Args:
            config_name: file name under ``configs/``.
            extra_overrides: further overrides applied after the app-wide ones.
        """
        parser = ConfigParser()
        parser.read_meta(str(self.root / "metadata.json"))
        parser.read_config(str(self.root / "configs" / config_name))
        parser["bundle_root"] = str(self.root)
        for key, value in {**self.overrides, **(extra_overrides or {})}.items():
            try:
                parser[key] = copy.deepcopy(value)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"cannot override '{key}' in configs/{config_name}: {error}") from error
        return parser

    def new_network(self) -> nn.Module:
        """A new, randomly initialised instance of the inference config's ``network_def``."""
        if self._network_template is None:
            self._network_template = self.inference.get_parsed_content("network_def")
        return copy.deepcopy(self._network_template)

    @property
    def version(self) -> str:
        """The bundle version from ``metadata.json``."""
        return str(self.metadata.get("version", ""))

    @property
    def description(self) -> str:
        """The bundle description from ``metadata.json``."""
        return str(self.metadata.get("description", ""))

    def _class_names(self) -> dict[int, str]:
        """Class index -> name for the ``num_classes`` inlier classes, from the prediction's ``channel_def``."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        channel_def = next(iter(outputs.values()), {}).get("channel_def", {}) if outputs else {}
        names = {}
        for index in range(self.num_classes):
            name = str(channel_def.get(str(index), "background" if index == 0 else f"class_{index}"))
            names[index] = name.strip()
        return names
