"""The MONAI bundle served by the app: its location, configs, class names and user overrides."""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from torch import nn

from bundle.configs import config_files

__all__ = ["BUNDLE_ROOT", "BundleConfig", "check_literal", "make_importable"]

# apps/maxquery/lib/bundle_config.py -> the repository root, which is also the bundle root.
BUNDLE_ROOT = Path(__file__).resolve().parents[3]

#: first characters that make a MONAI config string code (``$``), a reference (``@``) or a file macro (``%``)
CONFIG_SYNTAX = ("$", "@", "%")
#: keys that make a MONAI config dict an instantiated component
COMPONENT_KEYS = {"_target_", "_requires_", "_disabled_", "_desc_", "_mode_"}


def check_literal(value: Any, key: str) -> None:
    """Refuse a config override that MONAI's ``ConfigParser`` would evaluate instead of using as a value.

    Strings starting with ``$`` (a Python expression), ``@`` (a reference) or ``%`` (a macro reading a file) and
    dicts with ``_target_`` (an instantiated class) or another component key are code or indirections; an override
    must be a plain value (number, string, bool, null, list or dict of them) or an already built Python object.

    Args:
        value: the override value.
        key: the config id it overrides, for the message.

    Raises:
        ValueError: ``value`` (or a value inside it) is config syntax.
    """
    if isinstance(value, str):
        if value.startswith(CONFIG_SYNTAX):
            raise ValueError(
                f"override of '{key}' starts with '{value[0]}', which the bundle config would evaluate as code, a "
                "reference or a macro; give a plain value."
            )
    elif isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            if str(sub_key) in COMPONENT_KEYS:
                raise ValueError(f"override of '{key}' holds '{sub_key}', which the bundle config would instantiate.")
            check_literal(sub_value, f"{key}#{sub_key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_literal(item, f"{key}#{index}")


def make_importable(root: Path) -> None:
    """Put the bundle root on ``sys.path`` and import the ``bundle`` package's subpackages.

    The configs' expressions use ``bundle.<subpackage>.<name>`` attributes, which exist only once the subpackage
    is imported; importing them all up front makes every expression work whatever the order of evaluation.
    """
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    package = importlib.import_module("bundle")
    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg and module.name != "scripts":
            importlib.import_module(f"bundle.{module.name}")


@dataclass
class BundleConfig:
    """Reads the bundle's declarative configs, applying the same overrides to inference and training.

    Args:
        root: the bundle root (holds ``metadata.json`` and ``configs/``).
        overrides: config ids (``"patch_size"``, ``"backbone#filters"``...) and the values replacing them, for
            both ``configs/inference.json`` and ``configs/train.json``; plain values only (see
            :func:`check_literal`).
        inference_defaults: overrides of the inference config set by the app itself (e.g. the folder of the served
            model as ``ckpt_dir``, so that every checkpoint the config names is looked up next to it, and the
            app's device); ``overrides`` win over them. Keys the config lacks are skipped.
    """

    root: Path = BUNDLE_ROOT
    overrides: Mapping[str, Any] = field(default_factory=dict)
    inference_defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        for key, value in self.overrides.items():
            check_literal(value, key)
        for name in ("metadata.json", "configs/common.json", "configs/inference.json", "configs/train.json"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"bundle file not found: {self.root / name}; is {self.root} the bundle root?")
        make_importable(self.root)
        self.metadata: dict[str, Any] = json.loads((self.root / "metadata.json").read_text())
        self.inference = self._inference_parser()
        self.num_classes = int(self.inference.get_parsed_content("num_classes"))
        self.case_score_settings: dict[str, Any] = dict(self.inference.get_parsed_content("case_score_settings"))
        self.class_names = self._class_names()
        self._network_template: nn.Module | None = None

    def parser(self, config_name: str, extra_overrides: Mapping[str, Any] | None = None) -> ConfigParser:
        """A fresh parser of ``configs/<config_name>`` with the bundle root and the overrides set.

        Args:
            config_name: file name under ``configs/``.
            extra_overrides: further overrides applied after the app-wide ones: plain values or built objects (e.g.
                a ``torch.device``), never config syntax (see :func:`check_literal`).

        Raises:
            ValueError: an override is config syntax, or names no entry of the config.
        """
        parser = ConfigParser()
        parser.read_meta(str(self.root / "metadata.json"))
        parser.read_config(config_files(config_name, root=self.root))
        parser["bundle_root"] = str(self.root)
        for key, value in {**self.overrides, **(extra_overrides or {})}.items():
            check_literal(value, key)
            try:
                parser[key] = copy.deepcopy(value)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"cannot override '{key}' in configs/{config_name}: {error}") from error
        return parser

    def _inference_parser(self) -> ConfigParser:
        parser = self.parser("inference.json")
        defaults = {key: value for key, value in self.inference_defaults.items() if key not in self.overrides}
        for key, value in defaults.items():
            check_literal(value, key)
            if key in parser:
                parser[key] = copy.deepcopy(value)
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
