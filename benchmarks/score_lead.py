"""Is MaxQuery ahead of the other scores of its own model, or only on the cases drawn? The paired lead of one score
over every other score of an evaluation, with case-bootstrap intervals.

Every score of an evaluation is resampled on the same case replicates (cases drawn with replacement within ``test``
and within ``test_ood``), so the difference of two scores' metrics on each replicate is a paired interval of the
lead (:func:`bundle.metrics.evaluation_intervals`). Positive: the reference is better; for FPR95 the lead is the
other score's FPR95 minus the reference's. The share of replicates in which the reference is ahead comes with each
lead. An interval that holds 0 means the split's cases do not tell the two scores apart.

An evaluation folder holds ``per_case.csv`` and ``roi_scores.npz``, as written by ``configs/evaluate.json`` with
``--save_scores True`` (the OOD benchmark and the main job always save them)::

    python -m monai.bundle run --meta_file metadata.json \\
        --config_file "['configs/common.json','configs/train.json','configs/evaluate.json']" \\
        --dataset_dir data/phantom_pancreas_seed1 --ckpt_dir models --output_dir runs/eval_seed1 --save_scores True
    python benchmarks/score_lead.py runs/eval_seed1 --out runs/eval_seed1/lead.json

Without ``roi_scores.npz`` only the case-level lead is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.files import atomic_write_text  # noqa: E402
from bundle.metrics import REFERENCE_SCORE, evaluation_intervals, format_lead_table  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict:
    """Print (and with ``--out`` save) the lead of ``--reference`` in each evaluation folder; return it by folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluations", nargs="+", help="evaluation folders (per_case.csv, roi_scores.npz)")
    parser.add_argument("--reference", default=REFERENCE_SCORE, help="the score whose lead is wanted")
    parser.add_argument("--num_replicates", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="a JSON file for the leads and the settings of the bootstrap")
    args = parser.parse_args(argv)

    results = {}
    for folder in args.evaluations:
        try:
            intervals = evaluation_intervals(folder, args.reference, args.num_replicates, args.seed)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
        if "lead" not in intervals:
            parser.error(f"{Path(folder) / 'per_case.csv'} has no score {args.reference!r}.")
        results[str(folder)] = {"lead": intervals["lead"], "bootstrap": intervals["bootstrap"]}
        print(f"\n{folder} ({intervals['bootstrap']['num_cases']} cases)\n")
        print(format_lead_table(intervals["lead"]))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
