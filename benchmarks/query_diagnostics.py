"""Which cluster do OOD voxels join? A nearest-query analysis of trained mask transformers.

For every voxel inside the region of interest of DESIGN section 4 (ground-truth organ and lesions dilated by
``roi_margin_voxels``), the query of largest affinity ``R`` is the voxel's nearest cluster centre, and the argmax of
that query's class logits is the cluster's class. The report gives, per voxel type (background margin, organ,
inlier tumour, OOD lesion), the share of voxels whose nearest cluster is of each class, and the pixel-level AUROC
(OOD lesion voxels positive) of the MaxQuery score over all queries and over the queries of each class alone
(``-max_n R`` over that subset; +inf where a window has no query of the class), and the affinity temperature.

MaxQuery separates OOD voxels when they are far from every inlier cluster; this shows where they land instead.
Run it on a split other than the benchmark's test split, e.g. the OOD validation split made with another seed::

    python -m bundle.data.phantom --out data/phantom_pancreas_seed1 --seed 1 --num-train 0 --num-val 6 \\
        --num-test 6 --num-ood 10
    python benchmarks/query_diagnostics.py --dataset_dir data/phantom_pancreas_seed1 [--work_dir WORK_DIR]

Checkpoints are read from ``WORK_DIR/NAME/models/model.pt`` (as written by ``benchmarks/ood_benchmark.py``);
further ``--ID VALUE`` pairs override the configs as they did for training. Where sliding windows overlap, a voxel's
nearest cluster is the class most windows give it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from sklearn.metrics import roc_auc_score
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ood_benchmark import VARIANTS  # noqa: E402
from bundle.data.files import require_file  # noqa: E402
from bundle.metrics.ood import roi_mask  # noqa: E402
from bundle.scripts.pipeline import parse_overrides  # noqa: E402

__all__ = ["NearestQueryMaps", "diagnose", "main"]


class NearestQueryMaps(nn.Module):
    """Wraps a ``MaskTransformer``: channels ``[A over all queries, A over the queries of class 0..K-1, one-hot class
    of the nearest query]`` of its last decoder layer (one-hot, so that overlapping windows average into shares)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` -> ``(B, 2K + 1, *spatial)``."""
        last = self.network.forward_all(x)[-1]
        affinity, query_class = last["affinity"], last["class_logits"].argmax(-1)  # (B, N, ...), (B, N)
        num_classes = last["class_logits"].shape[-1]
        expand = (...,) + (None,) * (affinity.dim() - 2)
        per_class = [
            -affinity.masked_fill((query_class != k)[expand], float("-inf")).amax(1, keepdim=True)
            for k in range(num_classes)
        ]
        nearest = torch.gather(query_class[expand].expand_as(affinity), 1, affinity.argmax(1, keepdim=True))
        nearest_one_hot = [(nearest == k).float() for k in range(num_classes)]
        return torch.cat([-affinity.amax(1, keepdim=True), *per_class, *nearest_one_hot], dim=1)


def diagnose(name: str, dataset_dir: Path, work: Path, overrides: dict, device: torch.device) -> dict:
    """Nearest-cluster shares per voxel type and per-class MaxQuery AUROCs of one benchmark variant."""
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "evaluate.json")])
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(dataset_dir), **overrides})
    parser.update(VARIANTS[name]["overrides"])
    network = parser.get_parsed_content("network_def")
    checkpoint = require_file(work / name / "models" / "model.pt", "model checkpoint")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    maps = NearestQueryMaps(network).to(device).eval()
    inferer = SlidingWindowInferer(roi_size=parser["patch_size"], sw_batch_size=4, overlap=0.25)
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    ood_labels = parser.get_parsed_content("ood_labels")
    class_names = list(parser.get_parsed_content("class_names").values())
    num_classes = len(class_names)
    voxel_types, nearest, scores = [], [], []
    with torch.no_grad():
        for item in parser.get_parsed_content("eval_datalist"):
            data = preprocessing(item)
            out = inferer(data["image"][None].to(device), maps)[0].cpu().numpy()
            label = np.asarray(data["label"][0]).astype(int)
            roi = roi_mask(label, ood_labels, parser["roi_margin_voxels"])
            kind = np.where(np.isin(label, ood_labels), 3, np.minimum(label, 2))  # 0 bg, 1 organ, 2 tumour, 3 OOD
            voxel_types.append(kind[roi])
            nearest.append(out[1 + num_classes :, roi].argmax(0))
            scores.append(out[: 1 + num_classes, roi])
    voxel_types, nearest = np.concatenate(voxel_types), np.concatenate(nearest)
    scores = np.concatenate(scores, axis=1)
    is_ood = voxel_types == 3
    finite = np.nanmax(np.where(np.isfinite(scores), scores, np.nan)) + 1.0
    scores = np.nan_to_num(scores, posinf=finite)
    type_names = ["background margin", "organ", "inlier tumour", "OOD lesion"]
    shares = {
        type_names[t]: {c: float(np.mean(nearest[voxel_types == t] == k)) for k, c in enumerate(class_names)}
        for t in range(4)
        if np.any(voxel_types == t)
    }
    auroc = {"all queries": float(roc_auc_score(is_ood, scores[0]))}
    auroc.update({f"{c} queries": float(roc_auc_score(is_ood, scores[1 + k])) for k, c in enumerate(class_names)})
    counts = {type_names[t]: int(np.sum(voxel_types == t)) for t in range(4)}
    return {
        "nearest_cluster_share": shares,
        "maxquery_auroc": auroc,
        "voxels": counts,
        "classes": num_classes,
        "temperature": network.head.temperature,
    }


def markdown(results: dict, dataset_dir: Path) -> str:
    """The diagnostics as markdown tables."""
    lines = [f"# Nearest-query diagnostics\n\nDataset: `{dataset_dir}` (`test` + `test_ood`), ROI voxels.\n"]
    for name, result in results.items():
        shares = result["nearest_cluster_share"]
        classes = list(next(iter(shares.values())))
        lines += [f"## {name}\n", f"Affinity temperature (learnt): {result['temperature']:.3f}.\n"]
        lines.append("| voxels | count | " + " | ".join(f"nearest: {c}" for c in classes) + " |")
        lines.append("| --- " * (len(classes) + 2) + "|")
        for kind, row in shares.items():
            values = " | ".join(f"{row[c]:.3f}" for c in classes)
            lines.append(f"| {kind} | {result['voxels'][kind]} | {values} |")
        lines += ["", "| MaxQuery over | pixel AUROC |", "| --- | --- |"]
        lines += [f"| {subset} | {value:.3f} |" for subset, value in result["maxquery_auroc"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="MSD-layout dataset with test and test_ood lists")
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "ood_benchmark"), help="benchmark checkpoints")
    mask_transformers = [name for name, variant in VARIANTS.items() if not variant["configs"]]
    parser.add_argument("--variants", nargs="+", choices=mask_transformers, help="default: those with a checkpoint")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmark" / "query_diagnostics"), help="OUT.md/.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, extra = parser.parse_known_args(argv)
    dataset_dir, work, out = Path(args.dataset_dir), Path(args.work_dir), Path(args.out)
    overrides = parse_overrides(extra)
    names = args.variants or [name for name in mask_transformers if (work / name / "models" / "model.pt").is_file()]
    if not names:
        parser.error(f"no mask-transformer checkpoint under {work}; run benchmarks/ood_benchmark.py first.")
    results = {name: diagnose(name, dataset_dir, work, overrides, torch.device(args.device)) for name in names}
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = str(dataset_dir.resolve().relative_to(ROOT)) if dataset_dir.resolve().is_relative_to(ROOT) else dataset_dir
    out.with_suffix(".json").write_text(json.dumps({"dataset": str(shown), "models": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results, shown))
    print(markdown(results, shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
