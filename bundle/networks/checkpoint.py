"""Load a network's weights from a bundle checkpoint with messages that name the file and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_weights"]


def load_weights(network: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Load ``path`` strictly into ``network``, move it to ``device`` and put it in evaluation mode.

    Accepts a plain state dict or a ``{"model": state_dict}`` checkpoint (as written by MONAI's ``CheckpointSaver``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a checkpoint, or its weights do not fit ``network`` (another
            architecture or class count); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=torch.device(device), weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read the checkpoint {path} (truncated or not a PyTorch file): {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the checkpoint {path} does not fit the configured network: {err}") from err
    return network.to(device).eval()
