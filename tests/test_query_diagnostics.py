"""The nearest-query maps and the report behind ``benchmarks/query_diagnostics.py``."""

from __future__ import annotations

import pytest
import torch

from benchmarks.query_diagnostics import NearestQueryMaps, markdown, voxel_type_names
from bundle.networks import MaskTransformer, split_prediction

K = 3


def tiny_network(**queries) -> MaskTransformer:
    """A small mask transformer; ``queries``: ``num_queries`` (free class head) or ``queries_per_class``."""
    torch.manual_seed(0)
    return MaskTransformer(
        3,
        1,
        K,
        [3, 3, 3],
        [1, 2, 2],
        filters=[8, 16, 16],
        num_feature_levels=2,
        embed_dim=16,
        num_layers=2,
        num_heads=2,
        **queries,
    ).eval()


@pytest.mark.parametrize("queries", [{"num_queries": 6}, {"queries_per_class": [1, 2, 3]}])
def test_nearest_query_maps_agree_with_maxquery_and_the_nearest_cluster(queries):
    network = tiny_network(**queries)
    n = network.num_queries
    image = torch.randn(2, 1, 16, 16, 8)
    maps_module = NearestQueryMaps(network)
    with torch.no_grad():
        maps = maps_module(image)
        _, anomaly = split_prediction(network(image), K)
        last = network.forward_all(image)[-1]
    assert maps.shape == (2, 2 * K + n + 1, 16, 16, 8)
    overall, per_class = maps[:, :1], maps[:, 1 : K + 1]
    nearest_class, nearest_query = maps[:, K + 1 : 2 * K + 1], maps[:, 2 * K + 1 :]
    torch.testing.assert_close(overall, anomaly)  # the all-query score is MaxQuery
    assert torch.all(per_class >= overall - 1e-6)  # a subset's maximum affinity is at most the overall one
    for one_hot in (nearest_class, nearest_query):
        assert torch.all(one_hot.sum(1) == 1) and set(one_hot.unique().tolist()) <= {0.0, 1.0}
    # the score over the nearest query's class is the overall score; classes with no query are +inf
    torch.testing.assert_close(torch.gather(per_class, 1, nearest_class.argmax(1, keepdim=True)), overall)
    torch.testing.assert_close(nearest_query.argmax(1), last["affinity"].argmax(1))
    query_class = last["class_logits"].argmax(-1)  # (B, N): the nearest query's class is the nearest cluster's
    torch.testing.assert_close(
        torch.gather(query_class, 1, nearest_query.argmax(1).flatten(1)).view(2, 16, 16, 8), nearest_class.argmax(1)
    )

    mean = maps_module.mean_class_probs()
    assert mean.shape == (n, K) and maps_module.num_windows == 2
    torch.testing.assert_close(mean, torch.softmax(last["class_logits"], -1).mean(0))
    if network.head.query_classes is not None:  # fixed classes: S is the one-hot class of each query
        torch.testing.assert_close(mean, torch.eye(K)[[0, 1, 1, 2, 2, 2]])
    maps_module.reset()
    with pytest.raises(RuntimeError):
        maps_module.mean_class_probs()


def test_report_lists_each_query_and_a_row_per_tumour_class():
    classes = ["background", "pancreas", "pdac", "pnet"]
    types = voxel_type_names(classes)
    assert types == ["background margin", "organ", "inlier tumour: pdac", "inlier tumour: pnet", "OOD lesion"]
    queries = [
        {
            "query": q,
            "class": classes[q // 2],
            "fixed": True,
            "mean_class_probs": {c: float(c == classes[q // 2]) for c in classes},
        }
        for q in range(8)
    ]
    result = {
        "queries": queries,
        "nearest_cluster_share": {t: {c: 0.25 for c in classes} for t in types},
        "nearest_query_share": {t: [0.125] * 8 for t in types},
        "maxquery_auroc": {"all queries": 0.8},
        "above_ood_median": {t: 0.5 if t == "OOD lesion" else 0.1 for t in types},
        "voxels": dict.fromkeys(types, 10),
        "images": 3,
        "temperature": 0.1,
    }
    text = markdown({"c": result}, "data/x")
    assert "| 5 | pdac | 0.000 | 0.000 | 1.000 | 0.000 |" in text
    assert "| voxels | q0 background | q1 background | q2 pancreas |" in text
    assert "| inlier tumour: pnet | " + " | ".join(["0.125"] * 8) + " |" in text
    assert "fixed by the configuration), mean over 3 images" in text
    assert "| organ | 0.100 |" in text and "| OOD lesion | 0.500 |" in text
