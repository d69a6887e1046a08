"""The case-score diagnostic on hand-made cases: an organ border that outscores an interior lesion."""

from __future__ import annotations

import torch

from benchmarks.case_score_diagnostics import case_scores, markdown, summarise, top_voxel_truth


def _case(border: float, lesion: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A 6^3 predicted organ in an 8^3 volume: its border shell scores ``border``, a 2^3 interior block ``lesion``,
    the rest of its interior 0."""
    organ = torch.zeros(8, 8, 8, dtype=torch.bool)
    organ[1:7, 1:7, 1:7] = True
    values = torch.where(organ, border, 0.0)
    values[2:6, 2:6, 2:6] = 0.0
    values[3:5, 3:5, 3:5] = lesion
    return {"maxquery": values}, organ


def _record(name: str, group: str, types: str, border: float, lesion: float) -> dict:
    maps, organ = _case(border, lesion)
    return {"case": name, "group": group, "ood_types": types, "scores": case_scores(maps, organ, [0, 1], [0.01, 0.1])}


def test_erosion_ranks_interior_lesions_above_noisy_borders():
    # inlier cases have a hot border (segmentation noise) and nothing inside; OOD cases a cool border and a lesion
    records = [
        _record("in_a", "test", "", border=9.0, lesion=0.0),
        _record("in_b", "test", "", border=8.0, lesion=0.0),
        _record("ood_a", "test_ood", "cyst", border=1.0, lesion=5.0),
        _record("ood_b", "test_ood", "cyst;spt", border=1.0, lesion=4.0),
    ]
    report = summarise(records)
    maxquery = report["case_auroc"]["maxquery"]
    assert maxquery["0"]["0.01"]["all"] == 0.0  # the border decides: every inlier case above every OOD case
    assert maxquery["1"]["0.01"]["all"] == 1.0  # eroded, the lesions decide
    assert maxquery["1"]["0.01"]["spt"] == 1.0 and set(maxquery["1"]["0.01"]) == {"all", "cyst", "spt"}
    assert report["num_cases"] == {"test": 2, "test_ood": 2}
    text = markdown(report)
    assert "| 1 | 1.000 | 1.000 |" in text and "| 0 / 0.01 | 0.000 | 0.00 | 0.00 |" in text


def test_top_voxel_truth_says_where_the_case_score_comes_from():
    maps, organ = _case(border=9.0, lesion=0.0)
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[2:6, 2:6, 2:6] = 1  # the true organ is the predicted one without its border shell
    label[3:5, 3:5, 3:5] = 2
    assert top_voxel_truth(maps["maxquery"], organ, label, erosion=0, fraction=0.05, num_classes=3) == [11, 0, 0]
    # eroded, the top 5 % of the 64 interior voxels (all tied at 0) are 4 organ or tumour voxels
    background, organ_voxels, tumour = top_voxel_truth(maps["maxquery"], organ, label, 1, 0.05, 3)
    assert background == 0 and organ_voxels + tumour == 4
