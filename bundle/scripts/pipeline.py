"""The main job end to end: generate the phantom benchmark if needed, train the organ localiser and the mask
transformer, refine the mask transformer's clusters, calibrate, evaluate the cascade, print the table of MaxQuery
and the baselines.

The refinement (``configs/refine.json`` layered on ``train.json``, ``--refine_epochs``; 0 skips it) continues from
the trained weights with what makes MaxQuery's clusters a density model: the compactness of the normal anatomy
around its centres, and outlier exposure, which pushes altered lesions away from every centre. Both hinder a model
that is still learning its clusters, so they come after the segmentation has been learnt, not from the first epoch.
The query-balance loss, which helps the clusters form, is off in the refinement.

Each training stage validates once, after its last epoch (the refinement by ``configs/refine.json``, the mask
transformer by ``val_interval`` set to its epoch count, unless ``--val_interval`` is given): a 40-epoch CPU run is
still improving at every validation (0.24.0: a new best at each of its 8), so the intermediate validations only
cost time (about 150 s of the 30-minute budget) and the model kept is the last epoch's.

Run from the bundle root::

    python -m bundle.scripts.pipeline

Everything goes into a run folder (``--run_dir``, default ``runs/pipeline``): ``models/`` (checkpoints and
calibration) and ``eval/`` (logs, ``metrics.json``, ``per_case.csv``, the pooled voxel scores ``roi_scores.npz`` and
``lead.json``). After the table the job prints MaxQuery's lead over every other score of its own model, each with a
paired case-bootstrap interval (:func:`bundle.metrics.evaluation_intervals`): whether MaxQuery is ahead on these
cases, or only on the cases the split happened to draw. The shipped ``models/`` is left alone unless
``--ckpt_dir models`` asks for it. Every step is a plain ``monai.bundle run`` of the configs, so each can also be
run on its own; options are passed on as config overrides (``--dataset_dir``, ``--max_epochs``, ``--ckpt_dir``,
``--output_dir``, ``--device``), and any other ``--ID VALUE`` pair is a config override as in ``monai.bundle run``
(e.g. ``--patch_size "[48,48,24]"``). The time of each stage is printed and saved to ``eval/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.bundle import run

from bundle.configs import config_files
from bundle.data.files import atomic_write_text
from bundle.handlers.evaluation import format_metrics_table
from bundle.metrics import evaluation_intervals, format_lead_table

__all__ = ["STAGES", "Stage", "main", "parse_overrides", "run_pipeline"]

logger = logging.getLogger(__name__)


CPU_BUDGET_EPOCHS = 40
TRAIN_STEP = "$@train#trainer.run()"


@dataclass(frozen=True)
class Stage:
    """One stage of the main job: a ``monai.bundle run`` of ``configs`` (``common.json`` first) running
    ``steps``; ``epochs_key`` is the config id that its epoch count overrides, if it has one, and
    ``val_interval_key`` the id of its validation interval, set to that count so that it validates once, at its end."""

    name: str
    configs: tuple[str, ...]
    steps: tuple[str, ...]
    epochs_key: str | None = None
    val_interval_key: str | None = None


STAGES = (
    Stage("localiser", ("train.json",), ("$@localiser_train#trainer.run()",)),
    Stage("mask_transformer", ("train.json",), (TRAIN_STEP,), "train#trainer#max_epochs", "val_interval"),
    Stage("refinement", ("train.json", "refine.json"), (TRAIN_STEP,), "refine_epochs"),
    Stage("calibration", ("train.json",), ("$@calibrate#evaluator.run()",)),
)


def run_pipeline(
    bundle_root: str | Path = ".",
    dataset_dir: str | None = None,
    max_epochs: int | None = None,
    refine_epochs: int | None = None,
    run_dir: str | None = None,
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
        max_epochs: mask-transformer training epochs (default: the value in ``configs/train.json``).
        refine_epochs: epochs of the refinement (``configs/refine.json``) after them (default: the value in
            ``configs/refine.json``); 0 skips it.
        run_dir: the run folder (default ``BUNDLE_ROOT/runs/pipeline``); ``ckpt_dir`` and ``output_dir`` default
            to its ``models`` and ``eval``.
        ckpt_dir: where the checkpoints and the calibration go.
        output_dir: where logs, metrics and per-case results go.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; by default CUDA when available.
        skip_training: evaluate the existing checkpoints only.
        overrides: further config overrides for every step, e.g. ``{"patch_size": [48, 48, 24]}``.
    """
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if refine_epochs is not None and refine_epochs < 0:
        raise ValueError(f"refine_epochs must be >= 0, got {refine_epochs}.")
    root = Path(bundle_root).resolve()
    configs = root / "configs"
    run_dir = Path(run_dir).resolve() if run_dir is not None else root / "runs" / "pipeline"
    ckpt = Path(ckpt_dir).resolve() if ckpt_dir is not None else run_dir / "models"
    out = Path(output_dir).resolve() if output_dir is not None else run_dir / "eval"
    overrides = {"bundle_root": str(root), "ckpt_dir": str(ckpt), "output_dir": str(out), **(overrides or {})}
    if dataset_dir is not None:
        overrides["dataset_dir"] = str(Path(dataset_dir).resolve())
    if device is not None:
        overrides["device"] = _device(device)
    common = {"meta_file": str(root / "metadata.json"), "logging_file": str(configs / "logging.conf")}
    epochs = {"train#trainer#max_epochs": max_epochs, "refine_epochs": refine_epochs}

    timings: dict[str, float] = {}
    start = time.perf_counter()
    run(config_file=config_files("train.json", root=root), **common, **overrides, run=["$@dataset"])
    timings["dataset"] = time.perf_counter() - start
    for stage in () if skip_training else STAGES:
        count = epochs.get(stage.epochs_key)
        if count == 0:
            continue
        stage_overrides = overrides if count is None else {**overrides, stage.epochs_key: count}
        if count is not None and stage.val_interval_key and stage.val_interval_key not in overrides:
            stage_overrides = {**stage_overrides, stage.val_interval_key: count}
        begin = time.perf_counter()
        run(config_file=config_files(*stage.configs, root=root), **common, **stage_overrides, run=list(stage.steps))
        timings[stage.name] = time.perf_counter() - begin
    begin = time.perf_counter()
    run(
        config_file=config_files("train.json", "evaluate.json", root=root),
        **common,
        **{"save_scores": True, **overrides},
    )
    lead = _maxquery_lead(out)
    timings["evaluation"] = time.perf_counter() - begin
    timings["total"] = time.perf_counter() - start

    metrics = json.loads((out / "metrics.json").read_text())
    machine = f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} CPU cores"
    atomic_write_text(out / "timings.json", json.dumps({"seconds": timings, "machine": machine}, indent=2) + "\n")
    print(format_metrics_table(metrics))
    if lead is not None:
        print(f"\nMaxQuery's lead over each score of its own model (paired case bootstrap, {out / 'lead.json'}):")
        print(format_lead_table(lead))
    print("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f" ({machine})")
    print(f"checkpoints in {ckpt}, metrics in {out / 'metrics.json'}")
    return metrics


def _maxquery_lead(evaluation: Path) -> dict | None:
    """MaxQuery's paired lead over every other score of the evaluation in ``evaluation`` (written to ``lead.json``
    there), or ``None`` where it saved no voxel scores (``--save_scores False``) or has no MaxQuery."""
    if not (evaluation / "roi_scores.npz").is_file():
        return None
    intervals = evaluation_intervals(evaluation)
    if "lead" not in intervals:
        return None
    saved = {"lead": intervals["lead"], "bootstrap": intervals["bootstrap"]}
    atomic_write_text(evaluation / "lead.json", json.dumps(saved, indent=2) + "\n")
    return intervals["lead"]


def _device(name: str) -> torch.device:
    if re.fullmatch(r"cpu|cuda(:\d+)?", name) is None:
        raise SystemExit(f"--device must be cpu, cuda or cuda:N, got {name!r}.")
    return torch.device(name)


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
    parser.add_argument(
        "--max_epochs",
        type=int,
        default=CPU_BUDGET_EPOCHS,
        help=f"mask-transformer epochs (default {CPU_BUDGET_EPOCHS}: the 30-minute budget of a 2-core CPU)",
    )
    parser.add_argument(
        "--refine_epochs",
        type=int,
        help="refinement epochs after them (default: refine_epochs of configs/refine.json; 0: no refinement)",
    )
    parser.add_argument("--run_dir", help="run folder (default: BUNDLE_ROOT/runs/pipeline)")
    parser.add_argument("--ckpt_dir", help="checkpoint folder (default: RUN_DIR/models; 'models': the shipped one)")
    parser.add_argument("--output_dir", help="output folder (default: RUN_DIR/eval)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the existing checkpoint only")
    args, extra = parser.parse_known_args(argv)
    run_pipeline(**vars(args), overrides=parse_overrides(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
