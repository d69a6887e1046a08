"""Load a network's weights from a bundle checkpoint with messages that name the file and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["describe_mismatch", "load_weights", "read_state_dict"]


def load_weights(
    network: nn.Module, path: str | os.PathLike, device: torch.device | str = "cpu", name: str | None = None
) -> nn.Module:
    """Load ``path`` strictly into ``network``, move it to ``device`` and put it in evaluation mode.

    Accepts a plain state dict or a ``{"model": state_dict}`` checkpoint (as written by MONAI's ``CheckpointSaver``).

    Args:
        network: the network to load the weights into.
        path: the checkpoint file.
        device: where to put the network.
        name: how to name the file in messages (default: ``path``), e.g. its file name only where the message goes
            to a client that must not see server paths.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a checkpoint, or its weights do not fit ``network`` (another
            architecture or class count); the message names the file.
    """
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {name}")
    state = read_state_dict(path, torch.device(device), name=name)
    # a file that holds no state dict (a list, a tensor) is a TypeError, weights that do not fit a RuntimeError
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"the checkpoint {name} does not fit the configured network: {describe_mismatch(network, state)}"
        ) from err
    return network.to(device).eval()


def read_state_dict(path: str | os.PathLike, map_location: torch.device | str = "cpu", name: str | None = None) -> dict:
    """The weights in a checkpoint file: a plain state dict, or the ``"model"`` entry of a ``{"model": ...}``
    checkpoint (as written by MONAI's ``CheckpointSaver``).

    Args:
        path: the checkpoint file.
        map_location: where to load the tensors.
        name: how to name the file in messages (default: ``path``); the path is replaced by it in the reader's own
            error text as well (``No such file or directory: '<path>'``).

    Raises:
        ValueError: the file cannot be read as a PyTorch checkpoint (truncated, or another format); the message
            names the file.
    """
    name = os.fspath(path) if name is None else name
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        reason = str(err).replace(os.fspath(path), name)
        raise ValueError(f"cannot read the checkpoint {name} (truncated or not a PyTorch file): {reason}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def describe_mismatch(network: nn.Module, state: dict, limit: int = 5) -> str:
    """Why ``state`` does not fit ``network``: the keys missing or unexpected, and the weights whose shapes differ
    (a different number of classes or queries shows up there, e.g. in the output layer)."""
    own = network.state_dict()
    if not isinstance(state, dict):
        return f"the file holds a {type(state).__name__}, not a state dict."
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{key}: checkpoint {tuple(state[key].shape)}, network {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if isinstance(state[key], torch.Tensor) and tuple(state[key].shape) != tuple(own[key].shape)
    ]
    parts = []
    for name, items in (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            shown = "; ".join(items[:limit]) + (f"; ... ({len(items)} in all)" if len(items) > limit else "")
            parts.append(f"{len(items)} {name} ({shown})")
    if not parts:
        return "the weights could not be loaded."
    hint = " (another architecture, or another number of classes or queries)" if shapes or missing else ""
    return ", ".join(parts) + hint + "."
