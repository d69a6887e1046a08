"""Metrics: pixel-level OOD localisation and case-level OOD detection."""

from __future__ import annotations

from .ood import ball, case_auroc, case_ood_metrics, fpr_at_tpr, ood_mask, pixel_ood_metrics, roi_mask

__all__ = ["ball", "case_auroc", "case_ood_metrics", "fpr_at_tpr", "ood_mask", "pixel_ood_metrics", "roi_mask"]
