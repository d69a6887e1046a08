"""Case-bootstrap intervals of a saved evaluation folder, and MaxQuery's paired lead over the other scores in it.

An evaluation of ``configs/evaluate.json`` (:class:`~bundle.handlers.OODEvaluationHandler`) writes ``per_case.csv``
(the case scores and Dice of every case) and, with ``save_scores``, ``roi_scores.npz`` (the pooled ROI voxel scores
and the case each voxel comes from). :func:`evaluation_intervals` reads both back and bootstraps over cases
(:func:`~bundle.metrics.bootstrap.bootstrap_evaluation`); :func:`format_lead_table` prints the lead of the reference
score, MaxQuery by default, over every other score of the same model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bootstrap import LEAD_METRICS, bootstrap_evaluation

__all__ = [
    "REFERENCE_SCORE",
    "evaluation_intervals",
    "format_lead",
    "format_lead_table",
    "lead_table_header",
    "lead_table_rows",
]

REFERENCE_SCORE = "maxquery"
"""The score whose paired lead over every other score of its model is reported."""

_LEAD_HEADERS = {"auroc": "pixel AUROC", "aupr": "AUPR", "fpr95": "FPR95", "case_auroc": "case AUROC"}


def evaluation_intervals(
    evaluation: str | Path, reference: str | None = REFERENCE_SCORE, num_replicates: int = 1000, seed: int = 0
) -> dict:
    """Case-bootstrap 95% intervals of every metric of one evaluation folder.

    Cases are resampled within ``test`` and within ``test_ood``. An evaluation without ``roi_scores.npz`` (or one
    whose file lacks ``case_index``) gets case-level and Dice intervals only.

    Args:
        evaluation: the folder of ``per_case.csv`` (and ``roi_scores.npz``).
        reference: a score whose paired lead over every other score is added (``"lead"``) where the evaluation has
            it; ``None``: no lead.
        num_replicates: bootstrap replicates.
        seed: random seed.

    Returns:
        ``{"pixel_ood": {method: {"auroc", "aupr", "fpr95"}}, "case_ood": {method: {"auroc"}}, "dice": {class},
        "bootstrap": settings}``, each leaf ``{"value", "low", "high", "replicates"}``; with the reference also
        ``"lead"`` (:func:`~bundle.metrics.bootstrap.bootstrap_evaluation`).

    Raises:
        FileNotFoundError: no ``per_case.csv`` in ``evaluation``.
        ValueError: an empty ``per_case.csv``, or a ``roi_scores.npz`` of other cases.
    """
    from bundle.handlers import ROI_VOXEL_KEYS  # the handler imports this package

    evaluation = Path(evaluation)
    table = evaluation / "per_case.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{evaluation} holds no per_case.csv: not an evaluation folder.")
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{table} lists no case.")
    pixel: dict = {}
    scores_path = evaluation / "roi_scores.npz"
    if scores_path.is_file():
        with np.load(scores_path) as roi:
            if "case_index" in roi.files:
                # the voxels number the cases in evaluation order, the table sorts them by group and name
                by_case = {(row["case"], row["group"]): row for row in rows}
                order = list(zip(roi["case_names"].tolist(), roi["case_groups"].tolist(), strict=True))
                missing = [key for key in order if key not in by_case]
                if missing or len(order) != len(rows):
                    raise ValueError(f"{scores_path} and per_case.csv list different cases (e.g. {missing[:3]}).")
                rows = [by_case[key] for key in order]
                pixel = {
                    "roi_scores": {m: roi[m] for m in roi.files if m not in ROI_VOXEL_KEYS},
                    "is_ood": roi["is_ood"],
                    "case_index": roi["case_index"],
                }

    def columns(prefix: str) -> dict[str, np.ndarray]:
        # OOD cases have no Dice: an empty cell
        return {
            key[len(prefix) :]: np.array([float(row[key]) if row[key] else np.nan for row in rows])
            for key in rows[0]
            if key.startswith(prefix)
        }

    case_scores = columns("score_")
    return bootstrap_evaluation(
        [row["group"] for row in rows],
        case_scores=case_scores,
        dice=columns("dice_"),
        num_replicates=num_replicates,
        seed=seed,
        reference=reference if reference in case_scores else None,
        **pixel,
    )


def format_lead(interval: dict) -> str:
    """A lead as ``+0.010 [-0.002, +0.021] (94 %)``: the value, its paired interval and the share of replicates in
    which the reference is ahead."""
    if not np.isfinite([interval["low"], interval["high"]]).all():
        return f"{interval['value']:+.3f}"
    return (
        f"{interval['value']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}] "
        f"({100 * interval['share_ahead']:.0f} %)"
    )


def format_lead_table(lead: dict) -> str:
    """A markdown table of a ``"lead"`` dict: one row per other score, one column per metric of the lead."""
    return "\n".join(lead_table_header() + lead_table_rows(lead))


def lead_table_header(leading: Sequence[str] = ()) -> list[str]:
    """The two header lines of a lead table whose rows start with the cells ``leading`` (e.g. a model column)."""
    headers = [*leading, "lead", *(_LEAD_HEADERS[key] for key in LEAD_METRICS)]
    return ["| " + " | ".join(headers) + " |", "| --- " * len(headers) + "|"]


def lead_table_rows(lead: dict, leading: Sequence[str] = ()) -> list[str]:
    """The rows of a lead table of a ``"lead"`` dict, one per other score, each starting with the cells ``leading``."""
    rows = []
    for method, metrics in lead["over"].items():
        cells = [*leading, f"{lead['reference']} over {method}"]
        cells += [format_lead(metrics[key]) if key in metrics else "-" for key in LEAD_METRICS]
        rows.append("| " + " | ".join(cells) + " |")
    return rows
