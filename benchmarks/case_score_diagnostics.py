"""How should a case's voxel anomaly map become one case score? Case AUROC of each setting, on an evaluation split.

The case score (:func:`bundle.ood.case_ood_score`) is the mean of the top ``fraction`` of a score's voxel values
inside the predicted foreground, first eroded by ``erosion`` face-connected steps. For every registered OOD score
and every (erosion, fraction) pair of the grid, through the whole cascade of ``configs/evaluate.json`` (``test`` +
``test_ood`` of ``--dataset_dir``), the report gives:

- the case AUROC of the ``test_ood`` cases against the ``test`` cases, over all OOD cases and for each OOD lesion
  type (the cases holding it against the inlier cases);
- for the inlier cases and the configured setting, where the voxels behind the case score lie in the ground truth
  (background, organ, inlier tumour): high scores on the predicted organ's border, outside the true organ, raise
  inlier cases' scores without saying anything about a lesion.

Run it on an OOD validation split (made with another seed than the test split), never to choose on the test split::

    python benchmarks/case_score_diagnostics.py --ckpt_dir models --dataset_dir data/phantom_pancreas_seed1 \\
        --out runs/case_score_diagnostics_seed1.json

Further ``--ID VALUE`` pairs override the configs.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.configs import config_files  # noqa: E402
from bundle.handlers import OODEvaluationHandler  # noqa: E402
from bundle.metrics.ood import case_auroc  # noqa: E402
from bundle.ood.case_score import case_ood_score, eroded_foreground, top_k_count  # noqa: E402
from bundle.scripts.pipeline import parse_overrides  # noqa: E402

__all__ = ["case_scores", "collect", "main", "markdown", "summarise"]


def case_scores(
    maps: dict[str, torch.Tensor], foreground: torch.Tensor, erosions: list[int], fractions: list[float]
) -> dict[str, float]:
    """``{"SCORE|EROSION|FRACTION": case score}`` of one case for every score map and grid setting."""
    scores = {}
    for erosion in erosions:
        mask = torch.from_numpy(eroded_foreground(foreground, erosion))
        for name, values in maps.items():
            for fraction in fractions:
                scores[f"{name}|{erosion}|{fraction:g}"] = case_ood_score(values.cpu(), mask, fraction)
    return scores


def top_voxel_truth(
    values: torch.Tensor, foreground: torch.Tensor, label: torch.Tensor, erosion: int, fraction: float, num_classes: int
) -> list[int]:
    """Ground-truth counts (background, organ, inlier tumour) of the voxels behind a case score."""
    mask = torch.from_numpy(eroded_foreground(foreground, erosion))
    candidates = values.cpu()[mask]
    picked = label[mask][torch.topk(candidates, top_k_count(candidates.numel(), fraction)).indices]
    return [int((picked == 0).sum()), int((picked == 1).sum()), int(((picked >= 2) & (picked < num_classes)).sum())]


def collect(config: ConfigParser, erosions: list[int], fractions: list[float]) -> list[dict]:
    """One record per evaluated case: name, group, OOD types and the case score of every score and setting."""
    evaluator = config.get_parsed_content("validate#evaluator")
    # the evaluator's own handler instance: its per-case records are reused; the score maps are recomputed per item
    # with its own method (a few tensor operations beside the cascade's inference)
    evaluation = next(h for h in config.get_parsed_content("validate#handlers") if isinstance(h, OODEvaluationHandler))
    setting = (
        int(config.get_parsed_content("ood_case_erode_voxels")),
        float(config.get_parsed_content("ood_top_k_fraction")),
    )
    records: list[dict] = []

    def keep(engine) -> None:
        for item, case in zip(engine.state.output, evaluation.cases[-len(engine.state.output) :], strict=True):
            pred = torch.as_tensor(item[evaluation.pred_key])
            foreground = pred.argmax(dim=0).cpu() > 0
            maps = evaluation.score_maps(item)
            record = {"case": case["case"], "group": case["group"], "ood_types": case["ood_types"]}
            record["scores"] = case_scores(maps, foreground, erosions, fractions)
            if case["group"] == "test" and "maxquery" in maps:
                label = torch.as_tensor(item[evaluation.label_key])[0].long().cpu()
                record["top_voxel_truth"] = top_voxel_truth(
                    maps["maxquery"], foreground, label, *setting, evaluation.num_classes
                )
            records.append(record)

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, keep)
    evaluator.run()
    return records


def summarise(records: list[dict]) -> dict:
    """Case AUROC of every score and setting, over all OOD cases and per OOD type."""
    inlier = [r for r in records if r["group"] == "test"]
    ood = [r for r in records if r["group"] == "test_ood"]
    types = sorted({t for r in ood for t in r["ood_types"].split(";") if t})
    results: dict = {}
    for key in records[0]["scores"]:
        name, erosion, fraction = key.split("|")
        negatives = [r["scores"][key] for r in inlier]
        entry = {"all": case_auroc(negatives, [r["scores"][key] for r in ood])}
        for t in types:
            holding = [r["scores"][key] for r in ood if t in r["ood_types"].split(";")]
            entry[t] = case_auroc(negatives, holding)
        results.setdefault(name, {}).setdefault(erosion, {})[fraction] = entry
    truths = [r["top_voxel_truth"] for r in inlier if "top_voxel_truth" in r]
    truth = np.sum(truths, axis=0).tolist() if truths else []
    return {
        "num_cases": {"test": len(inlier), "test_ood": len(ood)},
        "case_auroc": results,
        "inlier_top_voxels_truth": dict(zip(("background", "organ", "inlier_tumour"), truth, strict=False)),
    }


def markdown(report: dict) -> str:
    """The report as markdown tables: one per score, a row per erosion, a column per fraction (all OOD cases), and
    MaxQuery per OOD type."""
    counts = report["num_cases"]
    lines = [f"{counts['test']} inlier and {counts['test_ood']} OOD cases; case AUROC."]
    for name, by_erosion in report["case_auroc"].items():
        fractions = list(next(iter(by_erosion.values())))
        lines.append(f"\n**{name}** (rows: erosion steps; columns: top fraction)\n")
        lines.append("| erosion | " + " | ".join(fractions) + " |")
        lines.append("| --- " * (len(fractions) + 1) + "|")
        for erosion, by_fraction in by_erosion.items():
            lines.append(f"| {erosion} | " + " | ".join(f"{by_fraction[f]['all']:.3f}" for f in fractions) + " |")
    maxquery = report["case_auroc"].get("maxquery")
    if maxquery:
        types = [t for t in next(iter(next(iter(maxquery.values())).values())) if t != "all"]
        lines.append("\n**maxquery by OOD type** (erosion / fraction)\n")
        lines.append("| setting | all | " + " | ".join(types) + " |")
        lines.append("| --- " * (len(types) + 2) + "|")
        for erosion, by_fraction in maxquery.items():
            for fraction, entry in by_fraction.items():
                cells = " | ".join(f"{entry[t]:.2f}" for t in types)
                lines.append(f"| {erosion} / {fraction} | {entry['all']:.3f} | {cells} |")
    truth = report.get("inlier_top_voxels_truth")
    if truth:
        total = max(sum(truth.values()), 1)
        shares = ", ".join(f"{k} {v / total:.2f}" for k, v in truth.items())
        lines.append(f"\nInlier cases, MaxQuery, configured setting: the voxels behind the case score are {shares}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_dir", required=True, help="folder of model.pt and ood_calibration.json")
    parser.add_argument("--localiser_ckpt_path", default=str(ROOT / "models" / "localiser.pt"))
    parser.add_argument("--dataset_dir", required=True, help="an evaluation split with test and test_ood lists")
    parser.add_argument("--erosions", default="0,1,2", help="comma-separated erosion steps")
    parser.add_argument("--fractions", default="0.005,0.01,0.02,0.05,0.1", help="comma-separated top fractions")
    parser.add_argument("--max_cases", type=int, default=None, help="only the first N cases of each list")
    parser.add_argument("--configs", nargs="*", default=[], help="configs layered on evaluate.json")
    parser.add_argument("--out", required=True, help="JSON report; the markdown goes next to it")
    args, rest = parser.parse_known_args(argv)
    out = Path(args.out)
    config = ConfigParser()
    config.read_meta(str(ROOT / "metadata.json"))
    config.read_config(config_files("train.json", "evaluate.json", *args.configs, root=ROOT))
    config.update(
        {
            "bundle_root": str(ROOT),
            "dataset_dir": args.dataset_dir,
            "ckpt_dir": args.ckpt_dir,
            "localiser_ckpt_path": args.localiser_ckpt_path,
            "output_dir": str(out.with_suffix("")) + "_evaluation",
            **parse_overrides(rest),
        }
    )
    if args.max_cases is not None:
        datalist = config.get_parsed_content("eval_datalist")
        inlier = [d for d in datalist if not d["ood_case"]][: args.max_cases]
        config["eval_datalist"] = inlier + [d for d in datalist if d["ood_case"]][: args.max_cases]
    erosions = [int(e) for e in args.erosions.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    report = summarise(collect(config, erosions, fractions))
    report["settings"] = {
        "ckpt_dir": args.ckpt_dir,
        "dataset_dir": args.dataset_dir,
        "configured": {"erosion": config["ood_case_erode_voxels"], "fraction": config["ood_top_k_fraction"]},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
