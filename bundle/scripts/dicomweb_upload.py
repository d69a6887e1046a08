"""Put NIfTI CT volumes into a DICOMweb server (a PACS such as Orthanc), one CT series per volume.

Each volume is written as a DICOM CT series (``bundle.dicom.write_ct_series``: the volume's geometry, signed 16-bit
Hounsfield units) and sent by STOW-RS. A volume that cannot be converted is reported by name and nothing of it is
sent; the others go on. Run from the repository root::

    python -m bundle.scripts.dicomweb_upload --url http://127.0.0.1:8042/dicom-web data/case_001.nii.gz ...
    # or cases of a dataset folder (``dataset.json``), e.g. two phantom test studies
    python -m bundle.scripts.dicomweb_upload --url http://127.0.0.1:8042/dicom-web \\
        --dataset_dir data/phantom_pancreas --split test --limit 1

It prints one row per volume: ``case,patient_id,study_uid,series_uid,error``, and exits with 1 if any failed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

from bundle.dicom import write_ct_series
from bundle.handlers.naming import strip_image_suffix

__all__ = ["UploadResult", "main", "upload_volume", "upload_volumes"]


@dataclass(frozen=True)
class UploadResult:
    """One volume's upload: its UIDs, or the error that stopped it."""

    case: str
    patient_id: str
    study_uid: str = ""
    series_uid: str = ""
    error: str = ""


def upload_volume(client: DICOMwebClient, path: str | Path, patient_id: str | None = None) -> UploadResult:
    """Convert one volume to a CT series and STOW it; errors are returned in the result, not raised."""
    case = strip_image_suffix(path)
    patient_id = patient_id or case
    with tempfile.TemporaryDirectory() as tmp:
        try:
            series = write_ct_series(path, tmp, patient_id=patient_id, series_description=f"CT {case}")
            datasets = [pydicom.dcmread(str(file)) for file in series.files]
        except (ValueError, OSError) as error:
            return UploadResult(case, patient_id, error=str(error))
        try:
            client.store_instances(datasets)
        except Exception as error:  # noqa: BLE001 - any transport or HTTP failure is this case's error row
            return UploadResult(case, patient_id, error=f"STOW-RS to {client.base_url} failed: {error}")
    return UploadResult(case, patient_id, series.study_uid, series.series_uid)


def upload_volumes(url: str, paths: Iterable[str | Path]) -> list[UploadResult]:
    """Upload every volume in ``paths`` to the DICOMweb server at ``url``."""
    client = DICOMwebClient(url=url)
    return [upload_volume(client, path) for path in paths]


def _dataset_images(dataset_dir: Path, split: str, limit: int | None) -> list[Path]:
    from bundle.data import load_datalist

    items = load_datalist(str(dataset_dir), split)
    return [Path(item["image"]) for item in items[:limit]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", help="NIfTI (or NRRD) CT volumes")
    parser.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--dataset_dir", type=Path, help="a dataset folder with dataset.json, instead of images")
    parser.add_argument("--split", default="test", help="the dataset list to upload (training, test, test_ood, ...)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many cases of the list")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.images]
    if args.dataset_dir:
        paths += _dataset_images(args.dataset_dir, args.split, args.limit)
    if not paths:
        parser.error("give image files or --dataset_dir")
    results = upload_volumes(args.url, paths)
    writer = csv.writer(sys.stdout)
    writer.writerow(["case", "patient_id", "study_uid", "series_uid", "error"])
    for result in results:
        writer.writerow([result.case, result.patient_id, result.study_uid, result.series_uid, result.error])
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
