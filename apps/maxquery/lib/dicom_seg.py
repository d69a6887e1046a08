"""DICOM SEG <-> label map on an image series' slices, faithfully: full grid, original label values.

A label map is written as a BINARY DICOM SEG with highdicom: one segment per label value present, labelled with the
class name, the value recorded in the segment description (``MaxQuery label value N``), SNOMED codes and
recommended display colours (``suspected_ood`` magenta). A SEG is read back onto the image's full grid (every slice,
empty ones too) by the source instance each frame references, after checking each frame's geometry against that
slice; segments are mapped to label values by the recorded value, else by their class name (SEGs of other tools,
e.g. OHIF's), and a SEG that cannot be mapped exactly is refused rather than guessed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .errors import InvalidInputError, short_error
from .options import shown

__all__ = [
    "MAX_LABEL_VALUE",
    "SEGMENT_STYLES",
    "SegmentStyle",
    "check_frame_geometry",
    "label_to_segmentation",
    "no_bulk_data",
    "rgb_to_dicom_lab",
    "segment_value",
    "segmentation_to_label",
    "slice_instances",
]

logger = logging.getLogger(__name__)

#: how a segment description records the label value: reading is exact whatever the segments' order
SEGMENT_VALUE_TEXT = "MaxQuery label value {value}"
SEGMENT_VALUE_PATTERN = re.compile(r"MaxQuery label value (\d+)")
#: label maps of this app are uint8 (cache NIfTI, segment lookup)
MAX_LABEL_VALUE = 255
#: voxel tolerance when placing slices on the image's grid by ImagePositionPatient
POSITION_TOLERANCE_VOXELS = 0.05
#: direction-cosine tolerance when matching ImageOrientationPatient with the image's axes
ORIENTATION_TOLERANCE = 1e-3
#: D65 reference white (CIE XYZ) used by DICOM toolkits (dcmtk, dcmjs, dcmqi) for the CIELab <-> sRGB conversion
D65_WHITE = (0.950456, 1.0, 1.088754)

# ---------------------------------------------------------------------------------------------------------------------
# segment names, codes and colours
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentStyle:
    """How a class is described in a DICOM SEG.

    Attributes:
        category: SegmentedPropertyCategoryCodeSequence.
        property_type: SegmentedPropertyTypeCodeSequence.
        rgb: recommended display colour (sRGB, 0-255), stored as CIELab.
    """

    category: Any
    property_type: Any
    rgb: tuple[int, int, int]


#: the bundle's classes and the suspected-OOD segment (SNOMED CT codes from pydicom's dictionary)
SEGMENT_STYLES: dict[str, SegmentStyle] = {
    "pancreas": SegmentStyle(codes.SCT.Organ, codes.SCT.Pancreas, (249, 180, 111)),
    "pdac": SegmentStyle(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Adenocarcinoma, (230, 40, 40)),
    "pnet": SegmentStyle(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, (40, 120, 255)),
    # magenta: no organ or tumour colour is near it, so suspected out-of-distribution voxels stand out
    "suspected_ood": SegmentStyle(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion, (255, 0, 255)),
}
#: for class names of other bundle configurations: a distinct colour each, by label value
FALLBACK_COLOURS = ((0, 200, 100), (255, 200, 0), (0, 200, 220), (160, 90, 220), (255, 130, 0), (120, 200, 40))


def _style(name: str, value: int) -> SegmentStyle:
    style = SEGMENT_STYLES.get(name.lower())
    if style is not None:
        return style
    colour = FALLBACK_COLOURS[value % len(FALLBACK_COLOURS)]
    return SegmentStyle(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion, colour)


def rgb_to_dicom_lab(rgb: Sequence[int]) -> tuple[int, int, int]:
    """An sRGB colour (0-255) as a DICOM CIELab triplet (RecommendedDisplayCIELabValue, each 0-65535).

    sRGB -> linear RGB -> CIE XYZ (D65) -> CIELab, then L* 0..100 and a*, b* -128..127 scaled to 0..65535, as DICOM
    toolkits do, so that viewers show the colour given here.
    """
    linear = [c / 255.0 for c in rgb]
    linear = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in linear]
    r, g, b = linear
    xyz = (
        0.4124564 * r + 0.3575761 * g + 0.1804375 * b,
        0.2126729 * r + 0.7151522 * g + 0.0721750 * b,
        0.0193339 * r + 0.1191920 * g + 0.9503041 * b,
    )

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    fx, fy, fz = (f(v / w) for v, w in zip(xyz, D65_WHITE, strict=True))
    lightness, a_star, b_star = 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)
    a_star, b_star = min(max(a_star, -128.0), 127.0), min(max(b_star, -128.0), 127.0)
    return (
        round(min(max(lightness, 0.0), 100.0) * 65535 / 100),
        round((a_star + 128) * 65535 / 255),
        round((b_star + 128) * 65535 / 255),
    )


def segment_value(description: Dataset, label_names: Mapping[str, int]) -> int:
    """The label value of a DICOM SEG segment.

    The value recorded in the segment description (written by :func:`label_to_segmentation`) is exact; a segment
    without one (a SEG from another tool) is mapped by its SegmentLabel, compared case-insensitively with the app's
    label names. A recorded value that contradicts the label's name, or a segment that is neither, is refused rather
    than guessed.

    Args:
        description: an item of the SEG's SegmentSequence.
        label_names: the app's label name -> value (background excluded).

    Raises:
        InvalidInputError: the segment cannot be mapped to one of the app's label values.
    """
    number = getattr(description, "SegmentNumber", "?")
    name = str(getattr(description, "SegmentLabel", "") or "").strip()
    match = SEGMENT_VALUE_PATTERN.fullmatch(str(getattr(description, "SegmentDescription", "") or "").strip())
    recorded = int(match.group(1)) if match else None
    by_name = {key.lower(): value for key, value in label_names.items()}.get(name.lower())
    if recorded is not None and by_name is not None and recorded != by_name:
        raise InvalidInputError(
            f"segment {number} '{shown(name)}' records label value {recorded}, but this app gives '{name}' the value "
            f"{by_name} (the SEG was written with other label values)"
        )
    value = recorded if recorded is not None else by_name
    if value is None:
        raise InvalidInputError(
            f"segment {number} '{shown(name)}' is not one of this app's labels {sorted(label_names)} and records no "
            "label value"
        )
    if value not in set(label_names.values()):
        raise InvalidInputError(
            f"segment {number} '{shown(name)}' holds label value {value}, not one of this app's values "
            f"{sorted(label_names.values())}"
        )
    return value


# ---------------------------------------------------------------------------------------------------------------------
# label map <-> DICOM SEG, on the image series' slices
# ---------------------------------------------------------------------------------------------------------------------


def no_bulk_data(*_: object) -> None:
    """Leave bulk data (pixel data) of series metadata unread: only the references and dates are used."""
    return None


def _lps_to_ras(vector: Sequence[float]) -> np.ndarray:
    return np.asarray(vector, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


def slice_instances(datasets: Sequence[Dataset], affine: np.ndarray, shape: Sequence[int], what: str) -> list[Dataset]:
    """The image series' instances in the order of the image volume's third axis, one per slice.

    The volume (NIfTI from the series, its ``affine`` RAS as nibabel gives it) has axis 0 along the instances'
    row direction (columns of a frame) and axis 1 along their column direction (rows of a frame), as ITK reads a
    DICOM series; each instance is placed by its ImagePositionPatient.

    Args:
        datasets: the series' instances (headers are enough).
        affine: the volume's voxel-to-world affine (RAS, mm).
        shape: the volume's spatial shape.
        what: the series, for error messages.

    Raises:
        RuntimeError: an instance that is not one slice of the volume's grid (multi-frame, other orientation or
            size, off-grid position, two instances on one slice) or a slice with no instance.
    """
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    axes = np.asarray(affine, dtype=np.float64)[:3, :2]
    axes = axes / np.linalg.norm(axes, axis=0)
    by_slice: dict[int, Dataset] = {}
    for dataset in datasets:
        uid = str(getattr(dataset, "SOPInstanceUID", "?"))
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise RuntimeError(f"{what}: instance {uid} has {frames} frames; only single-frame series are supported.")
        if (int(dataset.Columns), int(dataset.Rows)) != (int(shape[0]), int(shape[1])):
            raise RuntimeError(f"{what}: instance {uid} is {dataset.Columns}x{dataset.Rows}, the volume {shape}.")
        orientation = [float(v) for v in dataset.ImageOrientationPatient]
        row, column = _lps_to_ras(orientation[:3]), _lps_to_ras(orientation[3:])
        if not (
            np.allclose(row, axes[:, 0], atol=ORIENTATION_TOLERANCE)
            and np.allclose(column, axes[:, 1], atol=ORIENTATION_TOLERANCE)
        ):
            raise RuntimeError(f"{what}: instance {uid} is not oriented like the volume's axes.")
        index = inverse @ np.append(_lps_to_ras([float(v) for v in dataset.ImagePositionPatient]), 1.0)
        k = int(round(index[2]))
        if not (
            np.allclose(index[:2], 0.0, atol=POSITION_TOLERANCE_VOXELS)
            and abs(index[2] - k) <= POSITION_TOLERANCE_VOXELS
            and 0 <= k < int(shape[2])
        ):
            raise RuntimeError(f"{what}: instance {uid} is not on a slice of the volume's grid (index {index[:3]}).")
        if k in by_slice:
            raise RuntimeError(f"{what}: instances {by_slice[k].SOPInstanceUID} and {uid} are both slice {k}.")
        by_slice[k] = dataset
    missing = [k for k in range(int(shape[2])) if k not in by_slice]
    if missing:
        raise RuntimeError(f"{what}: no instance for slice(s) {missing[:10]} of {int(shape[2])}.")
    return [by_slice[k] for k in range(int(shape[2]))]


def label_to_segmentation(
    label: np.ndarray,
    label_names: Mapping[str, int],
    sources: Sequence[Dataset],
    software_version: str = "",
) -> hd.seg.Segmentation:
    """A DICOM SEG of a label map on its image series' grid, keeping the label values.

    One segment per label value present (ascending value, SegmentNumber 1, 2, ...), labelled with the class name,
    its value recorded in the segment description, SNOMED CT property codes and a recommended display colour.
    Empty slices are left out of the SEG (the reader restores them from the series).

    Args:
        label: the label map, spatial axes as the image volume (see :func:`slice_instances`).
        label_names: label name -> value (background excluded); every non-zero value of ``label`` must have one.
        sources: the series' instances in slice order (:func:`slice_instances`).
        software_version: the app's version, recorded as SoftwareVersions.

    Raises:
        ValueError: no labelled voxel, or a value without a name.
    """
    names = {value: name for name, value in label_names.items()}
    values = [int(v) for v in np.unique(label) if v != 0]
    if not values:
        raise ValueError("the label has no labelled voxel")
    unnamed = [v for v in values if v not in names]
    if unnamed:
        raise ValueError(f"label values {unnamed} have no name")
    numbers = np.zeros(max(values) + 1, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MaxQuery", family=codes.DCM.ArtificialIntelligence, version=software_version or "unknown"
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        numbers[value] = number
        name = names[value]
        style = _style(name, value)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=style.category,
            segmented_property_type=style.property_type,
            # an annotator's final label, possibly edited from the app's prediction
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        description.SegmentDescription = SEGMENT_VALUE_TEXT.format(value=value)
        description.RecommendedDisplayCIELabValue = list(rgb_to_dicom_lab(style.rgb))
        descriptions.append(description)
    # frames are (slice, row, column): rows run along the volume's axis 1, columns along axis 0
    pixels = numbers[np.asarray(label, dtype=np.int64)].transpose(2, 1, 0)
    now = datetime.now()
    segmentation = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=np.ascontiguousarray(pixels),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="MaxQuery",
        manufacturer_model_name="MaxQuery MONAI Label app",
        software_versions=software_version or "unknown",
        device_serial_number="none",
        content_description="MaxQuery label map; label values in the segment descriptions",
        content_label="MAXQUERY_LABEL",
        series_description="MaxQuery label",
    )
    # microseconds: the newest SEG of an image is its label, also when two are saved within a second
    segmentation.SeriesDate = segmentation.ContentDate = now.strftime("%Y%m%d")
    segmentation.SeriesTime = segmentation.ContentTime = now.strftime("%H%M%S.%f")
    return segmentation


def _frame_group(frame: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """A functional group of a frame: its own, else the shared one (PS3.3 C.7.6.16)."""
    for group in (frame, shared):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def check_frame_geometry(dataset: Dataset, sources: Sequence[Dataset]) -> None:
    """Check that every frame of a SEG lies exactly on the image series' instance it references.

    Position, orientation, pixel spacing and frame size must equal the referenced instance's, so that copying a frame
    onto that slice is exact whatever the SEG's SpatialLocationsPreserved says (several writers leave it out).

    Raises:
        InvalidInputError: a frame without a single-frame source reference, referencing an instance outside the
            series, or not on it.
    """
    first = sources[0]
    if (int(dataset.Rows), int(dataset.Columns)) != (int(first.Rows), int(first.Columns)):
        raise InvalidInputError(
            f"has frames of {dataset.Columns}x{dataset.Rows} pixels; the image's are {first.Columns}x{first.Rows}"
        )
    by_uid = {str(source.SOPInstanceUID): source for source in sources}
    shared = dataset.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in dataset else None
    for number, frame in enumerate(dataset.get("PerFrameFunctionalGroupsSequence", []), start=1):
        try:
            uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        except (AttributeError, IndexError) as error:
            raise InvalidInputError(f"frame {number} references no source instance") from error
        source = by_uid.get(uid)
        if source is None:
            raise InvalidInputError(f"frame {number} references an instance outside the image series")
        position = _frame_group(frame, shared, "PlanePositionSequence")
        orientation = _frame_group(frame, shared, "PlaneOrientationSequence")
        measures = _frame_group(frame, shared, "PixelMeasuresSequence")
        spacing = [float(v) for v in source.PixelSpacing]
        tolerance = POSITION_TOLERANCE_VOXELS * min(spacing)
        if (
            position is None
            or orientation is None
            or measures is None
            or not np.allclose(
                [float(v) for v in position.ImagePositionPatient],
                [float(v) for v in source.ImagePositionPatient],
                atol=tolerance,
            )
            or not np.allclose(
                [float(v) for v in orientation.ImageOrientationPatient],
                [float(v) for v in source.ImageOrientationPatient],
                atol=ORIENTATION_TOLERANCE,
            )
            or not np.allclose([float(v) for v in measures.PixelSpacing], spacing, rtol=1e-3)
        ):
            raise InvalidInputError(f"frame {number} does not lie on the instance it references ({uid})")


def segmentation_to_label(
    dataset: Dataset, sources: Sequence[Dataset], label_names: Mapping[str, int], what: str
) -> np.ndarray:
    """A DICOM SEG as a label map on its image series' full grid, with the label values of :func:`segment_value`.

    Each frame goes to the slice of the source instance it references (highdicom's
    ``get_pixels_by_source_instance``), after :func:`check_frame_geometry`; slices the SEG leaves out are background.

    Args:
        dataset: the SEG instance.
        sources: the image series' instances in slice order (:func:`slice_instances`).
        label_names: the app's label name -> value (background excluded).
        what: the SEG, for error messages.

    Returns:
        A uint8 array with the image volume's spatial axes.

    Raises:
        InvalidInputError: not a binary SEG of this series' grid, overlapping segments, or a segment that cannot be
            mapped.
    """
    try:
        segmentation = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        if segmentation.segmentation_type != hd.seg.SegmentationTypeValues.BINARY:
            raise InvalidInputError(f"is {segmentation.segmentation_type.value}; a label map needs a BINARY SEG")
        check_frame_geometry(segmentation, sources)
        lookup = np.zeros(max(segmentation.segment_numbers, default=0) + 1, dtype=np.uint8)
        for description in segmentation.SegmentSequence:
            lookup[int(description.SegmentNumber)] = segment_value(description, label_names)
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(source.SOPInstanceUID) for source in sources],
            combine_segments=True,
            relabel=False,
            # checked frame by frame above, also for SEGs that do not state SpatialLocationsPreserved
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )
    except InvalidInputError as error:
        raise InvalidInputError(f"{what}: {error}.") from error
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        raise InvalidInputError(f"{what} cannot be placed on its image's grid ({short_error(error)}).") from error
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if tuple(pixels.shape) != expected:
        raise InvalidInputError(f"{what} has frames of shape {pixels.shape[1:]}; the image's are {expected[1:]}.")
    return lookup[pixels].transpose(2, 1, 0)
