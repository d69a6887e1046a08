"""MaxQuery margin loss: outlier exposure on the quantity MaxQuery reads.

The segmentation and QD losses act on ``M = softmax_n(R)``, which is unchanged when all of a voxel's affinities
move together, so nothing in them ties the nearest-centre similarity ``max_n s`` to being in distribution; a
compactness term alone pulls unusual tissue onto the centres as well (``docs/benchmark/README.md``, variant g).
This loss is the energy-bounded objective of Liu et al. (NeurIPS 2020) written for MaxQuery: inlier voxels are
pushed to a nearest-centre cosine of at least ``inlier_margin``, and outlier-exposure voxels (synthetic anomalies,
:class:`~bundle.transforms.RandAlteredLesiond`, :class:`~bundle.transforms.RandForeignTissueAnomalyd`) to at most
``outlier_margin``, with squared hinges.
"""

from __future__ import annotations

import torch
from torch import nn

from .reduction import class_balanced_mean

__all__ = ["MaxQueryMarginLoss"]


class MaxQueryMarginLoss(nn.Module):
    """``mean_k mean_{v in class k} relu(m_in - max_n s[n, v])^2 + mean_{v out} relu(max_n s[n, v] - m_out)^2``.

    ``s`` is the similarity of voxel embeddings and cluster centres before the temperature (a cosine with normalised
    embeddings), as in ``"query_similarity"`` of :class:`~bundle.networks.MaskTransformer`. The inlier term is
    averaged per class first (over the classes present), so that the organ and the tumours, the voxels MaxQuery
    must tell from unseen lesions, weigh as much as the far larger background; the outlier term is a mean over the
    outlier voxels. A term with no voxels is 0. The loss is 0 exactly when every inlier voxel is within ``m_in`` of
    a centre and every outlier voxel further than ``m_out`` from all of them.

    Args:
        inlier_margin: the least nearest-centre similarity of an inlier voxel.
        outlier_margin: the largest nearest-centre similarity of an outlier voxel.
    """

    def __init__(self, inlier_margin: float = 0.8, outlier_margin: float = 0.4) -> None:
        super().__init__()
        if not -1.0 <= outlier_margin < inlier_margin <= 1.0:
            raise ValueError(
                "margins must satisfy -1 <= outlier_margin < inlier_margin <= 1, "
                f"got {outlier_margin}, {inlier_margin}."
            )
        self.inlier_margin = float(inlier_margin)
        self.outlier_margin = float(outlier_margin)

    def loss_flat(self, similarity: torch.Tensor, target: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, N, *spatial)`` similarities given the ``(B, V)`` class target (any value at outliers) and
        the ``(B, V)`` boolean outlier mask."""
        with torch.autocast(device_type=similarity.device.type, enabled=False):
            nearest = similarity.float().flatten(2).amax(1)  # (B, V)
            if outlier.shape != nearest.shape or target.shape != nearest.shape:
                raise ValueError(
                    f"target {tuple(target.shape)} and outlier mask {tuple(outlier.shape)} must match the "
                    f"{tuple(nearest.shape)} voxels."
                )
            loss = nearest.new_zeros(())
            inlier = ~outlier
            if inlier.any():
                hinge = torch.relu(self.inlier_margin - nearest[inlier]).square()
                loss = loss + class_balanced_mean(hinge, target[inlier])
            if outlier.any():
                loss = loss + torch.relu(nearest[outlier] - self.outlier_margin).square().mean()
            return loss

    def forward(self, similarity: torch.Tensor, label: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
        """Loss of ``similarity`` ``(B, N, *spatial)`` given the class map ``label`` and the outlier mask, both
        ``(B, [1,] *spatial)``."""
        b = similarity.shape[0]
        return self.loss_flat(similarity, label.reshape(b, -1).long(), outlier.reshape(b, -1).bool())
