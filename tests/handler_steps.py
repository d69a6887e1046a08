"""Drive an ignite handler's event steps by hand, on decollated items, without an engine run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace


def run_handler_steps(cases: Sequence[tuple[dict, dict]], *steps: Callable) -> None:
    """Call a handler's started / iteration / completed ``steps`` on one batch of ``(output, batch item)`` pairs."""
    engine = SimpleNamespace(state=SimpleNamespace(output=[c[0] for c in cases], batch=[c[1] for c in cases]))
    for step in steps:
        step(engine)
