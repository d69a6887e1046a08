"""Which cluster do OOD voxels join? A nearest-query analysis of trained mask transformers.

For every voxel inside the evaluation's region of interest (ground-truth organ and lesions dilated by
``roi_margin_voxels``), the query of largest affinity ``R`` is the voxel's nearest cluster centre, and the argmax of
that query's class logits is the cluster's class. The report gives, for each model:

- the class distribution ``S`` (softmax of the class logits) of every query, averaged over the evaluated images
  (one-hot where ``network_def#queries_per_class`` fixes the class of each query);
- per voxel type (background margin, organ, each inlier tumour class, OOD lesion), the share of voxels whose nearest
  cluster is of each class, and the share whose nearest query is each query (so one sees, e.g., whether pdac voxels
  sit nearest to the pdac queries and which queries the OOD voxels join);
- the share of each voxel type that MaxQuery scores at least as high as the median OOD voxel (where its false
  positives come from);
- the pixel-level AUROC (OOD lesion voxels positive) of the MaxQuery score over all queries and over the queries of
  each class alone (``-max_n R`` over that subset; +inf where a window has no query of the class), and the affinity
  temperature.

MaxQuery separates OOD voxels when they are far from every inlier cluster; this shows where they land instead.
Run it on a split other than the benchmark's test split, e.g. the OOD validation split made with another seed::

    python -m bundle.data.phantom --out data/phantom_pancreas_seed1 --seed 1 --num-train 0 --num-val 24 \\
        --num-test 30 --num-ood 30
    python benchmarks/query_diagnostics.py --dataset_dir data/phantom_pancreas_seed1 [--work_dir WORK_DIR]

The network and the preprocessing are those of ``configs/train.json`` + ``configs/evaluate.json`` (each image cropped
to its ground-truth organ box plus a margin, which holds the ROI). Checkpoints are read from
``WORK_DIR/NAME/models/model.pt`` (as written by ``benchmarks/ood_benchmark.py``); further ``--ID VALUE`` pairs
override the configs as they did for training. Where sliding windows overlap, a voxel's nearest cluster (query) is
the class (query) most windows give it, and a query's mean class distribution weighs every window of an image
equally.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from sklearn.metrics import roc_auc_score
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ood_benchmark import VARIANTS  # noqa: E402
from bundle.configs import config_files  # noqa: E402
from bundle.metrics.ood import roi_mask  # noqa: E402
from bundle.networks import load_weights  # noqa: E402
from bundle.scripts.pipeline import parse_overrides  # noqa: E402

__all__ = ["NearestQueryMaps", "diagnose", "main", "markdown"]


class NearestQueryMaps(nn.Module):
    """Wraps a ``MaskTransformer``: per-voxel maps of its last decoder layer for the nearest-query analysis.

    Output channels, in order: MaxQuery ``A`` over all queries (1), ``A`` over the queries of each class (``K``), the
    one-hot class of the nearest query (``K``) and the one-hot index of the nearest query (``N``). One-hot, so that
    overlapping sliding windows average into shares. The class distribution ``S`` of the queries does not vary over
    voxels; rather than ``N * K`` constant channels, the module sums it over the windows it sees, in
    ``class_prob_sum`` (``(N, K)``) and ``num_windows``, until :meth:`reset`.

    Args:
        network: a :class:`~bundle.networks.MaskTransformer` (free or fixed query classes).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.reset()

    def reset(self) -> None:
        """Forget the class distributions summed so far."""
        self.class_prob_sum: torch.Tensor | None = None
        self.num_windows = 0

    def mean_class_probs(self) -> torch.Tensor:
        """``(N, K)``: the mean class distribution of every query over the windows since :meth:`reset`."""
        if self.class_prob_sum is None:
            raise RuntimeError("no window has been seen since the last reset().")
        return self.class_prob_sum / self.num_windows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` -> ``(B, 2K + N + 1, *spatial)``."""
        last = self.network.forward_all(x)[-1]
        affinity, class_logits = last["affinity"], last["class_logits"]  # (B, N, ...), (B, N, K)
        class_probs = torch.softmax(class_logits.float(), dim=-1).detach()
        batch_sum = class_probs.sum(0).cpu()
        self.class_prob_sum = batch_sum if self.class_prob_sum is None else self.class_prob_sum + batch_sum
        self.num_windows += x.shape[0]
        query_class = class_logits.argmax(-1)  # (B, N)
        num_classes = class_logits.shape[-1]
        expand = (...,) + (None,) * (affinity.dim() - 2)
        per_class = [
            -affinity.masked_fill((query_class != k)[expand], float("-inf")).amax(1, keepdim=True)
            for k in range(num_classes)
        ]
        nearest_query = affinity.argmax(1, keepdim=True)
        nearest = torch.gather(query_class[expand].expand_as(affinity), 1, nearest_query)
        nearest_class = [(nearest == k).float() for k in range(num_classes)]
        nearest_query_one_hot = torch.zeros_like(affinity).scatter_(1, nearest_query, 1.0)
        return torch.cat([-affinity.amax(1, keepdim=True), *per_class, *nearest_class, nearest_query_one_hot], dim=1)


def voxel_type_names(class_names: list[str]) -> list[str]:
    """Names of the voxel types: label ``k < K`` is type ``k`` (each tumour class its own), OOD lesions type ``K``."""
    tumours = [f"inlier tumour: {name}" for name in class_names[2:]]
    return ["background margin", "organ", *tumours, "OOD lesion"]


def diagnose(name: str, dataset_dir: Path, work: Path, overrides: dict, device: torch.device) -> dict:
    """Query class distributions, nearest-cluster and nearest-query shares per voxel type and per-class MaxQuery
    AUROCs of one benchmark variant."""
    parser = ConfigParser()
    parser.read_config(config_files("train.json", "evaluate.json", root=ROOT))
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(dataset_dir), **overrides})
    parser.update(VARIANTS[name]["overrides"])
    network = load_weights(parser.get_parsed_content("network_def"), work / name / "models" / "model.pt", device)
    maps = NearestQueryMaps(network).to(device).eval()
    # the evaluation's windows, so that the shares describe the maps the report scores
    inferer = parser.get_parsed_content("sliding_window_inferer")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    ood_labels = parser.get_parsed_content("ood_labels")
    class_names = [str(c) for c in parser.get_parsed_content("class_names").values()]
    num_classes, num_queries = len(class_names), network.num_queries
    voxel_types, nearest, nearest_query, scores, class_probs = [], [], [], [], []
    with torch.no_grad():
        for item in parser.get_parsed_content("eval_datalist"):
            data = preprocessing(item)
            maps.reset()
            out = inferer(data["image"][None].to(device), maps)[0].cpu().numpy()
            class_probs.append(maps.mean_class_probs().numpy())
            label = np.asarray(data["label"][0]).astype(int)
            roi = roi_mask(label, ood_labels, parser["roi_margin_voxels"])
            kind = np.where(np.isin(label, ood_labels), num_classes, np.minimum(label, num_classes - 1))
            voxel_types.append(kind[roi])
            nearest.append(out[1 + num_classes : 1 + 2 * num_classes, roi].argmax(0))
            nearest_query.append(out[1 + 2 * num_classes :, roi].argmax(0))
            scores.append(out[: 1 + num_classes, roi])
    voxel_types, nearest, nearest_query = map(np.concatenate, (voxel_types, nearest, nearest_query))
    scores = np.concatenate(scores, axis=1)
    is_ood = voxel_types == num_classes
    finite = np.nanmax(np.where(np.isfinite(scores), scores, np.nan)) + 1.0
    scores = np.nan_to_num(scores, posinf=finite)
    type_names = voxel_type_names(class_names)
    present = [t for t in range(num_classes + 1) if np.any(voxel_types == t)]
    shares = {
        type_names[t]: {c: float(np.mean(nearest[voxel_types == t] == k)) for k, c in enumerate(class_names)}
        for t in present
    }
    query_shares = {}
    for t in present:
        hits = np.bincount(nearest_query[voxel_types == t], minlength=num_queries)
        query_shares[type_names[t]] = [float(v) for v in hits / hits.sum()]
    mean_probs = np.mean(class_probs, axis=0)  # (N, K): every image counts once
    fixed = network.head.query_classes is not None
    queries = [
        {
            "query": n,
            "class": class_names[int(np.argmax(mean_probs[n]))],
            "fixed": fixed,
            "mean_class_probs": {c: float(mean_probs[n, k]) for k, c in enumerate(class_names)},
        }
        for n in range(num_queries)
    ]
    # where the false positives are: the share of each voxel type that MaxQuery ranks above the median OOD voxel
    ood_median = float(np.median(scores[0][is_ood])) if is_ood.any() else float("nan")
    above_ood_median = {type_names[t]: float(np.mean(scores[0][voxel_types == t] >= ood_median)) for t in present}
    auroc = {"all queries": float(roc_auc_score(is_ood, scores[0]))}
    auroc.update({f"{c} queries": float(roc_auc_score(is_ood, scores[1 + k])) for k, c in enumerate(class_names)})
    counts = {type_names[t]: int(np.sum(voxel_types == t)) for t in range(num_classes + 1)}
    return {
        "queries": queries,
        "nearest_cluster_share": shares,
        "nearest_query_share": query_shares,
        "maxquery_auroc": auroc,
        "above_ood_median": above_ood_median,
        "voxels": counts,
        "images": len(class_probs),
        "classes": num_classes,
        "temperature": network.head.temperature,
    }


def markdown(results: dict, dataset_dir: Path | str) -> str:
    """The diagnostics as markdown tables."""
    lines = [f"# Nearest-query diagnostics\n\nDataset: `{dataset_dir}` (`test` + `test_ood`), ROI voxels.\n"]
    for name, result in results.items():
        shares = result["nearest_cluster_share"]
        classes = list(next(iter(shares.values())))
        queries = result["queries"]
        lines += [f"## {name}\n", f"Affinity temperature (learnt): {result['temperature']:.3f}.\n"]
        origin = "fixed by the configuration" if queries[0]["fixed"] else "from the class head"
        lines.append(
            f"Class distribution S of each query ({origin}), mean over {result['images']} images; "
            "class: the argmax of the mean.\n"
        )
        lines.append("| query | class | " + " | ".join(f"S {c}" for c in classes) + " |")
        lines.append("| --- " * (len(classes) + 2) + "|")
        for query in queries:
            values = " | ".join(f"{query['mean_class_probs'][c]:.3f}" for c in classes)
            lines.append(f"| {query['query']} | {query['class']} | {values} |")
        lines += ["", "Share of each voxel type whose nearest cluster (argmax affinity) is of each class.\n"]
        lines.append("| voxels | count | " + " | ".join(f"nearest: {c}" for c in classes) + " |")
        lines.append("| --- " * (len(classes) + 2) + "|")
        for kind, row in shares.items():
            values = " | ".join(f"{row[c]:.3f}" for c in classes)
            lines.append(f"| {kind} | {result['voxels'][kind]} | {values} |")
        lines += ["", "Share of each voxel type whose nearest query is query n (its class in the header).\n"]
        lines.append("| voxels | " + " | ".join(f"q{q['query']} {q['class']}" for q in queries) + " |")
        lines.append("| --- " * (len(queries) + 1) + "|")
        for kind, row in result["nearest_query_share"].items():
            lines.append(f"| {kind} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        if "above_ood_median" in result:
            lines += [
                "",
                "Share of each voxel type whose MaxQuery score is at least the median score of the OOD voxels.\n",
            ]
            lines += ["| voxels | share |", "| --- | --- |"]
            lines += [f"| {kind} | {share:.3f} |" for kind, share in result["above_ood_median"].items()]
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
