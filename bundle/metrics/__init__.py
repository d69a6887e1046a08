"""Metrics: pixel-level OOD localisation, case-level OOD detection and case-bootstrap confidence intervals."""

from __future__ import annotations

from .bootstrap import (
    LEAD_METRICS,
    ScoreHistograms,
    bootstrap_case_auroc,
    bootstrap_evaluation,
    bootstrap_mean,
    bootstrap_pixel_metrics,
    case_weights,
    histogram_metrics,
    lead_interval,
    percentile_interval,
)
from .ood import (
    ball,
    case_auroc,
    case_auroc_by_size,
    case_ood_metrics,
    check_size_edges,
    fpr_at_tpr,
    ood_mask,
    pixel_ood_metrics,
    roi_mask,
    size_bins,
)
from .saved_evaluation import (
    REFERENCE_SCORE,
    evaluation_intervals,
    format_lead,
    format_lead_table,
    lead_table_header,
    lead_table_rows,
)

__all__ = [
    "LEAD_METRICS",
    "REFERENCE_SCORE",
    "ScoreHistograms",
    "ball",
    "bootstrap_case_auroc",
    "bootstrap_evaluation",
    "bootstrap_mean",
    "bootstrap_pixel_metrics",
    "case_auroc",
    "case_auroc_by_size",
    "case_ood_metrics",
    "case_weights",
    "check_size_edges",
    "evaluation_intervals",
    "format_lead",
    "format_lead_table",
    "fpr_at_tpr",
    "histogram_metrics",
    "lead_interval",
    "lead_table_header",
    "lead_table_rows",
    "ood_mask",
    "percentile_interval",
    "pixel_ood_metrics",
    "roi_mask",
    "size_bins",
]
