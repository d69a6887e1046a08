"""The bundle through `monai.bundle`: train, calibrate, infer, evaluate, export, package, multi-process training.

One tiny phantom dataset and one short training run are shared by the module; the network is shrunk by config
overrides, exactly as a user would override the configs from the command line.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_inputs import BAD_IMAGES, BAD_LABELS, write_bad_image, write_bad_label

from bundle.configs import COMMON_CONFIG, config_files
from bundle.data.phantom import generate_dataset
from bundle.handlers import ROI_VOXEL_KEYS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SUSPECTED_OOD = json.loads((REPO / "configs" / "inference.json").read_text())["suspected_ood_label"]
INFERENCE_CONFIGS = "['configs/common.json','configs/inference.json']"

TINY = {
    "patch_size": "[32,32,16]",
    "pixdim": "[5.0,5.0,10.0]",
    "backbone#filters": "[8,16,16,16]",
    "network_def#embed_dim": "16",
    "network_def#num_layers": "2",
    "network_def#num_heads": "2",
    "num_workers": "0",
    "localiser#network_def#filters": "[4,8,8,8]",
    "localiser#roi_size": "[32,32,16]",
}


def _cli(args: dict) -> list[str]:
    out = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


def _run_bundle(configs: list[str], cwd: Path, meta: str, overrides: dict) -> subprocess.CompletedProcess:
    if "configs/train.json" in configs:  # every job layered on train.json can also train the organ localiser
        overrides = {"localiser_train#max_epochs": 1, **overrides}
    if (cwd / "configs" / COMMON_CONFIG).is_file():  # the repository's configs are layered on common.json
        configs = [f"configs/{COMMON_CONFIG}", *configs]
    config_arg = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", meta, "--config_file", config_arg]
    cmd += ["--logging_file", "configs/logging.conf"] + _cli(overrides)
    env = dict(os.environ, PYTHONPATH=str(cwd), CUDA_VISIBLE_DEVICES="")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def bundle_run(configs: list[str], cwd: Path = REPO, meta: str = "metadata.json", **overrides) -> str:
    """Run `python -m monai.bundle run` and return its output; fail the test with the output on error."""
    proc = _run_bundle(configs, cwd, meta, overrides)
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def bundle_run_failing(configs: list[str], **overrides) -> str:
    """Run `python -m monai.bundle run` from the repository, expect it to fail, return its error output."""
    proc = _run_bundle(configs, REPO, "metadata.json", overrides)
    assert proc.returncode != 0, f"{' '.join(proc.args)} succeeded but should have failed"
    return proc.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "tiny"
    generate_dataset(out, seed=3, num_train=4, num_val=2, num_test=2, num_ood=2, shape=(48, 48, 16))
    return out


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A checkpoint and calibration from one epoch of `configs/train.json` (validation every epoch)."""
    run_dir = tmp_path_factory.mktemp("run")
    log = bundle_run(
        ["configs/train.json"],
        dataset_dir=dataset,
        ckpt_dir=run_dir / "models",
        output_dir=run_dir / "eval",
        val_interval=1,
        **{"train#trainer#max_epochs": 1},
        **TINY,
    )
    assert "Epoch[1] Complete" in log or "Epoch[1]" in log
    return run_dir


def test_train_writes_checkpoint_and_calibration(trained):
    assert (trained / "models" / "model.pt").is_file()
    calibration = json.loads((trained / "models" / "ood_calibration.json").read_text())
    assert calibration["num_cases"] == 2
    assert np.isfinite(calibration["threshold"]) and np.isfinite(calibration["voxel_threshold"])
    assert list(trained.joinpath("eval").glob("events.out.tfevents*")), "TensorBoard log missing"


def test_inference_writes_the_output_contract(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    bundle_run(["configs/inference.json"], dataset_dir=dataset, ckpt_dir=trained / "models", output_dir=out, **TINY)
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    rows = list(csv.DictReader((out / "ood_cases.csv").open()))
    assert [r["case"] for r in rows] == [p.name[: -len(".nii.gz")] for p in images]
    calibration = json.loads((trained / "models" / "ood_calibration.json").read_text())
    threshold, voxel_threshold = calibration["threshold"], calibration["voxel_threshold"]
    for row in rows:
        assert int(row["flag"]) == int(float(row["score"]) > threshold)
    for image_path in images:
        name = image_path.name[: -len(".nii.gz")]
        image = nib.load(image_path)
        seg, ood = nib.load(out / f"{name}_seg.nii.gz"), nib.load(out / f"{name}_ood.nii.gz")
        for result in (seg, ood):
            assert result.shape == image.shape
            np.testing.assert_allclose(result.affine, image.affine, atol=1e-4)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(seg.get_fdata())) <= {0, 1, 2, 3, SUSPECTED_OOD}
        assert ood.get_data_dtype() == np.float32 and np.isfinite(ood.get_fdata()).all()
        # suspected OOD: exactly the predicted organ/lesion voxels above the calibrated voxel threshold
        labels, anomaly = seg.get_fdata(), ood.get_fdata()
        assert (anomaly[labels == SUSPECTED_OOD] > voxel_threshold).all()
        assert (anomaly[(labels > 0) & (labels != SUSPECTED_OOD)] <= voxel_threshold).all()


def test_suspected_ood_follows_the_calibration_of_this_model_only(trained, dataset, tmp_path):
    from bundle.ood.calibration import file_sha256

    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.pt", "localiser.pt", "ood_calibration.json"):
        (models / name).write_bytes((trained / "models" / name).read_bytes())
    calibration = json.loads((models / "ood_calibration.json").read_text())
    assert calibration["model_sha256"] == file_sha256(models / "model.pt")

    def infer(name: str, voxel_threshold: float, model_sha256: str) -> tuple[Path, str]:
        (models / "ood_calibration.json").write_text(
            json.dumps({**calibration, "voxel_threshold": voxel_threshold, "model_sha256": model_sha256})
        )
        out = tmp_path / name
        return out, bundle_run(["configs/inference.json"], dataset_dir=dataset, ckpt_dir=models, output_dir=out, **TINY)

    first, _ = infer("first", calibration["voxel_threshold"], calibration["model_sha256"])
    foreground = [
        nib.load(first / f"{seg.name[: -len('_seg.nii.gz')]}_ood.nii.gz").get_fdata()[nib.load(seg).get_fdata() > 0]
        for seg in first.glob("*_seg.nii.gz")
    ]
    median = float(np.median(np.concatenate(foreground)))  # marks about half of the predicted foreground
    marked_run, _ = infer("marked", median, calibration["model_sha256"])
    marked = 0
    for seg_path in marked_run.glob("*_seg.nii.gz"):
        labels = nib.load(seg_path).get_fdata()
        anomaly = nib.load(marked_run / f"{seg_path.name[: -len('_seg.nii.gz')]}_ood.nii.gz").get_fdata()
        assert (anomaly[labels == SUSPECTED_OOD] > median).all()
        assert (anomaly[(labels > 0) & (labels != SUSPECTED_OOD)] <= median).all()
        marked += int((labels == SUSPECTED_OOD).sum())
    assert marked > 0

    other, log = infer("other_model", median, "0" * 64)  # calibrated for another model file
    assert "calibrated for another model" in log
    rows = list(csv.DictReader((other / "ood_cases.csv").open()))
    assert rows and all(row["flag"] == "" for row in rows)
    for seg_path in other.glob("*_seg.nii.gz"):
        assert SUSPECTED_OOD not in np.unique(nib.load(seg_path).get_fdata())


def test_evaluate_writes_metrics(trained, dataset, tmp_path):
    out = tmp_path / "evaluation"
    bundle_run(
        ["configs/train.json", "configs/evaluate.json"],
        dataset_dir=dataset,
        ckpt_dir=trained / "models",
        output_dir=out,
        **TINY,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == {"test": 2, "test_ood": 2}
    assert set(metrics["pixel_ood"]) >= {"maxquery", "msp", "max_logit", "energy", "entropy"}
    for values in metrics["pixel_ood"].values():
        assert 0.0 <= values["auroc"] <= 1.0 and 0.0 <= values["aupr"] <= 1.0
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert sorted(r["group"] for r in rows) == ["test", "test", "test_ood", "test_ood"]
    # the breakdown names the dataset's OOD lesion types, each present type with its cases
    present = {t for r in rows for t in r["ood_types"].split(";") if t}
    assert present and set(metrics["by_ood_type"]) == present
    assert all(v["cases"] >= 1 and 0.0 <= v["pixel_auroc"]["maxquery"] <= 1.0 for v in metrics["by_ood_type"].values())


def test_every_cascade_feeds_the_networks_the_training_intensities(trained, dataset):
    """Calibration, evaluation and inference crop the image the validation run saw, HU-windowed the same way."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    def parsed(configs: list[str]) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(config_files(*configs, root=REPO))
        parser.read_meta(str(REPO / "metadata.json"))
        overrides = {"dataset_dir": str(dataset), "ckpt_dir": str(trained / "models"), "num_workers": 0}
        for key, value in {**overrides, **{k: json.loads(v) for k, v in TINY.items()}}.items():
            parser[key] = value
        return parser

    train = parsed(["train.json"])
    case = json.loads((dataset / "dataset.json").read_text())["validation"][0]
    case = {key: str(dataset / value) for key, value in case.items()}
    expected = Compose(
        train.get_parsed_content("train#load_transforms") + train.get_parsed_content("intensity_transforms")
    )(case)["image"]
    assert float(expected.min()) >= 0.0 and float(expected.max()) <= 1.0
    inference = parsed(["inference.json"])
    pipelines = {
        "calibration": train.get_parsed_content("calibrate#dataset#transform"),
        "evaluation": parsed(["train.json", "evaluate.json"]).get_parsed_content("validate#dataset#transform"),
        "inference": inference.get_parsed_content("preprocessing"),
    }
    for name, preprocessing in pipelines.items():
        data = preprocessing({"image": case["image"]} if name == "inference" else case)
        region = data["organ_region"]
        box = tuple(slice(s, e) for s, e in zip(region["box_start"], region["box_end"], strict=True))
        np.testing.assert_allclose(
            np.asarray(data["image"]),
            np.asarray(expected[(slice(None), *box)]),
            atol=1e-5,
            err_msg=f"{name} preprocessing differs from training's",
        )


def test_workflow_properties_and_network_io(trained, dataset):
    from monai.bundle import ConfigWorkflow

    for config, kind in (("train.json", "train"), ("inference.json", "infer")):
        workflow = ConfigWorkflow(
            config_file=config_files(config, root=REPO),
            meta_file=str(REPO / "metadata.json"),
            workflow_type=kind,
            dataset_dir=str(dataset),
            ckpt_dir=str(trained / "models"),
            output_dir=str(trained / "properties"),
            **{key: json.loads(value) for key, value in TINY.items()},  # the cascade loads the tiny localiser
        )
        workflow.initialize()
        assert not workflow.check_properties(), f"{config}: missing properties {workflow.check_properties()}"
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", "metadata.json"]
    cmd += ["--config_file", INFERENCE_CONFIGS, "--n", "4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "verified" in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_exported_torchscript_matches_the_checkpoint(trained, tmp_path):
    exported = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(exported)]
    cmd += ["--ckpt_file", str(trained / "models" / "model.pt"), "--meta_file", "metadata.json"]
    cmd += ["--config_file", INFERENCE_CONFIGS, "--use_trace", "True", "--input_shape", "[1,1,32,32,16]"]
    cmd += _cli(TINY)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripted = torch.jit.load(str(exported))
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files("inference.json", root=REPO))
    parser.read_meta(str(REPO / "metadata.json"))
    for key, value in TINY.items():
        parser[key] = json.loads(value)
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(trained / "models" / "model.pt", map_location="cpu"))
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), atol=1e-4, rtol=1e-4)


def test_bad_inputs_stop_with_a_named_problem(trained, dataset, tmp_path):
    error = bundle_run_failing(
        ["configs/inference.json"], dataset_dir=dataset, ckpt_dir=tmp_path / "nowhere", output_dir=tmp_path / "out"
    )
    assert "checkpoint not found" in error and str(tmp_path / "nowhere") in error
    assert not (tmp_path / "out" / "ood_cases.csv").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes((trained / "models" / "model.pt").read_bytes()[:3000])
    (broken / "localiser.pt").write_bytes((trained / "models" / "localiser.pt").read_bytes())
    error = bundle_run_failing(
        ["configs/inference.json"], dataset_dir=dataset, ckpt_dir=broken, output_dir=tmp_path / "out1", **TINY
    )
    assert f"the checkpoint {broken / 'model.pt'} cannot be loaded" in error and "truncated" in error
    error = bundle_run_failing(
        ["configs/inference.json"],
        dataset_dir=dataset,
        ckpt_dir=trained / "models",
        output_dir=tmp_path / "out1",
        num_classes=5,
        **TINY,
    )
    assert "does not fit the configured network" in error
    assert "query_feat: checkpoint (16, 16), network (20, 16)" in error
    assert not (tmp_path / "out1" / "ood_cases.csv").exists()

    bad = tmp_path / "bad"
    (bad / "imagesTs").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), bad / "imagesTs" / "flat.nii.gz")
    error = bundle_run_failing(
        ["configs/inference.json"],
        dataset_dir=bad,
        ckpt_dir=trained / "models",
        output_dir=tmp_path / "out2",
        **TINY,
    )
    assert "flat.nii.gz" in error and "3D" in error

    assert not (tmp_path / "out2" / "flat_seg.nii.gz").exists()

    absent = tmp_path / "no_such_dataset"
    error = bundle_run_failing(
        ["configs/train.json"], dataset_dir=absent, ckpt_dir=tmp_path / "models3", output_dir=tmp_path / "out3"
    )
    assert f"dataset not found: {absent / 'dataset.json'}" in error
    assert not absent.exists(), "a user's missing dataset must not be replaced by a generated phantom"


def test_the_bad_input_table_is_refused_by_name_in_inference_and_training(trained, dataset, tmp_path):
    good = sorted((dataset / "imagesTs").glob("*.nii.gz"))[0]
    reference = nib.load(str(good))
    image, affine = np.asarray(reference.dataobj), reference.affine
    bad = [write_bad_image(kind, tmp_path / "in" / f"{kind}.nii.gz", image, affine) for kind in BAD_IMAGES]
    out = tmp_path / "out"
    datalist = [{"image": str(path)} for path in (good, *bad)]
    error = bundle_run_failing(
        ["configs/inference.json"], datalist=datalist, ckpt_dir=trained / "models", output_dir=out, **TINY
    )
    assert f"{len(BAD_IMAGES)} of {len(datalist)} case(s) failed" in error
    rows = {row["case"]: row for row in csv.DictReader((out / "ood_cases.csv").open())}
    for kind, fragment in BAD_IMAGES.items():
        message = rows[kind]["message"]
        assert fragment in message and f"{kind}.nii.gz" in message, (kind, message)
        assert rows[kind]["score"] == "" and not list(out.glob(f"{kind}_*"))
    assert np.isfinite(float(rows[good.name[: -len(".nii.gz")]]["score"]))

    case = json.loads((dataset / "dataset.json").read_text())["training"][0]
    label = nib.load(str(dataset / case["label"]))
    for kind, fragment in BAD_LABELS.items():
        label_path = tmp_path / "labels" / f"{kind}.nii.gz"
        write_bad_label(kind, label_path, np.asarray(label.dataobj), label.affine)
        models = tmp_path / f"models_{kind}"
        error = bundle_run_failing(
            ["configs/train.json"],
            dataset_dir=dataset,
            train_datalist=[{"image": str(dataset / case["image"]), "label": str(label_path)}],
            ckpt_dir=models,
            output_dir=tmp_path / f"eval_{kind}",
            **TINY,
        )
        assert fragment in error and f"{kind}.nii.gz" in error, (kind, error[-2000:])
        assert not list(models.glob("*.pt")), "nothing is trained or saved from a bad label"


def test_a_bad_case_gets_its_row_and_the_other_cases_complete(trained, dataset, tmp_path):
    good = sorted((dataset / "imagesTs").glob("*.nii.gz"))[0]
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), flat)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:2000])
    out = tmp_path / "out"
    datalist = [{"image": str(flat)}, {"image": str(good)}, {"image": str(truncated)}]
    error = bundle_run_failing(
        ["configs/inference.json"], datalist=datalist, ckpt_dir=trained / "models", output_dir=out, **TINY
    )
    assert "2 of 3 case(s) failed" in error and "flat" in error and "truncated" in error
    rows = {row["case"]: row for row in csv.DictReader((out / "ood_cases.csv").open())}
    assert set(rows) == {"flat", "truncated", good.name[: -len(".nii.gz")]}
    assert rows["flat"]["score"] == "" and "3D" in rows["flat"]["message"]
    assert rows["truncated"]["score"] == "" and "truncated.nii.gz" in rows["truncated"]["message"]
    name = good.name[: -len(".nii.gz")]
    assert np.isfinite(float(rows[name]["score"])) and rows[name]["flag"] in ("0", "1")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{name}_ood.nii.gz", f"{name}_seg.nii.gz"]

    error = bundle_run_failing(
        ["configs/inference.json"], datalist=[], ckpt_dir=trained / "models", output_dir=out, **TINY
    )
    assert "inference datalist is empty" in error


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_and_pairs_the_model_with_its_calibration(dataset, tmp_path):
    import signal
    import time

    from bundle.ood.calibration import file_sha256

    models = tmp_path / "models"
    state_path = models / "training_state.pt"
    overrides = {
        "dataset_dir": dataset,
        "ckpt_dir": models,
        "output_dir": tmp_path / "eval",
        "train#trainer#max_epochs": 40,
        "val_interval": 2,
        "localiser_train#max_epochs": 1,
        **TINY,
    }
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", "metadata.json"]
    cmd += ["--config_file", "['configs/common.json','configs/train.json']"] + _cli(overrides)
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def epoch() -> int:
        try:
            trainer = torch.load(state_path, weights_only=True)["trainer"]
            return int(trainer["iteration"]) // int(trainer["epoch_length"])
        except (OSError, RuntimeError, KeyError, EOFError):
            return 0

    try:
        deadline = time.monotonic() + 300
        while epoch() < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = epoch()
    assert 3 <= killed_at < 40 and (models / "model.pt").is_file()
    best_at_kill = torch.load(state_path, weights_only=True)["best_model"]["best_metric"]
    assert best_at_kill is not None, "the state saved after a validation records the best metric"
    assert not (models / "ood_calibration.json").exists(), "calibration is written only after the last epoch"
    assert not list(models.glob("*.partial")) and not list(models.glob(".*tmp*"))

    resume = {**overrides, "resume_from": state_path, "train_localiser": False}
    log = bundle_run(["configs/train.json"], **resume)
    assert f"resumed training from {state_path} at epoch {killed_at}." in log
    assert epoch() == 40
    assert torch.load(state_path, weights_only=True)["best_model"]["best_metric"] >= best_at_kill
    calibration = json.loads((models / "ood_calibration.json").read_text())
    assert calibration["model_sha256"] == file_sha256(models / "model.pt")


def test_two_process_gloo_training(dataset, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += ["-m", "monai.bundle", "run", "--meta_file", "metadata.json"]
    cmd += ["--config_file", "['configs/common.json','configs/train.json','configs/multi_gpu_train.json']"]
    cmd += ["--logging_file", "configs/logging.conf"]
    cmd += _cli(
        {
            "dataset_dir": dataset,
            "ckpt_dir": tmp_path / "models",
            "output_dir": tmp_path / "eval",
            "train#trainer#max_epochs": 1,
            "localiser_train#max_epochs": 1,
            "val_interval": 1,
            **TINY,
        }
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "models" / "ood_calibration.json").is_file()


def test_packaged_bundle_runs_inference_on_its_own(trained, dataset, tmp_path):
    from bundle.scripts.package import package_bundle

    folder, archive = package_bundle(REPO, tmp_path / "dist", ckpt_dir=trained / "models")
    assert archive.is_file() and (folder / "configs" / "metadata.json").is_file()
    assert (folder / "bundle" / "networks").is_dir() and (folder / "docs" / "README.md").is_file()
    overlays = ("evaluate.json", "multi_gpu_train.json", "refine.json")
    assert all((folder / "configs" / name).is_file() for name in overlays)
    out = tmp_path / "packaged_out"
    bundle_run(
        ["configs/inference.json"],
        cwd=folder,
        meta="configs/metadata.json",
        dataset_dir=dataset,
        output_dir=out,
        **TINY,
    )
    assert len(list(out.glob("*_seg.nii.gz"))) == len(list((dataset / "imagesTs").glob("*.nii.gz")))


def test_pipeline_trains_evaluates_and_prints_the_table(dataset, tmp_path, capsys):
    from bundle.scripts.pipeline import main

    tiny = [token for key, value in TINY.items() for token in (f"--{key}", value)]
    argv = ["--bundle_root", str(REPO), "--dataset_dir", str(dataset), "--max_epochs", "1", "--refine_epochs", "1"]
    argv += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--val_interval", "1"]
    argv += ["--localiser_train#max_epochs", "1"]
    assert main(argv + tiny) == 0
    printed = capsys.readouterr().out
    assert "pixel AUROC" in printed and "maxquery" in printed and "Dice (inlier test cases)" in printed
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_cases"]["test_ood"] == 2
    lead = json.loads((tmp_path / "eval" / "lead.json").read_text())["lead"]
    assert lead["reference"] == "maxquery" and set(lead["over"]) >= {"max_logit", "energy", "msp", "entropy", "rba"}
    assert "maxquery over max_logit" in printed and "paired case bootstrap" in printed
    timings = json.loads((tmp_path / "eval" / "timings.json").read_text())["seconds"]
    assert "refinement" in timings and "mask_transformer" in timings


def test_dynunet_baseline_by_configuration(dataset, tmp_path):
    tiny = {k: v for k, v in TINY.items() if k.split("#")[-1] not in ("embed_dim", "num_layers", "num_heads")}
    common = {"dataset_dir": dataset, "ckpt_dir": tmp_path / "models", **tiny}
    bundle_run(
        ["configs/train.json", "configs/baseline_dynunet.json"],
        output_dir=tmp_path / "train",
        val_interval=1,
        **{"train#trainer#max_epochs": 1},
        **common,
    )
    calibration = json.loads((tmp_path / "models" / "ood_calibration.json").read_text())
    assert np.isfinite(calibration["threshold"])  # the per-voxel head is calibrated on its MSP map
    bundle_run(
        ["configs/train.json", "configs/evaluate.json", "configs/baseline_dynunet.json"],
        output_dir=tmp_path / "evaluation",
        save_scores="true",
        **common,
    )
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert "maxquery" not in metrics["pixel_ood"] and metrics["settings"]["input_type"] == "logits"
    scores = np.load(tmp_path / "evaluation" / "roi_scores.npz")
    methods = {"msp", "max_logit", "energy", "entropy", "rba"}
    assert set(scores.files) == methods | set(ROI_VOXEL_KEYS)
    assert scores["is_ood"].sum() == metrics["num_roi_voxels"]["ood"] > 0
