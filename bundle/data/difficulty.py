"""How hard is the OOD task for a trivial intensity detector?

The detector scores every voxel by ``|HU - median organ HU of that case|``. Pooled over the ``test_ood`` cases,
OOD-lesion voxels are positives and organ + inlier-tumour voxels are negatives; the pixel-level AUROC
(``sklearn.metrics.roc_auc_score``) is reported overall and per OOD type (that type's voxels against all
negatives). For context, the same detector separating inlier tumour voxels from organ voxels on the inlier
``test`` cases is reported too. A near-OOD benchmark keeps the OOD AUROC clearly below 1.

Command line::

    python -m bundle.data.difficulty --dataset data/phantom_pancreas [--key test_ood] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from sklearn.metrics import roc_auc_score

from bundle.data.datalist import inlier_labels, load_datalist, ood_label_values

__all__ = ["intensity_detector_auroc", "main"]


def _load(item: dict) -> tuple[np.ndarray, np.ndarray]:
    image = np.asanyarray(nib.load(item["image"]).dataobj).astype(np.float32)
    label = np.asanyarray(nib.load(item["label"]).dataobj).astype(np.int16)
    if image.shape != label.shape:
        raise ValueError(f"image and label shapes differ for {item['image']}: {image.shape} vs {label.shape}")
    return image, label


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    y = np.concatenate([np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)])
    return float(roc_auc_score(y, np.concatenate([pos, neg])))


def intensity_detector_auroc(dataset_dir: str | Path, key: str = "test_ood", inlier_key: str | None = "test") -> dict:
    """Pixel AUROC of the ``|HU - median organ HU|`` detector.

    Args:
        dataset_dir: MSD-layout dataset with ``labels`` and ``ood_labels``.
        key: list of OOD cases.
        inlier_key: list of inlier cases for the inlier-tumour-vs-organ context figure (``None`` to skip).

    Returns:
        ``{"ood_auroc", "ood_auroc_per_type": {name: auroc}, "num_cases", "num_positive", "num_negative",
        "inlier_tumour_auroc", "inlier_tumour_auroc_per_type", "mean_hu_vs_organ_median"}`` (AUROCs are ``None``
        when undefined; the last gives each lesion type's mean/sd HU relative to the case's median organ HU).
    """
    labels = inlier_labels(dataset_dir)
    ood_values = ood_label_values(dataset_dir)
    from bundle.data.datalist import load_dataset_json

    ood_names = {int(k): v for k, v in load_dataset_json(dataset_dir).get("ood_labels", {}).items()}
    tumour_values = [v for v in labels if v >= 2]
    pos: dict[int, list[np.ndarray]] = {v: [] for v in ood_values}
    neg: list[np.ndarray] = []
    signed: dict[int, list[np.ndarray]] = {v: [] for v in ood_values + tumour_values}
    items = load_datalist(dataset_dir, key)
    for item in items:
        image, label = _load(item)
        organ = label == 1
        if not organ.any():
            continue
        rel = image - np.median(image[organ])
        score = np.abs(rel)
        neg.append(score[organ | np.isin(label, tumour_values)])
        for v in ood_values:
            pos[v].append(score[label == v])
        for v in signed:
            signed[v].append(rel[label == v])
    all_neg = np.concatenate(neg) if neg else np.zeros(0, np.float32)
    per_pos = {v: np.concatenate(p) if p else np.zeros(0, np.float32) for v, p in pos.items()}
    all_pos = np.concatenate(list(per_pos.values())) if per_pos else np.zeros(0, np.float32)
    result = {
        "key": key,
        "num_cases": len(items),
        "num_positive": int(len(all_pos)),
        "num_negative": int(len(all_neg)),
        "ood_auroc": _auroc(all_pos, all_neg),
        "ood_auroc_per_type": {ood_names.get(v, str(v)): _auroc(p, all_neg) for v, p in per_pos.items()},
    }
    if inlier_key is not None:
        try:
            inlier_items = load_datalist(dataset_dir, inlier_key)
        except ValueError:
            inlier_items = []
        organ_scores: list[np.ndarray] = []
        tumour_scores: dict[int, list[np.ndarray]] = {v: [] for v in tumour_values}
        for item in inlier_items:
            image, label = _load(item)
            organ = label == 1
            if not organ.any():
                continue
            rel = image - np.median(image[organ])
            score = np.abs(rel)
            organ_scores.append(score[organ])
            for v in tumour_values:
                tumour_scores[v].append(score[label == v])
                signed[v].append(rel[label == v])
        o = np.concatenate(organ_scores) if organ_scores else np.zeros(0, np.float32)
        per_t = {v: np.concatenate(t) if t else np.zeros(0, np.float32) for v, t in tumour_scores.items()}
        t_all = np.concatenate(list(per_t.values())) if per_t else np.zeros(0, np.float32)
        result["inlier_key"] = inlier_key
        result["inlier_tumour_auroc"] = _auroc(t_all, o)
        result["inlier_tumour_auroc_per_type"] = {labels[v]: _auroc(t, o) for v, t in per_t.items()}
    names = {**{v: labels[v] for v in tumour_values}, **{v: ood_names.get(v, str(v)) for v in ood_values}}
    result["mean_hu_vs_organ_median"] = {}
    for v, parts in signed.items():
        x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        result["mean_hu_vs_organ_median"][names[v]] = (
            {"mean": round(float(x.mean()), 1), "sd": round(float(x.std()), 1), "voxels": int(len(x))}
            if len(x)
            else None
        )
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the AUROC table and returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m bundle.data.difficulty",
        description="Pixel AUROC of the trivial |HU - median organ HU| detector for OOD lesions (near-OOD check).",
    )
    ap.add_argument("--dataset", required=True, help="MSD-layout dataset folder")
    ap.add_argument("--key", default="test_ood", help="list of OOD cases (default test_ood)")
    ap.add_argument("--inlier-key", default="test", help="list of inlier cases for the context figure ('' to skip)")
    ap.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = ap.parse_args(argv)
    try:
        res = intensity_detector_auroc(args.dataset, args.key, args.inlier_key or None)
    except (FileNotFoundError, ValueError) as err:
        print(f"difficulty: error: {err}", file=sys.stderr)
        return 2
    print(f"trivial intensity detector |HU - median organ HU|, dataset {args.dataset}")
    print(
        f"OOD lesion vs organ+inlier tumour voxels ({res['key']}, {res['num_cases']} cases, "
        f"{res['num_positive']} positive / {res['num_negative']} negative voxels)"
    )
    print(f"  overall AUROC: {_fmt(res['ood_auroc'])}")
    for name, auc in res["ood_auroc_per_type"].items():
        print(f"  {name:<32s} {_fmt(auc)}")
    if "inlier_tumour_auroc" in res:
        print(f"inlier tumour vs organ voxels ({res['inlier_key']}): AUROC {_fmt(res['inlier_tumour_auroc'])}")
        for name, auc in res["inlier_tumour_auroc_per_type"].items():
            print(f"  {name:<32s} {_fmt(auc)}")
    print("lesion HU relative to the case's median organ HU (mean, sd over voxels):")
    for name, st in res["mean_hu_vs_organ_median"].items():
        print(f"  {name:<32s} " + ("n/a" if st is None else f"{st['mean']:+6.1f} +/- {st['sd']:.1f}"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
