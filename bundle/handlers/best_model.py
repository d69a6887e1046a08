"""Keep the model of the best validation metric on disk, atomically, and remember that metric across a resume."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from bundle.data.files import atomic_write

from .training_state import unwrap_model

__all__ = ["BestModelSaver"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Write the state of ``save_dict`` to ``save_path`` whenever the evaluator's key metric beats the best so far.

    Attached to the validation evaluator, it takes the place of MONAI's ``CheckpointSaver(save_key_metric=True)``
    with two differences that matter for long CPU trainings: the file is replaced in one step (written beside it,
    then renamed), so a run killed while saving leaves the previous best model rather than a truncated or missing
    one; and the best metric is part of the training state (:meth:`state_dict`), so that after
    :class:`~bundle.handlers.ResumeTraining` the first validation replaces the model only if it is really better.
    A non-finite metric never replaces a model.

    Args:
        save_path: the model file, e.g. ``models/model.pt``.
        save_dict: objects with ``state_dict()``, usually ``{"model": network}``. One object is saved as its plain
            state dict, as ignite's ``Checkpoint`` does: the layout of model-zoo checkpoints, which
            ``monai.bundle ckpt_export`` and :func:`~bundle.networks.load_weights` read.
        metric_name: the metric to compare (default: the evaluator's key metric).
    """

    def __init__(self, save_path: str | os.PathLike, save_dict: Mapping[str, Any], metric_name: str | None = None):
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save.")
        self.save_path = Path(save_path)
        self.save_dict = dict(save_dict)
        self.metric_name = metric_name
        self.best_metric: float | None = None
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        """Compare at the end of every evaluation."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: metric {name!r} not among the evaluator's {sorted(engine.state.metrics)}.")
        value = float(engine.state.metrics[name])
        if not math.isfinite(value):
            logger.warning(
                "validation %s is %s at epoch %d: %s left as it is.", name, value, engine.state.epoch, self.save_path
            )
            return
        if self.best_metric is not None and value <= self.best_metric:
            return
        state = {key: unwrap_model(obj).state_dict() for key, obj in self.save_dict.items()}
        payload = next(iter(state.values())) if len(state) == 1 else state
        atomic_write(self.save_path, lambda f: torch.save(payload, f))
        self.best_metric, self.best_epoch = value, int(engine.state.epoch)
        logger.info("saved %s: best %s %.4f at epoch %d.", self.save_path, name, value, self.best_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The best metric so far and its epoch (``None`` and -1 before the first validation)."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        best = state.get("best_metric")
        self.best_metric = None if best is None else float(best)
        self.best_epoch = int(state.get("best_epoch", -1))
