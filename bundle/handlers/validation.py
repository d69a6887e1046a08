"""Validation every few epochs and always after the last one, so that every run selects and saves a model."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["FinalEpochValidationHandler"]


class FinalEpochValidationHandler(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates when training ends off the interval.

    With ``interval=5`` and ``max_epochs=7`` MONAI's handler validates after epoch 5 only: epochs 6 and 7 are never
    judged, and with ``max_epochs < interval`` no model is ever selected or saved, so the calibration that follows
    finds no checkpoint (or an older one). This handler runs the validator once more at the end of such a run.

    Args:
        interval: validate every ``interval`` epochs.
        validator: the evaluator to run.
        exec_at_start: also validate before the first epoch.
    """

    def __init__(self, interval: int, validator=None, exec_at_start: bool = False) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        """Validate every ``interval`` epochs and after a last epoch that is not a multiple of it."""
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._validate_last_epoch)

    def _validate_last_epoch(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval != 0:
            self(engine)
