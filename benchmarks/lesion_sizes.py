"""How large are the lesions of each split? A census of lesion sizes, from the label files alone.

A split's tumour Dice averages over the cases that hold the class, and small lesions score low whatever the model.
A split whose cases hold mostly small lesions therefore gives a low Dice by its draw of cases, not by the model; in
the same way a small unseen lesion moves a case's OOD score little, so a ``test_ood`` split of small lesions gives a
low case AUROC. For each dataset, split and lesion class (the inlier tumour classes; in ``test_ood`` each OOD type
and ``any OOD type``, all OOD labels together), the report gives the cases holding the class, how many of them hold
only small lesions (their largest connected lesion, face-connected, under ``--small_voxels`` voxels of the label's
own grid) and the quartiles of the largest lesion's size. No model is run::

    python benchmarks/lesion_sizes.py --dataset_dirs data/phantom_pancreas data/phantom_pancreas_seed1 \\
        --out docs/benchmark/lesion_sizes.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import inlier_labels, load_datalist, load_dataset_json, ood_label_names  # noqa: E402

__all__ = ["ANY_OOD", "census", "largest_lesions", "main", "markdown"]

SPLITS = ("training", "validation", "test", "test_ood")

ANY_OOD = "any OOD type"
"""The census class of ``test_ood`` that merges every OOD label: the case's unseen lesions, whatever their type."""


def largest_lesions(label: np.ndarray, values: dict[str, list[int]]) -> dict[str, int]:
    """``{class: voxels of its largest face-connected lesion}`` for each class of ``values`` present in ``label``;
    ``values`` maps a class name to the label values it covers (several for a merged class)."""
    sizes = {}
    for name, covered in values.items():
        components, count = ndimage.label(np.isin(label, covered))
        if count:
            sizes[name] = int(np.bincount(components.ravel())[1:].max())
    return sizes


def census(dataset_dir: Path, small_voxels: int, splits: tuple[str, ...] = SPLITS) -> dict:
    """The lesion-size census of one dataset (``dataset.json`` with ``labels`` and per-split lists).

    Raises:
        FileNotFoundError: ``dataset.json`` or a file it lists is missing (named with its path).
        DatasetError: ``dataset.json`` is malformed.
    """
    tumours = {name: [value] for value, name in inlier_labels(dataset_dir).items() if value >= 2}
    ood = ood_label_names(dataset_dir)
    ood_classes = {name: [value] for value, name in ood.items()} | ({ANY_OOD: list(ood)} if ood else {})
    lists = load_dataset_json(dataset_dir)
    result = {}
    for split in splits:
        if not lists.get(split):
            continue
        classes = ood_classes if split == "test_ood" else tumours
        items = load_datalist(dataset_dir, split)
        sizes: dict[str, list[int]] = {name: [] for name in classes}
        for item in items:
            label = np.asarray(nib.load(item["label"]).dataobj).astype(np.int16)
            for name, size in largest_lesions(label, classes).items():
                sizes[name].append(size)
        result[split] = {
            "cases": len(items),
            "classes": {
                name: {
                    "cases_with_class": len(found),
                    "cases_only_small": int(sum(s < small_voxels for s in found)),
                    "largest_lesion_quartiles": [float(q) for q in np.percentile(found, [25, 50, 75])] if found else [],
                }
                for name, found in sizes.items()
            },
        }
    return result


def markdown(report: dict) -> str:
    """The census as a markdown table."""
    small = report["small_voxels"]
    lines = [
        f"Cases holding each lesion class, and those whose largest lesion of it is under {small} voxels "
        f"(face-connected, the label's own grid); in test_ood each OOD type and '{ANY_OOD}' (all OOD labels together).",
        "",
        f"| dataset | split | cases | class | cases with the class | of them, only lesions < {small} voxels "
        "| largest lesion, voxels: quartiles |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, splits in report["datasets"].items():
        for split, entry in splits.items():
            for name, c in entry["classes"].items():
                share = (
                    f"{c['cases_only_small']} ({c['cases_only_small'] / c['cases_with_class']:.0%})"
                    if c["cases_with_class"]
                    else "0"
                )
                quartiles = " / ".join(f"{q:.0f}" for q in c["largest_lesion_quartiles"])
                cells = [dataset, split, entry["cases"], name, c["cases_with_class"], share, quartiles]
                lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dirs", nargs="+", required=True, help="dataset folders (with dataset.json)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--small_voxels", type=int, default=130, help="a lesion under this many voxels is small")
    parser.add_argument("--out", required=True, help="JSON report; the markdown goes next to it")
    args = parser.parse_args(argv)
    if args.small_voxels < 1:
        parser.error(f"--small_voxels must be >= 1, got {args.small_voxels}")
    report = {
        "small_voxels": args.small_voxels,
        "datasets": {d: census(Path(d), args.small_voxels, tuple(args.splits)) for d in args.dataset_dirs},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    sys.stdout.write(table)
    return report


if __name__ == "__main__":
    main()
