"""Resumable training: save the whole training state every epoch and continue an interrupted run from it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from bundle.data.files import atomic_write

__all__ = ["ResumeTraining", "TrainingStateSaver", "unwrap_model"]

logger = logging.getLogger(__name__)


class TrainingStateSaver:
    """Write ``{name: obj.state_dict()}`` and the trainer's own state to one file, atomically, every few epochs.

    The file is replaced in one step (written beside it, then renamed), so a run killed at any moment leaves either
    the previous state or the new one, never a truncated file. The trainer's state (epoch, iteration) is saved
    under ``"trainer"``; :class:`ResumeTraining` restores all of it.

    Args:
        save_path: the state file, e.g. ``models/training_state.pt``.
        save_dict: objects with ``state_dict()`` (network, optimiser, scheduler, ...).
        interval: save every ``interval`` epochs; the last epoch is always saved.
    """

    def __init__(self, save_path: str | os.PathLike, save_dict: Mapping[str, Any], interval: int = 1) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        if "trainer" in save_dict:
            raise ValueError("'trainer' is reserved for the trainer's own state.")
        self.save_path = Path(save_path)
        self.save_dict = dict(save_dict)
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        """Save at the end of every ``interval``-th epoch and at the end of the run."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_save)

    def _maybe_save(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval == 0 or engine.state.epoch == engine.state.max_epochs:
            self.save(engine)

    def save(self, engine: Engine) -> None:
        """Write the state file now."""
        state = {name: unwrap_model(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        atomic_write(self.save_path, lambda f: torch.save(state, f))


class ResumeTraining:
    """Restore a :class:`TrainingStateSaver` file when the run starts, so training continues where it stopped.

    Args:
        load_path: the state file; ``None`` (or an empty string) starts from scratch.
        load_dict: the same objects as the saver's ``save_dict``.
        map_location: device for the loaded tensors.
        optional: entries of ``load_dict`` that a state written by an older version may lack (they keep their
            initial state, with a warning), e.g. ``["best_model"]``.

    Raises:
        FileNotFoundError: ``load_path`` is given but does not exist.
        ValueError: the file is not a training state of these objects (names the missing entries).
    """

    def __init__(
        self,
        load_path: str | os.PathLike | None,
        load_dict: Mapping[str, Any],
        map_location: Any = "cpu",
        optional: Sequence[str] = (),
    ) -> None:
        self.load_path = Path(load_path) if load_path else None
        if self.load_path is not None and not self.load_path.is_file():
            raise FileNotFoundError(f"training state to resume from not found: {self.load_path}")
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        self.optional = set(optional)

    def attach(self, engine: Engine) -> None:
        """Load the state at ``Events.STARTED``."""
        if self.load_path is not None:
            engine.add_event_handler(Events.STARTED, self._load)

    def _load(self, engine: Engine) -> None:
        try:
            state = torch.load(self.load_path, map_location=self.map_location, weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read the training state {self.load_path}: {err}") from err
        missing = sorted((set(self.load_dict) | {"trainer"}) - set(state) - self.optional)
        if missing:
            raise ValueError(f"{self.load_path} is not a training state of this run: it lacks {missing}.")
        for name, obj in self.load_dict.items():
            if name not in state:
                logger.warning("%s has no %r (an older training state): it starts afresh.", self.load_path, name)
                continue
            unwrap_model(obj).load_state_dict(state[name])
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(state["trainer"])
        engine.state.max_epochs = max_epochs
        logger.info("resumed training from %s at epoch %d.", self.load_path, engine.state.epoch)


def unwrap_model(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` wrapper (any other object as it is)."""
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
