"""Train a model by a recipe: a JSON list of stages (data, localiser, training stages, weight averages, calibration)
run in order, each a plain ``monai.bundle run`` of ``configs/train.json`` with the stage's overrides.

The shipped weights are trained by ``recipes/shipped_model.json``::

    python -m bundle.scripts.recipe recipes/shipped_model.json --work_dir runs/recipe

Each stage writes into ``WORK_DIR/NAME`` (``models/`` for checkpoints, ``eval/`` for logs) and, once it has
finished, a ``stage.json`` with its time; a stage with a ``stage.json`` is skipped, and an interrupted training stage
resumes from its ``training_state.pt``, so the same command continues a run that was stopped. ``--dry_run`` prints
the plan and where each stage stands; ``--until NAME`` stops after a stage. Other ``--ID VALUE`` pairs are config
overrides for every training and calibration stage (e.g. ``--num_workers 4`` on a larger machine). The shipped
``models/`` is never written: the last stage's folder holds the result (``model.pt`` and ``ood_calibration.json``).

Stage kinds (keys besides ``name``, ``kind`` and an optional ``about``):

- ``phantom``: generate a phantom dataset into the stage folder (``phantom``: arguments of
  :func:`bundle.data.phantom.generate_dataset`);
- ``localiser``: train the organ localiser (overrides allowed);
- ``train``: train the mask transformer (``init``: an earlier training, average or calibration stage whose weights
  it starts from; ``extra_train_data``: ``phantom`` stages whose training cases join the dataset's; ``overrides``);
- ``average``: the element-wise mean of the weights of earlier stages (``average``: their names);
- ``calibrate``: the calibration of an earlier stage's weights (``model``) on the dataset's validation cases and
  those of ``extra_calibration_data`` (``phantom`` stages).

Every stage after the ``localiser`` uses that localiser. Keys that wire the stages together (``ckpt_dir``,
``init_ckpt_path``, ``resume_from``...) belong to the runner; a recipe that sets them is refused.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import run

from bundle.configs import config_files
from bundle.data import ensure_dataset
from bundle.data.files import atomic_write_text
from bundle.scripts.average_checkpoints import average_checkpoint_files
from bundle.scripts.pipeline import _device, parse_overrides

__all__ = ["RecipeError", "load_recipe", "main", "run_recipe", "stage_status"]

logger = logging.getLogger(__name__)

STAGE_KINDS = ("phantom", "localiser", "train", "average", "calibrate")
STAGE_KEYS = {
    "phantom": {"phantom"},
    "localiser": {"overrides"},
    "train": {"init", "extra_train_data", "overrides"},
    "average": {"average"},
    "calibrate": {"model", "extra_calibration_data", "overrides"},
}
#: kinds of stage that leave weights of the mask transformer behind
WEIGHT_KINDS = ("train", "average", "calibrate")
#: config ids the runner sets to wire the stages together
RUNNER_KEYS = {
    "bundle_root",
    "ckpt_dir",
    "output_dir",
    "init_ckpt_path",
    "resume_from",
    "localiser_ckpt_path",
    "train_localiser",
    "extra_train_dataset_dirs",
    "extra_calibration_dataset_dirs",
}
DONE_FILE = "stage.json"


class RecipeError(ValueError):
    """A recipe is malformed (the message names the file, the stage and the key)."""


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a recipe: known stage kinds and keys, unique names, references to earlier stages only.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RecipeError: not valid JSON, or a stage that is malformed (named with the key at fault).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecipeError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise RecipeError(f"{path}: a recipe is an object with a non-empty list 'stages'.")
    common = recipe.get("common_overrides", {})
    _check_overrides(common, f"{path}: common_overrides")
    kinds: dict[str, str] = {}
    for index, stage in enumerate(recipe["stages"]):
        where = f"{path}: stage {index}"
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str) or not stage["name"]:
            raise RecipeError(f"{where}: every stage is an object with a 'name'.")
        name = stage["name"]
        where = f"{path}: stage '{name}'"
        if name in kinds:
            raise RecipeError(f"{where}: the name is used twice.")
        if any(c in name for c in "/\\") or name in (".", ".."):
            raise RecipeError(f"{where}: a name is a folder name; it cannot hold path separators.")
        kind = stage.get("kind")
        if kind not in STAGE_KINDS:
            raise RecipeError(f"{where}: unknown kind {kind!r}; known: {', '.join(STAGE_KINDS)}.")
        unknown = set(stage) - {"name", "kind", "about"} - STAGE_KEYS[kind]
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)} for a {kind} stage.")
        _check_overrides(stage.get("overrides", {}), f"{where}: overrides")
        if kind == "phantom" and not isinstance(stage.get("phantom"), dict):
            raise RecipeError(f"{where}: a phantom stage needs 'phantom', the generator's arguments.")
        if kind == "train" and "init" in stage:
            _check_reference(stage["init"], WEIGHT_KINDS, kinds, f"{where}: init")
        if kind == "average":
            names = stage.get("average")
            if not isinstance(names, list) or len(names) < 2:
                raise RecipeError(f"{where}: 'average' lists at least two earlier stages.")
            for ref in names:
                _check_reference(ref, WEIGHT_KINDS, kinds, f"{where}: average")
        if kind == "calibrate":
            _check_reference(stage.get("model"), WEIGHT_KINDS, kinds, f"{where}: model")
        for key in ("extra_train_data", "extra_calibration_data"):
            refs = stage.get(key, [])
            if not isinstance(refs, list):
                raise RecipeError(f"{where}: '{key}' is a list of phantom stages.")
            for ref in refs:
                _check_reference(ref, ("phantom",), kinds, f"{where}: {key}")
        if kind == "localiser" and "localiser" in kinds.values():
            raise RecipeError(f"{where}: a recipe trains at most one localiser.")
        kinds[name] = kind
    return recipe


def _check_overrides(overrides: Any, where: str) -> None:
    if not isinstance(overrides, dict):
        raise RecipeError(f"{where}: overrides are an object of config ids and values.")
    owned = RUNNER_KEYS & set(overrides)
    if owned:
        raise RecipeError(f"{where}: {sorted(owned)} are set by the runner to wire the stages together.")


def _check_reference(ref: Any, allowed: tuple[str, ...], kinds: Mapping[str, str], where: str) -> None:
    if ref not in kinds:
        raise RecipeError(f"{where}: {ref!r} is not an earlier stage.")
    if kinds[ref] not in allowed:
        raise RecipeError(f"{where}: {ref!r} is a {kinds[ref]} stage; expected a {' or '.join(allowed)} stage.")


def stage_status(stage: Mapping[str, Any], work_dir: Path) -> str:
    """``"done"`` (finished), ``"resume"`` (an interrupted training with a saved state) or ``"todo"``."""
    folder = work_dir / stage["name"]
    if (folder / DONE_FILE).is_file():
        return "done"
    if stage["kind"] == "train" and (folder / "models" / "training_state.pt").is_file():
        return "resume"
    return "todo"


def run_recipe(
    recipe_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    bundle_root: str | os.PathLike = ".",
    dataset_dir: str | None = None,
    device: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    overrides: dict | None = None,
) -> list[dict[str, Any]]:
    """Run the stages of a recipe that have not finished; return one row per stage (name, kind, status, seconds).

    Args:
        recipe_path: the recipe JSON.
        work_dir: the run folder; stage ``NAME`` writes into ``WORK_DIR/NAME``.
        bundle_root: the bundle root holding ``metadata.json`` and ``configs/``.
        dataset_dir: the main dataset (default: the phantom benchmark under the bundle root).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; by default CUDA when available.
        until: stop after this stage.
        dry_run: report where each stage stands, run nothing.
        overrides: config overrides for every training and calibration stage (after the recipe's own).
    """
    recipe = load_recipe(recipe_path)
    names = [stage["name"] for stage in recipe["stages"]]
    if until is not None and until not in names:
        raise RecipeError(f"{recipe_path}: --until {until!r} is not a stage (stages: {', '.join(names)}).")
    root = Path(bundle_root).resolve()
    work = Path(work_dir).resolve()
    base = {"bundle_root": str(root), **recipe.get("common_overrides", {})}
    if dataset_dir is not None:
        base["dataset_dir"] = str(Path(dataset_dir).resolve())
    if device is not None:
        base["device"] = _device(device)
    extra = dict(overrides or {})
    _check_overrides(extra, "command-line overrides")
    common = {"meta_file": str(root / "metadata.json"), "logging_file": str(root / "configs" / "logging.conf")}
    train_config = config_files("train.json", root=root)
    localiser: Path | None = None

    rows = []
    for stage in recipe["stages"]:
        name, kind = stage["name"], stage["kind"]
        folder = work / name
        status = stage_status(stage, work)
        if kind == "localiser":
            localiser = folder / "models" / "localiser.pt"
        row = {"name": name, "kind": kind, "status": status, "about": stage.get("about", "")}
        rows.append(row)
        if dry_run or status == "done":
            if status == "done":
                row["seconds"] = json.loads((folder / DONE_FILE).read_text()).get("seconds")
        else:
            logger.info("recipe stage %s (%s): %s", name, kind, status)
            begin = time.perf_counter()
            stage_overrides = {**base, **stage.get("overrides", {}), **extra}
            stage_overrides.update(ckpt_dir=str(folder / "models"), output_dir=str(folder / "eval"))
            if localiser is not None and kind != "localiser":
                stage_overrides.update(localiser_ckpt_path=str(localiser), train_localiser=False)
            if kind == "phantom":
                ensure_dataset(folder, phantom=stage["phantom"])
            elif kind == "localiser":
                run(config_file=train_config, **common, **stage_overrides, run=["$@localiser_train#trainer.run()"])
            elif kind == "train":
                if "init" in stage:
                    stage_overrides["init_ckpt_path"] = str(work / stage["init"] / "models" / "model.pt")
                if status == "resume":
                    stage_overrides["resume_from"] = str(folder / "models" / "training_state.pt")
                stage_overrides["extra_train_dataset_dirs"] = [str(work / d) for d in stage.get("extra_train_data", [])]
                run(config_file=train_config, **common, **stage_overrides)
            elif kind == "average":
                sources = [work / ref / "models" / "model.pt" for ref in stage["average"]]
                average_checkpoint_files(sources, folder / "models" / "model.pt")
            else:  # calibrate
                models = folder / "models"
                models.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(work / stage["model"] / "models" / "model.pt", models / "model.pt")
                stage_overrides["extra_calibration_dataset_dirs"] = [
                    str(work / d) for d in stage.get("extra_calibration_data", [])
                ]
                run(config_file=train_config, **common, **stage_overrides, run=["$@calibrate#evaluator.run()"])
            row["seconds"] = round(time.perf_counter() - begin, 1)
            machine = f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {os.cpu_count()} CPU cores"
            record = {"kind": kind, "seconds": row["seconds"], "machine": machine, "stage": stage}
            atomic_write_text(folder / DONE_FILE, json.dumps(record, indent=2) + "\n")
            row["status"] = "ran"
            gc.collect()
        if name == until:
            break
    return rows


def _format(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | kind | status | seconds | about |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        seconds = "" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        lines.append(f"| {row['name']} | {row['kind']} | {row['status']} | {seconds} | {row['about']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="the recipe JSON, e.g. recipes/shipped_model.json")
    parser.add_argument("--work_dir", required=True, help="run folder; stage NAME writes into WORK_DIR/NAME")
    parser.add_argument("--bundle_root", default=".", help="bundle root (default: current folder)")
    parser.add_argument("--dataset_dir", help="MSD-layout dataset (default: the phantom benchmark)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--until", help="stop after this stage")
    parser.add_argument("--dry_run", action="store_true", help="print where each stage stands, run nothing")
    args, extra = parser.parse_known_args(argv)
    try:
        rows = run_recipe(
            args.recipe,
            args.work_dir,
            bundle_root=args.bundle_root,
            dataset_dir=args.dataset_dir,
            device=args.device,
            until=args.until,
            dry_run=args.dry_run,
            overrides=parse_overrides(extra),
        )
    except (RecipeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_format(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
