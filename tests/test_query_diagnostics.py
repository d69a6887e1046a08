"""The nearest-query maps behind ``benchmarks/query_diagnostics.py``."""

from __future__ import annotations

import torch

from benchmarks.query_diagnostics import NearestQueryMaps
from bundle.networks import MaskTransformer, split_prediction

K = 3


def test_nearest_query_maps_agree_with_maxquery_and_the_nearest_cluster():
    torch.manual_seed(0)
    network = MaskTransformer(
        3,
        1,
        K,
        [3, 3, 3],
        [1, 2, 2],
        filters=[8, 16, 16],
        num_feature_levels=2,
        num_queries=6,
        embed_dim=16,
        num_layers=2,
        num_heads=2,
    ).eval()
    image = torch.randn(2, 1, 16, 16, 8)
    with torch.no_grad():
        maps = NearestQueryMaps(network)(image)
        _, anomaly = split_prediction(network(image), K)
    assert maps.shape == (2, 2 * K + 1, 16, 16, 8)
    overall, per_class, nearest = maps[:, :1], maps[:, 1 : K + 1], maps[:, K + 1 :]
    torch.testing.assert_close(overall, anomaly)  # the all-query score is MaxQuery
    assert torch.all(per_class >= overall - 1e-6)  # a subset's maximum affinity is at most the overall one
    assert torch.all(nearest.sum(1) == 1) and set(nearest.unique().tolist()) <= {0.0, 1.0}
    # the score over the nearest query's class is the overall score; classes with no query are +inf
    torch.testing.assert_close(torch.gather(per_class, 1, nearest.argmax(1, keepdim=True)), overall)
