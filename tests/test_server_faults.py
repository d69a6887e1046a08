"""Crash tests of the MONAI Label server: SIGKILL while it trains and while it saves labels, then a restart.

What must hold after the restart: every label file is whole and is one of the versions that were uploaded, the
datastore index is valid and lists them, the served model is the one that was served before the crash (a training
run that did not finish publishes nothing) and its calibration records that model's hash, no staging folder of the
killed training is left, and the server infers again.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from test_monailabel_app import make_model, make_studies, synthetic_case, write_nifti
from test_monailabel_server import kill_process_group, put_label, running_server, wait_for

from bundle.ood.calibration import file_sha256

pytestmark = pytest.mark.slow


def staging_folders(model_path: Path) -> list[Path]:
    return sorted(model_path.parent.glob(".maxquery-train-*"))


def assert_model_and_calibration_paired(model_path: Path) -> None:
    calibration = json.loads((model_path.parent / "ood_calibration.json").read_text())
    assert calibration["model_sha256"] == file_sha256(model_path), "the calibration belongs to another model"


def test_a_server_killed_while_training_restarts_with_its_model_calibration_and_labels_intact(tmp_path: Path):
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b", "case_c"], labelled_ids=("case_a", "case_b"))
    model_path = make_model(tmp_path / "model")
    labels = {p.name: p.read_bytes() for p in (studies / "labels" / "final").glob("*.nii.gz")}
    served = model_path.read_bytes()
    with running_server(tmp_path / "first", studies, model_path) as (client, process):
        request = {"max_epochs": 200, "val_interval": 1, "force": True}
        assert client.post("/train/maxquery", json=request).status_code == 200
        # kill once the run has saved a model into its staging folder, i.e. in the middle of the training
        wait_for(lambda: any((s / "model.pt").is_file() for s in staging_folders(model_path)), 300, "a staged model")
        kill_process_group(process)
    assert staging_folders(model_path), "the killed run left its staging folder (removed at the next start)"
    assert model_path.read_bytes() == served, "an unfinished training run must publish nothing"

    with running_server(tmp_path / "second", studies, model_path) as (client, _):
        assert not staging_folders(model_path)
        assert model_path.read_bytes() == served
        assert_model_and_calibration_paired(model_path)
        assert {p.name: p.read_bytes() for p in (studies / "labels" / "final").glob("*.nii.gz")} == labels
        result = client.post("/infer/maxquery", params={"image": "case_c", "output": "json"})
        assert result.status_code == 200, result.text
        assert result.json()["model_version"] == file_sha256(model_path)[:16]
        assert client.get("/info/").json()["train_stats"].get("maxquery", {}).get("published") in (None, False)


def test_a_server_killed_while_saving_labels_keeps_every_label_whole(tmp_path: Path):
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b"], labelled_ids=())
    model_path = make_model(tmp_path / "model")
    # a few versions of the label of case_a, each a valid label of the image, with distinct contents
    _, label = synthetic_case(0)
    versions = []
    for i in range(4):
        version = label.copy()
        version[i, 0, 0] = 1 - version[i, 0, 0] % 2  # a background corner voxel turned organ, or back
        versions.append(write_nifti(tmp_path / f"label_{i}.nii.gz", version))
    contents = {path.read_bytes() for path in versions}
    saves = []
    with running_server(tmp_path / "first", studies, model_path) as (client, process):
        stop = threading.Event()

        def save_in_a_loop() -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                i = 0
                while not stop.is_set():
                    try:
                        saves.append(put_label(own, "case_a", versions[i % len(versions)]).status_code)
                    except httpx.TransportError:
                        return  # the server is gone
                    i += 1

        worker = threading.Thread(target=save_in_a_loop)
        worker.start()
        wait_for(lambda: len(saves) >= 5, 120, "five label saves", poll_s=0.05)
        time.sleep(0.037)  # land the kill at an arbitrary point of a save, not between two
        kill_process_group(process)
        stop.set()
        worker.join(timeout=60)
    assert saves and all(code == 200 for code in saves), saves

    label_file = studies / "labels" / "final" / "case_a.nii.gz"
    assert label_file.read_bytes() in contents, "the stored label is none of the uploaded versions"
    # a save cut short can leave only its hidden temporary file, which is never taken for an image or a label
    partial = {p.name for p in (studies / "labels" / "final").iterdir() if p.name.startswith(".")}
    assert all(name.endswith(".tmp") for name in partial), partial
    with running_server(tmp_path / "second", studies, model_path) as (client, _):
        json.loads((studies / "datastore_v2.json").read_text())  # the index is valid JSON
        assert sorted(client.get("/datastore/", params={"output": "all"}).json()["objects"]) == ["case_a", "case_b"]
        assert client.get("/datastore/label/info", params={"label": "case_a", "tag": "final"}).status_code == 200
        stored = nib.load(str(label_file))
        assert stored.shape == label.shape and np.isin(np.asarray(stored.dataobj), [0, 1, 2]).all()
        # saving works as before
        assert put_label(client, "case_b", write_nifti(tmp_path / "b.nii.gz", synthetic_case(1)[1])).status_code == 200
