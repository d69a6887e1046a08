"""Where do a model's tumour voxels go, and what does a class prior or the hysteresis argmax make of them?

For the inlier cases of one split, through the whole cascade (``calibrate#evaluator`` of ``configs/train.json``: the
organ localiser, the model, the paste back onto the full grid), the report gives:

- for each tumour class, the share of its true voxels that the plain argmax gives to each class, and the predicted
  volume over the true volume (summed over the cases);
- for offsets ``b`` in ``--offsets``, the tumour Dice under a class prior (``b`` added to the class's
  log-probability before the argmax) and under the hysteresis argmax (:mod:`bundle.transforms.hysteresis`), each as
  the mean per-case Dice over all cases (a false lesion in a case without the class counts 0: the calibration's
  objective) and over the cases that hold the class (the benchmark's Dice);
- for each tumour class, by lesion size (face-connected components of the true class, in voxels of the model grid,
  binned by ``--size_bins``): the share of true lesions that the plain argmax touches (the hysteresis argmax only
  grows what the plain argmax found, so it detects the same lesions), the same for the lesions that share their
  case with a larger lesion of the class (the crop sampler of ``RandCropByLabelClassesd`` centres those rarely; see
  :mod:`bundle.transforms.lesion_sampling`), and the plain argmax's mean per-case Dice of the cases whose class
  volume falls in the bin.

Run it on validation cases, never to choose anything on the test split::

    python benchmarks/segmentation_diagnostics.py --ckpt_dir models --out runs/segmentation_diagnostics.json
    python benchmarks/segmentation_diagnostics.py --ckpt_dir runs/ood_benchmark/a_dynunet/models \\
        --configs baseline_dynunet.json --out runs/segmentation_diagnostics_dynunet.json

``--split`` names the dataset list (default ``validation``); ``--extra_dataset_dirs`` pools the same list of further
datasets (e.g. inlier validation cases generated with another seed); run with ``--split training`` to compare how
well the model fits the cases it was trained on. Further ``--ID VALUE`` pairs override the configs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.configs import config_files  # noqa: E402
from bundle.data import load_datalist, load_datalists  # noqa: E402
from bundle.scripts.pipeline import parse_overrides  # noqa: E402
from bundle.transforms.hysteresis import case_dice, crop_to_foreground, hysteresis_argmax, log_scores  # noqa: E402

__all__ = ["by_lesion_size", "collect_cases", "diagnose", "main", "markdown"]


def collect_cases(parser: ConfigParser, margin: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(log-scores, label)`` of every case of the calibration evaluator, cropped around the true and predicted
    foreground (plus ``margin`` voxels)."""
    evaluator = parser.get_parsed_content("calibrate#evaluator")
    input_type = parser.get_parsed_content("calibrate#input_type")
    cases = []

    def keep(engine) -> None:
        for item in engine.state.output:
            values = log_scores(torch.as_tensor(item["pred"]), input_type)
            label = torch.as_tensor(item["label"])[0].long().cpu().numpy()
            cases.append(crop_to_foreground(values, label, margin))

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, keep)
    evaluator.run()
    return cases


def _prior_argmax(values: np.ndarray, class_index: int, offset: float) -> np.ndarray:
    shifted = values.copy()
    shifted[class_index] += offset
    return shifted.argmax(axis=0)


def by_lesion_size(cases: list[tuple[np.ndarray, np.ndarray]], class_index: int, size_bins: list[int]) -> list[dict]:
    """Per size bin ``[low, high)``: lesions of the class, the share the plain argmax touches, and the plain argmax's
    mean Dice over the cases whose class volume is in the bin."""
    edges = [0, *size_bins, None]
    lesions: list[tuple[int, bool, bool]] = []
    case_dices: list[tuple[int, float]] = []
    for values, label in cases:
        truth = label == class_index
        if not truth.any():
            continue
        plain = values.argmax(axis=0)
        components, count = ndimage.label(truth)
        sizes = np.bincount(components.ravel())[1:]
        touched = np.unique(components[(plain == class_index) & truth])
        largest = int(sizes.max())
        lesions += [(int(sizes[i - 1]), i in touched, int(sizes[i - 1]) < largest) for i in range(1, count + 1)]
        case_dices.append((int(truth.sum()), case_dice(plain, label, class_index)))
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = [(found, beside) for size, found, beside in lesions if size >= low and (high is None or size < high)]
        beside_larger = [found for found, beside in inside if beside]
        dices = [d for size, d in case_dices if size >= low and (high is None or size < high)]
        rows.append(
            {
                "voxels": [low, high],
                "lesions": len(inside),
                "detected": float(np.mean([found for found, _ in inside])) if inside else float("nan"),
                "beside_larger": len(beside_larger),
                "beside_larger_detected": float(np.mean(beside_larger)) if beside_larger else float("nan"),
                "cases": len(dices),
                "plain_dice": float(np.mean(dices)) if dices else float("nan"),
            }
        )
    return rows


def diagnose(
    cases: list[tuple[np.ndarray, np.ndarray]],
    tumour_classes: list[int],
    offsets: list[float],
    size_bins: tuple[int, ...] | list[int] = (120, 250),
) -> dict:
    """The figures of the module docstring for ``cases`` (see :func:`collect_cases`)."""
    num_classes = cases[0][0].shape[0]
    report: dict = {"num_cases": len(cases), "classes": {}}
    for k in tumour_classes:
        to_class = np.zeros(num_classes)
        predicted = 0
        for values, label in cases:
            plain = values.argmax(axis=0)
            to_class += np.bincount(plain[label == k], minlength=num_classes)
            predicted += int((plain == k).sum())
        true_volume = float(to_class.sum())
        sweep = []
        for b in offsets:
            row = {"offset": b}
            for name, segment in (
                ("prior", lambda v, b=b, k=k: _prior_argmax(v, k, b)),
                ("hysteresis", lambda v, b=b, k=k: hysteresis_argmax(v, {k: b}, "logits")),
            ):
                dice = [(case_dice(segment(values), label, k), bool((label == k).any())) for values, label in cases]
                row[f"{name}_all_cases"] = float(np.mean([d for d, _ in dice]))
                holding = [d for d, present in dice if present]
                row[f"{name}_cases_with_class"] = float(np.mean(holding)) if holding else float("nan")
            sweep.append(row)
        report["classes"][str(k)] = {
            "true_voxels": int(true_volume),
            "plain_argmax_share_to_class": (to_class / max(true_volume, 1.0)).round(4).tolist(),
            "predicted_over_true_volume": predicted / max(true_volume, 1.0),
            "sweep": sweep,
            "by_lesion_size": by_lesion_size(cases, k, list(size_bins)),
        }
    return report


def markdown(report: dict, class_names: dict[int, str]) -> str:
    """The report as markdown tables."""
    lines = [f"{report['num_cases']} cases."]
    for k, result in report["classes"].items():
        name = class_names.get(int(k), k)
        shares = ", ".join(
            f"{class_names.get(i, i)} {s:.3f}" for i, s in enumerate(result["plain_argmax_share_to_class"])
        )
        lines.append(
            f"\n**{name}**: its true voxels go to {shares}; predicted / true volume "
            f"{result['predicted_over_true_volume']:.2f}.\n"
        )
        lines.append(
            "| offset | prior, all cases | prior, cases with the class | hysteresis, all cases | "
            "hysteresis, cases with the class |"
        )
        lines.append("| --- | --- | --- | --- | --- |")
        for row in result["sweep"]:
            cells = [
                f"{row[key]:.3f}"
                for key in (
                    "prior_all_cases",
                    "prior_cases_with_class",
                    "hysteresis_all_cases",
                    "hysteresis_cases_with_class",
                )
            ]
            lines.append(f"| {row['offset']:g} | " + " | ".join(cells) + " |")
        lines.append(
            "\n| lesion voxels (model grid) | lesions | detected | beside a larger lesion of the class: lesions | "
            "detected | cases | plain argmax Dice |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for row in result["by_lesion_size"]:
            low, high = row["voxels"]
            span = f">= {low}" if high is None else f"{low}-{high - 1}"
            lines.append(
                f"| {span} | {row['lesions']} | {row['detected']:.2f} | {row['beside_larger']} | "
                f"{row['beside_larger_detected']:.2f} | {row['cases']} | {row['plain_dice']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def _relative(path: str) -> str:
    """``path`` relative to the repository root where it lies inside it (reports name no machine's folders)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_dir", required=True, help="folder of model.pt")
    parser.add_argument("--localiser_ckpt_path", default=str(ROOT / "models" / "localiser.pt"))
    parser.add_argument("--dataset_dir", default=str(ROOT / "data" / "phantom_pancreas"))
    parser.add_argument("--split", default="validation", help="dataset list of inlier cases")
    parser.add_argument("--extra_dataset_dirs", nargs="*", default=[], help="datasets whose --split list is pooled")
    parser.add_argument("--max_cases", type=int, default=None, help="only the first N cases of the pooled list")
    parser.add_argument("--size_bins", default="120,250", help="comma-separated lesion-size bin edges (voxels)")
    parser.add_argument("--configs", nargs="*", default=[], help="configs layered on train.json, e.g. the baseline's")
    parser.add_argument("--offsets", default="0,1,2,3,4,5,6,7,8,10", help="comma-separated offsets")
    parser.add_argument("--out", required=True, help="JSON report; the markdown goes next to it")
    args, rest = parser.parse_known_args(argv)
    config = ConfigParser()
    config.read_meta(str(ROOT / "metadata.json"))
    config.read_config(config_files("train.json", *args.configs, root=ROOT))
    overrides = parse_overrides(rest)
    config.update(
        {
            "bundle_root": str(ROOT),
            "dataset_dir": args.dataset_dir,
            "ckpt_dir": args.ckpt_dir,
            "localiser_ckpt_path": args.localiser_ckpt_path,
            **overrides,
        }
    )
    if "calibration_datalist" not in overrides:
        dataset = config.get_parsed_content("dataset")
        pooled = load_datalist(dataset, args.split) + load_datalists(args.extra_dataset_dirs, args.split)
        config["calibration_datalist"] = pooled[: args.max_cases]
    # the checkpoint loader only: no calibration is written
    config["calibrate#handlers"] = [h for h in config["calibrate#handlers"] if "CheckpointLoader" in h["_target_"]]
    cases = collect_cases(config)
    report = diagnose(
        cases,
        config.get_parsed_content("hysteresis_classes"),
        [float(b) for b in args.offsets.split(",")],
        [int(b) for b in args.size_bins.split(",")],
    )
    report["settings"] = {
        "ckpt_dir": args.ckpt_dir,
        "dataset_dir": _relative(args.dataset_dir),
        "split": args.split,
        "extra_dataset_dirs": args.extra_dataset_dirs,
        "max_cases": args.max_cases,
        "configs": args.configs,
        "overrides": overrides,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    class_names = {int(k): v for k, v in config.get_parsed_content("class_names").items()}
    text = markdown(report, class_names)
    out.with_suffix(".md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
