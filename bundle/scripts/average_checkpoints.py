"""Average the weights of fine-tuned checkpoints of one model (a uniform "model soup").

Fine-tuning runs that start from the same weights stay in one basin of the loss, so the mean of their weights is a
model of its own that often generalises better than each run (Wortsman et al., ICML 2022, "Model soups")::

    python -m bundle.scripts.average_checkpoints --out runs/soup/models/model.pt models/model.pt runs/ft/models/model.pt

The checkpoints must hold the same tensors (names, shapes, dtypes); floating-point tensors are averaged, the others
(integer counters) must agree. The result is written all or nothing. Calibrate the averaged model before use: its
OOD thresholds are not those of any input.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from bundle.data.files import atomic_write
from bundle.networks.checkpoint import read_state_dict

__all__ = ["average_checkpoint_files", "average_state_dicts", "main"]


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]], names: Sequence[str] | None = None) -> dict:
    """The element-wise mean of the floating-point tensors of ``states`` (the other tensors must be equal).

    Args:
        states: at least two state dicts with the same keys, shapes and dtypes.
        names: how to name each state dict in messages (default ``#0``, ``#1``, ...).

    Raises:
        ValueError: fewer than two state dicts, or they differ in keys, shapes, dtypes or non-float values; the
            message names the checkpoint and the tensor.
    """
    if len(states) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(states)}.")
    names = list(names) if names is not None else [f"#{i}" for i in range(len(states))]
    for state, name in zip(states, names, strict=True):
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{name} holds no state dict of tensors.")
    first, first_name = states[0], names[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        if state.keys() != first.keys():
            extra, missing = sorted(state.keys() - first.keys()), sorted(first.keys() - state.keys())
            raise ValueError(f"{name} and {first_name} hold other tensors: only in {name} {extra}, missing {missing}.")
        for key, value in state.items():
            ref = first[key]
            if value.shape != ref.shape or value.dtype != ref.dtype:
                theirs, ours = f"{tuple(value.shape)} {value.dtype}", f"{tuple(ref.shape)} {ref.dtype}"
                raise ValueError(f"{key}: {name} has {theirs}, {first_name} {ours}.")
            if not ref.is_floating_point() and not torch.equal(value, ref):
                raise ValueError(f"{key}: the non-float tensor differs between {name} and {first_name}.")
    averaged = {}
    for key, ref in first.items():
        if ref.is_floating_point():
            total = torch.stack([state[key].double() for state in states]).mean(dim=0)
            averaged[key] = total.to(ref.dtype)
        else:
            averaged[key] = ref.clone()
    return averaged


def average_checkpoint_files(checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Read ``checkpoints``, average them (:func:`average_state_dicts`) and write the mean to ``out`` atomically.

    Raises:
        ValueError: the checkpoints differ (see :func:`average_state_dicts`) or one is unreadable.
    """
    states = [read_state_dict(path) for path in checkpoints]
    averaged = average_state_dicts(states, [os.fspath(path) for path in checkpoints])
    return atomic_write(out, lambda f: torch.save(averaged, f))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="model files (plain state dicts or {'model': ...})")
    parser.add_argument("--out", required=True, help="where to write the averaged state dict")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if any(Path(c).resolve() == out.resolve() for c in args.checkpoints):
        raise SystemExit(f"--out {out} is one of the inputs: write the average elsewhere.")
    missing = [path for path in args.checkpoints if not Path(path).is_file()]
    if missing:
        raise SystemExit(f"checkpoint not found: {', '.join(missing)}")
    try:
        average_checkpoint_files(args.checkpoints, out)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    print(f"averaged {len(args.checkpoints)} checkpoints -> {os.fspath(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
