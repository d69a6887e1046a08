"""Query-compactness loss: pull every labelled voxel onto a cluster centre of its own class.

MaxQuery reads ``-max_n R`` as an anomaly score: it works when inlier voxels lie close to some centre of their class
and unseen lesions lie close to none. The segmentation and QD losses act on ``M = softmax_n(R)``, which is invariant
to a common shift of a voxel's affinities, so they separate the clusters from each other without making any cluster
tight. This loss adds what the softmax ignores, the absolute similarity to the nearest centre of the voxel's class,
as the centre loss of open-set recognition does for features (Wen et al., ECCV 2016), with the cluster centres of
the mask transformer in the role of the class centres. It is off by default: on the phantom benchmark it kept the
Dice but lowered MaxQuery (``docs/benchmark/README.md``, variant g), pulling OOD tissue onto the centres too.
Restricted to the normal anatomy (``classes=[0, 1]``: background and organ), it removes MaxQuery's false positives in
normal tissue and leaves the tumour clusters free; the shipped model was fine-tuned so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .query_classes import check_query_channels, chosen_classes, query_counts
from .reduction import class_balanced_mean
from .segmentation import ProbabilityDiceCELoss

__all__ = ["QueryCompactnessLoss"]


class QueryCompactnessLoss(nn.Module):
    """``mean_k mean_{v: y_v = k} (1 - max_{n in Q_k} s[n, v])`` over the classes present in the batch.

    ``s`` is the similarity of voxel embeddings and cluster centres before the temperature (a cosine with normalised
    embeddings, so each term lies in ``[0, 2]``), ``Q_k`` the queries of class ``k``. Averaging per class first lets
    a small tumour weigh as much as the background. The loss is 0 exactly when every labelled voxel's embedding
    coincides with a centre of its class.

    Args:
        queries_per_class: number of queries of each class, in query order (the fixed query classes of
            :class:`~bundle.networks.MaskTransformer`).
        classes: the classes whose voxels are pulled (default: all); e.g. ``[0, 1]`` makes only the normal anatomy
            compact and leaves the tumour clusters free.
    """

    def __init__(self, queries_per_class: Sequence[int], classes: Sequence[int] | None = None) -> None:
        super().__init__()
        counts = query_counts(queries_per_class)
        self.counts = counts
        self.num_classes = len(counts)
        self.num_queries = sum(counts)
        chosen = chosen_classes(classes, len(counts), default=range(len(counts)))
        self.register_buffer(
            "pulled",
            torch.zeros(len(counts), dtype=torch.bool).index_fill_(0, torch.tensor(chosen), True),
            persistent=False,
        )

    def loss_flat(self, similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, N, *spatial)`` similarities against a flattened, validated ``(B, V)`` class target."""
        check_query_channels(similarity, self.counts, "similarities")
        with torch.autocast(device_type=similarity.device.type, enabled=False):
            flat = similarity.float().flatten(2)  # (B, N, V)
            nearest = torch.stack([part.amax(1) for part in flat.split(self.counts, dim=1)], dim=1)  # (B, K, V)
            own = nearest.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, V)
            pulled = self.pulled.to(target.device)[target]
            if not pulled.any():
                return own.sum() * 0.0
            return class_balanced_mean(1.0 - own[pulled], target[pulled], self.num_classes)

    def forward(self, similarity: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Loss of ``similarity`` ``(B, N, *spatial)`` against the class index map ``label`` ``(B, 1, *spatial)``."""
        if label.shape[0] != similarity.shape[0] or label.shape[2:] != similarity.shape[2:]:
            raise ValueError(f"label shape {tuple(label.shape)} does not match similarities {tuple(similarity.shape)}.")
        return self.loss_flat(similarity, ProbabilityDiceCELoss.flat_target(label, self.num_classes))
