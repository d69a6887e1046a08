"""The main job end to end: generate the phantom benchmark if needed, train, calibrate, evaluate, print the table.

Run from the bundle root::

    python -m bundle.scripts.pipeline

Every step is a plain ``monai.bundle run`` of the configs, so each can also be run on its own; options are passed on
as config overrides (``--dataset_dir``, ``--max_epochs``, ``--ckpt_dir``, ``--output_dir``, ``--device``), and any
other ``--ID VALUE`` pair is a config override as in ``monai.bundle run`` (e.g. ``--patch_size "[64,64,32]"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from monai.bundle import run

from bundle.handlers.evaluation import format_metrics_table

__all__ = ["main", "parse_overrides", "run_pipeline"]

logger = logging.getLogger(__name__)


def run_pipeline(
    bundle_root: str | Path = ".",
    dataset_dir: str | None = None,
    max_epochs: int | None = None,
    ckpt_dir: str | None = None,
    output_dir: str | None = None,
    device: str | None = None,
    skip_training: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Train (unless ``skip_training``) and evaluate the bundle; return the evaluation metrics.

    Args:
        bundle_root: the bundle root holding ``metadata.json`` and ``configs/``.
        dataset_dir: an MSD-layout dataset; by default the phantom benchmark under the bundle root.
        max_epochs: training epochs (default: the value in ``configs/train.json``).
        ckpt_dir: where the checkpoint and the calibration go.
        output_dir: where logs, metrics and per-case results go.
        device: e.g. ``"cpu"`` or ``"cuda:0"``; by default CUDA when available.
        skip_training: evaluate the existing checkpoint only.
        overrides: further config overrides for every step, e.g. ``{"patch_size": [64, 64, 32]}``.
    """
    root = Path(bundle_root).resolve()
    configs = root / "configs"
    overrides = {"bundle_root": str(root), **(overrides or {})}
    if dataset_dir is not None:
        overrides["dataset_dir"] = str(Path(dataset_dir).resolve())
    if ckpt_dir is not None:
        overrides["ckpt_dir"] = str(Path(ckpt_dir).resolve())
    if output_dir is not None:
        overrides["output_dir"] = str(Path(output_dir).resolve())
    if device is not None:
        overrides["device"] = f"$torch.device('{device}')"
    common = {"meta_file": str(root / "metadata.json"), "logging_file": str(configs / "logging.conf")}

    start = time.perf_counter()
    if not skip_training:
        train_overrides = dict(overrides)
        if max_epochs is not None:
            train_overrides["train#trainer#max_epochs"] = max_epochs
        run(config_file=str(configs / "train.json"), **common, **train_overrides)
    trained = time.perf_counter()
    run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], **common, **overrides)
    evaluated = time.perf_counter()

    metrics_path = Path(overrides.get("output_dir", root / "eval")) / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    print(format_metrics_table(metrics))
    print(
        f"training {trained - start:.0f} s, evaluation {evaluated - trained:.0f} s "
        f"({'cuda' if torch.cuda.is_available() else 'cpu'}); metrics in {metrics_path}"
    )
    return metrics


def parse_overrides(tokens: list[str]) -> dict:
    """``["--patch_size", "[64,64,32]", "--val_interval", "2"]`` -> ``{"patch_size": [64, 64, 32], "val_interval": 2}``.

    Values are read as JSON when they parse as JSON, else kept as strings (paths, ``$`` expressions).
    """
    if len(tokens) % 2 or any(not t.startswith("--") for t in tokens[::2]):
        raise SystemExit(f"config overrides must be '--ID VALUE' pairs, got: {' '.join(tokens)}")
    overrides = {}
    for key, value in zip(tokens[::2], tokens[1::2], strict=True):
        try:
            overrides[key[2:]] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key[2:]] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", default=".", help="bundle root (default: current folder)")
    parser.add_argument("--dataset_dir", help="MSD-layout dataset (default: the phantom benchmark)")
    parser.add_argument("--max_epochs", type=int, help="training epochs (default: configs/train.json)")
    parser.add_argument("--ckpt_dir", help="checkpoint folder (default: BUNDLE_ROOT/models)")
    parser.add_argument("--output_dir", help="output folder (default: BUNDLE_ROOT/eval)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the existing checkpoint only")
    args, extra = parser.parse_known_args(argv)
    run_pipeline(**vars(args), overrides=parse_overrides(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
