"""A DICOMweb datastore (Orthanc, or any PACS with QIDO/WADO/STOW-RS) that checks labels like the local datastore and
keeps them faithfully as DICOM SEG.

MONAI Label's :class:`~monailabel.datastore.dicom.DICOMWebDatastore` stores any label it is given, and reads a
stored DICOM SEG back cropped to the frames present with its values renumbered by segment order. This one:

- checks a label against its image before anything is sent to the PACS, with the local datastore's checks
  (:func:`~lib.volume_checks.load_checked_label`: 3D, the image's grid and geometry, allowed label values);
- stores a label as a DICOM SEG that keeps its values and reads a SEG back onto the image's full grid with the
  original values (:mod:`lib.dicom_seg`), as NIfTI with the image's affine;
- treats every id as hostile until checked: image and label ids are DICOM UIDs (digits and dots, at most 64
  characters) before they go into a URL or a path, and so are the UIDs the PACS returns;
- writes its cache (series files, series NIfTI, label NIfTI, index) all or nothing, re-reading the index under its
  lock before updating it (:class:`~lib.datastore.AtomicIndexMixin`).
"""

from __future__ import annotations

import glob
import gzip
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from dicomweb_client import DICOMwebClient
from filelock import FileLock
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.datastore.utils.convert import dicom_to_nifti
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from monailabel.utils.others.generic import remove_file
from pydicom.dataset import Dataset

from bundle.data.files import atomic_write

from .datastore import AtomicIndexMixin, atomic_copy, check_name
from .dicom_seg import MAX_LABEL_VALUE, label_to_segmentation, no_bulk_data, segmentation_to_label, slice_instances
from .errors import InvalidInputError, http_errors
from .options import shown
from .volume_checks import label_volume_file, load_checked_label

__all__ = ["SegSeries", "ValidatingDICOMWebDatastore", "check_uid", "expose_dcmqi_tools", "is_uid"]

logger = logging.getLogger(__name__)

#: DICOM UIDs: digit groups separated by single dots, at most 64 characters (PS3.5 9.1)
UID_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_UID_LENGTH = 64
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_uid(value: object) -> bool:
    """Whether ``value`` is a DICOM UID: digits and dots, no empty component, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and UID_PATTERN.fullmatch(value) is not None


def check_uid(value: object, what: str) -> str:
    """``value`` if it is a DICOM UID (see :func:`is_uid`), else an ``InvalidInputError`` naming ``what``.

    Ids become parts of DICOMweb URLs and cache paths, so anything else (``..``, slashes, query strings) is refused
    before it is used.
    """
    if not is_uid(value):
        raise InvalidInputError(
            f"invalid {what} '{shown(value)}': a DICOM UID is digits separated by single dots, at most "
            f"{MAX_UID_LENGTH} characters."
        )
    return str(value)


def expose_dcmqi_tools() -> Path:
    """Put the bin folder of the installed ``dcmqi`` wheel first on ``PATH``; return it.

    MONAI Label looks for dcmqi's ``itkimage2segimage`` on ``PATH`` or in ``APP_DIR/bin`` and downloads dcmqi from
    GitHub otherwise; the wheel (requirements.txt) ships the binaries inside the package, so nothing is downloaded
    and no ``PATH`` set-up is assumed.

    Raises:
        RuntimeError: the wheel is not installed (install it with ``pip install dcmqi``).
    """
    try:
        files = importlib.metadata.distribution("dcmqi").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        parts = Path(str(file)).parts
        if len(parts) == 3 and parts[:2] == ("dcmqi", "bin") and Path(parts[2]).stem == "itkimage2segimage":
            folder = Path(file.locate()).resolve().parent
            if folder.is_dir():
                paths = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != str(folder)]
                os.environ["PATH"] = os.pathsep.join([str(folder), *paths])
                return folder
    raise RuntimeError(
        "dcmqi's itkimage2segimage is not installed: install it with `pip install dcmqi` (see requirements.txt). "
        "The app does not download it."
    )


def _nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 of a uint8 label map with ``affine`` as both qform and sform (any reader gets it)."""
    image = nib.Nifti1Image(np.asarray(array, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6)


# ---------------------------------------------------------------------------------------------------------------------
# the datastore
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegSeries:
    """A DICOM SEG series on the PACS and the image series it labels.

    Attributes:
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID of the SEG.
        image_uid: SeriesInstanceUID of the image series it references.
        created: sortable ContentDate+ContentTime (the newest SEG of an image is its final label).
    """

    study_uid: str
    series_uid: str
    image_uid: str
    created: str


class ValidatingDICOMWebDatastore(AtomicIndexMixin, DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore with the local datastore's label checks and faithful DICOM SEG.

    Image ids are the PACS's image SeriesInstanceUIDs; the final label of an image is its newest DICOM SEG (by
    content date and time). Labels of other tags (e.g. kept predictions) stay in the local cache, as in MONAI
    Label. The cache (``cache_path``/md5(url)) holds the series' files, their NIfTI and the label NIfTI.

    Args:
        client: the DICOMweb client (MONAI Label's ``DICOMwebClientX``).
        search_filter: QIDO filter of the image series (e.g. ``{"Modality": "CT"}``).
        label_names: label name -> value of the app (background excluded), e.g.
            ``{"pancreas": 1, "pdac": 2, "pnet": 3, "suspected_ood": 9}``.
        cache_path: the cache folder (default ``~/.cache/monailabel/dicom``).
        fetch_by_frame: fetch the series frame by frame (MONAI Label's option).
        convert_to_nifti: must be true: the checks and the trainer read NIfTI volumes; false is logged and ignored.
        software_version: the app's version, recorded in the SEG.
    """

    def __init__(
        self,
        client: DICOMwebClient,
        search_filter: dict[str, Any],
        label_names: Mapping[str, int],
        cache_path: str | None = None,
        fetch_by_frame: bool = False,
        convert_to_nifti: bool = True,
        software_version: str = "",
    ) -> None:
        names = {str(name): int(value) for name, value in label_names.items()}
        bad = {name: value for name, value in names.items() if not 1 <= value <= MAX_LABEL_VALUE}
        if bad or len({name.lower() for name in names}) != len(names) or len(set(names.values())) != len(names):
            raise ValueError(f"label names must be distinct names with distinct values 1..{MAX_LABEL_VALUE}: {names}")
        self.label_names = names
        self.label_values = sorted({0, *names.values()})
        self.software_version = software_version
        self._segs_cache: tuple[float, list[SegSeries]] | None = None
        if not convert_to_nifti:
            logger.warning("convert_to_nifti=false is ignored: labels are checked and read on NIfTI volumes.")
        super().__init__(
            client=client,
            search_filter=search_filter,
            cache_path=cache_path,
            fetch_by_frame=fetch_by_frame,
            convert_to_nifti=True,
        )

    # -- PACS queries -----------------------------------------------------------------------------------------

    def list_images(self) -> list[str]:
        """The image series on the PACS (MONAI Label's cached QIDO query); ids that are not UIDs are left out."""
        series = super().list_images()
        valid = [uid for uid in series if is_uid(uid)]
        if len(valid) != len(series):
            logger.warning("PACS returned %d series id(s) that are not DICOM UIDs; ignored.", len(series) - len(valid))
        return valid

    def _study_of(self, series_uid: str) -> str:
        """The StudyInstanceUID of an image series on the PACS (404 when the PACS does not have it)."""
        for item in self._client.search_for_series(search_filters={"SeriesInstanceUID": series_uid}):
            meta = Dataset.from_json(item)
            if str(meta.get("SeriesInstanceUID", "")) == series_uid and is_uid(str(meta.get("StudyInstanceUID", ""))):
                return str(meta.StudyInstanceUID)
        raise ImageNotFoundException(f"image series '{series_uid}' not found on the PACS.")

    def _seg_series(self, fresh: bool = False) -> list[SegSeries]:
        """Every SEG series on the PACS that references one of the listed image series.

        Cached for MONAI Label's DICOMweb cache expiry unless ``fresh`` (training reads it fresh); saving a label
        clears it.
        """
        if not fresh and self._segs_cache is not None:
            when, segs = self._segs_cache
            if time.monotonic() - when < settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY:
                return segs
        images = set(self.list_images())
        segs = []
        for item in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            meta = Dataset.from_json(item)
            study, series = str(meta.get("StudyInstanceUID", "")), str(meta.get("SeriesInstanceUID", ""))
            if not (is_uid(study) and is_uid(series)):
                logger.warning("SEG series with ids that are not DICOM UIDs ignored: '%s'", shown(series))
                continue
            instances = self._client.retrieve_series_metadata(study, series)
            if len(instances) != 1:
                logger.warning("SEG series %s has %d instances (one expected); ignored.", series, len(instances))
                continue
            first = Dataset.from_json(instances[0], bulk_data_uri_handler=no_bulk_data)
            referenced = first.get("ReferencedSeriesSequence")
            image = str(referenced[0].get("SeriesInstanceUID", "")) if referenced else ""
            if image not in images:
                logger.info("SEG series %s does not reference a listed image series; ignored.", series)
                continue
            date = str(first.get("ContentDate", "") or first.get("SeriesDate", "") or "")
            clock = str(first.get("ContentTime", "") or first.get("SeriesTime", "") or "")
            head, _, fraction = clock.partition(".")
            segs.append(SegSeries(study, series, image, f"{date:0<8}{head:0<6}.{fraction:0<6}"))
        self._segs_cache = (time.monotonic(), segs)
        return segs

    def _final_segs(self, fresh: bool = False) -> dict[str, SegSeries]:
        """Image id -> its newest SEG series (its final label)."""
        newest: dict[str, SegSeries] = {}
        for seg in sorted(self._seg_series(fresh), key=lambda s: (s.created, s.series_uid)):
            newest[seg.image_uid] = seg
        return newest

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info as the cache index holds it now (scores written by the scoring process included)."""
        self._sync()
        return super().get_image_info(image_id)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Images with a final label (a SEG on the PACS); other tags: images with such a label in the cache."""
        if label_tag in (None, DefaultLabelTag.FINAL, DefaultLabelTag.FINAL.value):
            return sorted(self._final_segs())
        return LocalDatastore.get_labeled_images(self, label_tag, labels)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return [image for image in self.list_images() if image not in labeled]

    # -- images -------------------------------------------------------------------------------------------------

    def get_image_uri(self, image_id: str) -> str:
        """The image series as NIfTI in the cache, downloaded and converted on first use (404 if not on the PACS)."""
        with http_errors("reading an image"):
            return self._image_nifti(check_uid(image_id, "image id"))

    def _image_nifti(self, image_id: str) -> str:
        """:meth:`get_image_uri` for a checked id, raising the app's errors rather than HTTP ones."""
        nifti = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        # one download per series, also across processes (the trainer runs in its own)
        with FileLock(os.path.join(self._datastore_path, f".{image_id}.lock")):
            if os.path.exists(nifti) and image_id in self._datastore.objects:
                return nifti
            series_dir = self._download_series(image_id)
            converted = dicom_to_nifti(series_dir)
            try:
                info = self._dicom_info(image_id)
                with FileLock(self._lock_file):
                    self._reload_locked()
                    atomic_copy(converted, nifti)
                    info.update({"ts": int(time.time()), "name": os.path.basename(nifti)})
                    previous = self._datastore.objects.get(image_id)
                    labels = dict(previous.labels) if previous is not None else {}
                    self._datastore.objects[image_id] = ImageLabelModel(
                        image=DataModel(info=info, ext=".nii.gz"), labels=labels
                    )
                    self._update_datastore_file(lock=False)
            finally:
                remove_file(converted)
        return nifti

    def _series_dir(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def _download_series(self, image_id: str) -> str:
        """The series' files in the cache (``images/<uid>/<sop uid>.dcm``), downloaded whole or not at all."""
        series_dir = self._series_dir(image_id)
        if os.path.isdir(series_dir) and os.listdir(series_dir):
            return series_dir
        study = self._study_of(image_id)
        what = f"image series '{image_id}'"
        staging = tempfile.mkdtemp(prefix=f".{image_id}.", dir=self._datastore.image_path())
        try:
            if self._fetch_by_frame:
                # MONAI Label names the files by SOPInstanceUID: check those before it writes them
                items = self._client.retrieve_series_metadata(study, image_id)
                for item in items:
                    meta = Dataset.from_json(item, bulk_data_uri_handler=no_bulk_data)
                    check_uid(str(meta.get("SOPInstanceUID", "")), f"{what}: SOPInstanceUID")
                dicom_web_download_series(study, image_id, staging, self._client, True)
                # its worker threads drop their errors: count what arrived
                if len(os.listdir(staging)) != len(items):
                    raise RuntimeError(
                        f"{what}: {len(os.listdir(staging))} of {len(items)} instances arrived when fetching frame "
                        "by frame; this PACS may not serve frames (set MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME=false)."
                    )
            else:
                for instance in self._client.retrieve_series(study, image_id):
                    sop = check_uid(str(instance.get("SOPInstanceUID", "")), f"{what}: SOPInstanceUID")
                    if str(instance.get("SeriesInstanceUID", "")) != image_id:
                        raise InvalidInputError(f"{what}: the PACS returned instance {sop} of another series.")
                    instance.save_as(os.path.join(staging, f"{sop}.dcm"))
            if not os.listdir(staging):
                raise ImageNotFoundException(f"{what} has no instances on the PACS.")
            if os.path.isdir(series_dir):
                shutil.rmtree(series_dir)  # an empty folder left by an interrupted download
            os.replace(staging, series_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return series_dir

    def _slices(self, image_id: str, affine: np.ndarray, shape: Sequence[int]) -> list[Dataset]:
        """The cached series' instance headers in slice order (see :func:`slice_instances`)."""
        files = sorted(glob.glob(os.path.join(self._series_dir(image_id), "*.dcm")))
        datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
        return slice_instances(datasets, affine, shape, f"image series '{image_id}'")

    # -- labels -------------------------------------------------------------------------------------------------

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """Check a label against its image, then store it: a final label as a DICOM SEG on the PACS (STOW-RS) and
        in the cache, other tags in the cache only.

        Returns:
            The image id (the label id of MONAI Label's datastores).

        Raises:
            HTTPException: 404 for an image not on the PACS; 422, before anything is sent, for a bad id or tag, a
                label that is not 3D, not on the image's grid and geometry, holds values other than the app's, or
                (final labels) holds no labelled voxel.
        """
        with http_errors("saving a label"):
            image_id = check_uid(image_id, "image id")
            check_name(label_tag, "label tag")
            if image_id not in self.list_images():
                raise ImageNotFoundException(f"image '{image_id}' not found on the PACS.")
            what = f"label for image '{image_id}'"
            image_uri = self._image_nifti(image_id)
            with label_volume_file(label_filename, image_uri, what) as (volume_file, _):
                checked = load_checked_label(volume_file, image_uri, self.label_values, what)
            label = np.rint(np.asarray(checked.label[0])).astype(np.uint8)
            affine = np.asarray(checked.image.affine, dtype=np.float64)
            info = {key: value for key, value in dict(label_info or {}).items() if key != "label_info"}
            info["label_values"] = checked.values
            if label_tag == DefaultLabelTag.FINAL:
                if checked.values == [0]:
                    raise InvalidInputError(
                        f"{what} holds no labelled voxel (background only); a DICOM SEG needs at least one segment."
                    )
                info.update(self._store_seg(image_id, label, affine))
            self._cache_label(image_id, label_tag, label, affine, info)
            logger.info("saved %s label of %s (values %s)", label_tag, image_id, checked.values)
            return image_id

    def _store_seg(self, image_id: str, label: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
        """Write the label as DICOM SEG and send it by STOW-RS; return the SEG's ids for the label info."""
        sources = self._slices(image_id, affine, label.shape)
        segmentation = label_to_segmentation(label, self.label_names, sources, self.software_version)
        response = self._client.store_instances([segmentation])
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "unknown")
            raise RuntimeError(f"the PACS refused the DICOM SEG of image '{image_id}' (failure reason {reason}).")
        self._segs_cache = None
        logger.info("stored DICOM SEG %s for image %s", segmentation.SeriesInstanceUID, image_id)
        return {
            "SeriesInstanceUID": str(segmentation.SeriesInstanceUID),
            "StudyInstanceUID": str(segmentation.StudyInstanceUID),
            "PatientID": str(getattr(segmentation, "PatientID", "") or ""),
            "Modality": "SEG",
        }

    def _cache_label(
        self, image_id: str, label_tag: str, label: np.ndarray, affine: np.ndarray, info: dict[str, Any]
    ) -> str:
        """Write a label map as NIfTI (the image's affine) into the cache and its index, atomically."""
        name = f"{image_id}.nii.gz"
        path = os.path.realpath(os.path.join(self._datastore.label_path(label_tag), name))
        content = _nifti_gz(label, affine)
        with FileLock(self._lock_file):
            self._reload_locked()
            entry = self._datastore.objects.get(image_id)
            if entry is None:
                raise ImageNotFoundException(f"image '{image_id}' is not in the cache.")
            atomic_write(path, lambda out: out.write(content))
            entry.labels[label_tag] = DataModel(info={**info, "ts": int(time.time()), "name": name}, ext=".nii.gz")
            self._update_datastore_file(lock=False)
        return path

    def _drop_cached_label(self, image_id: str, label_tag: str) -> None:
        with FileLock(self._lock_file):
            self._reload_locked()
            entry = self._datastore.objects.get(image_id)
            if entry is not None and entry.labels.pop(label_tag, None) is not None:
                self._update_datastore_file(lock=False)
            remove_file(os.path.join(self._datastore.label_path(label_tag), f"{image_id}.nii.gz"))

    def _read_seg(self, seg: SegSeries) -> str:
        """The label NIfTI of a SEG series in the cache, read from the PACS unless the cache holds that series."""
        cached = self._datastore.label(seg.image_uid, DefaultLabelTag.FINAL)
        path = os.path.realpath(
            os.path.join(self._datastore.label_path(DefaultLabelTag.FINAL), f"{seg.image_uid}.nii.gz")
        )
        if cached is not None and cached.info.get("SeriesInstanceUID") == seg.series_uid and os.path.exists(path):
            return path
        what = f"DICOM SEG '{seg.series_uid}'"
        instances = self._client.retrieve_series(seg.study_uid, seg.series_uid)
        if len(instances) != 1 or str(instances[0].get("SOPClassUID", "")) != SEG_STORAGE:
            raise InvalidInputError(f"{what} is not one Segmentation Storage instance.")
        image = nib.load(self._image_nifti(seg.image_uid))
        sources = self._slices(seg.image_uid, image.affine, image.shape[:3])
        label = segmentation_to_label(instances[0], sources, self.label_names, what)
        values = sorted(int(v) for v in np.unique(label))
        info = {
            "SeriesInstanceUID": seg.series_uid,
            "StudyInstanceUID": seg.study_uid,
            "Modality": "SEG",
            "label_values": values,
        }
        return self._cache_label(seg.image_uid, DefaultLabelTag.FINAL, label, image.affine, info)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The label as NIfTI on its image's full grid, with its original values.

        For the final tag, ``label_id`` is a SEG SeriesInstanceUID (with ``image_id`` its image) or, as MONAI
        Label's download endpoint sends, an image id (its newest SEG); other tags are read from the cache.

        Raises:
            HTTPException: 422 for an id that is not a UID or a SEG that cannot be read faithfully, 404 for an
                unknown label.
        """
        with http_errors("reading a label"):
            label_id = check_uid(label_id, "label id")
            check_name(label_tag, "label tag")
            image_id = check_uid(image_id, "image id") if image_id else ""
            if label_tag != DefaultLabelTag.FINAL:
                return LocalDatastore.get_label_uri(self, image_id or label_id, label_tag)
            segs = self._seg_series(fresh=True)
            newest = self._final_segs()
            seg = next((s for s in segs if s.series_uid == label_id), None)
            if seg is None and not image_id:
                seg = newest.get(label_id)
            if seg is None or (image_id and seg.image_uid != image_id):
                raise LabelNotFoundException(f"final label '{shown(label_id)}' not found on the PACS.")
            return self._read_seg(seg)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label from the cache. A DICOM SEG stays on the PACS (DICOMweb cannot delete it)."""
        with http_errors("removing a label"):
            label_id = check_uid(label_id, "label id")
            check_name(label_tag, "label tag")
            if self._datastore.label(label_id, label_tag) is None:
                raise LabelNotFoundException(f"label '{label_id}' with tag '{shown(label_tag)}' not in the cache.")
            self._drop_cached_label(label_id, label_tag)

    def _download_labeled_data(self) -> None:
        """Bring the cache's final labels in line with the PACS: each labelled image's newest SEG, read faithfully.

        A SEG that cannot be read faithfully is left out (logged), and so is any older label of that image, so
        that training never uses a label that differs from the one on the PACS.
        """
        newest = self._final_segs(fresh=True)
        for image_id in LocalDatastore.get_labeled_images(self, DefaultLabelTag.FINAL):
            if image_id not in newest:
                logger.info("final label of %s is no longer on the PACS; removed from the cache.", image_id)
                self._drop_cached_label(image_id, DefaultLabelTag.FINAL)
        for image_id, seg in newest.items():
            try:
                self._read_seg(seg)
            except (InvalidInputError, RuntimeError, ImageNotFoundException) as error:
                logger.warning("final label of %s (SEG %s) left out: %s", image_id, seg.series_uid, error)
                self._drop_cached_label(image_id, DefaultLabelTag.FINAL)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Image/label pairs for training: the cache after :meth:`_download_labeled_data`."""
        self._download_labeled_data()
        return LocalDatastore.datalist(self, full_path)
