"""Data: the phantom CT benchmark, MSD-layout dataset reading and the file look-ups used by the configs."""

from .datalist import CASE_LISTS, DatasetError, inlier_labels, load_datalist, load_dataset_json, ood_label_values
from .default_dataset import ensure_dataset
from .files import list_images, require_file

__all__ = [
    "CASE_LISTS",
    "DatasetError",
    "ensure_dataset",
    "inlier_labels",
    "list_images",
    "load_datalist",
    "load_dataset_json",
    "ood_label_values",
    "require_file",
]
