"""NIfTI CT to a DICOM CT series and into a real DICOMweb server, read back through MONAI Label's loader."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 - the usual name
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.convert import dicom_to_nifti
from pacs import running_orthanc

from bundle.dicom import write_ct_series
from bundle.scripts import dicomweb_upload


def ct_volume(shape: tuple[int, int, int] = (24, 20, 12), seed: int = 0) -> np.ndarray:
    """Phantom-like HU: air, soft tissue and a bright blob, so every voxel value matters."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1000, 400, size=shape).astype(np.int16)
    volume[4:10, 5:9, 3:6] = 1200
    return volume


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


#: 0.8 x 0.8 x 2.5 mm, origin away from zero, the usual RAS-stored NIfTI (LPS in ITK: a right-handed grid)
AXIAL = np.array([[-0.8, 0, 0, 120.5], [0, -0.8, 0, 95.25], [0, 0, 2.5, -310.0], [0, 0, 0, 1]])
#: oblique (10 degrees about z) and left-handed: the slices of the series run the other way
c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
OBLIQUE_LEFT_HANDED = np.array(
    [[0.7 * c, -0.7 * s, 0, -40.0], [0.7 * s, 0.7 * c, 0, 12.0], [0, 0, -3.0, 55.0], [0, 0, 0, 1]]
)


def assert_same_image(expected: sitk.Image, actual: sitk.Image) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=1e-5)


def test_a_ct_series_reads_back_with_the_volumes_voxels_and_geometry(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "case.nii.gz", ct_volume(), AXIAL)
    series = write_ct_series(path, tmp_path / "series", patient_id="case")
    assert len(series.files) == 12 and len(set(series.sop_instance_uids)) == 12
    frames = {pydicom.dcmread(str(f), stop_before_pixels=True).FrameOfReferenceUID for f in series.files}
    assert len(frames) == 1
    back = sitk.ReadImage(dicom_to_nifti(str(series.folder)))
    assert back.GetPixelID() == sitk.sitkInt16
    assert_same_image(sitk.ReadImage(str(path)), back)


def test_a_left_handed_volume_is_written_as_the_same_image_in_space(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "oblique.nii.gz", ct_volume(seed=1), OBLIQUE_LEFT_HANDED)
    original = sitk.ReadImage(str(path))
    assert np.linalg.det(np.reshape(original.GetDirection(), (3, 3))) < 0
    back = sitk.ReadImage(dicom_to_nifti(str(write_ct_series(path, tmp_path / "series", patient_id="o").folder)))
    # same voxel grid, slices in the opposite order: every voxel sits at the same physical point
    assert_same_image(sitk.Flip(original, [False, False, True]), back)
    corner = original.TransformIndexToPhysicalPoint((3, 4, 0))
    index = back.TransformPhysicalPointToIndex(corner)
    assert back[index] == original[3, 4, 0]


@pytest.mark.parametrize(
    ("volume", "problem"),
    [
        (np.zeros((8, 8), np.int16), "3D"),
        (np.full((8, 8, 4), 40000.0, np.float32), "16-bit"),
        (np.full((8, 8, 4), 10.5, np.float32), "fractional"),
    ],
)
def test_volumes_that_are_no_ct_series_are_refused_by_name(tmp_path: Path, volume: np.ndarray, problem: str) -> None:
    path = write_nifti(tmp_path / "bad.nii.gz", volume, np.eye(4))
    with pytest.raises(ValueError, match=problem):
        write_ct_series(path, tmp_path / "series", patient_id="bad")


@pytest.mark.slow
def test_uploaded_volumes_read_back_through_monai_labels_dicomweb_datastore(tmp_path: Path, capsys) -> None:
    good = write_nifti(tmp_path / "case_001.nii.gz", ct_volume(), AXIAL)
    bad = write_nifti(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.int16), np.eye(4))
    with running_orthanc(tmp_path / "pacs") as url:
        code = dicomweb_upload.main(["--url", url, str(good), str(bad)])
        rows = [line.split(",") for line in capsys.readouterr().out.strip().splitlines()[1:]]
        assert code == 1
        assert [row[0] for row in rows] == ["case_001", "flat"]
        assert rows[0][4] == "" and "3D" in rows[1][4]
        series_uid = rows[0][3]

        client = DICOMwebClientX(url=url, session=None)
        datastore = DICOMWebDatastore(client, search_filter={"Modality": "CT"}, cache_path=str(tmp_path / "cache"))
        # only the good volume reached the server
        assert datastore.list_images() == [series_uid]
        back = sitk.ReadImage(datastore.get_image_uri(series_uid))
    assert_same_image(sitk.ReadImage(str(good)), back)
