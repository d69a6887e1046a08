"""The MONAI Label app (apps/maxquery) through MONAI Label's FastAPI app, in-process.

The app is built from the repository's bundle configs with a tiny network (``bundle_overrides``) and a randomly
initialised checkpoint written by the fixtures, so no shipped model is needed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_inputs import BAD_IMAGES, BAD_LABELS, write_bad_image, write_bad_label

from bundle.configs import config_files

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "maxquery"

# A small network and patch so that CPU inference takes well under a second on the test volumes.
TINY_BUNDLE_OVERRIDES = {
    "patch_size": [32, 32, 16],
    "backbone#filters": [8, 8, 16, 16],
    "network_def#embed_dim": 16,
    "network_def#num_layers": 2,
    "network_def#num_heads": 2,
}
IMAGE_SHAPE = (40, 36, 14)
SPACING_MM = (2.0, 2.0, 3.0)
ORIGIN_MM = (-40.0, -30.0, 12.0)
OOD_LABEL_VALUE = 9


def volume_affine(spacing: tuple[float, ...] = SPACING_MM, origin: tuple[float, ...] = ORIGIN_MM) -> np.ndarray:
    """A real voxel-to-world affine (mm), with an axis flip like many CT exports."""
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as NIfTI with ``affine`` (default: :func:`volume_affine`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, volume_affine() if affine is None else affine), str(path))
    return path


def synthetic_case(seed: int, shape: tuple[int, int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (HU) with an organ ellipsoid and a lesion, and its label map (0 bg, 1 organ, 2 lesion)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    centre = rng.uniform(-0.15, 0.15, size=3)[:, None, None, None]
    organ = (((grid - centre) / np.array([0.55, 0.45, 0.7])[:, None, None, None]) ** 2).sum(0) < 1
    lesion = (((grid - centre) / 0.2) ** 2).sum(0) < 1
    image = rng.normal(-80, 20, size=shape)
    image[organ] = rng.normal(45, 10, size=int(organ.sum()))
    image[lesion] = rng.normal(5, 10, size=int(lesion.sum()))
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return image.astype(np.int16), label


def make_studies(folder: Path, image_ids: list[str], labelled_ids: tuple[str, ...] = ()) -> Path:
    """A MONAI Label studies folder with synthetic images and final labels for ``labelled_ids``."""
    for seed, image_id in enumerate(image_ids):
        image, label = synthetic_case(seed)
        write_nifti(folder / f"{image_id}.nii.gz", image)
        if image_id in labelled_ids:
            write_nifti(folder / "labels" / "final" / f"{image_id}.nii.gz", label)
    return folder


def _inference_parser():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("inference.json", root=REPO_ROOT))
    parser.read_meta(str(REPO_ROOT / "metadata.json"))
    parser["bundle_root"] = str(REPO_ROOT)
    for key, value in TINY_BUNDLE_OVERRIDES.items():
        parser[key] = value
    return parser


def tiny_network() -> torch.nn.Module:
    """The inference config's ``network_def`` with :data:`TINY_BUNDLE_OVERRIDES`, randomly initialised (seed 0)."""
    torch.manual_seed(0)
    return _inference_parser().get_parsed_content("network_def")


def write_extra_checkpoints(folder: Path) -> None:
    """Random weights for the other networks the inference config loads from its ``ckpt_dir`` (a cascade's organ
    localiser, when the config has one), so that inference runs with the tiny model in ``folder``."""
    parser = _inference_parser()
    if "localiser_ckpt_path" in parser and "localiser#network_def" in parser:
        torch.manual_seed(1)
        localiser = parser.get_parsed_content("localiser#network_def")
        name = Path(parser.get_parsed_content("localiser_ckpt_path")).name
        torch.save(localiser.state_dict(), folder / name)


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_model(
    folder: Path, case_threshold: float = 0.0, voxel_threshold: float = 0.0, record_hash: bool = True
) -> Path:
    """A randomly initialised checkpoint of the tiny network and a calibration JSON next to it.

    Args:
        folder: where ``model.pt`` and ``ood_calibration.json`` go.
        case_threshold: the calibrated case threshold.
        voxel_threshold: the calibrated voxel threshold.
        record_hash: record the model's sha256 in the calibration (as training does); ``False`` writes a
            calibration as older versions did.
    """
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_network().state_dict(), folder / "model.pt")
    write_extra_checkpoints(folder)
    calibration = {"threshold": case_threshold, "voxel_threshold": voxel_threshold, "target_fpr": 0.05}
    if record_hash:
        calibration["model_sha256"] = file_sha256(folder / "model.pt")
    (folder / "ood_calibration.json").write_text(json.dumps(calibration))
    return folder / "model.pt"


def app_conf(model_path: Path, **extra: str) -> dict[str, str]:
    """``--conf`` options of the app for the tiny test model (strings, as on the command line)."""
    return {
        "device": "cpu",
        "model_path": str(model_path),
        "bundle_overrides": json.dumps(TINY_BUNDLE_OVERRIDES),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------------------
# FastAPI client of MONAI Label's app for a studies folder and app options
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def monailabel_client(studies: Path, conf: dict[str, str]) -> Iterator[TestClient]:
    """MONAI Label's FastAPI app serving apps/maxquery on ``studies``; automatic scoring and upload cache off."""
    from fastapi.testclient import TestClient
    from monailabel.app import app
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import clear_cache

    names = {
        "MONAI_LABEL_APP_DIR": str(APP_DIR),
        "MONAI_LABEL_STUDIES": str(studies),
        "MONAI_LABEL_APP_CONF": conf,
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": False,
        "MONAI_LABEL_AUTO_UPDATE_SCORING": False,
        "MONAI_LABEL_SESSIONS": False,
    }
    previous = {name: getattr(settings, name) for name in names}
    for name, value in names.items():
        setattr(settings, name, value)
    clear_cache()
    try:
        yield TestClient(app)
    finally:
        clear_cache()
        for name, value in previous.items():
            setattr(settings, name, value)


def multipart_parts(response) -> dict[str, bytes]:
    """The parts of a multipart infer response, by form name (``params``, ``image``)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    parts = {}
    for part in MultipartDecoder(response.content, response.headers["content-type"]).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        parts[name] = part.content
    return parts


def load_nifti_bytes(content: bytes, tmp_path: Path, name: str = "result.nii.gz") -> nib.Nifti1Image:
    """A NIfTI image from response bytes (written to a file first, as clients do)."""
    path = tmp_path / name
    path.write_bytes(content)
    image = nib.load(str(path))
    image.get_fdata()
    return image


def infer(client: TestClient, tmp_path: Path, image_id: str, model: str = "maxquery", **params: object):
    """Run ``model`` on ``image_id``; return the result volume, its affine and the JSON params."""
    response = client.post(
        f"/infer/{model}", params={"image": image_id, "output": "all"}, data={"params": json.dumps(params)}
    )
    assert response.status_code == 200, response.text
    parts = multipart_parts(response)
    image = load_nifti_bytes(parts["image"], tmp_path, f"{model}_{image_id}.nii.gz")
    return np.asanyarray(image.dataobj), image.affine, json.loads(parts["params"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny checkpoint with a calibration of 0.0 for both thresholds."""
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    """Three images; ``case_a`` has a final label."""
    return make_studies(tmp_path / "studies", ["case_a", "case_b", "case_c"], labelled_ids=("case_a",))


@pytest.fixture
def client(studies: Path, tiny_model: Path) -> Iterator[TestClient]:
    """The app on :func:`studies` with the tiny model."""
    with monailabel_client(studies, app_conf(tiny_model)) as test_client:
        yield test_client


# ---------------------------------------------------------------------------------------------------------------------
# /info
# ---------------------------------------------------------------------------------------------------------------------


def test_info_lists_the_maxquery_tasks(client: TestClient, tiny_model: Path) -> None:
    response = client.get("/info/")
    assert response.status_code == 200, response.text
    info = response.json()

    segmentation = info["models"]["maxquery"]
    assert segmentation["type"] == "segmentation"
    assert segmentation["labels"] == {"pancreas": 1, "pdac": 2, "pnet": 3, "suspected_ood": 9}
    assert info["models"]["maxquery_ood_map"]["type"] == "others"
    assert set(info["scoring"]) == {"maxquery_ood"}
    assert set(info["strategies"]) == {"maxquery_ood", "random"}
    assert set(info["trainers"]) == {"maxquery"}
    assert info["trainers"]["maxquery"]["config"]["max_epochs"] >= 1
    assert info["maxquery"]["model_file"] == "model.pt"
    assert info["maxquery"]["model_available"] is True
    assert info["maxquery"]["model_sha256"] == file_sha256(tiny_model)
    assert info["maxquery"]["calibration_verified"] is True
    assert info["maxquery"]["ood_threshold"] == 0.0
    assert info["maxquery"]["ood_voxel_threshold"] == 0.0
    assert info["maxquery"]["save_predictions"] is False
    assert str(tiny_model.parent) not in response.text, "/info/ must not show server paths"


# ---------------------------------------------------------------------------------------------------------------------
# /infer
# ---------------------------------------------------------------------------------------------------------------------


def test_infer_returns_a_label_map_on_the_input_grid(client: TestClient, tmp_path: Path) -> None:
    label, affine, params = infer(client, tmp_path, "case_b")

    assert label.shape == IMAGE_SHAPE
    assert label.dtype == np.uint8
    np.testing.assert_allclose(affine, volume_affine(), atol=1e-4)
    assert set(np.unique(label)) <= {0, 1, 2, 3, OOD_LABEL_VALUE}
    assert isinstance(params["ood_score"], float)
    assert params["ood_threshold"] == 0.0
    assert params["ood_flag"] is (params["ood_score"] > 0.0)
    assert params["label_names"]["suspected_ood"] == OOD_LABEL_VALUE
    assert params["ood_voxels"] == int((label == OOD_LABEL_VALUE).sum())


def test_suspected_ood_segment_is_the_foreground_above_the_voxel_threshold(client: TestClient, tmp_path: Path) -> None:
    plain, _, _ = infer(client, tmp_path, "case_b", ood_voxel_threshold=1e9)
    all_ood, _, _ = infer(client, tmp_path, "case_b", ood_voxel_threshold=-1e9)
    anomaly, affine, map_params = infer(client, tmp_path, "case_b", model="maxquery_ood_map", result_dtype="uint8")

    foreground = plain > 0
    assert OOD_LABEL_VALUE not in plain
    np.testing.assert_array_equal(all_ood == OOD_LABEL_VALUE, foreground)
    np.testing.assert_array_equal(all_ood[~foreground], 0)

    assert anomaly.dtype == np.float32 and anomaly.shape == IMAGE_SHAPE
    np.testing.assert_allclose(affine, volume_affine(), atol=1e-4)
    assert foreground.any(), "the random test model should predict some foreground"
    threshold = float(np.median(anomaly[foreground]))
    partial, _, params = infer(client, tmp_path, "case_b", ood_voxel_threshold=threshold)
    np.testing.assert_array_equal(partial == OOD_LABEL_VALUE, foreground & (anomaly > threshold))
    np.testing.assert_array_equal(partial[partial != OOD_LABEL_VALUE], plain[partial != OOD_LABEL_VALUE])
    assert map_params["ood_score"] == pytest.approx(params["ood_score"])


def test_the_command_line_and_the_server_give_the_same_label_map(studies: Path, tmp_path: Path) -> None:
    """`monai.bundle run` inference and POST /infer/maxquery: the same labels and suspected-OOD voxels."""
    model = make_model(tmp_path / "model")
    with monailabel_client(studies, app_conf(model)) as client:
        plain, _, _ = infer(client, tmp_path, "case_b", ood_voxel_threshold=1e9)
        anomaly, _, _ = infer(client, tmp_path, "case_b", model="maxquery_ood_map", result_dtype="uint8")
        assert (plain > 0).any(), "the random test model should predict some foreground"
        median = float(np.median(anomaly[plain > 0]))
        calibration = {"threshold": 0.0, "voxel_threshold": median, "model_sha256": file_sha256(model)}
        calibration["hysteresis_offsets"] = {"2": 4.0, "3": 4.0}
        (model.parent / "ood_calibration.json").write_text(json.dumps(calibration))
        grown, _, _ = infer(client, tmp_path, "case_b", ood_voxel_threshold=1e9)
        served, _, params = infer(client, tmp_path, "case_b")
    assert 0 < int((served == OOD_LABEL_VALUE).sum()) < int((served > 0).sum())
    # the served model's calibration is read per request: its offsets grow the tumours found before
    assert np.isin(grown, [2, 3]).sum() > np.isin(plain, [2, 3]).sum() > 0
    assert (grown[np.isin(plain, [2, 3])] == plain[np.isin(plain, [2, 3])]).all()

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "monai.bundle", "run"]
    cmd += ["--config_file", "['configs/common.json','configs/inference.json']"]
    cmd += ["--meta_file", "metadata.json", "--logging_file", "configs/logging.conf"]
    cmd += ["--ckpt_dir", str(model.parent), "--output_dir", str(out), "--device", "$torch.device('cpu')"]
    cmd += ["--datalist", json.dumps([{"image": str(studies / "case_b.nii.gz")}])]
    for key, value in TINY_BUNDLE_OVERRIDES.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.asanyarray(nib.load(out / "case_b_seg.nii.gz").dataobj), served)
    row = (out / "ood_cases.csv").read_text().splitlines()[1].split(",")
    assert float(row[1]) == pytest.approx(params["ood_score"], abs=1e-5) and row[2] == str(int(params["ood_flag"]))


def test_mark_suspected_ood_ignores_background() -> None:
    from bundle.ood import MarkSuspectedOODd

    label = torch.tensor([[[[0, 1, 2, 3]]]])
    anomaly = torch.tensor([[[[5.0, 5.0, 0.0, 5.0]]]])
    out = MarkSuspectedOODd("pred", "ood", threshold=1.0, ood_value=9)({"pred": label, "ood": anomaly})
    assert out["pred"].tolist() == [[[[0, 9, 2, 9]]]]
    assert out["ood_voxels"] == 2
    assert label.tolist() == [[[[0, 1, 2, 3]]]], "the input must not be modified"
    unmarked = MarkSuspectedOODd("pred", "ood", threshold=None, ood_value=9)({"pred": label, "ood": anomaly})
    assert unmarked["pred"].tolist() == label.tolist()


def test_infer_errors_are_4xx_with_a_message(client: TestClient, tmp_path: Path) -> None:
    unknown_image = client.post("/infer/maxquery", params={"image": "no_such_case"})
    assert unknown_image.status_code == 404
    assert "no_such_case" in unknown_image.json()["detail"]

    unknown_model = client.post("/infer/segmentation_spleen", params={"image": "case_a"})
    assert unknown_model.status_code == 404
    assert "maxquery" in unknown_model.json()["detail"]

    flat = write_nifti(tmp_path / "flat.nii.gz", np.zeros((32, 32), dtype=np.int16), np.eye(4))
    with flat.open("rb") as handle:
        not_3d = client.post("/infer/maxquery", files={"file": ("flat.nii.gz", handle)})
    assert not_3d.status_code == 422
    assert "3D" in not_3d.json()["detail"]

    garbage = client.post("/infer/maxquery", files={"file": ("scan.nii.gz", b"not a nifti file")})
    assert garbage.status_code == 422
    assert "cannot load image" in garbage.json()["detail"]

    assert client.get("/info/").status_code == 200


def test_missing_model_is_reported_and_the_server_still_serves(studies: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.pt"
    with monailabel_client(studies, app_conf(missing)) as client:
        info = client.get("/info/").json()
        assert "maxquery" in info["models"]
        assert info["maxquery"]["model_available"] is False

        response = client.post("/infer/maxquery", params={"image": "case_a"})
        assert response.status_code == 503
        assert "model.pt" in response.json()["detail"]
        assert str(missing.parent) not in response.text, "the answer must not show server paths"

        scoring = client.post("/scoring/maxquery_ood", params={"run_sync": True})
        assert scoring.status_code == 503
        assert "model.pt" in scoring.json()["detail"]


def test_predictions_are_kept_only_under_their_own_tag_and_only_when_allowed(tmp_path: Path, tiny_model) -> None:
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b"], labelled_ids=("case_a",))
    final = studies / "labels" / "final" / "case_a.nii.gz"
    final_bytes = final.read_bytes()
    with monailabel_client(studies, app_conf(tiny_model)) as client:
        refused = client.post("/infer/maxquery", params={"image": "case_a"}, data={"params": '{"save_label": true}'})
        assert refused.status_code == 403 and "save_predictions" in refused.json()["detail"]
    with monailabel_client(studies, app_conf(tiny_model, save_predictions="true")) as client:
        into_final = {"save_label": True, "label_tag": "final"}
        refused = client.post("/infer/maxquery", params={"image": "case_a"}, data={"params": json.dumps(into_final)})
        assert refused.status_code == 422 and "label_tag" in refused.json()["detail"]
        label, _, _ = infer(client, tmp_path, "case_a", save_label=True)
        kept = studies / "labels" / "maxquery_prediction" / "case_a.nii.gz"
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(kept)).dataobj), label)
        assert final.read_bytes() == final_bytes, "the annotator's final label is untouched"
        info = client.get("/datastore/label/info", params={"label": "case_a", "tag": "maxquery_prediction"}).json()
        assert info["model"] == "maxquery"
        assert client.get("/datastore/", params={"output": "train"}).json()[0]["label"] == str(final)


def test_batch_inference_keeps_predictions_under_their_own_tag_only(tmp_path: Path, tiny_model) -> None:
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b", "case_c"], labelled_ids=("case_a",))
    final = studies / "labels" / "final" / "case_a.nii.gz"
    final_bytes = final.read_bytes()
    query = {"images": "all", "run_sync": True}
    with monailabel_client(studies, app_conf(tiny_model)) as client:
        assert client.post("/batch/infer/maxquery", params=query, json={"device": "cpu"}).status_code == 403
    with monailabel_client(studies, app_conf(tiny_model, save_predictions="true")) as client:
        into_final = client.post("/batch/infer/maxquery", params=query, json={"label_tag": "final"})
        assert into_final.status_code == 422 and "label_tag" in into_final.json()["detail"]
        response = client.post("/batch/infer/maxquery", params=query, json={"device": "cpu", "multi_gpu": False})
        assert response.status_code == 200, response.text
        kept = sorted(p.name for p in (studies / "labels" / "maxquery_prediction").iterdir())
        assert kept == ["case_a.nii.gz", "case_b.nii.gz", "case_c.nii.gz"]
        assert final.read_bytes() == final_bytes
        assert sorted(p.name for p in (studies / "labels" / "final").iterdir()) == ["case_a.nii.gz"]


def test_a_calibration_of_another_model_is_refused(tmp_path: Path, studies: Path) -> None:
    model_path = make_model(tmp_path / "model", case_threshold=0.0)
    calibration_path = model_path.parent / "ood_calibration.json"
    calibration = json.loads(calibration_path.read_text())
    calibration["model_sha256"] = "0" * 64
    calibration_path.write_text(json.dumps(calibration))
    with monailabel_client(studies, app_conf(model_path)) as client:
        _, _, params = infer(client, tmp_path, "case_b")
        assert params["ood_flag"] is None and params["ood_threshold"] is None
        assert "another model" in params["ood_warning"]
        assert client.get("/info/").json()["maxquery"]["calibration_verified"] is False


def test_a_calibration_without_a_model_hash_is_still_used(tmp_path: Path, studies: Path) -> None:
    model_path = make_model(tmp_path / "model", case_threshold=0.0, record_hash=False)
    with monailabel_client(studies, app_conf(model_path)) as client:
        _, _, params = infer(client, tmp_path, "case_b")
        assert params["ood_threshold"] == 0.0 and isinstance(params["ood_flag"], bool)
        info = client.get("/info/").json()["maxquery"]
        assert info["calibration_verified"] is False and info["ood_threshold"] == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# scoring and active learning
# ---------------------------------------------------------------------------------------------------------------------


def test_scoring_stores_case_scores_and_skips_up_to_date_ones(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/scoring/maxquery_ood", params={"run_sync": True})
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result["scored"]) == {"case_a", "case_b", "case_c"}
    assert not result["failed"]
    for image_id, score in result["scored"].items():
        info = client.get("/datastore/image/info", params={"image": image_id}).json()
        assert info["maxquery_ood_score"] == pytest.approx(score)
        assert info["maxquery_ood_flag"] is (score > 0.0)
        assert info["maxquery_ood_model_version"] == result["model_version"]

    again = client.post("/scoring/maxquery_ood", params={"run_sync": True}).json()
    assert again["scored"] == {}
    assert sorted(again["skipped"]) == ["case_a", "case_b", "case_c"]

    _, _, params = infer(client, tmp_path, "case_b")
    assert params["ood_score"] == pytest.approx(result["scored"]["case_b"], rel=1e-5)


def _set_score(client: TestClient, image_id: str, score: float | None) -> None:
    info = {"maxquery_ood_score": score}
    response = client.put("/datastore/image/info", params={"image": image_id}, data={"info": json.dumps(info)})
    assert response.status_code == 200, response.text


def test_ood_strategy_picks_the_highest_score_then_the_smallest_id_then_unscored(tmp_path: Path, tiny_model) -> None:
    studies = make_studies(tmp_path / "studies", ["d", "c", "b", "a", "labelled"], labelled_ids=("labelled",))
    with monailabel_client(studies, app_conf(tiny_model)) as client:

        def next_sample() -> str:
            response = client.post("/activelearning/maxquery_ood", json={})
            assert response.status_code == 200, response.text
            return response.json()["id"]

        assert next_sample() == "a", "no score yet: unscored images in id order"
        _set_score(client, "labelled", 100.0)
        _set_score(client, "b", 2.0)
        assert next_sample() == "b", "scored images first, labelled images never"
        _set_score(client, "d", 3.0)
        _set_score(client, "c", 3.0)
        assert next_sample() == "c", "ties broken by image id"

        computed = client.post("/activelearning/maxquery_ood", json={"compute_missing": True}).json()
        stored = {i: client.get("/datastore/image/info", params={"image": i}).json() for i in "abcd"}
        assert isinstance(stored["a"]["maxquery_ood_score"], float), "the missing score is computed"
        best = min(stored, key=lambda i: (-stored[i]["maxquery_ood_score"], i))
        assert computed["id"] == best
        assert client.post("/activelearning/random", json={}).json()["id"] in {"a", "b", "c", "d"}
        assert client.post("/activelearning/no_such_strategy", json={}).status_code == 404


# ---------------------------------------------------------------------------------------------------------------------
# datastore robustness
# ---------------------------------------------------------------------------------------------------------------------


def _put_image(client: TestClient, image_id: str, name: str, content: bytes):
    return client.put("/datastore/image", params={"image": image_id}, files={"file": (name, content)})


def _put_label(client: TestClient, image_id: str, name: str, content: bytes, tag: str = "final"):
    return client.put("/datastore/label", params={"image": image_id, "tag": tag}, files={"label": (name, content)})


def _nifti_bytes(tmp_path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    return write_nifti(tmp_path / "upload.nii.gz", array, affine).read_bytes()


def test_bad_image_uploads_are_rejected_before_saving(client: TestClient, studies: Path, tmp_path: Path) -> None:
    assert client.get("/info/").status_code == 200
    files_before = sorted(p.name for p in studies.iterdir())
    png = b"\\x89PNG\\r\\n\\x1a\\n" + b"\\x00" * 64

    cases = [
        (_put_image(client, "slice", "slice.png", png), "unsupported file type"),
        (_put_image(client, "fake", "fake.nii.gz", png), "cannot read"),
        (_put_image(client, "flat", "flat.nii.gz", _nifti_bytes(tmp_path, np.zeros((32, 32), np.int16))), "3D"),
        (_put_image(client, "thin", "t.nii.gz", _nifti_bytes(tmp_path, np.zeros((32, 32, 1), np.int16))), "3D"),
        (_put_image(client, "../escape", "e.nii.gz", _nifti_bytes(tmp_path, synthetic_case(0)[0])), "image id"),
    ]
    for response, message in cases:
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]

    assert sorted(p.name for p in studies.iterdir()) == files_before
    assert sorted(client.get("/datastore/", params={"output": "all"}).json()["objects"]) == [
        "case_a",
        "case_b",
        "case_c",
    ]

    good = _put_image(client, "case_new", "case_new.nii.gz", _nifti_bytes(tmp_path, synthetic_case(5)[0]))
    assert good.status_code == 200, good.text
    assert (studies / "case_new.nii.gz").is_file()
    assert "case_new" in client.get("/datastore/", params={"output": "all"}).json()["objects"]


def test_bad_labels_are_rejected_and_leave_the_saved_label_intact(client: TestClient, studies: Path, tmp_path) -> None:
    saved = studies / "labels" / "final" / "case_a.nii.gz"
    saved_bytes = saved.read_bytes()
    image, label = synthetic_case(0)

    wrong_shape = _nifti_bytes(tmp_path, label[:-4])
    wrong_values = label.copy()
    wrong_values[0, 0, 0] = 7
    shifted = volume_affine()
    shifted[:3, 3] += 10.0
    cases = [
        (_put_label(client, "case_a", "case_a.nii.gz", wrong_shape), 422, "spatial shape"),
        (_put_label(client, "case_a", "case_a.nii.gz", _nifti_bytes(tmp_path, wrong_values)), 422, "[7]"),
        (_put_label(client, "case_a", "case_a.nii.gz", _nifti_bytes(tmp_path, label, shifted)), 422, "geometry"),
        (_put_label(client, "case_a", "case_a.nii.gz", b"garbage"), 422, "cannot read"),
        (_put_label(client, "case_a", "case_a.bin", b"\\x00" * 10), 422, ".bin"),
        (_put_label(client, "no_such_case", "x.nii.gz", _nifti_bytes(tmp_path, label)), 404, "no_such_case"),
        (_put_label(client, "case_a", "case_a.nii.gz", _nifti_bytes(tmp_path, label), tag="../x"), 422, "tag"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
        assert saved.read_bytes() == saved_bytes

    assert not any(p.name.endswith(".partial") for p in saved.parent.iterdir())
    assert client.get("/info/").status_code == 200

    relabelled = label.copy()
    relabelled[label == 2] = 3
    relabelled[0, 0, 0] = OOD_LABEL_VALUE
    new_bytes = _nifti_bytes(tmp_path, relabelled)
    response = _put_label(client, "case_b", "case_b.nii.gz", new_bytes)
    assert response.status_code == 200, response.text
    assert (studies / "labels" / "final" / "case_b.nii.gz").read_bytes() == new_bytes
    assert client.get("/datastore/label/info", params={"label": "case_b", "tag": "final"}).json()["label_values"] == [
        0,
        1,
        3,
        OOD_LABEL_VALUE,
    ]


def test_reuploading_an_image_keeps_its_labels_or_refuses(client: TestClient, studies: Path, tmp_path) -> None:
    saved = studies / "labels" / "final" / "case_a.nii.gz"
    saved_bytes = saved.read_bytes()
    image, _ = synthetic_case(0)
    same_grid = _put_image(client, "case_a", "case_a.nii.gz", _nifti_bytes(tmp_path, image + 1))
    assert same_grid.status_code == 200, same_grid.text
    info = client.get("/datastore/label/info", params={"label": "case_a", "tag": "final"})
    assert info.status_code == 200 and saved.read_bytes() == saved_bytes
    assert "final" in client.get("/datastore/", params={"output": "all"}).json()["objects"]["case_a"]["labels"]

    other_grid = _put_image(client, "case_a", "case_a.nii.gz", _nifti_bytes(tmp_path, image[:-4]))
    assert other_grid.status_code == 422 and "delete the label first" in other_grid.json()["detail"]
    assert saved.read_bytes() == saved_bytes
    assert client.get("/datastore/label/info", params={"label": "case_a", "tag": "final"}).status_code == 200


def test_raw_binary_labels_are_stored_on_the_image_grid(client: TestClient, studies: Path) -> None:
    _, label = synthetic_case(1)
    response = _put_label(client, "case_b", "label.bin", label.flatten(order="F").tobytes())
    assert response.status_code == 200, response.text
    stored = nib.load(str(studies / "labels" / "final" / "case_b.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), label)
    np.testing.assert_allclose(stored.affine, volume_affine(), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------------


def test_training_needs_usable_labels_and_valid_options(tmp_path: Path, tiny_model: Path) -> None:
    studies = make_studies(tmp_path / "studies", ["case_a", "case_b"])
    with monailabel_client(studies, app_conf(tiny_model)) as client:
        no_labels = client.post("/train/maxquery", params={"run_sync": True}, json={"max_epochs": 1})
        assert no_labels.status_code == 422
        assert "final label" in no_labels.json()["detail"]

        bad_epochs = client.post("/train/maxquery", params={"run_sync": True}, json={"max_epochs": 0})
        assert bad_epochs.status_code == 422
        assert "max_epochs" in bad_epochs.json()["detail"]


def _training_studies(tmp_path: Path) -> Path:
    """Four images: two inlier final labels, one label holding the suspected-OOD value, one unlabelled image."""
    studies = make_studies(
        tmp_path / "studies", ["case_a", "case_b", "case_c", "case_ood"], labelled_ids=("case_a", "case_b", "case_ood")
    )
    _, ood_label = synthetic_case(3)
    ood_label[ood_label == 2] = OOD_LABEL_VALUE
    write_nifti(studies / "labels" / "final" / "case_ood.nii.gz", ood_label)
    return studies


def _trainer():
    """The app instance's trainer (the app's modules are imported by MONAI Label from the app folder)."""
    from monailabel.interfaces.utils.app import app_instance

    return app_instance()._trainers["maxquery"]


@pytest.mark.slow
def test_forced_training_publishes_recalibrates_and_keeps_a_backup(tmp_path: Path) -> None:
    model_path = make_model(tmp_path / "model")
    calibration_path = model_path.parent / "ood_calibration.json"
    old_weights, old_calibration = model_path.read_bytes(), calibration_path.read_bytes()
    studies = _training_studies(tmp_path)

    with monailabel_client(studies, app_conf(model_path)) as client:
        response = client.post("/train/maxquery", params={"run_sync": True}, json={"max_epochs": 1, "force": True})
        assert response.status_code == 200, response.text
        summary = response.json()

        assert summary["published"] is True and summary["forced"] is True
        assert set(summary["excluded_cases"]) == {"case_ood"}
        assert sorted(summary["train_cases"] + summary["val_cases"]) == ["case_a", "case_b"]
        assert summary["started_from"] == "model.pt"
        assert model_path.read_bytes() != old_weights
        assert summary["model_sha256"] == file_sha256(model_path)
        assert not [p for p in model_path.parent.iterdir() if p.name.startswith(".")], "staging files left behind"

        if summary["calibration_error"] is None:
            stored = json.loads(calibration_path.read_text())
            assert stored["threshold"] == pytest.approx(summary["calibration"]["threshold"])
            assert stored["voxel_threshold"] == pytest.approx(summary["calibration"]["voxel_threshold"])
            assert stored["model_sha256"] == file_sha256(model_path), "the calibration names its model"
            assert set(stored["hysteresis_offsets"]) == {"2", "3"}, "the tumour classes' offsets are refitted"
        else:
            assert not calibration_path.exists(), "a calibration of the previous model must not be kept"

        backup = model_path.parent / "model_backups" / summary["backup"]
        assert (backup / "model.pt").read_bytes() == old_weights
        assert (backup / "ood_calibration.json").read_bytes() == old_calibration

        info = client.get("/info/").json()
        assert info["train_stats"]["maxquery"]["model_version"] == summary["model_version"]
        assert summary["backup"] in info["maxquery"]["backups"]
        _, _, params = infer(client, tmp_path, "case_c")
        assert params["model_version"] == summary["model_version"]

        # the documented way back: the restore command puts the previous model and its calibration back
        restored = subprocess.run(
            [sys.executable, str(APP_DIR / "restore_model.py"), "--model_path", str(model_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert restored.returncode == 0, restored.stderr
        assert model_path.read_bytes() == old_weights
        assert calibration_path.read_bytes() == old_calibration
        _, _, params = infer(client, tmp_path, "case_c")
        assert params["model_version"] == file_sha256(model_path)[:16]
        assert params["ood_threshold"] == 0.0, "the restored model is served with its own calibration"


@pytest.mark.slow
def test_training_keeps_the_current_model_unless_the_new_one_scores_higher(tmp_path: Path) -> None:
    model_path = make_model(tmp_path / "model")
    calibration_path = model_path.parent / "ood_calibration.json"
    old_weights, old_calibration = model_path.read_bytes(), calibration_path.read_bytes()
    studies = _training_studies(tmp_path)

    with monailabel_client(studies, app_conf(model_path)) as client:
        assert client.get("/info/").status_code == 200
        trainer = _trainer()
        measured = []
        real_score = trainer.current_score

        def perfect_current_model(*args):
            measured.append(real_score(*args))
            return 1.0

        trainer.current_score = perfect_current_model
        response = client.post("/train/maxquery", params={"run_sync": True}, json={"max_epochs": 1})
        assert response.status_code == 200, response.text
        summary = response.json()
        assert summary["published"] is False, summary
        assert "not published" in summary["reason"]
        assert summary["current_val_mean_dice"] == 1.0
        assert measured and np.isfinite(measured[0]), "the current model is scored on the validation cases"
        assert model_path.read_bytes() == old_weights
        assert calibration_path.read_bytes() == old_calibration
        assert not (model_path.parent / "model_backups").exists()
        assert client.get("/info/").json()["train_stats"]["maxquery"]["published"] is False

        # without the stand-in, the decision follows the two measured scores
        trainer.current_score = real_score
        summary = client.post("/train/maxquery", params={"run_sync": True}, json={"max_epochs": 1}).json()
        current, best = summary["current_val_mean_dice"], summary["best_val_mean_dice"]
        assert isinstance(current, float)
        assert summary["published"] is (best is not None and best > current)
        assert (model_path.read_bytes() != old_weights) is summary["published"]


def test_infer_result_in_nrrd_keeps_the_image_geometry(client: TestClient, studies: Path, tmp_path: Path) -> None:
    from monai.transforms import LoadImage

    query = {"image": "case_b", "output": "image"}
    params = {"result_extension": ".nrrd", "result_dtype": "uint8"}
    response = client.post("/infer/maxquery", params=query, data={"params": json.dumps(params)})
    assert response.status_code == 200, response.text
    result_path = tmp_path / "result.nrrd"
    result_path.write_bytes(response.content)

    result = LoadImage(image_only=True)(str(result_path))
    image = LoadImage(image_only=True)(str(studies / "case_b.nii.gz"))
    assert tuple(result.shape) == IMAGE_SHAPE
    np.testing.assert_allclose(np.asarray(result.affine), np.asarray(image.affine), atol=1e-4)


def test_the_bad_input_table_is_refused_by_name_by_the_server(tmp_path: Path, tiny_model: Path) -> None:
    """The table that the command line refuses (tests/bad_inputs.py): uploaded, sent for inference, or found in the
    studies folder, each bad image is a 422 that names the problem; each bad label is a 422 and stores nothing."""
    image, label = synthetic_case(0)
    studies = make_studies(tmp_path / "studies", ["case_a"], labelled_ids=())
    for kind in BAD_IMAGES:  # copied into the studies folder behind the server's back
        write_bad_image(kind, studies / f"found_{kind}.nii.gz", image, volume_affine())
    uploads = {
        kind: write_bad_image(kind, tmp_path / "up" / f"{kind}.nii.gz", image, volume_affine()) for kind in BAD_IMAGES
    }
    with monailabel_client(studies, app_conf(tiny_model)) as client:
        for kind, fragment in BAD_IMAGES.items():
            content = uploads[kind].read_bytes()
            stored = _put_image(client, f"up_{kind}", f"{kind}.nii.gz", content)
            sent = client.post("/infer/maxquery", files={"file": (f"{kind}.nii.gz", content)})
            found = client.post("/infer/maxquery", params={"image": f"found_{kind}"})
            for what, response in (("upload", stored), ("inference on a sent file", sent), ("inference", found)):
                assert response.status_code == 422, (kind, what, response.status_code, response.text)
                assert fragment in response.json()["detail"], (kind, what, response.json()["detail"])
                assert str(tmp_path) not in response.text, f"{what} of {kind}: the answer shows a server path"
            assert not (studies / f"up_{kind}.nii.gz").exists()
        for kind, fragment in BAD_LABELS.items():
            bad = write_bad_label(kind, tmp_path / "labels" / f"{kind}.nii.gz", label, volume_affine())
            response = _put_label(client, "case_a", f"{kind}.nii.gz", bad.read_bytes())
            assert response.status_code == 422 and fragment in response.json()["detail"], (kind, response.text)
            assert not (studies / "labels" / "final" / "case_a.nii.gz").exists()
        assert client.post("/infer/maxquery", params={"image": "case_a", "output": "json"}).status_code == 200


def test_the_configured_strategy_serves_ohifs_next_sample_requests(tmp_path: Path, tiny_model) -> None:
    studies = make_studies(tmp_path / "studies", ["a", "b", "c", "d"])
    with monailabel_client(studies, app_conf(tiny_model, activelearning_strategy="maxquery_ood")) as client:
        assert client.get("/info/").json()["config"] == {"activelearning": {"strategy": "maxquery_ood"}}
        _set_score(client, "c", 5.0)
        # OHIF's panel always asks for `random`: such requests get the highest-scored image
        assert [client.post("/activelearning/random", json={}).json()["id"] for _ in range(3)] == ["c"] * 3
    with monailabel_client(studies, app_conf(tiny_model, activelearning_strategy="random")) as client:
        # a request that names its strategy in its body keeps it
        response = client.post("/activelearning/random", json={"strategy": "maxquery_ood"})
        assert response.json()["id"] == "c"
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    from lib.app_settings import AppSettings

    with pytest.raises(ValueError, match="activelearning_strategy"):
        AppSettings.from_conf({"activelearning_strategy": "newest"}, REPO_ROOT)
