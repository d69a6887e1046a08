"""MONAI's ``CheckpointLoader`` with errors that name the checkpoint and what does not fit."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.handlers import CheckpointLoader
from monai.utils import min_version, optional_import

from bundle.networks.checkpoint import describe_mismatch, read_state_dict

Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["NamedCheckpointLoader"]


class NamedCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` whose failures say which file and why.

    A truncated or foreign file, or weights of another architecture or class count, stop the run with a
    ``ValueError`` that names the checkpoint and, for the network (``load_dict["model"]``), the mismatched keys and
    shapes, instead of PyTorch's ``PytorchStreamReader failed ...`` or ``size mismatch ...``. Arguments as for
    :class:`monai.handlers.CheckpointLoader`.
    """

    def __call__(self, engine: Engine) -> None:
        """Load the checkpoint into the objects of ``load_dict``."""
        path = Path(self.load_path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            super().__call__(engine)
        except Exception as error:
            raise ValueError(f"the checkpoint {path} cannot be loaded: {self._reason(path, error)}") from error

    def _reason(self, path: Path, error: Exception) -> str:
        try:
            state = read_state_dict(path)
        except ValueError as read_error:
            return f"not a readable PyTorch checkpoint (truncated or another format): {read_error.__cause__}"
        network = self.load_dict.get("model")
        if isinstance(network, torch.nn.Module):
            return f"it does not fit the configured network: {describe_mismatch(network, state)}"
        return str(error)
