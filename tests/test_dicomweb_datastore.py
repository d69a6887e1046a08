"""The app's DICOMweb datastore (apps/maxquery/lib/dicomweb_datastore.py) against a real Orthanc.

Labels are checked like the local datastore's before anything reaches the PACS, stored as DICOM SEG with their
original values, and read back onto the image's full grid; the app starts on a DICOMweb URL without downloading
anything and answers ``/info/`` in the shape OHIF and 3D Slicer expect.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 - the usual name
from fastapi import HTTPException

from bundle.dicom import write_ct_series

APP_DIR = Path(__file__).resolve().parents[1] / "apps" / "maxquery"
REPO_ROOT = APP_DIR.parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from lib.app_settings import AppSettings  # noqa: E402
from lib.bundle_config import BundleConfig  # noqa: E402
from lib.dicom_seg import (  # noqa: E402
    label_to_segmentation,
    rgb_to_dicom_lab,
    segment_value,
    segmentation_to_label,
    slice_instances,
)
from lib.dicomweb_datastore import ValidatingDICOMWebDatastore, check_uid  # noqa: E402
from lib.errors import InvalidInputError  # noqa: E402

#: the tiny CT: (x, y, z) voxels, spacing and origin in mm, and an LPS direction with flipped x and y (right-handed)
CT_SIZE = (24, 20, 12)
CT_SPACING = (0.8, 0.9, 2.5)
CT_ORIGIN = (12.5, -30.0, 40.25)
CT_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def app_label_names() -> dict[str, int]:
    """The label name -> value the app writes, built as ``MaxQuerySegmentation.labels`` is (bundle classes and the
    configured suspected-OOD value)."""
    classes = BundleConfig(REPO_ROOT, {}).class_names
    names = {name: index for index, name in classes.items() if index != 0}
    names["suspected_ood"] = AppSettings.from_conf({}, REPO_ROOT).ood_label_value
    return names


LABEL_NAMES = app_label_names()


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def ct_image() -> sitk.Image:
    """A phantom-like CT (HU): air, a body ellipse of soft tissue, a denser organ and a few bright voxels."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in CT_SIZE], indexing="ij")
    hu = np.full(CT_SIZE, -1000, dtype=np.int16)
    hu[(x / 0.9) ** 2 + (y / 0.8) ** 2 < 1] = 30
    hu[((x - 0.2) / 0.3) ** 2 + (y / 0.25) ** 2 + (z / 0.7) ** 2 < 1] = 45
    hu[2, 3, :] = 700
    image = sitk.GetImageFromArray(hu.transpose(2, 1, 0))
    image.SetSpacing(CT_SPACING)
    image.SetOrigin(CT_ORIGIN)
    image.SetDirection(CT_DIRECTION)
    return image


def ct_series(folder: Path, patient_id: str = "MQ-DW-1") -> tuple[str, list[pydicom.Dataset]]:
    """The CT as a DICOM series: its SeriesInstanceUID and instances."""
    series = write_ct_series(ct_image(), folder, patient_id=patient_id, patient_name="MaxQuery^Test")
    return series.series_uid, [pydicom.dcmread(path) for path in series.files]


def series_volume(datasets: list[pydicom.Dataset], folder: Path) -> nib.Nifti1Image:
    """The series as ITK reads it (as MONAI Label's ``dicom_to_nifti``), as a NIfTI image."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, dataset in enumerate(datasets):
        dataset.save_as(str(folder / f"{index:03d}.dcm"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(reader.Execute(), str(folder / "volume.nii.gz"))
    return nib.load(str(folder / "volume.nii.gz"))


def full_label(shape: tuple[int, ...]) -> np.ndarray:
    """A label with every app value (suspected OOD included) and empty first and last slices."""
    label = np.zeros(shape, dtype=np.uint8)
    label[4:14, 3:12, 2:9] = LABEL_NAMES["pancreas"]
    label[6:9, 5:8, 3:5] = LABEL_NAMES["pdac"]
    label[10:13, 8:11, 6] = LABEL_NAMES["pnet"]
    label[15:20, 12:16, 4:7] = LABEL_NAMES["suspected_ood"]
    label[0, 0, 1] = LABEL_NAMES["suspected_ood"]  # a corner voxel: frames keep their full size
    assert not label[:, :, 0].any() and not label[:, :, -1].any()
    return label


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` as NIfTI with ``affine``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def refused(call: Callable[[], object], fragment: str, status: int = 422) -> None:
    """``call`` raises the HTTP error ``status`` whose message holds ``fragment`` (422: from an InvalidInputError)."""
    with pytest.raises(HTTPException) as caught:
        call()
    assert caught.value.status_code == status, caught.value.detail
    assert fragment in caught.value.detail, caught.value.detail
    if status == 422:
        assert isinstance(caught.value.__cause__, InvalidInputError)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[str]:
    """A running Orthanc's DICOMweb URL."""
    from pacs import running_orthanc

    with running_orthanc(tmp_path / "pacs") as url:
        yield url


def store(url: str, datasets: list[pydicom.Dataset]) -> None:
    """STOW-RS the instances to the PACS."""
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url).store_instances(datasets)


def seg_instances(url: str) -> list[pydicom.Dataset]:
    """Every DICOM SEG instance on the PACS (QIDO, then WADO)."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url)
    instances = []
    for item in client.search_for_series(search_filters={"Modality": "SEG"}):
        meta = pydicom.Dataset.from_json(item)
        instances += client.retrieve_series(str(meta.StudyInstanceUID), str(meta.SeriesInstanceUID))
    return instances


def make_datastore(url: str, cache: Path) -> ValidatingDICOMWebDatastore:
    """The app's DICOMweb datastore on the PACS, with its own cache folder (as each server or trainer has)."""
    from monailabel.datastore.dicom import DICOMwebClientX

    return ValidatingDICOMWebDatastore(
        DICOMwebClientX(url=url), {"Modality": "CT"}, LABEL_NAMES, cache_path=str(cache), software_version="test"
    )


# ---------------------------------------------------------------------------------------------------------------------
# without a server
# ---------------------------------------------------------------------------------------------------------------------


def test_the_app_writes_the_suspected_ood_value_nine() -> None:
    assert LABEL_NAMES == {"pancreas": 1, "pdac": 2, "pnet": 3, "suspected_ood": 9}


@pytest.mark.parametrize(
    "bad", ["", "../etc", "1.2/3", "1..2", ".1.2", "1.2.", "1.2?x=1", "1.2 ", "1.2\n", "1" * 65, "１.２", None, 12]
)
def test_ids_that_are_not_dicom_uids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="DICOM UID"):
        check_uid(bad, "image id")


def test_dicom_uids_are_accepted() -> None:
    assert check_uid("1.2.840.10008.5.1.4.1.1.66.4", "id") == "1.2.840.10008.5.1.4.1.1.66.4"
    assert check_uid("1." + "2" * 62, "id") == "1." + "2" * 62


def test_colours_are_dicom_cielab() -> None:
    # magenta: L* 60.32, a* 98.23, b* -60.82 (sRGB, D65), scaled to 0..65535 as DICOM stores it
    magenta = rgb_to_dicom_lab((255, 0, 255))
    expected = (60.32 * 65535 / 100, (98.23 + 128) * 65535 / 255, (-60.82 + 128) * 65535 / 255)
    np.testing.assert_allclose(magenta, expected, atol=40)
    assert rgb_to_dicom_lab((255, 255, 255))[0] == 65535 and rgb_to_dicom_lab((0, 0, 0))[0] == 0


def test_segments_map_by_recorded_value_or_name_and_are_never_guessed() -> None:
    def segment(label: str, description: str | None = None) -> pydicom.Dataset:
        item = pydicom.Dataset()
        item.SegmentNumber, item.SegmentLabel = 1, label
        if description is not None:
            item.SegmentDescription = description
        return item

    assert segment_value(segment("suspected_ood", "MaxQuery label value 9"), LABEL_NAMES) == 9
    assert segment_value(segment("Pancreas"), LABEL_NAMES) == 1, "another tool's SEG: mapped by name"
    assert segment_value(segment("renamed", "MaxQuery label value 2"), LABEL_NAMES) == 2
    with pytest.raises(InvalidInputError, match="records label value 4"):
        segment_value(segment("pdac", "MaxQuery label value 4"), LABEL_NAMES)
    with pytest.raises(InvalidInputError, match="not one of this app's labels"):
        segment_value(segment("liver"), LABEL_NAMES)
    with pytest.raises(InvalidInputError, match="value 7"):
        segment_value(segment("other", "MaxQuery label value 7"), LABEL_NAMES)


def test_seg_keeps_values_and_the_full_grid(tmp_path: Path) -> None:
    """Label map -> DICOM SEG -> label map, without a PACS: equal voxel for voxel, empty slices included."""
    _, datasets = ct_series(tmp_path / "ct")
    volume = series_volume(datasets, tmp_path / "series")
    label = full_label(volume.shape)
    sources = slice_instances(datasets, volume.affine, volume.shape, "test series")

    seg = label_to_segmentation(label, LABEL_NAMES, sources, "test")
    buffer = io.BytesIO()
    seg.save_as(buffer)
    stored = pydicom.dcmread(io.BytesIO(buffer.getvalue()))

    described = [(int(s.SegmentNumber), str(s.SegmentLabel), str(s.SegmentDescription)) for s in stored.SegmentSequence]
    assert described == [
        (1, "pancreas", "MaxQuery label value 1"),
        (2, "pdac", "MaxQuery label value 2"),
        (3, "pnet", "MaxQuery label value 3"),
        (4, "suspected_ood", "MaxQuery label value 9"),
    ]
    ood = stored.SegmentSequence[3].RecommendedDisplayCIELabValue
    assert tuple(ood) == rgb_to_dicom_lab((255, 0, 255)), "suspected OOD is magenta"
    per_slice_segments = sum(len(set(np.unique(label[:, :, k])) - {0}) for k in range(label.shape[2]))
    assert int(stored.NumberOfFrames) == per_slice_segments, "empty frames are left out of the SEG"

    read = segmentation_to_label(stored, sources, LABEL_NAMES, "test SEG")
    assert read.shape == label.shape
    np.testing.assert_array_equal(read, label)

    # another tool's SEG: no recorded value, a capitalised name -> still the app's value
    for item in stored.SegmentSequence:
        del item.SegmentDescription
        item.SegmentLabel = str(item.SegmentLabel).capitalize()
    np.testing.assert_array_equal(segmentation_to_label(stored, sources, LABEL_NAMES, "test SEG"), label)
    stored.SegmentSequence[0].SegmentLabel = "liver"
    with pytest.raises(InvalidInputError, match="test SEG: segment 1 'liver'"):
        segmentation_to_label(stored, sources, LABEL_NAMES, "test SEG")

    # a writer that leaves out SpatialLocationsPreserved: read, positions checked frame by frame
    def fresh() -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(buffer.getvalue()))

    silent = fresh()
    for frame in silent.PerFrameFunctionalGroupsSequence:
        for derivation in frame.DerivationImageSequence:
            for source in derivation.SourceImageSequence:
                del source.SpatialLocationsPreserved
    np.testing.assert_array_equal(segmentation_to_label(silent, sources, LABEL_NAMES, "SEG"), label)
    shifted = fresh()
    shifted.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient[0] += 5.0
    with pytest.raises(InvalidInputError, match="frame 3 does not lie on the instance it references"):
        segmentation_to_label(shifted, sources, LABEL_NAMES, "SEG")

    # a SEG of another series is not placed on this one
    _, other = ct_series(tmp_path / "other_ct")
    other_sources = slice_instances(other, volume.affine, volume.shape, "other series")
    with pytest.raises(InvalidInputError, match="outside the image series"):
        segmentation_to_label(fresh(), other_sources, LABEL_NAMES, "SEG")


def test_info_lists_labels_for_ohif_and_each_model_maps_values(tmp_path: Path) -> None:
    from test_monailabel_app import app_conf, make_model, make_studies, monailabel_client

    studies = make_studies(tmp_path / "studies", ["case_a"])
    with monailabel_client(studies, app_conf(make_model(tmp_path / "model"))) as client:
        info = client.get("/info/").json()
    assert info["labels"] == ["pancreas", "pdac", "pnet", "suspected_ood"], "top level: a list, in label-value order"
    assert info["models"]["maxquery"]["labels"] == LABEL_NAMES


# ---------------------------------------------------------------------------------------------------------------------
# with Orthanc
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_label_saved_through_orthanc_reads_back_voxel_for_voxel(orthanc: str, tmp_path: Path) -> None:
    image_id, datasets = ct_series(tmp_path / "ct")
    store(orthanc, datasets)
    annotator = make_datastore(orthanc, tmp_path / "cache_annotator")
    assert annotator.list_images() == [image_id]
    image = nib.load(annotator.get_image_uri(image_id))
    np.testing.assert_allclose(np.diag(image.affine)[:3], [CT_SPACING[0], CT_SPACING[1], CT_SPACING[2]], atol=1e-5)
    np.testing.assert_allclose(image.affine[:3, 3], [-CT_ORIGIN[0], -CT_ORIGIN[1], CT_ORIGIN[2]], atol=1e-4)
    label = full_label(image.shape)
    label_file = save_nifti(tmp_path / "label.nii.gz", label, image.affine)

    assert annotator.save_label(image_id, str(label_file), "final", {}) == image_id

    (seg,) = seg_instances(orthanc)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["pancreas", "pdac", "pnet", "suspected_ood"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3, 4]
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == image_id

    # a trainer with its own cache reads the SEG from the PACS
    trainer = make_datastore(orthanc, tmp_path / "cache_trainer")
    (pair,) = trainer.datalist()
    assert Path(pair["image"]).name == f"{image_id}.nii.gz"
    read = nib.load(pair["label"])
    assert read.shape == image.shape
    np.testing.assert_array_equal(np.asarray(read.dataobj), label)
    np.testing.assert_allclose(read.affine, nib.load(pair["image"]).affine, atol=1e-6)
    assert sorted(np.unique(np.asarray(read.dataobj)).tolist()) == [0, 1, 2, 3, 9]

    # MONAI Label's download endpoint names the image; the annotator's own cache holds the same label
    for datastore in (trainer, annotator):
        uri = datastore.get_label_uri(image_id, "final")
        np.testing.assert_array_equal(np.asarray(nib.load(uri).dataobj), label)
    assert trainer.get_labeled_images() == [image_id] and trainer.get_unlabeled_images() == []

    # a label of another tag (e.g. a kept prediction) stays in the cache: nothing goes to the PACS
    prediction = label.copy()
    prediction[prediction == LABEL_NAMES["pdac"]] = LABEL_NAMES["pancreas"]
    save_nifti(tmp_path / "prediction.nii.gz", prediction, image.affine)
    annotator.save_label(image_id, str(tmp_path / "prediction.nii.gz"), "maxquery_prediction", {})
    assert len(seg_instances(orthanc)) == 1
    uri = annotator.get_label_uri(image_id, "maxquery_prediction")
    np.testing.assert_array_equal(np.asarray(nib.load(uri).dataobj), prediction)

    # OHIF's raw .bin (one uint8 per voxel, Fortran order on the image grid) replaces it: the newest SEG wins
    edited = label.copy()
    edited[edited == LABEL_NAMES["pnet"]] = LABEL_NAMES["suspected_ood"]
    edited[:, :, 1] = 0
    (tmp_path / "label.bin").write_bytes(edited.tobytes(order="F"))
    annotator.save_label(image_id, str(tmp_path / "label.bin"), "final", {})
    assert len(seg_instances(orthanc)) == 2
    (pair,) = trainer.datalist()
    np.testing.assert_array_equal(np.asarray(nib.load(pair["label"]).dataobj), edited)


@pytest.mark.slow
def test_scores_written_by_another_process_are_read_by_the_server(orthanc: str, tmp_path: Path) -> None:
    image_id, datasets = ct_series(tmp_path / "ct")
    store(orthanc, datasets)
    # the server and the background scoring process each hold a datastore on the same cache
    server = make_datastore(orthanc, tmp_path / "cache")
    scoring = make_datastore(orthanc, tmp_path / "cache")
    server.get_image_uri(image_id)
    assert "maxquery_ood_score" not in server.get_image_info(image_id)
    scoring.update_image_info(image_id, {"maxquery_ood_score": -5.5})
    assert server.get_image_info(image_id)["maxquery_ood_score"] == -5.5


@pytest.mark.slow
def test_bad_labels_are_refused_before_anything_reaches_the_pacs(orthanc: str, tmp_path: Path) -> None:
    image_id, datasets = ct_series(tmp_path / "ct")
    store(orthanc, datasets)
    datastore = make_datastore(orthanc, tmp_path / "cache")
    image = nib.load(datastore.get_image_uri(image_id))
    good = full_label(image.shape)
    shifted = image.affine.copy()
    shifted[:3, 3] += 10.0
    with_seven = good.copy()
    with_seven[5, 5, 5] = 7
    bad = {
        "shape": (save_nifti(tmp_path / "shape.nii.gz", good[:-2], image.affine), "spatial shape"),
        "geometry": (save_nifti(tmp_path / "shifted.nii.gz", good, shifted), "geometry"),
        "value": (save_nifti(tmp_path / "seven.nii.gz", with_seven, image.affine), "[7]"),
        "2d": (save_nifti(tmp_path / "flat.nii.gz", good[:, :, 5], image.affine), "3D"),
        "empty": (save_nifti(tmp_path / "empty.nii.gz", np.zeros_like(good), image.affine), "no labelled voxel"),
        "bin_size": (tmp_path / "short.bin", "one uint8 per image voxel"),
        "type": (tmp_path / "label.png", "unsupported file type"),
    }
    (tmp_path / "short.bin").write_bytes(good.tobytes(order="F")[:-5])
    (tmp_path / "label.png").write_bytes(b"\x89PNG")
    for kind, (path, fragment) in bad.items():
        refused(lambda p=path: datastore.save_label(image_id, str(p), "final", {}), fragment)
        assert seg_instances(orthanc) == [], f"{kind}: nothing may reach the PACS"

    label_file = save_nifti(tmp_path / "good.nii.gz", good, image.affine)
    for hostile in ("../../etc", f"{image_id}/../x", "1.2.3?Modality=CT"):
        refused(lambda h=hostile: datastore.save_label(h, str(label_file), "final", {}), "DICOM UID")
        refused(lambda h=hostile: datastore.get_label_uri(h, "final"), "DICOM UID")
        refused(lambda h=hostile: datastore.get_image_uri(h), "DICOM UID")
    refused(lambda: datastore.save_label(image_id, str(label_file), "../final", {}), "label tag")
    refused(lambda: datastore.save_label("1.2.3.4", str(label_file), "final", {}), "not found", status=404)
    refused(lambda: datastore.get_label_uri(image_id, "final"), "not found", status=404)
    assert seg_instances(orthanc) == []
    assert not list((tmp_path / "cache").rglob("labels/final/*.nii.gz")), "nothing kept in the cache either"


@pytest.mark.slow
def test_the_app_starts_offline_on_orthanc_and_serves_labels(
    orthanc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No dcmqi download, no dcmqi on PATH: the app finds the wheel's tools, answers /info/ and PUT /datastore/label."""
    import monai.apps
    import monailabel.interfaces.app
    from monailabel.config import settings
    from test_monailabel_app import app_conf, make_model, monailabel_client

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the app tried to download {args} {kwargs}")

    for module in (monailabel.interfaces.app, monai.apps):
        monkeypatch.setattr(module, "download_and_extract", no_download)
    monkeypatch.setattr(monai.apps, "download_url", no_download)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("itkimage2segimage") is None
    monkeypatch.setattr(settings, "MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "cache"))
    image_id, datasets = ct_series(tmp_path / "ct")
    store(orthanc, datasets)
    model = make_model(tmp_path / "model")

    with monailabel_client(orthanc, app_conf(model)) as client:
        info = client.get("/info/").json()  # the app is built on the first request
        tool = shutil.which("itkimage2segimage")
        assert tool is not None and "dcmqi" in Path(tool).parts, tool
        assert not (APP_DIR / "bin" / "itkimage2segimage").exists()
        assert info["labels"] == ["pancreas", "pdac", "pnet", "suspected_ood"]
        assert info["models"]["maxquery"]["labels"] == LABEL_NAMES

        label = full_label(CT_SIZE)
        with_seven = label.copy()
        with_seven[3, 3, 3] = 7

        def put_label(array: np.ndarray):
            files = {"label": ("label.bin", array.tobytes(order="F"))}
            return client.put("/datastore/label", params={"image": image_id, "tag": "final"}, files=files)

        refused_put = put_label(with_seven)
        assert refused_put.status_code == 422 and "[7]" in refused_put.text, refused_put.text
        assert seg_instances(orthanc) == []
        saved = put_label(label)
        assert saved.status_code == 200, saved.text
        assert len(seg_instances(orthanc)) == 1

        (pair,) = client.get("/datastore/", params={"output": "train"}).json()
        np.testing.assert_array_equal(np.asarray(nib.load(pair["label"]).dataobj), label)
        downloaded = client.get("/datastore/label", params={"label": image_id, "tag": "final"})
        assert downloaded.status_code == 200, downloaded.text
        (tmp_path / "downloaded.nii.gz").write_bytes(downloaded.content)
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "downloaded.nii.gz").dataobj), label)
        hostile = client.get("/datastore/label", params={"label": "../../etc/passwd", "tag": "final"})
        assert hostile.status_code == 422 and "DICOM UID" in hostile.text, hostile.text
