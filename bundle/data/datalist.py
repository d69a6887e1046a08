"""Reading and validating Medical Segmentation Decathlon style datasets (``dataset.json`` + image folders).

Works for any MSD-layout dataset (the phantom or user data). Paths in the lists are relative to the dataset
folder. Errors name the folder, file, list key or entry at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "CASE_LISTS",
    "DatasetError",
    "inlier_labels",
    "load_datalist",
    "load_datalists",
    "load_dataset_json",
    "ood_label_names",
    "ood_label_values",
]

#: Case lists a MaxQuery dataset may hold.
CASE_LISTS = ("training", "validation", "test", "test_ood")


class DatasetError(ValueError):
    """A ``dataset.json`` is malformed or inconsistent (the message names the file and key)."""


def _dataset_file(dataset_dir: str | Path) -> Path:
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path is not a folder: {root}")
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"no dataset.json in dataset folder {root}")
    return path


def _label_map(obj: Any, key: str, path: Path) -> dict[int, str]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: key '{key}' must be an object mapping label values to names")
    out: dict[int, str] = {}
    for k, v in obj.items():
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: key '{key}' has a non-integer label value {k!r}") from None
        if not 0 <= value <= 255:
            raise DatasetError(f"{path}: key '{key}' label value {value} is outside 0..255")
        out[value] = str(v)
    return out


def load_dataset_json(dataset_dir: str | Path) -> dict:
    """Load and validate ``dataset.json`` of an MSD-layout dataset.

    Checks: ``labels`` present with integer keys including ``0``; ``ood_labels`` (optional) integer keys that do
    not collide with ``labels``; every case list present is a list of entries that are a path string or an
    object with a string ``image`` (and, if present, ``label``).

    Args:
        dataset_dir: the dataset folder.

    Returns:
        The parsed JSON object (unchanged).

    Raises:
        FileNotFoundError: missing folder or ``dataset.json``.
        DatasetError: malformed content.
    """
    path = _dataset_file(dataset_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object")
    if "labels" not in data:
        raise DatasetError(f"{path}: missing key 'labels'")
    labels = _label_map(data["labels"], "labels", path)
    if 0 not in labels:
        raise DatasetError(f"{path}: key 'labels' must define label 0 (background)")
    ood = _label_map(data.get("ood_labels", {}), "ood_labels", path)
    clash = sorted(set(ood) & set(labels))
    if clash:
        raise DatasetError(f"{path}: key 'ood_labels' value(s) {clash} collide with 'labels'")
    for key in CASE_LISTS:
        if key not in data:
            continue
        items = data[key]
        if not isinstance(items, list):
            raise DatasetError(f"{path}: key '{key}' must be a list")
        for i, item in enumerate(items):
            if isinstance(item, str):
                continue
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                raise DatasetError(f"{path}: entry {i} of '{key}' needs a string 'image'")
            if "label" in item and not isinstance(item["label"], str):
                raise DatasetError(f"{path}: entry {i} of '{key}' has a non-string 'label'")
    return data


def load_datalist(
    dataset_dir: str | Path, key: str = "training", check_files: bool = True, allow_empty: bool = True
) -> list[dict]:
    """Load one case list with absolute paths (via ``monai.data.load_decathlon_datalist``).

    Args:
        dataset_dir: the dataset folder (paths in the list are relative to it).
        key: list to load, e.g. ``training``, ``validation``, ``test``, ``test_ood``.
        check_files: verify that every image and label file exists.
        allow_empty: accept an empty list; training passes ``False`` for its training and validation lists, which
            it cannot do without (model selection and the OOD calibration use the validation cases).

    Returns:
        A list of dicts with absolute ``image`` (and ``label``) paths.

    Raises:
        FileNotFoundError: missing folder, ``dataset.json`` or a listed file (named with its path).
        DatasetError: malformed ``dataset.json`` or missing ``key``.
    """
    from monai.data import load_decathlon_datalist

    data = load_dataset_json(dataset_dir)
    path = _dataset_file(dataset_dir)
    if key not in data:
        present = [k for k in data if isinstance(data[k], list)]
        raise DatasetError(f"{path}: no case list '{key}' (lists present: {', '.join(present) or 'none'})")
    root = path.parent.resolve()
    if not data[key] and not allow_empty:
        raise DatasetError(f"{path}: the case list '{key}' is empty; it needs at least one case.")
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=root)
    if check_files:
        for i, item in enumerate(items):
            for field in ("image", "label"):
                value = item.get(field)
                if value is None:
                    continue
                for f in value if isinstance(value, list) else [value]:
                    if not Path(f).is_file():
                        raise FileNotFoundError(f"{path}: entry {i} of '{key}': {field} file not found: {f}")
    return items


def inlier_labels(dataset_dir: str | Path) -> dict[int, str]:
    """The inlier classes (``labels``) as ``{value: name}``, sorted by value."""
    data = load_dataset_json(dataset_dir)
    return dict(sorted(_label_map(data["labels"], "labels", _dataset_file(dataset_dir)).items()))


def ood_label_values(dataset_dir: str | Path) -> list[int]:
    """The OOD lesion label values (``ood_labels`` keys), sorted; empty when the dataset has none."""
    return list(ood_label_names(dataset_dir))


def ood_label_names(dataset_dir: str | Path) -> dict[int, str]:
    """OOD lesion label value -> lesion type name (``ood_labels``), sorted by value; empty when there is none."""
    data = load_dataset_json(dataset_dir)
    return dict(sorted(_label_map(data.get("ood_labels", {}), "ood_labels", _dataset_file(dataset_dir)).items()))


def load_datalists(
    dataset_dirs: list[str | Path] | tuple[str | Path, ...],
    key: str = "training",
    labels_like: str | Path | None = None,
    check_files: bool = True,
) -> list[dict]:
    """The case lists ``key`` of several datasets, concatenated (e.g. extra training cases beside the main dataset).

    Args:
        dataset_dirs: dataset folders, in order; an empty sequence gives an empty list.
        key: the list to load from each, e.g. ``training`` or ``validation``.
        labels_like: a dataset whose inlier labels each of ``dataset_dirs`` must share, so that cases labelled
            with another class set are not mixed in.
        check_files: verify that every listed file exists.

    Raises:
        DatasetError: ``dataset_dirs`` is a string (one folder, not a list), a dataset lacks ``key``, or its
            inlier labels differ from those of ``labels_like`` (the message names both datasets).
        FileNotFoundError: a missing folder, ``dataset.json`` or listed file.
    """
    if isinstance(dataset_dirs, (str, Path)):
        raise DatasetError(
            f"dataset_dirs must be a list of dataset folders, got the single path {str(dataset_dirs)!r}."
        )
    expected = inlier_labels(labels_like) if labels_like is not None else None
    items: list[dict] = []
    for dataset_dir in dataset_dirs:
        if expected is not None and inlier_labels(dataset_dir) != expected:
            raise DatasetError(
                f"{dataset_dir}: inlier labels {inlier_labels(dataset_dir)} differ from those of {labels_like} "
                f"({expected}); its cases cannot be mixed in."
            )
        items += load_datalist(dataset_dir, key, check_files=check_files)
    return items
