"""Multi-case inference in which one bad case does not sink the others.

A folder of hospital CT holds the odd truncated file, 2D secondary capture or broken affine. MONAI's engines stop at
the first exception: the cases before it are written, the table of case scores is not, and the cases after it never
run. Here each case is loaded, inferred and post-processed on its own. A case that fails at any of these steps
becomes an error item (``{"case": name, "case_error": message}``) that the post-processing skips and
:class:`~bundle.handlers.OODCaseWriter` turns into a row with the message; the files that its post-processing had
already written are removed, so a failed case leaves no output but its row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from bundle.handlers.naming import strip_image_suffix
from bundle.transforms.validation import read_error_reason

from .keys import CASE_ERROR_KEY, CASE_NAME_KEY

__all__ = ["CaseIsolatingDataset", "CaseIsolatingEvaluator", "error_case_name"]

logger = logging.getLogger(__name__)


def error_case_name(item: dict, image_key: str = "image") -> str:
    """The case name of a datalist entry (its image file name without the extension)."""
    source = item.get(image_key) if isinstance(item, dict) else None
    return strip_image_suffix(source) if isinstance(source, str | Path) else str(source)


def _message(error: BaseException) -> str:
    """The error that names the problem: MONAI wraps a failing transform's error in "applying transform ..."."""
    reason = read_error_reason(error)
    while error.__cause__ is not None and str(error).startswith("applying transform"):
        error = error.__cause__
    message = f"{type(error).__name__}: {error}".replace("\n", " ").strip()
    return f"{reason} ({message})" if reason else message


class CaseIsolatingDataset(Dataset):
    """A :class:`monai.data.Dataset` whose failing items become error items instead of exceptions.

    Args:
        data: the datalist (``[{"image": path}, ...]``); an empty list is an error.
        transform: the preprocessing.
        image_key: the key naming each case.
    """

    def __init__(self, data: Sequence, transform: Callable | None = None, image_key: str = "image") -> None:
        if len(data) == 0:
            raise ValueError("the inference datalist is empty: no image to process (check --datalist or the folder).")
        super().__init__(data=data, transform=transform)
        self.image_key = image_key

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as error:  # noqa: BLE001 - any failure of one case is reported for that case
            name = error_case_name(self.data[index], self.image_key)
            message = _message(error)
            source = self.data[index].get(self.image_key) if isinstance(self.data[index], dict) else None
            if source is not None and str(source) not in message:
                message = f"{source}: {message}"
            logger.error("case %s failed while loading: %s", name, message)
            return {CASE_NAME_KEY: name, CASE_ERROR_KEY: f"loading failed: {message}"}


class CaseIsolatingEvaluator(SupervisedEvaluator):
    """A :class:`monai.engines.SupervisedEvaluator` that runs each case on its own (batch size 1).

    An error item from :class:`CaseIsolatingDataset`, or an exception in the network or the post-processing, gives
    the iteration output ``[{"case": name, "case_error": message}]`` and the run goes on. The outputs that the
    post-processing had written for a failed case (``case_outputs``, patterns with ``{case}``) are removed.

    Args:
        case_outputs: the files written per case, e.g. ``["OUT/{case}_seg.nii.gz", "OUT/{case}_ood.nii.gz"]``.
        args, kwargs: as for :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(self, *args, case_outputs: Sequence[str] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.case_outputs = [str(p) for p in case_outputs]

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> list[dict]:
        name = self._batch_case_name(batchdata)
        if CASE_ERROR_KEY in batchdata:
            return self._failed(engine, name, str(_first(batchdata[CASE_ERROR_KEY])))
        try:
            return super()._iteration(engine, batchdata)
        except Exception as error:  # noqa: BLE001 - the case fails, the run goes on
            logger.error("case %s failed: %s", name, _message(error))
            for pattern in self.case_outputs:
                Path(pattern.format(case=name)).unlink(missing_ok=True)
            return self._failed(engine, name, f"inference failed: {_message(error)}")

    @staticmethod
    def _failed(engine: SupervisedEvaluator, name: str, message: str) -> list[dict]:
        engine.state.output = [{CASE_NAME_KEY: name, CASE_ERROR_KEY: message}]
        engine.state.batch = [{CASE_NAME_KEY: name}]
        return engine.state.output

    @staticmethod
    def _batch_case_name(batchdata: dict) -> str:
        if CASE_NAME_KEY in batchdata:
            return str(_first(batchdata[CASE_NAME_KEY]))
        image = batchdata.get("image") if isinstance(batchdata, dict) else None
        meta = getattr(image, "meta", {}) or {}
        source = meta.get("filename_or_obj")
        if source is None:
            return "unknown"
        return strip_image_suffix(str(_first(source)))


def _first(value):
    return value[0] if isinstance(value, list | tuple) and len(value) else value
