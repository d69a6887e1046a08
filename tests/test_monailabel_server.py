"""End to end: a real ``monailabel start_server`` process serving apps/maxquery on a few tiny studies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from test_monailabel_app import (
    APP_DIR,
    IMAGE_SHAPE,
    TINY_BUNDLE_OVERRIDES,
    make_model,
    make_studies,
    synthetic_case,
    write_nifti,
)

SERVER_START_TIMEOUT_S = 180
TASK_TIMEOUT_S = 300


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server_command(
    studies: Path | str,
    model_path: Path,
    port: int,
    conf: Mapping[str, str] | None = None,
    bundle_overrides: Mapping[str, object] | None = TINY_BUNDLE_OVERRIDES,
) -> list[str]:
    """``monailabel start_server ...`` (the installed command, else the same module through this Python).

    Args:
        studies: the studies folder, or a DICOMweb URL.
        model_path: the model file.
        port: the port on 127.0.0.1.
        conf: further ``--conf`` options of the app.
        bundle_overrides: bundle config overrides (the tiny test network by default; ``None`` for the shipped one).
    """
    executable = shutil.which("monailabel")
    command = [executable] if executable else [sys.executable, "-m", "monailabel.main"]
    # The monailabel shell wrapper splits arguments on spaces, so the JSON option has none.
    overrides = ["--conf", "bundle_overrides", json.dumps(bundle_overrides, separators=(",", ":"))]
    extra = [item for key, value in (conf or {}).items() for item in ("--conf", key, value)]
    return [
        *command,
        "start_server",
        "--app",
        str(APP_DIR),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--conf",
        "device",
        "cpu",
        "--conf",
        "model_path",
        str(model_path),
        *(overrides if bundle_overrides else []),
        *extra,
    ]


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 1.0) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@contextmanager
def running_server(
    workdir: Path,
    studies: Path | str,
    model_path: Path,
    conf: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/info/",
    bundle_overrides: Mapping[str, object] | None = TINY_BUNDLE_OVERRIDES,
) -> Iterator[tuple[httpx.Client, subprocess.Popen]]:
    """A ``monailabel start_server`` process on a free port of 127.0.0.1, started in ``workdir``; stopped after.

    Args:
        workdir: the server's working folder (its log is ``workdir/server.log``, printed when the body fails).
        studies: the studies folder.
        model_path: the model file.
        conf: further ``--conf`` options of the app.
        env: further environment variables (MONAI Label settings).
        ready_path: the path that answers 200 once the server is up.
        bundle_overrides: bundle config overrides (the tiny test network by default; ``None`` for the shipped one).

    Yields:
        the HTTP client and the process.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MONAI_LABEL_")}
    environment.update(
        {
            "MONAILABEL_PYEXE": sys.executable,
            "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
            "MONAI_LABEL_SESSIONS": "false",
            **(env or {}),
        }
    )
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            start_server_command(studies, model_path, port, conf, bundle_overrides),
            cwd=workdir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the training and scoring workers go with it
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            return client.get(ready_path).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, SERVER_START_TIMEOUT_S, f"the server to answer {ready_path}")
        yield client, process
    except BaseException:
        print(log_path.read_text()[-6000:])
        raise
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        kill_process_group(process)


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL every process left in the server's process group (its background workers), as a crash would."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path, Path]]:
    """A running server on three studies (two with final labels) and the tiny model; stopped afterwards."""
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b", "case_c"], labelled_ids=("case_a", "case_b"))
    model_path = make_model(tmp_path / "model")
    with running_server(tmp_path, studies, model_path) as (client, _):
        yield client, studies, model_path


def wait_for_task(client: httpx.Client, kind: str, task_id: str) -> dict:
    """Poll ``GET /<kind>/`` until the background task ``task_id`` has finished; return its record."""

    def finished() -> dict | None:
        tasks = client.get(f"/{kind}/", params={"all": True}).json()
        task = next((t for t in tasks if t["id"] == task_id), None)
        return task if task and task["status"] not in ("SUBMITTED", "RUNNING") else None

    return wait_for(finished, TASK_TIMEOUT_S, f"{kind} task {task_id}", poll_s=2.0)


def put_label(client: httpx.Client, image_id: str, label_file: Path) -> httpx.Response:
    """``PUT /datastore/label`` of a NIfTI file as the final label of ``image_id``."""
    files = {"label": (label_file.name, label_file.read_bytes())}
    return client.put("/datastore/label", params={"image": image_id}, files=files)


@pytest.mark.slow
def test_server_infers_scores_samples_saves_labels_and_trains(server, tmp_path: Path) -> None:
    client, studies, model_path = server

    info = client.get("/info/").json()
    assert {"maxquery", "maxquery_ood_map"} <= set(info["models"])
    assert set(info["strategies"]) == {"maxquery_ood", "random"}
    assert "maxquery_ood" in info["scoring"] and "maxquery" in info["trainers"]

    # inference: the label map on the input grid, and the OOD result
    response = client.post("/infer/maxquery", params={"image": "case_c", "output": "image"})
    assert response.status_code == 200, response.text
    (tmp_path / "seg.nii.gz").write_bytes(response.content)
    assert nib.load(str(tmp_path / "seg.nii.gz")).shape == IMAGE_SHAPE
    params = client.post("/infer/maxquery", params={"image": "case_c", "output": "json"}).json()
    assert isinstance(params["ood_score"], float) and "ood_flag" in params
    assert client.post("/infer/maxquery", params={"image": "missing"}).status_code == 404

    # scoring runs in a background process and writes into the datastore the server reads
    task = client.post("/scoring/maxquery_ood").json()
    assert wait_for_task(client, "scoring", task["id"])["status"] == "DONE"
    image_ids = ("case_a", "case_b", "case_c")
    scores = {i: client.get("/datastore/image/info", params={"image": i}).json() for i in image_ids}
    assert all(isinstance(s.get("maxquery_ood_score"), float) for s in scores.values()), scores

    # active learning: the only unlabelled image, with its stored score
    sample = client.post("/activelearning/maxquery_ood", json={}).json()
    assert sample["id"] == "case_c"
    assert sample["maxquery_ood_score"] == pytest.approx(scores["case_c"]["maxquery_ood_score"])

    # labels: a wrong shape is refused, a good label is stored
    _, label = synthetic_case(2)
    wrong = write_nifti(tmp_path / "wrong.nii.gz", label[:, :-2])
    refused = put_label(client, "case_c", wrong)
    assert refused.status_code == 422 and "shape" in refused.json()["detail"]
    good = write_nifti(tmp_path / "good.nii.gz", label)
    saved = put_label(client, "case_c", good)
    assert saved.status_code == 200, saved.text
    assert (studies / "labels" / "final" / "case_c.nii.gz").read_bytes() == good.read_bytes()
    assert client.post("/activelearning/maxquery_ood", json={}).json() == {}

    # one epoch of training in the background, published by request whatever its score; the server then infers
    # with the new model, and the previous one is kept as a backup
    old_weights = model_path.read_bytes()
    task = client.post("/train/maxquery", json={"max_epochs": 1, "force": True}).json()
    record = wait_for_task(client, "train", task["id"])
    assert record["status"] == "DONE", record
    assert model_path.read_bytes() != old_weights
    stats = client.get("/info/").json()["train_stats"]["maxquery"]
    assert stats["published"] is True, stats
    assert sorted(stats["train_cases"] + stats["val_cases"]) == ["case_a", "case_b", "case_c"]
    assert (model_path.parent / "model_backups" / stats["backup"] / "model.pt").read_bytes() == old_weights
    params = client.post("/infer/maxquery", params={"image": "case_c", "output": "json"}).json()
    assert params["model_version"] == stats["model_version"]
    assert np.isfinite(params["ood_score"])


def simultaneous_inference(
    client: httpx.Client, requests: int, image: str = "case_b", timeout_s: float = 300
) -> tuple[list[tuple[httpx.Response, float]], list[tuple[int, float]]]:
    """Send ``requests`` inference requests on ``image`` at once (each may take ``timeout_s``) and poll
    ``GET /info/`` every 50 ms until all are answered.

    Returns:
        each inference response with its seconds, and each ``/info/`` status code with its seconds.
    """
    start = threading.Barrier(requests + 1)
    responses: list[tuple[httpx.Response, float]] = []

    def infer() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=timeout_s) as own:
            start.wait()
            begin = time.perf_counter()
            response = own.post("/infer/maxquery", params={"image": image, "output": "json"})
            responses.append((response, time.perf_counter() - begin))

    threads = [threading.Thread(target=infer) for _ in range(requests)]
    for thread in threads:
        thread.start()
    start.wait()
    info = []
    while any(thread.is_alive() for thread in threads):
        begin = time.perf_counter()
        status = client.get("/info/").status_code
        info.append((status, time.perf_counter() - begin))
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    return responses, info


@pytest.mark.slow
def test_server_answers_while_inferring_and_bounds_concurrent_inference(tmp_path: Path) -> None:
    """8 simultaneous inference requests on one inference slot: /info/ answers meanwhile, the extra requests get a
    503 with a retry hint at once, and every accepted request completes."""
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b"], labelled_ids=())
    model_path = make_model(tmp_path / "model")
    with running_server(tmp_path, studies, model_path, conf={"infer_concurrency": "1"}) as (client, _):
        assert client.post("/infer/maxquery", params={"image": "case_a", "output": "json"}).status_code == 200
        timed, info = simultaneous_inference(client, 8)
    responses = [response for response, _ in timed]
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    for refused in (r for r in responses if r.status_code == 503):
        assert refused.headers["retry-after"] == "5" and "infer_concurrency" in refused.json()["detail"]
    assert info and all(status == 200 for status, _ in info), info
    latencies = [seconds for _, seconds in info]
    assert max(latencies) < 1.0, latencies
