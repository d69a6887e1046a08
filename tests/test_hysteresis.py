"""Hysteresis argmax: confident lesions grow to their extent, no lesion is created, offsets are fitted and stored."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.handlers import OODCalibrationHandler, OODEvaluationHandler
from bundle.ood import calibrated_hysteresis_offsets
from bundle.transforms import HysteresisArgmaxd, fit_hysteresis_offsets, hysteresis_argmax
from bundle.transforms.hysteresis import case_dice, check_offsets, crop_to_foreground, log_scores

SHAPE = (12, 12, 12)


def _probabilities(core: bool = True, rim_tumour: float = 0.3, spot_tumour: float = 0.3) -> np.ndarray:
    """Background / organ / tumour probabilities: an organ block holding a lesion whose confident core (tumour 0.9)
    is surrounded by a rim the network calls organ (tumour ``rim_tumour``), and a separate spot of the same doubt
    elsewhere in the organ (tumour ``spot_tumour``) with no confident core."""
    probs = np.zeros((3, *SHAPE), np.float32)
    probs[0] = 1.0
    organ = (slice(1, 11),) * 3
    probs[:, organ[0], organ[1], organ[2]] = np.array([0.05, 0.95, 0.0], np.float32)[:, None, None, None]

    def put(box, tumour):
        probs[:, box[0], box[1], box[2]] = np.array([0.05, 0.95 - tumour, tumour], np.float32)[:, None, None, None]

    put((slice(2, 7),) * 3, rim_tumour)
    if core:
        put((slice(3, 6),) * 3, 0.9)
    put((slice(8, 10),) * 3, spot_tumour)
    return probs


def _lesion() -> np.ndarray:
    label = np.zeros(SHAPE, np.int64)
    label[1:11, 1:11, 1:11] = 1
    label[2:7, 2:7, 2:7] = 2
    return label


def test_the_rim_of_a_confident_lesion_grows_and_a_doubtful_spot_without_a_core_does_not():
    probs = _probabilities()
    plain = hysteresis_argmax(probs, {})
    assert np.array_equal(plain, probs.argmax(0))
    assert (plain == 2).sum() == 27  # only the core
    grown = hysteresis_argmax(probs, {2: 2.0})  # log(0.3 * e^2) > log(0.65): rim and spot are candidates
    assert np.array_equal(grown == 2, _lesion() == 2)  # the rim joined the core, the spot stayed organ
    assert (grown[8:10, 8:10, 8:10] == 1).all()
    # the same offset as a global class prior would have made the spot a false lesion
    prior = np.log(probs + 1e-12)
    prior[2] += 2.0
    assert (prior.argmax(0)[8:10, 8:10, 8:10] == 2).all()


def test_without_a_confident_voxel_no_lesion_is_made_whatever_the_offset():
    probs = _probabilities(core=False)
    assert not (hysteresis_argmax(probs, {2: 10.0}) == 2).any()


def test_logits_and_probabilities_give_the_same_segmentation():
    probs = _probabilities()
    logits = np.log(probs + 1e-12) + 3.0  # any per-voxel constant
    assert np.array_equal(hysteresis_argmax(probs, {2: 2.0}), hysteresis_argmax(logits, {2: 2.0}, "logits"))


def test_the_seeds_of_another_grown_class_keep_their_label():
    probs = np.zeros((3, 1, 1, 4), np.float32)
    probs[:, 0, 0] = np.array([[0.1, 0.1, 0.1, 0.1], [0.8, 0.2, 0.45, 0.1], [0.1, 0.7, 0.45, 0.8]])
    # class 1 seed at 0, class 2 seeds at 1 and 3, voxel 2 a tie broken towards class 1
    grown = hysteresis_argmax(probs, {1: 5.0, 2: 5.0})[0, 0]
    assert grown[0] == 1 and grown[1] == 2 and grown[3] == 2


def test_the_fit_crop_keeps_true_and_predicted_foreground_and_names_a_grid_mismatch():
    values, label = log_scores(_probabilities()), _lesion()
    cropped_values, cropped_label = crop_to_foreground(values, label, margin=0)
    assert cropped_label.shape == (10, 10, 10) and cropped_values.shape == (3, 10, 10, 10)  # the organ block
    assert (cropped_label == 2).sum() == (label == 2).sum()
    empty = np.zeros((3, 4, 4, 4), np.float32)
    empty[0] = 1.0
    assert crop_to_foreground(empty, np.zeros((4, 4, 4), np.int64), margin=2)[1].shape == (1, 1, 1)
    with pytest.raises(ValueError, match="share the grid"):
        crop_to_foreground(values, label[:-1], margin=0)


def test_case_dice_counts_a_false_lesion_in_a_case_without_one_as_zero():
    empty, lesion = np.zeros((4, 4)), np.zeros((4, 4))
    lesion[1, 1] = 2
    assert case_dice(empty, empty, 2) == 1.0
    assert case_dice(lesion, empty, 2) == 0.0
    assert case_dice(lesion, lesion, 2) == 1.0


def test_the_fit_grows_where_the_rim_is_tumour_and_keeps_the_plain_argmax_where_it_is_not():
    cases = [(log_scores(_probabilities()), _lesion())]
    offsets, dice = fit_hysteresis_offsets(cases, [2])
    assert offsets[2] > 0 and dice[2][1] == pytest.approx(1.0) and dice[2][0] < 0.5
    core_only = np.where(_lesion() == 2, 1, _lesion())
    core_only[3:6, 3:6, 3:6] = 2
    offsets, dice = fit_hysteresis_offsets([(log_scores(_probabilities()), core_only)], [2])
    assert offsets[2] == 0.0 and dice[2] == (pytest.approx(1.0), pytest.approx(1.0))


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ({0: 1.0}, "foreground class"),
        ({3: 1.0}, "foreground class"),
        ({2: -1.0}, ">= 0"),
        ({2: float("nan")}, ">= 0"),
        ({"pdac": 1.0}, "not a class index"),
        ({2: True}, ">= 0"),
    ],
)
def test_bad_offsets_are_refused_with_the_entry_named(offsets, message):
    with pytest.raises(ValueError, match=message):
        check_offsets(offsets, num_classes=3)


def test_the_transform_gives_a_label_map_with_the_metadata_and_is_the_argmax_without_offsets():
    probs = MetaTensor(torch.from_numpy(_probabilities()), meta={"filename_or_obj": "case.nii.gz"})
    out = HysteresisArgmaxd("pred", offsets={"2": 2.0})({"pred": probs})["pred"]
    assert isinstance(out, MetaTensor) and out.shape == (1, *SHAPE) and out.meta["filename_or_obj"] == "case.nii.gz"
    assert torch.equal(out[0].long(), torch.from_numpy(_lesion()))
    plain = HysteresisArgmaxd("pred")({"pred": probs})["pred"]
    assert torch.equal(plain[0].long(), probs.argmax(0))


def _engine(items):
    return SimpleNamespace(state=SimpleNamespace(output=items, batch=[{} for _ in items]))


def _item(probs: np.ndarray, label: np.ndarray) -> dict:
    return {
        "pred": MetaTensor(torch.from_numpy(probs), meta={"filename_or_obj": "/data/case.nii.gz"}),
        "label": torch.from_numpy(label)[None].float(),
        "ood": torch.zeros(1, *SHAPE),
        "ood_score": 0.0,
    }


def test_calibration_stores_fitted_offsets_that_the_readers_return_for_this_model_only(tmp_path, caplog):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    path = tmp_path / "ood_calibration.json"
    handler = OODCalibrationHandler(str(path), hysteresis_classes=[2])
    engine = _engine([_item(_probabilities(), _lesion())])
    for step in (handler._reset, handler._collect, handler._save):
        step(engine)
    stored = json.loads(path.read_text())
    assert float(stored["hysteresis_offsets"]["2"]) > 0 and stored["hysteresis_dice"]["2"][1] == pytest.approx(1.0)
    assert calibrated_hysteresis_offsets(path, model) == {2: stored["hysteresis_offsets"]["2"]}
    other = tmp_path / "other.pt"
    other.write_bytes(b"other weights")
    assert calibrated_hysteresis_offsets(path, other) == {}
    assert "another model" in caplog.text
    assert calibrated_hysteresis_offsets(tmp_path / "missing.json") == {}
    stored["hysteresis_offsets"] = {"2": -3}
    path.write_text(json.dumps(stored))
    assert calibrated_hysteresis_offsets(path, model) == {}


def test_an_unknown_input_type_is_refused_when_the_handler_is_built():
    with pytest.raises(ValueError, match="input_type"):
        OODCalibrationHandler("unused.json", hysteresis_classes=[2], input_type="probs")


def test_calibration_names_a_missing_label():
    handler = OODCalibrationHandler("unused.json", hysteresis_classes=[2])
    item = _item(_probabilities(), _lesion())
    del item["label"]
    handler._reset(None)
    with pytest.raises(KeyError, match="'label'"):
        handler._collect(_engine([item]))


def test_evaluation_reports_the_delivered_segmentation_and_the_plain_argmax(tmp_path):
    classes = {0: "background", 1: "organ", 2: "tumour"}
    handler = OODEvaluationHandler(
        str(tmp_path), classes, ood_labels=[4], anomaly_key="ood", hysteresis_offsets={"2": 2.0}
    )
    engine = _engine([_item(_probabilities(), _lesion())])
    for step in (handler._reset, handler._collect, handler._finish):
        step(engine)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dice"]["tumour"] == pytest.approx(1.0)
    assert metrics["dice_argmax"]["tumour"] == pytest.approx(2 * 27 / (125 + 27))
    assert metrics["settings"]["hysteresis_offsets"] == {"2": 2.0}
