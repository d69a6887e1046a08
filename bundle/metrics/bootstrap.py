"""Case-level bootstrap confidence intervals of the evaluation metrics (the protocol in docs/benchmark/README.md).

The unit of resampling is the case: a replicate draws cases with replacement (within each group, ``test`` and
``test_ood`` separately, so that every replicate keeps the study's number of inlier and OOD cases and the pixel
metrics stay defined) and recomputes every metric on the drawn cases, a case drawn twice counting twice. Voxels of one
case are strongly correlated, so resampling voxels would give intervals that are far too narrow. All metrics of one
evaluation share the same replicates (a joint bootstrap), and the replicates depend only on the seed and the case
groups, so two scores of the same evaluation are resampled identically (paired). The interval is the percentile
interval of the replicates.

Pixel metrics are pooled over 1-2 million ROI voxels; scikit-learn on every replicate would take minutes per score.
Instead the scores are binned once into at most ``num_bins`` bins and each case is reduced to a histogram of its OOD
(positive) and inlier (negative) voxels per bin; a replicate is then a weighted sum of the case histograms and
AUROC, AUPR and FPR95 follow from cumulative sums over the bins. The approximation: voxels in the same bin are
treated as tied.

- If a score takes at most ``num_bins`` distinct values, each value is its own bin and the results are exact (the
  same tie handling as :mod:`bundle.metrics.ood`: scikit-learn's half-credit AUROC, step-wise average precision and
  a tied block accepted or rejected as a whole in FPR95).
- Otherwise half of the cut points are quantiles of all scores and half are quantiles of the OOD voxels' scores, so
  the bins are fine both where most negatives lie and where the positives (a few percent of the ROI) lie. A pair in
  one bin counts half in AUROC, so its error is at most half the largest share of the negatives that one bin holds
  (about ``2 / num_bins``); FPR95 can be overestimated by at most the share of negatives in the bin where the TPR
  reaches 95%; average precision treats a bin as one threshold. With the default 4096 bins all three are within
  about 0.001 of the exact values on evaluation-sized data.

The case-level AUROC (few cases) and the mean Dice are computed exactly on every replicate.

Because every score of an evaluation is resampled on the same replicates, the difference of two scores' metrics on
each replicate gives a paired interval of one score's lead over another (:func:`bootstrap_evaluation` with
``reference``): whether "ahead of the baseline" is a property of the model or of the cases drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "LEAD_METRICS",
    "ScoreHistograms",
    "bootstrap_case_auroc",
    "bootstrap_evaluation",
    "bootstrap_mean",
    "bootstrap_pixel_metrics",
    "case_weights",
    "histogram_metrics",
    "lead_interval",
    "percentile_interval",
]

PIXEL_METRICS = ("auroc", "aupr", "fpr95")
LEAD_METRICS = PIXEL_METRICS + ("case_auroc",)
"""The metrics of a lead (:func:`bootstrap_evaluation` with ``reference``); for ``fpr95`` lower is better."""
# replicates per matrix product: bounds the (replicates x bins) working arrays to a few tens of MB
_CHUNK = 256


def case_weights(groups: Sequence | np.ndarray, num_replicates: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each case is drawn in each bootstrap replicate, resampling within each group.

    Args:
        groups: one label per case (e.g. ``"test"`` / ``"test_ood"``); cases are resampled with replacement within
            their group, each group keeping its size. One label for all cases resamples them all together.
        num_replicates: number of replicates ``R``.
        seed: seed of :func:`numpy.random.default_rng`; the weights depend only on it and on ``groups``.

    Returns:
        ``(R, C)`` float64 counts; each row sums to the number of cases ``C``.
    """
    labels = np.asarray(groups).reshape(-1)
    if num_replicates < 1:
        raise ValueError(f"num_replicates must be >= 1, got {num_replicates}.")
    rng = np.random.default_rng(seed)
    weights = np.zeros((num_replicates, labels.size))
    rows = np.arange(num_replicates)[:, None]
    for label in sorted(set(labels.tolist()), key=str):  # a fixed order of groups, so the draws are reproducible
        members = np.flatnonzero(labels == label)
        draws = members[rng.integers(0, members.size, size=(num_replicates, members.size))]
        np.add.at(weights, (np.broadcast_to(rows, draws.shape), draws), 1.0)
    return weights


def percentile_interval(replicates: np.ndarray, value: float, confidence: float = 0.95) -> dict[str, float | int]:
    """Percentile bootstrap interval.

    Args:
        replicates: metric values of the replicates (NaN: undefined in that replicate, left out).
        value: the point estimate on the unresampled data.
        confidence: coverage of the interval.

    Returns:
        ``{"value", "low", "high", "replicates"}`` (``replicates``: how many were defined); ``low`` and ``high`` are
        NaN if none was.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    finite = np.asarray(replicates, dtype=np.float64).reshape(-1)
    finite = finite[~np.isnan(finite)]
    if finite.size == 0:
        return {"value": float(value), "low": math.nan, "high": math.nan, "replicates": 0}
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return {"value": float(value), "low": float(low), "high": float(high), "replicates": int(finite.size)}


def lead_interval(
    reference: np.ndarray,
    other: np.ndarray,
    reference_value: float,
    other_value: float,
    lower_is_better: bool = False,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Paired interval of the lead of one score over another: the difference of their metric on the same replicates.

    Args:
        reference: the reference score's metric on each replicate.
        other: the other score's metric on the same replicates.
        reference_value: the reference's point estimate.
        other_value: the other's point estimate.
        lower_is_better: the metric improves downwards (FPR95): the lead is ``other - reference``.
        confidence: coverage of the interval.

    Returns:
        a :func:`percentile_interval` dict of the lead (positive: the reference is better), with ``"share_ahead"``:
        the share of the defined replicates in which the reference is strictly better.
    """
    sign = -1.0 if lower_is_better else 1.0
    draws = sign * (np.asarray(reference, dtype=np.float64) - np.asarray(other, dtype=np.float64))
    interval = percentile_interval(draws, sign * (reference_value - other_value), confidence)
    defined = draws[~np.isnan(draws)]
    interval["share_ahead"] = float(np.mean(defined > 0)) if defined.size else math.nan
    return interval


def histogram_metrics(positives: np.ndarray, negatives: np.ndarray, tpr_level: float = 0.95) -> dict[str, np.ndarray]:
    """AUROC, AUPR (average precision) and FPR at ``tpr_level`` TPR from score histograms.

    Each bin is one threshold; the scores of a bin count as tied. Undefined values (no positive or no negative
    voxel) are NaN.

    Args:
        positives: ``(..., B)`` OOD voxel counts per bin, bins in increasing score order.
        negatives: ``(..., B)`` inlier voxel counts per bin.
        tpr_level: true-positive rate of the FPR metric.

    Returns:
        ``{"auroc", "aupr", "fpr95"}``, each of shape ``(...)``.
    """
    pos = np.asarray(positives, dtype=np.float64)[..., ::-1]  # from the highest score down, like a threshold sweep
    neg = np.asarray(negatives, dtype=np.float64)[..., ::-1]
    tp, fp = np.cumsum(pos, axis=-1), np.cumsum(neg, axis=-1)
    num_pos, num_neg = tp[..., -1], fp[..., -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        # a positive beats every negative in a lower bin and half of those in its own bin
        beaten = num_neg[..., None] - fp + 0.5 * neg
        auroc = np.sum(pos * beaten, axis=-1) / (num_pos * num_neg)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        aupr = np.sum(pos * precision, axis=-1) / num_pos
        reached = tp / num_pos[..., None] >= tpr_level
        first = np.argmax(reached, axis=-1)
        fpr = np.take_along_axis(fp, first[..., None], axis=-1)[..., 0] / num_neg
    undefined = (num_pos == 0) | (num_neg == 0)
    return {key: np.where(undefined, np.nan, v) for key, v in (("auroc", auroc), ("aupr", aupr), ("fpr95", fpr))}


class ScoreHistograms:
    """Per-case histograms of the positive (OOD) and negative voxel scores over shared bins.

    Args:
        scores: pooled voxel scores (higher = more OOD).
        is_ood: matching OOD-voxel mask.
        case_index: matching index of the case each voxel comes from, in ``[0, num_cases)``.
        num_cases: number of cases ``C`` (a case may have no voxel); ``case_index.max() + 1`` by default.
        num_bins: most bins ``B``; see the module docstring for how they are chosen.

    Attributes:
        cuts: increasing bin boundaries; a score ``s`` falls into bin ``searchsorted(cuts, s, "right")``.
        positives: ``(C, B)`` OOD voxel counts per case and bin.
        negatives: ``(C, B)`` inlier voxel counts per case and bin.
        exact: every distinct score has a bin of its own (the metrics are exact).
    """

    def __init__(
        self,
        scores: np.ndarray,
        is_ood: np.ndarray,
        case_index: np.ndarray,
        num_cases: int | None = None,
        num_bins: int = 4096,
    ) -> None:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(is_ood).astype(bool).reshape(-1)
        case = np.asarray(case_index).astype(np.int64).reshape(-1)
        if not s.shape == y.shape == case.shape:
            raise ValueError(f"scores ({s.size}), is_ood ({y.size}) and case_index ({case.size}) must match.")
        if np.isnan(s).any():
            raise ValueError("scores contain NaN.")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}.")
        num_cases = int(case.max()) + 1 if num_cases is None and case.size else int(num_cases or 0)
        if case.size and (case.min() < 0 or case.max() >= num_cases):
            raise ValueError(f"case_index must lie in [0, {num_cases}).")
        # +-inf would break the quantile interpolation; clipping to the finite range keeps their order
        finite = s[np.isfinite(s)]
        if finite.size < s.size:
            top = finite.max() if finite.size else 0.0
            bottom = finite.min() if finite.size else 0.0
            s = np.where(s == np.inf, top + 1.0, np.where(s == -np.inf, bottom - 1.0, s))
        distinct = np.unique(s)
        self.exact = distinct.size <= num_bins
        if self.exact:
            self.cuts = distinct[1:]
        else:
            quantiles = np.linspace(0.0, 1.0, num_bins // 2 + 1)[1:-1]
            cuts = [np.quantile(s, quantiles)]
            if y.any():
                cuts.append(np.quantile(s[y], quantiles))
            self.cuts = np.unique(np.concatenate(cuts))
        num = self.cuts.size + 1
        flat = case * num + np.searchsorted(self.cuts, s, side="right")
        self.positives = np.bincount(flat[y], minlength=num_cases * num).reshape(num_cases, num).astype(np.float64)
        self.negatives = np.bincount(flat[~y], minlength=num_cases * num).reshape(num_cases, num).astype(np.float64)

    @property
    def num_cases(self) -> int:
        """Number of cases ``C``."""
        return self.positives.shape[0]

    def metrics(self, weights: np.ndarray | None = None, tpr_level: float = 0.95) -> dict[str, np.ndarray]:
        """Pixel metrics of the cases weighted by ``weights``.

        Args:
            weights: ``(R, C)`` case counts of ``R`` replicates (:func:`case_weights`), or ``None``: every case once.
            tpr_level: true-positive rate of the FPR metric.

        Returns:
            ``{"auroc", "aupr", "fpr95"}``: arrays of shape ``(R,)``, or floats for ``weights=None``.
        """
        if weights is None:
            point = histogram_metrics(self.positives.sum(0), self.negatives.sum(0), tpr_level)
            return {key: float(value) for key, value in point.items()}
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[1] != self.num_cases:
            raise ValueError(f"weights must have shape (R, {self.num_cases}), got {weights.shape}.")
        parts = [
            histogram_metrics(chunk @ self.positives, chunk @ self.negatives, tpr_level)
            for chunk in np.split(weights, range(_CHUNK, weights.shape[0], _CHUNK))
        ]
        return {key: np.concatenate([p[key] for p in parts]) for key in PIXEL_METRICS}


def bootstrap_pixel_metrics(
    scores: np.ndarray,
    is_ood: np.ndarray,
    case_index: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    num_replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    num_bins: int = 4096,
    weights: np.ndarray | None = None,
) -> dict[str, dict[str, float | int]]:
    """Case-bootstrap intervals of the pooled pixel AUROC, AUPR and FPR95 of one score.

    Args:
        scores: pooled ROI voxel scores (higher = more OOD).
        is_ood: matching OOD-voxel mask.
        case_index: matching case index of every voxel.
        groups: one label per case, resampled within; ``None`` resamples all cases together. The number of cases is
            ``len(groups)`` (else ``case_index.max() + 1``).
        num_replicates: bootstrap replicates.
        seed: random seed.
        confidence: coverage of the intervals.
        num_bins: most score bins (:class:`ScoreHistograms`).
        weights: precomputed ``(R, C)`` replicate weights (overrides ``groups``, ``num_replicates`` and ``seed``).

    Returns:
        ``{"auroc", "aupr", "fpr95"}`` -> :func:`percentile_interval` dicts (``value``: binned point estimate).
    """
    num_cases = None if groups is None else len(groups)
    histograms = ScoreHistograms(scores, is_ood, case_index, num_cases=num_cases, num_bins=num_bins)
    if weights is None:
        labels = np.zeros(histograms.num_cases) if groups is None else groups
        weights = case_weights(labels, num_replicates, seed)
    point, replicates = histograms.metrics(), histograms.metrics(weights)
    return _pixel_intervals(point, replicates, confidence)


def _pixel_intervals(point: dict, replicates: dict, confidence: float) -> dict[str, dict[str, float | int]]:
    return {key: percentile_interval(replicates[key], point[key], confidence) for key in PIXEL_METRICS}


def _case_auroc(scores: np.ndarray, is_ood: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted case AUROC per replicate, exact: ties count half, like :func:`sklearn.metrics.roc_auc_score`."""
    inlier, ood = scores[~is_ood], scores[is_ood]
    wins = (ood[None, :] > inlier[:, None]) + 0.5 * (ood[None, :] == inlier[:, None])  # (inlier, OOD)
    w_in, w_ood = weights[:, ~is_ood], weights[:, is_ood]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum((w_in @ wins) * w_ood, axis=1) / (w_in.sum(1) * w_ood.sum(1))


def bootstrap_case_auroc(
    scores: Sequence[float] | np.ndarray,
    is_ood: Sequence[bool] | np.ndarray,
    num_replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    weights: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Case-bootstrap interval of the case-level AUROC (OOD cases positive), inlier and OOD cases resampled apart.

    Args:
        scores: one score per case (higher = more OOD).
        is_ood: whether each case is an OOD case.
        num_replicates: bootstrap replicates.
        seed: random seed.
        confidence: coverage of the interval.
        weights: precomputed ``(R, C)`` replicate weights (overrides ``num_replicates`` and ``seed``).

    Returns:
        a :func:`percentile_interval` dict.
    """
    y = np.asarray(is_ood).astype(bool).reshape(-1)
    if weights is None:
        weights = case_weights(y, num_replicates, seed)
    point, replicates = _case_auroc_draws(scores, y, weights)
    return percentile_interval(replicates, point, confidence)


def _case_auroc_draws(scores: Sequence[float] | np.ndarray, is_ood: np.ndarray, weights: np.ndarray) -> tuple:
    """The case AUROC of ``scores`` and its value on each replicate of ``weights``, after checking the scores."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != is_ood.shape:
        raise ValueError(f"scores ({s.size}) and is_ood ({is_ood.size}) must match.")
    if np.isnan(s).any():
        raise ValueError("case scores contain NaN.")
    return _case_auroc(s, is_ood, np.ones((1, s.size)))[0], _case_auroc(s, is_ood, np.asarray(weights, np.float64))


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    num_replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    weights: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Case-bootstrap interval of a mean over cases, NaN values (e.g. a Dice that is undefined) left out.

    Args:
        values: one value per case.
        groups: one label per case, resampled within; ``None`` resamples all cases together.
        num_replicates: bootstrap replicates.
        seed: random seed.
        confidence: coverage of the interval.
        weights: precomputed ``(R, C)`` replicate weights (overrides ``groups``, ``num_replicates`` and ``seed``).

    Returns:
        a :func:`percentile_interval` dict.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if weights is None:
        weights = case_weights(np.zeros(v.size) if groups is None else groups, num_replicates, seed)
    valid = ~np.isnan(v)
    point = float(v[valid].mean()) if valid.any() else math.nan
    w = np.asarray(weights, dtype=np.float64)[:, valid]
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = (w @ v[valid]) / w.sum(1)
    return percentile_interval(replicates, point, confidence)


def bootstrap_evaluation(
    case_groups: Sequence[str] | np.ndarray,
    roi_scores: Mapping[str, np.ndarray] | None = None,
    is_ood: np.ndarray | None = None,
    case_index: np.ndarray | None = None,
    case_scores: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    dice: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    num_replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    num_bins: int = 4096,
    reference: str | None = None,
) -> dict:
    """Intervals of every metric of one evaluation, all from the same case replicates.

    Args:
        case_groups: the group of every case (``"test"`` or ``"test_ood"``), in the order ``case_index`` numbers
            them; ``case_scores`` and ``dice`` follow the same order.
        roi_scores: method -> pooled ROI voxel scores (as in ``roi_scores.npz``); ``None`` skips the pixel metrics.
        is_ood: the pooled OOD-voxel mask.
        case_index: the pooled case index of every voxel.
        case_scores: method -> case score of every case.
        dice: class name -> Dice of every case (NaN where undefined: OOD cases, classes absent from the ground truth).
        num_replicates: bootstrap replicates.
        seed: random seed.
        confidence: coverage of the intervals.
        num_bins: most score bins of the pixel metrics.
        reference: a method whose lead over every other method is wanted (e.g. ``"maxquery"``); ``None``: none.

    Returns:
        ``{"pixel_ood": {method: {"auroc", "aupr", "fpr95"}}, "case_ood": {method: {"auroc"}}, "dice": {class},
        "bootstrap": settings}`` with :func:`percentile_interval` dicts as leaves, keyed like ``metrics.json``. With
        ``reference``, also ``"lead": {"reference": name, "over": {method: {metric: interval}}}``: for every other
        method the :func:`lead_interval` of the reference on each of :data:`LEAD_METRICS` that both have.
    """
    groups = np.asarray(case_groups).astype(str)
    weights = case_weights(groups, num_replicates, seed)
    out: dict = {"pixel_ood": {}, "case_ood": {}, "dice": {}}
    # method -> metric -> (point estimate, replicates), for the leads
    draws: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
    if roi_scores:
        if is_ood is None or case_index is None:
            raise ValueError("pixel intervals need is_ood and case_index with roi_scores.")
        for method, scores in roi_scores.items():
            histograms = ScoreHistograms(scores, is_ood, case_index, num_cases=len(groups), num_bins=num_bins)
            point, replicates = histograms.metrics(), histograms.metrics(weights)
            out["pixel_ood"][method] = _pixel_intervals(point, replicates, confidence)
            draws[method] = {key: (point[key], replicates[key]) for key in PIXEL_METRICS}
    ood_case = groups == "test_ood"
    if ood_case.any() and (~ood_case).any():
        for method, scores in (case_scores or {}).items():
            point, replicates = _case_auroc_draws(scores, ood_case, weights)
            out["case_ood"][method] = {"auroc": percentile_interval(replicates, point, confidence)}
            draws.setdefault(method, {})["case_auroc"] = (point, replicates)
    for name, values in (dice or {}).items():
        out["dice"][name] = bootstrap_mean(values, confidence=confidence, weights=weights)
    if reference is not None:
        if reference not in draws:
            raise ValueError(f"reference {reference!r} is none of the evaluated methods {sorted(draws)}.")
        mine = draws[reference]
        out["lead"] = {"reference": reference, "over": {}}
        for method, theirs in draws.items():
            if method == reference:
                continue
            out["lead"]["over"][method] = {
                key: lead_interval(
                    mine[key][1], theirs[key][1], mine[key][0], theirs[key][0], key == "fpr95", confidence
                )
                for key in LEAD_METRICS
                if key in mine and key in theirs
            }
    out["bootstrap"] = {
        "method": "percentile interval; cases resampled with replacement within test and test_ood",
        "num_replicates": num_replicates,
        "seed": seed,
        "confidence": confidence,
        "num_bins": num_bins,
        "num_cases": {str(g): int(np.sum(groups == g)) for g in sorted(set(groups.tolist()))},
    }
    return out
