"""A local datastore that validates uploads before saving them and never leaves a half-written file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from monailabel.utils.others.generic import remove_file

from bundle.data.files import atomic_write, atomic_write_text

from .errors import InvalidInputError, http_errors
from .options import shown
from .volume_checks import VOLUME_EXTENSIONS, check_image, check_label, label_volume_file, volume_extension

__all__ = ["AtomicIndexMixin", "ValidatingLocalDatastore", "atomic_copy", "check_name"]

logger = logging.getLogger(__name__)


def atomic_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy ``source`` to ``destination`` all or nothing (readers never see part of the file)."""
    with open(source, "rb") as src:
        atomic_write(destination, lambda out: shutil.copyfileobj(src, out))


def check_name(name: str, what: str) -> str:
    """Reject ids and tags that would escape the datastore folder or hide as dot-files (HTTP 422)."""
    if not name or name.startswith(".") or any(c in name for c in ("/", "\\", "\0")) or any(ord(c) < 32 for c in name):
        raise InvalidInputError(f"invalid {what} '{name}': use a plain file-name-like id (no path separators).")
    return name


class AtomicIndexMixin:
    """Index (``datastore_v2.json``) handling for a :class:`~monailabel.datastore.local.LocalDatastore` subclass:
    written atomically, and re-read under the file lock before an update (here: image and label info updates) so
    that updates made by another process (background scoring, training) are not overwritten. Put it before the
    datastore class in the bases.
    """

    _datastore: LocalDatastoreModel
    _datastore_path: str
    _datastore_config_path: str
    _lock_file: str
    _config_ts: float

    def _sync(self) -> None:
        """Pick up index changes made by other processes (cheap when there are none): MONAI Label's locked reload."""
        self._init_from_datastore_file()

    def _reload_locked(self) -> None:
        """Re-read the index if another process changed it; the caller holds the file lock."""
        path = self._datastore_config_path
        if not os.path.exists(path):
            return
        mtime = os.stat(path).st_mtime
        if mtime != self._config_ts:
            with open(path) as handle:
                self._datastore = LocalDatastoreModel.model_validate_json(handle.read())
            self._datastore.base_path = self._datastore_path
            self._config_ts = mtime

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write the index all or nothing (``lock=False``: the caller holds the file lock)."""

        def write() -> None:
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into an image's info (HTTP 404 for an unknown image, 422 for info that is no object)."""
        with http_errors("updating image info"), FileLock(self._lock_file):
            if not isinstance(info, dict):
                raise InvalidInputError(f"image info must be a JSON object, got {type(info).__name__}.")
            self._reload_locked()
            entry = self._datastore.objects.get(image_id)
            if entry is None:
                raise ImageNotFoundException(f"image '{image_id}' not found in the datastore.")
            entry.image.info.update(info)
            self._update_datastore_file(lock=False)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into a label's info (HTTP 404 for an unknown label, 422 for info that is no object)."""
        with http_errors("updating label info"), FileLock(self._lock_file):
            if not isinstance(info, dict):
                raise InvalidInputError(f"label info must be a JSON object, got {type(info).__name__}.")
            self._reload_locked()
            label = self._datastore.label(label_id, label_tag)
            if label is None:
                raise LabelNotFoundException(f"label '{label_id}' with tag '{label_tag}' not found in the datastore.")
            label.info.update(info)
            self._update_datastore_file(lock=False)


class ValidatingLocalDatastore(AtomicIndexMixin, LocalDatastore):
    """MONAI Label's local datastore with checks before every write and atomic writes.

    Differences from :class:`~monailabel.datastore.local.LocalDatastore`:

    - ``add_image`` accepts only single-channel 3D volumes (NIfTI/NRRD); corrupt, 2D or multi-channel uploads are
      rejected with HTTP 422 naming the problem, before anything is written;
    - ``save_label`` checks the label against its image first (3D, same voxel grid and geometry, integer values
      among the app's labels) and rejects it with HTTP 422 otherwise, so a rejected upload leaves the previous label
      untouched; an unknown image id is HTTP 404; raw ``.bin`` labels (one uint8 per voxel, as sent by OHIF) are
      converted on the image's grid;
    - files and the ``datastore_v2.json`` index are written to a temporary file and renamed, so they are never
      half-written; index updates re-read the index under the file lock first, so updates made by another process
      (background scoring, training) are not overwritten, and reads pick up such updates.

    Args:
        datastore_path: the studies folder.
        label_values: label values a saved label may hold.
        auto_reload: watch the folder for external changes.
        read_only: do not reconcile the index with the folder at start.
    """

    def __init__(
        self, datastore_path: str, label_values: Sequence[int], auto_reload: bool = False, read_only: bool = False
    ) -> None:
        self.label_values = sorted({int(v) for v in label_values})
        super().__init__(
            datastore_path,
            extensions=[f"*{extension}" for extension in VOLUME_EXTENSIONS],
            auto_reload=auto_reload,
            read_only=read_only,
        )

    # -- reads ----------------------------------------------------------------------------------------------------

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info; an unknown id is HTTP 404 (not an empty answer)."""
        with http_errors("reading image info"):
            self._sync()
            if image_id not in self._datastore.objects:
                raise ImageNotFoundException(f"image '{shown(image_id)}' not found in the datastore.")
            return super().get_image_info(image_id)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        """The label's info; an unknown image id or tag is HTTP 404 (not an empty answer)."""
        with http_errors("reading label info"):
            self._sync()
            if self._datastore.label(label_id, label_tag) is None:
                raise LabelNotFoundException(
                    f"label '{shown(label_id)}' with tag '{shown(label_tag)}' not found in the datastore."
                )
            return super().get_label_info(label_id, label_tag)

    def list_images(self) -> list[str]:
        self._sync()
        return super().list_images()

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        self._sync()
        return super().get_labeled_images(label_tag, labels)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        self._sync()
        return super().get_unlabeled_images(label_tag, labels)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        self._sync()
        return super().datalist(full_path)

    def json(self) -> dict[str, Any]:
        self._sync()
        return super().json()

    # -- writes ---------------------------------------------------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Validate, then store an image (HTTP 422 for an unsupported, corrupt or non-3D file).

        Re-uploading an existing id keeps its labels attached when every one of them fits the new image (grid,
        geometry, values); otherwise the upload is refused (HTTP 422 naming the label), so that no annotation is
        silently detached or left describing another image. Delete the labels first to replace such an image.
        """
        with http_errors("adding an image"):
            image_id = check_name(image_id or self._to_id(os.path.basename(image_filename))[0], "image id")
            what = f"uploaded image '{image_id}'"
            extension = volume_extension(image_filename, VOLUME_EXTENSIONS, what)
            check_image(image_filename, what)
            name = self._filename(image_id, extension)
            destination = os.path.realpath(os.path.join(self._datastore.image_path(), name))
            with FileLock(self._lock_file):
                self._reload_locked()
                previous = self._datastore.objects.get(image_id)
                labels = dict(previous.labels) if previous is not None else {}
                for tag, label in labels.items():
                    label_file = os.path.join(self._datastore.label_path(tag), self._filename(image_id, label.ext))
                    try:
                        check_label(label_file, image_filename, self.label_values, f"{tag} label of '{image_id}'")
                    except InvalidInputError as error:
                        raise InvalidInputError(
                            f"image '{image_id}' already has a {tag} label that does not fit the new image "
                            f"({error}); delete the label first to replace the image."
                        ) from error
                atomic_copy(image_filename, destination)
                if previous is not None and previous.image.ext != extension:
                    old_name = self._filename(image_id, previous.image.ext)
                    remove_file(os.path.join(self._datastore.image_path(), old_name))
                info = dict(image_info or {})
                info.update({"ts": int(time.time()), "name": name})
                self._datastore.objects[image_id] = ImageLabelModel(
                    image=DataModel(info=info, ext=extension), labels=labels
                )
                self._update_datastore_file(lock=False)
            logger.info("added image %s -> %s", image_id, destination)
            return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Validate a label against its image, then store it atomically (HTTP 404 / 422 otherwise)."""
        with http_errors("saving a label"):
            check_name(label_tag, "label tag")
            self._sync()
            if image_id not in self._datastore.objects:
                raise ImageNotFoundException(f"image '{image_id}' not found in the datastore; upload it first.")
            what = f"label for image '{image_id}'"
            image_uri = self.get_image_uri(image_id)
            with label_volume_file(label_filename, image_uri, what) as (volume_file, extension):
                values = check_label(volume_file, image_uri, self.label_values, what)
                self._store_label(image_id, volume_file, label_tag, extension, label_info, values)
            return image_id

    def _store_label(
        self,
        image_id: str,
        label_filename: str,
        label_tag: str,
        extension: str,
        label_info: dict[str, Any],
        values: list[int],
    ) -> None:
        label_dir = self._datastore.label_path(label_tag)
        name = self._filename(image_id, extension)
        with FileLock(self._lock_file):
            self._reload_locked()
            entry = self._datastore.objects.get(image_id)
            if entry is None:
                raise ImageNotFoundException(f"image '{image_id}' was removed from the datastore meanwhile.")
            os.makedirs(label_dir, exist_ok=True)
            atomic_copy(label_filename, os.path.join(label_dir, name))
            previous = entry.labels.get(label_tag)
            if previous is not None and previous.ext != extension:
                remove_file(os.path.join(label_dir, self._filename(image_id, previous.ext)))
            info = dict(label_info or {})
            info.update({"ts": int(time.time()), "name": name, "label_values": values})
            entry.labels[label_tag] = DataModel(info=info, ext=extension)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s/%s (values %s)", label_tag, name, values)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a stored label; an unknown image id or tag is HTTP 404, and nothing is removed."""
        with http_errors("removing a label"):
            self._sync()
            if self._datastore.label(label_id, label_tag) is None:
                raise LabelNotFoundException(
                    f"label '{shown(label_id)}' with tag '{shown(label_tag)}' not found in the datastore."
                )
            super().remove_label(label_id, label_tag)

    def remove_image(self, image_id: str) -> None:
        with http_errors("removing an image"):
            self._sync()
            super().remove_image(image_id)
