"""Data: MSD-layout dataset reading, the default dataset and the file look-ups used by the configs.

The phantom CT generator that writes the default dataset is the subpackage :mod:`bundle.data.phantom`.
"""

from .datalist import (
    CASE_LISTS,
    DatasetError,
    inlier_labels,
    load_datalist,
    load_datalists,
    load_dataset_json,
    ood_label_names,
    ood_label_values,
)
from .default_dataset import ensure_dataset
from .files import list_images, require_file

__all__ = [
    "CASE_LISTS",
    "DatasetError",
    "ensure_dataset",
    "inlier_labels",
    "list_images",
    "load_datalist",
    "load_datalists",
    "load_dataset_json",
    "ood_label_names",
    "ood_label_values",
    "require_file",
]
