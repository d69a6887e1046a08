"""The checks behind the MONAI Label app's security: typed request options, plain-value config overrides, the
publication rule of trained models, model hashes in calibrations, model backups, and error messages that name files
without their server paths."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.handlers import OODCalibrationHandler
from bundle.ood.calibration import (
    MODEL_HASH_KEY,
    CalibrationError,
    check_model_hash,
    file_sha256,
    load_calibration,
    save_calibration,
)

APP_DIR = Path(__file__).resolve().parents[1] / "apps" / "maxquery"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from lib.app_settings import AppSettings  # noqa: E402
from lib.bundle_config import BundleConfig, check_literal  # noqa: E402
from lib.errors import InvalidInputError, NotFoundError  # noqa: E402
from lib.model_store import ModelStore  # noqa: E402
from lib.options import (  # noqa: E402
    check_options,
    optional,
    parse_bool,
    parse_choice,
    parse_device,
    parse_float,
    parse_gpus,
    parse_int,
    parse_name,
    parse_name_list,
)
from lib.trainers.maxquery import publish_decision, remove_stale_staging  # noqa: E402
from lib.volume_checks import check_label, load_volume  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "cpu') if __import__('os').system('id > pwned.txt') else torch.device('nonexistent_dev"


# ---------------------------------------------------------------------------------------------------------------------
# request options
# ---------------------------------------------------------------------------------------------------------------------


def test_a_device_is_cpu_or_an_existing_gpu() -> None:
    assert parse_device("cpu") == "cpu"
    assert parse_device(["cpu", "cuda"]) == "cpu", "a list of choices selects its first entry"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        assert parse_device("cuda") == "cuda:0"
        assert parse_device(f"cuda:{gpus - 1}") == f"cuda:{gpus - 1}"
    else:
        with pytest.raises(InvalidInputError, match="no GPU"):
            parse_device("cuda")
    for bad in (PAYLOAD, "$torch.device('cpu')", f"cuda:{gpus}", "cuda:-1", "CPU", " cpu", "cpu\x00", "", None, 0, {}):
        with pytest.raises(InvalidInputError, match="'device'"):
            parse_device(bad, "device")


def test_numbers_are_finite_and_inside_their_bounds() -> None:
    rate = parse_float(0.0, 0.1, low_open=True)
    assert rate(0.002, "learning_rate") == 0.002 and rate("0.05", "learning_rate") == 0.05
    for bad in (1e30, "1e30", float("nan"), "nan", float("inf"), "-inf", 0, -0.1, True, "0.1x", [], {}, "x" * 100):
        with pytest.raises(InvalidInputError, match="'learning_rate'"):
            rate(bad, "learning_rate")
    epochs = parse_int(1, 1000)
    assert epochs(5, "max_epochs") == 5 and epochs("7", "max_epochs") == 7 and epochs(3.0, "max_epochs") == 3
    for bad in (0, 1001, 1.5, "1e30", 10**30, float("nan"), None, False, "five"):
        with pytest.raises(InvalidInputError, match="'max_epochs'"):
            epochs(bad, "max_epochs")
    assert optional(rate)(None, "learning_rate") is None and optional(rate)("", "learning_rate") is None


def test_booleans_names_choices_and_gpu_lists_are_strict() -> None:
    assert parse_bool("true", "force") is True and parse_bool(0, "force") is False and parse_bool(False, "f") is False
    for bad in ("maybe", 2, 0.5, None, [], "$x"):
        with pytest.raises(InvalidInputError, match="'force'"):
            parse_bool(bad, "force")
    assert parse_name("case_01.v2", "image") == "case_01.v2"
    for bad in ("../x", "a/b", ".hidden", "-x", "a b", "x" * 200, "$x", "", 3):
        with pytest.raises(InvalidInputError, match="'label_tag'"):
            parse_name(bad, "label_tag")
    assert parse_name_list()(["a", "b"], "images") == ["a", "b"]
    with pytest.raises(InvalidInputError, match="'images'"):
        parse_name_list()("a", "images")
    assert parse_choice(["INFO"])("INFO", "logging") == "INFO"
    with pytest.raises(InvalidInputError, match="one of"):
        parse_choice(["INFO"])("info'", "logging")
    assert parse_gpus("all") == "all"
    for bad in ("", None, "0;rm", "99", "all,0"):
        with pytest.raises(InvalidInputError, match="'gpus'"):
            parse_gpus(bad, "gpus")


def test_unknown_options_are_refused_by_name() -> None:
    parsers = {"max_epochs": parse_int(1, 10)}
    assert check_options({"max_epochs": "3", "client_id": "x"}, parsers, "training", dropped=["client_id"]) == {
        "max_epochs": 3
    }
    with pytest.raises(InvalidInputError, match="unknown training option 'device_'.*max_epochs"):
        check_options({"device_": "cpu"}, parsers, "training")
    with pytest.raises(InvalidInputError, match="JSON object"):
        check_options(["max_epochs"], parsers, "training")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# config overrides are values, never code
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "$__import__('os').system('id')",
        "@device",
        "%configs/train.json#device",
        ["ok", "$x"],
        {"_target_": "os.system"},
    ],
)
def test_config_syntax_in_an_override_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="override of 'device"):
        check_literal(value, "device")


def test_overrides_are_plain_values_or_built_objects() -> None:
    for value in (3, 0.5, "cpu", None, [64, 64, 32], {"a": [1, "b"]}, torch.device("cpu")):
        check_literal(value, "key")
    bundle = BundleConfig(REPO_ROOT, {"patch_size": [32, 32, 16]})
    parser = bundle.parser("train.json", {"device": torch.device("cpu"), "learning_rate": 0.01})
    assert parser.get_parsed_content("device") == torch.device("cpu")
    assert parser.get_parsed_content("learning_rate") == 0.01
    with pytest.raises(ValueError, match="starts with '\\$'"):
        bundle.parser("train.json", {"device": "$torch.device('cpu')"})
    with pytest.raises(ValueError, match="starts with '\\$'"):
        BundleConfig(REPO_ROOT, {"patch_size": "$[64, 64, 32]"})


def test_server_settings_are_checked_like_requests(tmp_path: Path) -> None:
    settings = AppSettings.from_conf({"device": "cpu", "save_predictions": "true", "keep_backups": "2"}, REPO_ROOT)
    assert (settings.device, settings.save_predictions, settings.keep_backups) == ("cpu", True, 2)
    assert AppSettings.from_conf({}, REPO_ROOT).save_predictions is False, "predictions are not kept by default"
    for key, value in [("device", PAYLOAD), ("max_epochs", "1e30"), ("val_split", "nan"), ("save_predictions", "y?")]:
        with pytest.raises(ValueError, match=f"--conf option '{key}'"):
            AppSettings.from_conf({key: value}, REPO_ROOT)
    with pytest.raises(ValueError, match="finite"):
        AppSettings.from_conf({"ood_threshold": "inf"}, REPO_ROOT)


# ---------------------------------------------------------------------------------------------------------------------
# publication of trained models
# ---------------------------------------------------------------------------------------------------------------------


def test_a_trained_model_is_published_only_if_it_beats_the_current_one_or_is_forced() -> None:
    assert publish_decision(0.5, 0.6, force=False)[0] is True
    assert publish_decision(0.5, 0.5, force=False)[0] is False
    assert publish_decision(0.5, 0.0, force=False)[0] is False
    assert publish_decision(0.5, None, force=False)[0] is False
    assert publish_decision(None, 0.0, force=False)[0] is True, "nothing to compare with"
    assert publish_decision(0.9, 0.0, force=True)[0] is True
    assert "force" in publish_decision(0.5, 0.1, force=False)[1]


# ---------------------------------------------------------------------------------------------------------------------
# a calibration names its model
# ---------------------------------------------------------------------------------------------------------------------


def _model_files(folder: Path, weights: float, threshold: float, record_hash: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.pt"
    torch.save({"w": torch.full((3,), weights)}, model)
    calibration = {"threshold": threshold, "voxel_threshold": threshold}
    if record_hash:
        calibration[MODEL_HASH_KEY] = file_sha256(model)
    save_calibration(folder / "ood_calibration.json", calibration)
    return model


def test_calibrations_record_and_check_the_model_hash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model_files(tmp_path / "a", 1.0, 0.5)
    other = _model_files(tmp_path / "b", 2.0, 0.7)
    calibration = load_calibration(tmp_path / "a" / "ood_calibration.json", model_path=model)
    assert check_model_hash(calibration, model) is True
    with pytest.raises(CalibrationError, match="another model"):
        load_calibration(tmp_path / "a" / "ood_calibration.json", model_path=other)
    with pytest.raises(CalibrationError, match="sha256"):
        save_calibration(tmp_path / "bad.json", {"threshold": 0.1, MODEL_HASH_KEY: "not-a-hash"})

    legacy_model = _model_files(tmp_path / "legacy", 3.0, 0.2, record_hash=False)
    with caplog.at_level(logging.WARNING):
        legacy = load_calibration(tmp_path / "legacy" / "ood_calibration.json", model_path=legacy_model)
    assert legacy["threshold"] == 0.2, "a calibration written before hashes were recorded still loads"
    assert "records no model hash" in caplog.text


def test_the_calibration_handler_records_the_calibrated_model(tmp_path: Path) -> None:
    model = _model_files(tmp_path, 1.0, 0.0)
    handler = OODCalibrationHandler(str(tmp_path / "ood_calibration.json"), target_fpr=0.5)
    probs = torch.zeros(3, 4, 4, 4)
    probs[1] = 1.0
    item = {"pred": probs, "ood": torch.rand(1, 4, 4, 4), "ood_score": 0.3}

    class Engine:
        class state:  # noqa: N801
            output = [item]

    handler._reset(Engine)
    handler._collect(Engine)
    handler._save(Engine)
    stored = json.loads((tmp_path / "ood_calibration.json").read_text())
    assert stored[MODEL_HASH_KEY] == file_sha256(model)


def test_the_store_refuses_a_calibration_of_another_model(tmp_path: Path) -> None:
    model = _model_files(tmp_path, 1.0, 0.5)
    store = ModelStore(None, model, tmp_path / "ood_calibration.json")  # type: ignore[arg-type]
    assert store.thresholds().case_threshold == 0.5
    torch.save({"w": torch.full((3,), 9.0)}, model)  # the model changes, its calibration does not
    thresholds = store.thresholds()
    assert thresholds.case_threshold is None and thresholds.voxel_threshold is None
    assert "another model" in thresholds.warning
    assert store.summary()["calibration_verified"] is False


def test_the_store_flags_no_case_with_a_threshold_of_another_case_score(tmp_path: Path) -> None:
    model = _model_files(tmp_path, 1.0, 0.5)
    calibration = load_calibration(tmp_path / "ood_calibration.json")
    calibration["case_score_settings"] = {"top_k_fraction": 0.01, "erode_voxels": 0}
    save_calibration(tmp_path / "ood_calibration.json", calibration)
    bundle = SimpleNamespace(case_score_settings={"top_k_fraction": 0.05, "erode_voxels": 1})
    thresholds = ModelStore(bundle, model, tmp_path / "ood_calibration.json").thresholds()  # type: ignore[arg-type]
    assert thresholds.case_threshold is None and thresholds.voxel_threshold == 0.5
    assert "another case score" in thresholds.warning and str(tmp_path) not in thresholds.warning
    bundle.case_score_settings = {"top_k_fraction": 0.01, "erode_voxels": 0}
    assert ModelStore(bundle, model, tmp_path / "ood_calibration.json").thresholds().case_threshold == 0.5  # type: ignore[arg-type]


def test_publishing_keeps_a_backup_that_can_be_restored(tmp_path: Path) -> None:
    model = _model_files(tmp_path / "served", 1.0, 0.5)
    calibration = tmp_path / "served" / "ood_calibration.json"
    old_model, old_calibration = model.read_bytes(), calibration.read_bytes()
    store = ModelStore(None, model, calibration, keep_backups=2)  # type: ignore[arg-type]

    new_model = _model_files(tmp_path / "served" / ".staging", 2.0, 0.9)
    stale = tmp_path / "served" / ".staging" / "stale.json"
    save_calibration(stale, {"threshold": 0.1, MODEL_HASH_KEY: file_sha256(model)})
    with pytest.raises(CalibrationError, match="another model"):
        store.publish(new_model, stale)
    assert model.read_bytes() == old_model, "a calibration of another model stops the publication"

    backup = store.publish(new_model, new_model.with_name("ood_calibration.json"))
    assert store.thresholds().case_threshold == 0.9
    assert (store.backup_dir / backup / "model.pt").read_bytes() == old_model
    assert (store.backup_dir / backup / "ood_calibration.json").read_bytes() == old_calibration

    restored = store.restore()
    assert restored["restored"] == backup
    assert model.read_bytes() == old_model and calibration.read_bytes() == old_calibration
    assert store.thresholds().case_threshold == 0.5
    with pytest.raises(NotFoundError, match="no backup"):
        store.restore("../../etc")
    for weights in (3.0, 4.0, 5.0):
        staged = _model_files(tmp_path / "served" / f".s{weights}", weights, 0.1)
        store.publish(staged, staged.with_name("ood_calibration.json"))
    names = [b["name"] for b in store.backups()]
    assert len(names) == 2 and names == sorted(names, reverse=True), "the newest keep_backups backups are kept"


def test_staging_folders_of_killed_trainings_are_removed_and_running_ones_kept(tmp_path):
    import os
    import subprocess
    import time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folders = {name: tmp_path / f".maxquery-train-{name}" for name in ("dead", "alive", "orphan", "fresh")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"partial")
    (folders["dead"] / "owner.pid").write_text(str(gone.pid))
    (folders["alive"] / "owner.pid").write_text(str(os.getpid()))
    old = time.time() - 3600
    os.utime(folders["orphan"], (old, old))
    (tmp_path / "model.pt").write_bytes(b"served")
    removed = remove_stale_staging(tmp_path)
    assert sorted(removed) == [".maxquery-train-dead", ".maxquery-train-orphan"]
    assert folders["alive"].is_dir() and folders["fresh"].is_dir()
    assert (tmp_path / "model.pt").read_bytes() == b"served"


def test_background_task_records_are_answered_as_json_even_while_their_worker_logs():
    import json
    from collections import deque

    from lib.server_guard import _task_snapshot

    task = {"id": "t1", "status": "RUNNING", "details": deque(["epoch 1", "epoch 2"], maxlen=20)}
    snapshot = _task_snapshot(task)
    assert json.loads(json.dumps(snapshot)) == {"id": "t1", "status": "RUNNING", "details": ["epoch 1", "epoch 2"]}
    task["details"].append("epoch 3")  # the worker goes on with its own record
    assert snapshot["details"] == ["epoch 1", "epoch 2"] and isinstance(task["details"], deque)
    assert _task_snapshot(None) is None


# ---------------------------------------------------------------------------------------------------------------------
# messages name files, never their server paths
# ---------------------------------------------------------------------------------------------------------------------


def test_an_unusable_model_file_is_a_runtime_error_naming_the_file_only(tmp_path: Path) -> None:
    model = _model_files(tmp_path, 1.0, 0.5)
    bundle = SimpleNamespace(new_network=lambda: torch.nn.Linear(3, 2))
    store = ModelStore(bundle, model, tmp_path / "ood_calibration.json")  # type: ignore[arg-type]
    torch.save(torch.nn.Linear(3, 2).state_dict(), model)
    assert set(store.load_state_dict(model)) == {"weight", "bias"}
    assert not store.network("cpu").training
    torch.save(torch.nn.Linear(4, 2).state_dict(), model)
    with pytest.raises(RuntimeError, match=r"model\.pt does not fit .*shape mismatches.*bundle_overrides") as other:
        store.load_state_dict(model)
    model.write_bytes(b"partial")
    with pytest.raises(RuntimeError, match=r"cannot read the checkpoint model\.pt") as unreadable:
        store.network("cpu")
    model.unlink()
    with pytest.raises(RuntimeError, match=r"not found: model\.pt") as missing:
        store.load_state_dict(model)
    for refused in (other, unreadable, missing):
        assert str(tmp_path) not in str(refused.value)


def test_volume_checks_name_the_upload_never_its_server_path(tmp_path: Path) -> None:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), image)
    thin = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.int16), affine), thin)
    label = tmp_path / "label.nii.gz"
    values = np.zeros((8, 8, 4), np.uint8)
    values[1, 1, 1] = 2
    nib.save(nib.Nifti1Image(values, affine), label)
    with pytest.raises(InvalidInputError, match=r"^uploaded image 'thin' is not a 3D volume") as not_3d:
        load_volume(str(thin), "uploaded image 'thin'")
    with pytest.raises(InvalidInputError, match=r"^label of 'case' holds values \[2\]") as outside:
        check_label(str(label), str(image), [0, 1], "label of 'case'")
    for refused in (not_3d, outside):
        assert str(tmp_path) not in str(refused.value)
    assert check_label(str(label), str(image), [0, 1, 2], "label of 'case'") == [0, 2]
