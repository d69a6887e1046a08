"""Write a CT volume (NIfTI, NRRD, anything ITK reads) as a DICOM CT image series, one file per slice.

The series keeps the volume's geometry and values: every slice carries its ``ImagePositionPatient``, the
shared ``ImageOrientationPatient`` and ``PixelSpacing``, and the voxels are stored as signed 16-bit Hounsfield
units with rescale slope 1 and intercept 0. A DICOM series reader (SimpleITK's, which MONAI Label uses) gives back
the same voxels, spacing, origin and direction.

DICOM orders slices along the normal ``row x column`` of the orientation, so a volume whose third axis points
the other way (a left-handed voxel grid) is written with its slices reversed: the same image in space, read back
with a right-handed direction matrix.

``InstanceNumber`` 1 is the last slice along the normal (the most superior slice of an axial series), as a scanner
numbers a series acquired head first. OHIF 3's DICOM SEG export pairs the frames of its segmentation with the
instances in ``InstanceNumber`` order, so it writes the SEG of a series numbered the other way upside down.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the usual name
from pydicom.uid import generate_uid

__all__ = ["CTSeries", "read_volume", "write_ct_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
HU_RANGE = (-32768, 32767)


@dataclass(frozen=True)
class CTSeries:
    """What :func:`write_ct_series` wrote: the folder, its files in slice order and the UIDs."""

    folder: Path
    files: tuple[Path, ...]
    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a single-channel 3D volume with ITK, naming the file and the problem when it is not one.

    Raises:
        ValueError: not readable, not 3D, or more than one channel.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"{path}: not a readable image ({str(error).strip().splitlines()[-1]})") from error
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: a CT volume is 3D, this image has {image.GetDimension()} dimensions.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: a CT volume has one channel, this image has {image.GetNumberOfComponentsPerPixel()}."
        )
    return image


def _right_handed(image: sitk.Image) -> sitk.Image:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.linalg.det(direction) > 0:
        return image
    return sitk.Flip(image, [False, False, True])


def _decimal(value: float) -> str:
    # DICOM decimal strings hold at most 16 characters
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def write_ct_series(
    image: sitk.Image | str | os.PathLike,
    out_dir: str | os.PathLike,
    patient_id: str,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "CT",
    study_description: str = "CT abdomen",
) -> CTSeries:
    """Write ``image`` as a DICOM CT series in ``out_dir`` (files ``slice_0000.dcm``, ...).

    Args:
        image: the volume in Hounsfield units, or a path to it.
        out_dir: the folder for the slice files (created).
        patient_id: PatientID (and PatientName unless given).
        patient_name: PatientName.
        study_uid: StudyInstanceUID (new if not given).
        series_uid: SeriesInstanceUID (new if not given).
        series_description: SeriesDescription.
        study_description: StudyDescription.

    Raises:
        ValueError: the volume is not 3D single-channel, or a voxel is outside the int16 range.
    """
    if not isinstance(image, sitk.Image):
        image = read_volume(image)
    values = sitk.GetArrayViewFromImage(image)
    if values.size and (values.min() < HU_RANGE[0] or values.max() > HU_RANGE[1]):
        raise ValueError(f"voxel values {values.min()}..{values.max()} do not fit signed 16-bit Hounsfield units.")
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise ValueError("a CT series stores whole Hounsfield units; this volume has fractional values.")
    image = sitk.Cast(_right_handed(image), sitk.sitkInt16)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = generate_uid()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(_decimal(v) for v in (*direction[:, 0], *direction[:, 1]))
    spacing = image.GetSpacing()
    now = time.localtime()
    date, clock = time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now)
    shared = {
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0016": CT_IMAGE_STORAGE,
        "0008|0020": date,
        "0008|0021": date,
        "0008|0030": clock,
        "0008|0031": clock,
        "0008|0060": "CT",
        "0008|0050": patient_id[:16],
        "0008|1030": study_description,
        "0008|103e": series_description,
        "0010|0010": patient_name or patient_id,
        "0010|0020": patient_id,
        "0018|0050": _decimal(spacing[2]),
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0010": "1",
        "0020|0011": "1",
        # one frame of reference per series: a DICOM SEG of it must name the space its frames lie in
        "0020|0052": frame_of_reference_uid,
        "0020|0037": orientation,
        "0028|0030": f"{_decimal(spacing[1])}\\{_decimal(spacing[0])}",
        "0028|1052": "0",
        "0028|1053": "1",
        "0028|1054": "HU",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files, uids = [], []
    for z in range(image.GetDepth()):
        slice_image = image[:, :, z]
        for key, value in shared.items():
            slice_image.SetMetaData(key, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        uid = generate_uid()
        slice_image.SetMetaData("0020|0032", "\\".join(_decimal(v) for v in position))
        slice_image.SetMetaData("0020|1041", _decimal(float(np.dot(position, direction[:, 2]))))
        slice_image.SetMetaData("0020|0013", str(image.GetDepth() - z))  # 1 = the top slice, see the module notes
        slice_image.SetMetaData("0008|0018", uid)
        path = out / f"slice_{z:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_image)
        files.append(path)
        uids.append(uid)
    return CTSeries(out, tuple(files), study_uid, series_uid, tuple(uids))
