"""Package the bundle in the MONAI model-zoo layout, as a folder and a zip.

Run from the bundle root::

    python -m bundle.scripts.package --out dist

gives ``dist/maxquery_ct_ood/`` and ``dist/maxquery_ct_ood.zip`` holding::

    configs/metadata.json  configs/*.json  configs/logging.conf
    models/model.pt  models/localiser.pt  models/ood_calibration.json
    docs/README.md  LICENSE
    bundle/  (the Python code the configs import)

The repository's ``train.json`` and ``inference.json`` are layered on ``configs/common.json``
(:mod:`bundle.configs`); the package holds them flattened, each standalone, as the model zoo expects, and the
overlays (``evaluate.json``, ``multi_gpu_train.json``, ``refine.json``) as they are. The packaged bundle runs
inference on its own, from its folder::

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --dataset_dir /path/to/dataset
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bundle.configs import COMMON_CONFIG, write_flat_config

__all__ = ["main", "package_bundle"]

BUNDLE_NAME = "maxquery_ct_ood"
#: configs written flattened (with ``common.json`` merged in), and configs copied as they are
FLATTENED_CONFIGS = ("train.json", "inference.json")
COPIED_CONFIGS = ("evaluate.json", "multi_gpu_train.json", "refine.json", "logging.conf")
MODEL_FILES = ("model.pt", "localiser.pt", "ood_calibration.json")


def package_bundle(
    bundle_root: str | Path = ".", out_dir: str | Path = "dist", ckpt_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Write the model-zoo folder and its zip; return both paths.

    The folder is assembled in a temporary directory and moved into place at the end, so a failure leaves no
    half-written package and an existing package is only replaced by a complete one.

    Args:
        bundle_root: the repository root (it holds ``metadata.json``, ``configs/``, ``bundle/``).
        out_dir: where the folder and the zip go.
        ckpt_dir: where ``model.pt``, ``localiser.pt`` and ``ood_calibration.json`` are (default:
            ``BUNDLE_ROOT/models``).

    Raises:
        FileNotFoundError: a required file (metadata, config, checkpoint, calibration) is missing.
    """
    root = Path(bundle_root).resolve()
    ckpt = Path(ckpt_dir).resolve() if ckpt_dir else root / "models"
    required = [root / "metadata.json", root / "LICENSE", root / "docs" / "README.md"]
    configs = (COMMON_CONFIG, *FLATTENED_CONFIGS, *COPIED_CONFIGS)
    required += [root / "configs" / name for name in configs] + [ckpt / name for name in MODEL_FILES]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot package the bundle, missing: {', '.join(missing)}")
    metadata = json.loads((root / "metadata.json").read_text())

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staged = Path(tmp) / BUNDLE_NAME
        (staged / "configs").mkdir(parents=True)
        (staged / "models").mkdir()
        (staged / "docs").mkdir()
        shutil.copy2(root / "metadata.json", staged / "configs" / "metadata.json")
        for name in FLATTENED_CONFIGS:
            write_flat_config(staged / "configs" / name, name, root=root, meta_file=root / "metadata.json")
        for name in COPIED_CONFIGS:
            shutil.copy2(root / "configs" / name, staged / "configs" / name)
        for name in MODEL_FILES:
            shutil.copy2(ckpt / name, staged / "models" / name)
        shutil.copy2(root / "docs" / "README.md", staged / "docs" / "README.md")
        shutil.copy2(root / "LICENSE", staged / "LICENSE")
        shutil.copytree(root / "bundle", staged / "bundle", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        archive = shutil.make_archive(str(Path(tmp) / BUNDLE_NAME), "zip", root_dir=tmp, base_dir=BUNDLE_NAME)

        folder, zip_path = out / BUNDLE_NAME, out / f"{BUNDLE_NAME}.zip"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.move(str(staged), folder)
        shutil.move(archive, zip_path)
    print(f"packaged {metadata.get('name', BUNDLE_NAME)} {metadata.get('version', '')} -> {folder} and {zip_path}")
    return folder, zip_path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", default=".", help="repository root (default: current folder)")
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument("--ckpt_dir", help="folder with the checkpoints and the calibration (default: models)")
    args = parser.parse_args(argv)
    package_bundle(args.bundle_root, args.out, args.ckpt_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
