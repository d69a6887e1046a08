"""Phantom abdominal CT generator: the built-in benchmark, written as an MSD-layout dataset.

Generation only; reading a dataset (this one or a user's own) is :mod:`bundle.data`. Modules:

- :mod:`~bundle.data.phantom.generate`: case planning, rendering and the MSD-layout writer (:func:`generate_dataset`,
  the command line ``python -m bundle.data.phantom``);
- :mod:`~bundle.data.phantom.lesion_spec`: the lesion-type spec (schema, validating loader) and the default specs in
  ``specs/<task>.json``;
- :mod:`~bundle.data.phantom.anatomy`, :mod:`~bundle.data.phantom.lesions`, :mod:`~bundle.data.phantom.scanner`,
  :mod:`~bundle.data.phantom.canvas`, :mod:`~bundle.data.phantom.random_fields`: the anatomy, lesion and scanner models;
- :mod:`~bundle.data.phantom.nifti_io` (byte-reproducible NIfTI) and :mod:`~bundle.data.phantom.preview` (montage).
"""

from .generate import METADATA_FILE, SPLITS, generate_dataset
from .lesion_spec import (
    ORGANS,
    SPEC_DIR,
    LesionType,
    PhantomSpec,
    SpecError,
    default_spec_path,
    expand_extends,
    load_spec,
    spec_from_dict,
)

__all__ = [
    "METADATA_FILE",
    "ORGANS",
    "SPEC_DIR",
    "SPLITS",
    "LesionType",
    "PhantomSpec",
    "SpecError",
    "default_spec_path",
    "expand_extends",
    "generate_dataset",
    "load_spec",
    "spec_from_dict",
]
