"""The shipped weights fit the shipped configs exactly, and the calibration belongs to the shipped model."""

from __future__ import annotations

import json

import torch
from monai.bundle import ConfigParser

from bundle.configs import config_files
from bundle.networks import load_weights
from bundle.ood import calibrated_class_means
from bundle.ood.calibration import check_case_score, file_sha256


def test_shipped_checkpoints_load_strictly_into_the_packaged_inference_config(repo_root, tmp_path):
    from bundle.scripts.package import package_bundle

    packaged, _ = package_bundle(repo_root, tmp_path / "dist")
    assert not (packaged / "configs" / "common.json").exists(), "the package's configs must stand alone"
    flat = json.loads((packaged / "configs" / "inference.json").read_text())
    assert flat["num_classes"] == 4, "parsers that skip the metadata (MONAI Label's BundleInferTask) need the count"
    parser = ConfigParser()
    parser.read_config(str(packaged / "configs" / "inference.json"))
    parser.read_meta(str(packaged / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(packaged), "device": torch.device("cpu")})
    models = packaged / "models"
    network = load_weights(parser.get_parsed_content("network_def"), models / "model.pt")
    localiser = load_weights(parser.get_parsed_content("localiser#network_def"), models / "localiser.pt")
    with torch.no_grad():
        out = network(torch.zeros(1, 1, *parser["patch_size"]))
        organ = localiser(torch.zeros(1, 1, *parser["localiser"]["roi_size"]))
    assert out.shape[1] == parser.get_parsed_content("num_classes") + 1 and organ.shape[1] == 2


def test_shipped_calibration_records_the_shipped_model(repo_root):
    calibration = json.loads((repo_root / "models" / "ood_calibration.json").read_text())
    assert calibration["model_sha256"] == file_sha256(repo_root / "models" / "model.pt")
    parser = ConfigParser()
    parser.read_meta(str(repo_root / "metadata.json"))
    parser.read_config(config_files("inference.json", root=repo_root))
    assert check_case_score(calibration, parser.get_parsed_content("case_score_settings")), "settings not recorded"
    # the class means of the class-centred MaxQuery, one per class: the known tumours sit further from their centres
    models = repo_root / "models"
    means = calibrated_class_means(str(models / "ood_calibration.json"), models / "model.pt")
    assert sorted(means) == list(range(parser.get_parsed_content("num_classes")))
    assert min(means[2], means[3]) > means[1] + 10


def test_the_records_agree_with_the_benchmark_and_the_version(repo_root):
    import tomllib

    import bundle

    metadata = json.loads((repo_root / "metadata.json").read_text())
    assert metadata["version"] == bundle.__version__ and bundle.__version__ in metadata["changelog"]
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bundle.__version__"}
    results = json.loads((repo_root / "docs" / "benchmark" / "results.json").read_text())
    shipped = results["models"]["c_mask_transformer_qd"]["metrics"]
    expected = {f"{name}_dice": value for name, value in shipped["dice"].items() if name != "background"}
    maxquery = shipped["pixel_ood"]["maxquery"]
    expected.update({f"maxquery_pixel_{key}": maxquery[key] for key in ("auroc", "aupr", "fpr95")})
    expected["maxquery_case_auroc"] = shipped["case_ood"]["maxquery"]["auroc"]
    assert metadata["eval_metrics"] == {key: round(value, 3) for key, value in expected.items()}


def _train_network(repo_root, **overrides):
    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=repo_root))
    classes = {"0": "background", "1": "pancreas", "2": "pdac", "3": "pnet"}
    parser.update({"bundle_root": str(repo_root), "device": torch.device("cpu"), "class_names": classes, **overrides})
    return parser.get_parsed_content("network")


def test_training_can_start_from_the_shipped_model(repo_root):
    from bundle.networks.checkpoint import read_state_dict

    shipped = read_state_dict(repo_root / "models" / "model.pt")
    fresh = _train_network(repo_root).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in shipped.items()), "a new training starts from random weights"
    started = _train_network(repo_root, init_ckpt_path=str(repo_root / "models" / "model.pt")).state_dict()
    assert all(torch.equal(started[k], v) for k, v in shipped.items())


def test_the_kept_dynunet_baseline_loads_into_its_config_and_owns_its_calibration(repo_root):
    baseline = repo_root / "docs" / "benchmark" / "dynunet_baseline" / "models"
    calibration = json.loads((baseline / "ood_calibration.json").read_text())
    assert calibration["model_sha256"] == file_sha256(baseline / "model.pt")
    parser = ConfigParser()
    parser.read_config(config_files("train.json", "baseline_dynunet.json", root=repo_root))
    parser.update({"bundle_root": str(repo_root)})
    network = load_weights(parser.get_parsed_content("network_def"), baseline / "model.pt")
    with torch.no_grad():
        logits = network(torch.zeros(1, 1, *parser["patch_size"]))
    assert logits.shape[1] == parser.get_parsed_content("num_classes")
    # the benchmark's report of it is the one of these weights (its calibration's offsets, its Dice)
    report = json.loads((repo_root / "docs" / "benchmark" / "results.json").read_text())["models"]["a_dynunet"]
    offsets = {str(k): float(v) for k, v in calibration["hysteresis_offsets"].items()}
    assert report["metrics"]["settings"]["hysteresis_offsets"] == offsets
