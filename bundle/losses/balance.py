"""Query-balance loss: the queries of a class share its voxels, each taking a mode of its own.

With fixed query classes, ``Z_k`` sums the assignments of the queries of class ``k``, so the segmentation and QD
losses are indifferent to which of a class's queries takes a voxel. In practice one query per tumour class takes
nearly all of its voxels (``benchmarks/query_diagnostics.py``), and that one centre has to cover the type across
phases, sizes and necrosis: inlier tumour voxels far from it score as unseen and become MaxQuery's false positives.
This loss maximises the mutual information between a class's voxels and its queries, as discriminative clustering
does (Krause et al., NeurIPS 2010; IIC, Ji et al., ICCV 2019): the batch's mean assignment over the class's queries
is pushed towards uniform (every query in use, the equipartition of SwAV and of kMaX-DeepLab's balanced
clustering), and each voxel's assignment towards one query (so the split is into distinct modes, not into centres
that all coincide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .query_classes import check_query_channels, chosen_classes, query_counts

__all__ = ["QueryBalanceLoss"]

_EPS = 1e-8


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * (p + _EPS).log()).sum(dim)


class QueryBalanceLoss(nn.Module):
    """``mean_k [log|Q_k| - H(mean_{v in k} q_v) + mean_{v in k} H(q_v)] / log|Q_k|`` over the chosen classes present.

    ``q_v`` is voxel ``v``'s assignment ``M[n, v]`` restricted to the queries ``Q_k`` of its class ``k`` and
    renormalised (the softmax of its affinities over ``Q_k``); the means run over the class's voxels in the whole
    batch, so a mode may live in one image and another in the next. Each class term lies in ``[0, 1]`` and is 0
    exactly when every voxel is assigned to a single query of its class and the queries take equal shares of the
    class's voxels.

    Args:
        queries_per_class: number of queries of each class, in query order (the fixed query classes of
            :class:`~bundle.networks.MaskTransformer`).
        classes: the classes whose queries are balanced (default: every class with more than one query).
    """

    def __init__(self, queries_per_class: Sequence[int], classes: Sequence[int] | None = None) -> None:
        super().__init__()
        counts = query_counts(queries_per_class)
        chosen = chosen_classes(classes, len(counts), default=[k for k, n in enumerate(counts) if n > 1])
        single = [k for k in chosen if counts[k] < 2]
        if single:
            raise ValueError(
                f"classes {single} have a single query: there is nothing to balance (leave them out of the balanced "
                "classes, or set balance_weight 0)."
            )
        self.counts = counts
        self.classes = chosen

    def loss_flat(
        self, query_probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``(B, N, *spatial)`` assignments against a flattened ``(B, V)`` class target; voxels where the
        optional ``(B, V)`` mask ``valid`` is False (outlier exposure) are left out."""
        check_query_channels(query_probs, self.counts, "assignments")
        with torch.autocast(device_type=query_probs.device.type, enabled=False):
            flat = query_probs.float().flatten(2)  # (B, N, V)
            if target.shape != (flat.shape[0], flat.shape[2]):
                raise ValueError(f"target {tuple(target.shape)} does not match the {tuple(flat.shape)} assignments.")
            per_class = flat.split(self.counts, dim=1)
            terms = []
            for k in self.classes:
                member = target == k
                if valid is not None:
                    member = member & valid
                if not member.any():
                    continue
                own = per_class[k].transpose(1, 2)[member]  # (V_k, n_k)
                own = own / own.sum(1, keepdim=True).clamp_min(_EPS)
                info = _entropy(own.mean(0), 0) - _entropy(own, 1).mean()
                terms.append(1.0 - info / math.log(self.counts[k]))
            if not terms:
                return flat.sum() * 0.0
            return torch.stack(terms).mean()
