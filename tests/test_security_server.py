"""Hostile requests against a real ``monailabel start_server`` of apps/maxquery on 127.0.0.1.

One server (tiny volumes, tiny model) serves every test of this module. Each test sends attacks and fuzzed options
and then checks that nothing changed: the images, the final labels, the model and its calibration keep their
sha256, no file appeared outside the datastore, no background task was queued, and the server still answers and
infers. Nothing here trains: every training request must be refused before it is queued.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_monailabel_app import make_model, make_studies, synthetic_case, write_nifti
from test_monailabel_server import running_server

pytestmark = pytest.mark.slow

CANARY = "pwned.txt"
RCE_PAYLOAD = f"cpu') if __import__('os').system('id > {CANARY}') else torch.device('nonexistent_dev"
HOSTILE_STRINGS = [
    RCE_PAYLOAD,
    f"$__import__('os').system('id > {CANARY}')",
    "$torch.device('cpu')",
    "@device",
    "%configs/train.json#device",
    "'",
    '"',
    "cpu'; --",
    "/etc/passwd",
    "../../../etc/passwd",
    "labels/final",
    "C:\\Windows\\win.ini",
    "cpu\x00",
    "x" * 5000,
]
HOSTILE_STRUCTURES = [["$x"], ["/etc/passwd"], {"_target_": "os.system", "command": "id"}, {}]
HUGE_NUMBERS = [1e30, -1e30, 10**30, float("nan"), float("inf"), float("-inf"), "nan", "inf", "1e30", "Infinity"]


def hostile(kind: str) -> list:
    """Values no option of ``kind`` accepts: odd types, huge numbers, NaN, quotes, ``$``, references, paths.

    Kinds: ``number`` (bounded numbers), ``bool``, ``name`` (plain ids: ``nan`` would be a valid id), ``choice``
    (devices, tags, extensions, log levels), ``list`` (lists of ids).
    """
    values = [*HOSTILE_STRINGS, *HOSTILE_STRUCTURES]
    if kind == "number":
        return [*values, *HUGE_NUMBERS, True, False, [], "12abc"]
    if kind == "bool":
        return [*values, *HUGE_NUMBERS, 2, -1, 0.5, "maybe", []]
    if kind == "name":
        return [*values, -1, 3.5, 1e30, float("nan"), True, ".hidden", "-flag", "a b"]
    if kind == "list":
        return [*[v for v in values if v not in (["$x"], ["/etc/passwd"])], "case_a", 3, True, [3.5], [None]]
    return [*values, *HUGE_NUMBERS, -1, 3.5, True, "CPU", "cuda:99", "cuda:-1", "final", ".exe"]


#: the options of every endpoint the app adds, with the kind of value each accepts
INFER_OPTIONS = {
    "device": "choice",
    "ood_threshold": "number",
    "ood_voxel_threshold": "number",
    "result_extension": "choice",
    "result_dtype": "choice",
    "result_compress": "bool",
    "save_label": "bool",
    "label_tag": "choice",
    "logging": "choice",
    "timeout": "number",
}
TRAIN_OPTIONS = {
    "device": "choice",
    "max_epochs": "number",
    "val_interval": "number",
    "val_split": "number",
    "learning_rate": "number",
    "target_fpr": "number",
    "pretrained": "bool",
    "force": "bool",
    "gpus": "choice",
}
SCORING_OPTIONS = {"images": "list", "device": "choice", "force": "bool", "gpus": "choice"}
STRATEGY_OPTIONS = {"label_tag": "name", "labels": "list", "compute_missing": "bool", "device": "choice"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@dataclass
class Target:
    """The running server and what must not change."""

    client: httpx.Client
    root: Path
    studies: Path
    model_path: Path
    workdir: Path
    outside_image: Path
    protected: dict[str, str]
    files_outside: set[str]
    studies_files: set[str]


def _protected_files(studies: Path, model_path: Path) -> dict[str, str]:
    files = [
        *studies.glob("*.nii.gz"),
        *studies.glob("labels/*/*"),
        model_path,
        model_path.parent / "ood_calibration.json",
    ]
    return {str(path): sha256(path) for path in files}


def _outside_files(root: Path, studies: Path) -> set[str]:
    """Every file under the test folder except the datastore itself and the server's log."""
    return {name for name in files_under(root) if not name.startswith(studies.name + "/") and not name.endswith(".log")}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("hostile")
    studies = make_studies(root / "studies", ["case_a", "case_b", "case_c"], labelled_ids=("case_a", "case_b"))
    model_path = make_model(root / "model")
    outside_image = write_nifti(root / "outside" / "secret_scan.nii.gz", synthetic_case(7)[0])
    workdir = root / "cwd"
    with running_server(workdir, studies, model_path) as (client, _):
        yield Target(
            client=client,
            root=root,
            studies=studies,
            model_path=model_path,
            workdir=workdir,
            outside_image=outside_image,
            protected=_protected_files(studies, model_path),
            files_outside=_outside_files(root, studies),
            studies_files=files_under(studies),
        )


def assert_unchanged(target: Target) -> None:
    """Nothing was changed, created or queued, and the server still serves (and infers)."""
    client = target.client
    for path, digest in target.protected.items():
        assert sha256(Path(path)) == digest, f"{path} changed"
    assert _protected_files(target.studies, target.model_path).keys() == target.protected.keys(), "new image/label"
    assert _outside_files(target.root, target.studies) == target.files_outside, "a file appeared outside the datastore"
    new_in_studies = files_under(target.studies) - target.studies_files
    assert {Path(name).name for name in new_in_studies} <= {"datastore_v2.json", ".lock"}, new_in_studies
    assert not list(target.root.rglob(CANARY)) and not (Path.cwd() / CANARY).exists(), "a command ran"
    for status in ("/train/", "/scoring/", "/batch/infer"):
        assert client.get(status).status_code == 404, f"a task was queued ({status} lists one)"
    assert client.get("/info/").status_code == 200
    response = client.post("/infer/maxquery", params={"image": "case_c", "output": "json"})
    assert response.status_code == 200, response.text


def post_json(client: httpx.Client, url: str, body: object, **params: object) -> httpx.Response:
    """POST a JSON body as sent by a hostile client (NaN and infinities as JavaScript writes them)."""
    return client.post(url, params=params, content=json.dumps(body), headers={"content-type": "application/json"})


def infer_with(client: httpx.Client, model: str, image: str, params: object) -> httpx.Response:
    return client.post(
        f"/infer/{model}", params={"image": image, "output": "json"}, data={"params": json.dumps(params)}
    )


def expect(response: httpx.Response, statuses: Iterable[int], what: str, name: str | None = None) -> None:
    assert response.status_code in set(statuses), f"{what}: {response.status_code} {response.text[:300]}"
    if name is not None:
        assert name in response.json()["detail"], f"{what}: the message does not name '{name}': {response.text[:300]}"


# ---------------------------------------------------------------------------------------------------------------------
# 1. no request value reaches eval
# ---------------------------------------------------------------------------------------------------------------------


def test_code_in_the_device_option_is_refused_and_never_runs(target: Target) -> None:
    client = target.client
    attack = {"max_epochs": 1, "device": RCE_PAYLOAD}
    expect(post_json(client, "/train/maxquery", attack), [422], "train device payload", "device")
    expect(post_json(client, "/train/maxquery", attack, run_sync=True), [422], "synchronous train", "device")
    expect(post_json(client, "/train/", {"maxquery": attack}), [422], "train-all device payload", "device")
    expect(post_json(client, "/scoring/maxquery_ood", {"device": RCE_PAYLOAD}), [422], "scoring payload", "device")
    expect(post_json(client, "/batch/infer/maxquery", {"device": RCE_PAYLOAD}), [403], "batch payload")
    expect(infer_with(client, "maxquery", "case_c", {"device": RCE_PAYLOAD}), [422], "infer payload", "device")
    expect(post_json(client, "/activelearning/maxquery_ood", {"device": RCE_PAYLOAD}), [422], "sample", "device")
    for code in (f"$__import__('os').system('id > {CANARY}')", "%configs/train.json#device", "@device"):
        for option in ("device", "learning_rate", "max_epochs"):
            expect(post_json(client, "/train/maxquery", {"max_epochs": 1, option: code}), [422], option, option)
    expect(post_json(client, "/train/maxquery", {"max_epochs": 1, "evil": "$x"}), [422], "unknown option", "evil")
    assert_unchanged(target)


# ---------------------------------------------------------------------------------------------------------------------
# 2. inference reads only the datastore
# ---------------------------------------------------------------------------------------------------------------------


def test_inference_reads_only_datastore_images_and_answers_every_path_alike(target: Target) -> None:
    client = target.client
    inside = target.studies / "case_a.nii.gz"
    attempts = [
        str(target.outside_image),
        str(inside),
        str(target.outside_image.parent),
        "../outside/secret_scan.nii.gz",
        "outside/secret_scan.nii.gz",
        "/etc/passwd",
        "/nonexistent/scan.nii.gz",
        "/",
        ".",
        "~/scan.nii.gz",
        "file:///etc/passwd",
        "no_such_case",
        "case_a.nii.gz",
        "$x",
    ]
    for model in ("maxquery", "maxquery_ood_map"):
        for image in attempts:
            response = client.post(f"/infer/{model}", params={"image": image, "output": "json"})
            assert response.status_code == 404, f"{model} {image}: {response.status_code} {response.text[:200]}"
            assert response.json()["detail"] == f"image '{image}' not found in the datastore.", response.text
    for image in (str(target.outside_image), "/etc/passwd"):
        # the params of an infer request cannot name the image either
        expect(infer_with(client, "maxquery", "case_c", {"image": image}), [422], "params image", "image")
        expect(infer_with(client, "maxquery", "case_c", {"label": image}), [422], "params label", "label")
        label_upload = client.post(
            "/infer/maxquery", params={"image": "case_c"}, files={"label": ("label.bin", b"\x00" * 8)}
        )
        expect(label_upload, [422], "label upload", "label")
        wsi = post_json(client, "/infer/wsi/maxquery", {}, image=image)
        expect(wsi, [404, 422], "whole-slide inference on a path")
        scoring = post_json(client, "/scoring/maxquery_ood", {"images": [image]})
        expect(scoring, [404, 422], "scoring a path")
    for session_id in ("..", "../../etc", ".hidden", "a/b"):
        response = client.post("/infer/maxquery", params={"session_id": session_id, "output": "json"})
        expect(response, [404], f"infer session {session_id}")
        expect(client.delete(f"/session/{session_id}"), [404, 405], f"delete session {session_id}")
    assert_unchanged(target)


# ---------------------------------------------------------------------------------------------------------------------
# 3. inference never writes labels (this server does not keep predictions)
# ---------------------------------------------------------------------------------------------------------------------


def test_inference_cannot_overwrite_or_add_labels(target: Target) -> None:
    client = target.client
    final_label = target.studies / "labels" / "final" / "case_a.nii.gz"
    before = sha256(final_label)
    for image in ("case_a", "case_c"):
        for model in ("maxquery", "maxquery_ood_map"):
            attack = infer_with(client, model, image, {"save_label": True, "label_tag": "final"})
            expect(attack, [422], f"{model} save_label final", "label_tag")
            expect(infer_with(client, model, image, {"label_tag": "final"}), [422], "label_tag final", "label_tag")
            expect(infer_with(client, model, image, {"save_label": True}), [403], "save_label", "save_label")
            expect(infer_with(client, model, image, {"save_label": "true"}), [403], "save_label text", "save_label")
    batch = post_json(client, "/batch/infer/maxquery", {"label_tag": "final", "save_label": True, "device": "cpu"})
    expect(batch, [403], "batch inference into final labels")
    expect(post_json(client, "/batch/infer/maxquery", {}, images="all"), [403], "batch inference")
    assert sha256(final_label) == before
    objects = client.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert {tag for item in objects.values() for tag in item["labels"]} == {"final"}
    assert_unchanged(target)


# ---------------------------------------------------------------------------------------------------------------------
# 4. the served model cannot be replaced by a broken one
# ---------------------------------------------------------------------------------------------------------------------


def test_training_requests_that_would_break_the_model_are_refused(target: Target) -> None:
    client = target.client
    for rate in (1e30, "1e30", "nan", "inf", float("nan"), float("inf"), -0.1, 0, 10, True, "0.01x"):
        response = post_json(client, "/train/maxquery", {"max_epochs": 1, "learning_rate": rate})
        expect(response, [422], f"learning_rate {rate!r}", "learning_rate")
    for epochs in (0, -1, 10**9, 1.5, "1e30", "nan", None):
        response = post_json(client, "/train/maxquery", {"max_epochs": epochs})
        expect(response, [422], f"max_epochs {epochs!r}", "max_epochs")
    expect(post_json(client, "/train/maxquery", [1, 2]), [422], "a body that is not an object")
    expect(post_json(client, "/train/no_such_model", {"max_epochs": 1}), [404], "unknown trainer")
    # MONAI Label's own model-file endpoints would replace or move the model without a backup
    upload = client.put("/model/maxquery", files={"file": ("model.pt", b"not a model")})
    expect(upload, [403], "model upload")
    expect(client.delete("/model/maxquery"), [403], "model delete")
    assert_unchanged(target)


# ---------------------------------------------------------------------------------------------------------------------
# 5. smaller leaks
# ---------------------------------------------------------------------------------------------------------------------


def test_info_shows_no_server_path_and_unknown_ids_are_404(target: Target) -> None:
    client = target.client
    info = client.get("/info/")
    assert info.status_code == 200
    for secret in (str(target.root), str(target.studies), str(target.model_path), str(Path(__file__).parents[1])):
        assert secret not in info.text, f"/info/ shows the server path {secret}"
    assert info.json()["maxquery"]["model_file"] == "model.pt"

    for image in ("no_such_case", "../../etc/passwd", "/etc/passwd"):
        expect(client.get("/datastore/image/info", params={"image": image}), [404], f"image info {image}")
        expect(client.get("/datastore/image", params={"image": image}), [404], f"download {image}")
        expect(client.delete("/datastore/image", params={"id": image}), [404], f"delete image {image}")
        info_update = client.put("/datastore/image/info", params={"image": image}, data={"info": "{}"})
        expect(info_update, [404], f"update info {image}")
    for label, tag in (("no_such_case", "final"), ("case_a", "no_such_tag"), ("case_a", "../final"), ("../x", "final")):
        expect(client.delete("/datastore/label", params={"id": label, "tag": tag}), [404], f"delete {label}/{tag}")
        expect(client.get("/datastore/label/info", params={"label": label, "tag": tag}), [404], f"label {label}")
        expect(client.get("/datastore/label", params={"label": label, "tag": tag}), [404], f"download {label}")
    expect(infer_with(client, "maxquery", "case_c", {"device": "cuda:99"}), [422], "absent GPU", "device")
    expect(post_json(client, "/train/maxquery", {"device": "cuda:99"}), [422], "absent GPU", "device")
    expect(post_json(client, "/train/maxquery", {"learning_rate": "nan"}), [422], "NaN", "learning_rate")
    expect(client.post("/infer/no_such_model", params={"image": "case_c"}), [404], "unknown model")
    assert_unchanged(target)


def test_cors_allows_no_foreign_origin(target: Target) -> None:
    client = target.client
    preflight = client.options(
        "/train/maxquery",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers, dict(preflight.headers)
    assert "access-control-allow-credentials" not in preflight.headers
    simple = client.get("/info/", headers={"Origin": "http://evil.example"})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-credentials" not in simple.headers
    assert_unchanged(target)


def test_bad_upload_ids_and_label_values_change_nothing(target: Target, tmp_path: Path) -> None:
    client = target.client
    image, label = synthetic_case(0)
    label_file = write_nifti(tmp_path / "label.nii.gz", label)
    for tag in ("../final", "..", "final/../../x", ".hidden", "a\\b"):
        files = {"label": ("case_a.nii.gz", label_file.read_bytes())}
        response = client.put("/datastore/label", params={"image": "case_a", "tag": tag}, files=files)
        expect(response, [422], f"label tag {tag!r}", "tag")
    poisoned = label.copy()
    poisoned[0, 0, 0] = 200
    files = {"label": ("case_a.nii.gz", write_nifti(tmp_path / "poisoned.nii.gz", poisoned).read_bytes())}
    expect(client.put("/datastore/label", params={"image": "case_a"}, files=files), [422], "label values")
    image_file = write_nifti(tmp_path / "image.nii.gz", image)
    for image_id in ("../escape", "/abs/escape", ".hidden", "a\\b"):
        files = {"file": ("x.nii.gz", image_file.read_bytes())}
        expect(client.put("/datastore/image", params={"image": image_id}, files=files), [422], f"image id {image_id}")
    assert_unchanged(target)


# ---------------------------------------------------------------------------------------------------------------------
# fuzzed options on every endpoint the app adds
# ---------------------------------------------------------------------------------------------------------------------


def test_fuzzed_options_on_every_endpoint_get_4xx_and_change_nothing(target: Target) -> None:
    client = target.client
    checked = 0
    for model in ("maxquery", "maxquery_ood_map"):
        for option, kind in INFER_OPTIONS.items():
            for value in hostile(kind):
                expected = [403] if option == "save_label" and value is True else [422]
                expect(infer_with(client, model, "case_c", {option: value}), expected, f"{model} {option}={value!r}")
                checked += 1
        for value in [*HOSTILE_STRINGS, "", " "]:
            expect(infer_with(client, model, value, {}), [404], f"{model} image={value!r}")
        expect(client.post(f"/infer/{model}", params={"image": "case_c"}, data={"params": "{not json"}), [422], "json")
        expect(client.post(f"/infer/{model}", params={"image": "case_c"}, data={"params": "[1]"}), [422], "list")
        expect(infer_with(client, model, "case_c", {"evil": 1}), [422], "unknown option", "evil")
    for option, kind in TRAIN_OPTIONS.items():
        for value in hostile(kind):
            response = post_json(client, "/train/maxquery", {"max_epochs": 1, option: value})
            expect(response, [422], f"train {option}={value!r}", option)
            checked += 1
    for option, kind in SCORING_OPTIONS.items():
        for value in hostile(kind):
            response = post_json(client, "/scoring/maxquery_ood", {option: value})
            expect(response, [404, 422] if option == "images" else [422], f"scoring {option}={value!r}")
            checked += 1
    expect(post_json(client, "/scoring/maxquery_ood", {"images": ["no_such_case"]}), [404], "scoring unknown id")
    expect(post_json(client, "/scoring/no_such_method", {}), [404], "unknown scoring method")
    for strategy in ("maxquery_ood", "random"):
        for option, kind in STRATEGY_OPTIONS.items():
            for value in hostile(kind):
                response = post_json(client, f"/activelearning/{strategy}", {option: value})
                expect(response, [422], f"{strategy} {option}={value!r}", option)
                checked += 1
        expect(post_json(client, f"/activelearning/{strategy}", {"evil": 1}), [422], "unknown option", "evil")
    expect(post_json(client, "/activelearning/no_such_strategy", {}), [404], "unknown strategy")
    assert checked > 500
    assert_unchanged(target)
    sample = post_json(client, "/activelearning/maxquery_ood", {})
    assert sample.status_code == 200 and sample.json()["id"] == "case_c", "the server still proposes samples"
    assert np.isfinite(client.post("/infer/maxquery", params={"image": "case_c", "output": "json"}).json()["ood_score"])


def test_with_authentication_on_anonymous_requests_are_refused(tmp_path: Path) -> None:
    """The checking routes keep MONAI Label's authentication: no token, no inference, training or model change."""
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b"], labelled_ids=("case_a",))
    model_path = make_model(tmp_path / "model")
    protected = _protected_files(studies, model_path)
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": "http://127.0.0.1:9/realms/monailabel"}
    with running_server(tmp_path / "cwd", studies, model_path, env=env, ready_path="/auth/") as (client, _):
        assert client.get("/auth/").json()["enabled"] is True
        requests = [
            client.get("/info/"),
            client.post("/infer/maxquery", params={"image": "case_a"}),
            post_json(client, "/train/maxquery", {"max_epochs": 1, "device": RCE_PAYLOAD}),
            post_json(client, "/scoring/maxquery_ood", {}),
            post_json(client, "/activelearning/maxquery_ood", {}),
            client.put("/model/maxquery", files={"file": ("model.pt", b"x")}),
            client.delete("/datastore/label", params={"id": "case_a", "tag": "final"}),
            client.get("/datastore/image/info", params={"image": "case_a"}),
        ]
        for response in requests:
            assert response.status_code == 401, f"{response.request.method} {response.request.url}: {response.text}"
        forged = client.get("/info/", headers={"Authorization": "Bearer not.a.token"})
        assert forged.status_code in (401, 500) and "maxquery" not in forged.text
    assert _protected_files(studies, model_path) == protected
    assert not list(tmp_path.rglob(CANARY))
