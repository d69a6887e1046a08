"""Inference tasks: the label map with a suspected-OOD segment, and the raw MaxQuery anomaly map."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Invertd, LoadImaged, SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.utils.transform import run_transforms
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer
from monailabel.utils.others.generic import device_list
from torch import nn

from bundle.ood import MarkSuspectedOODd, OODThresholds
from bundle.transforms import HysteresisArgmaxd, InvalidVolumeError

from ..bundle_config import BundleConfig
from ..errors import InvalidInputError, ModelNotFoundError, short_error
from ..model_store import ModelStore

__all__ = ["SUSPECTED_OOD", "MaxQueryAnomalyMap", "MaxQueryInferTask", "MaxQuerySegmentation", "number_or_none"]

logger = logging.getLogger(__name__)

SUSPECTED_OOD = "suspected_ood"
INPUT_PATH_KEY = "input_file_path"


def number_or_none(value: Any) -> float | None:
    """A finite float from a number, a one-element tensor or a numeric string; else ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


class MaxQueryInferTask(BasicInferTask):
    """Runs the bundle's inference pipeline (``configs/inference.json``) for one image.

    Pre-processing, inferer and post-processing are the config's own objects (``preprocessing``, ``inferer``,
    ``postprocessing`` minus its file writers), so the app and ``monai.bundle run`` produce the same result. The
    post-processing maps the class probabilities and the anomaly map back onto the input image's grid (``Invertd``)
    and computes the case OOD score (``CaseOODScored``) on the model grid before that.

    Args:
        bundle: the bundle configs.
        store: the model file, calibration and loaded networks.
        ood_label_value: label value of the suspected-OOD segment.
        default_device: device listed first in the task's options.
        output_key: which output the task writes (``"pred"`` label map or ``"ood"`` anomaly map); the network
            output itself is always stored under ``"pred"``, as the bundle's post-processing expects.
        type: the MONAI Label model type.
        labels: label name -> value of the output.
        description: what the task returns.
    """

    #: data type of the written volume, and whether a client's ``result_dtype`` request may change it
    output_dtype: torch.dtype = torch.float32
    client_sets_dtype: bool = False

    def __init__(
        self,
        bundle: BundleConfig,
        store: ModelStore,
        ood_label_value: int,
        default_device: str,
        output_key: str,
        type: str | InferType,
        labels: dict[str, int],
        description: str,
    ) -> None:
        super().__init__(
            path=str(store.model_path),
            network=None,
            type=type,
            labels=labels,
            dimension=3,
            description=description,
            output_label_key="pred",
            output_json_key="result",
        )
        self.output_key = output_key
        self.bundle = bundle
        self.store = store
        self.ood_label_value = ood_label_value
        devices = [default_device] + [d for d in device_list() if d != default_device]
        self._config["device"] = devices

    def is_valid(self) -> bool:
        """Always listed: without a model file the task answers with an error naming the missing file."""
        return True

    def info(self) -> dict[str, Any]:
        """MONAI Label task info, plus the model file's name and whether it exists (never a server path)."""
        info = super().info()
        info["model_file"] = self.store.model_path.name
        info["model_available"] = self.store.model_available()
        info["bundle_version"] = self.bundle.version
        return info

    def _get_network(self, device: str, data: dict | None) -> nn.Module:
        return self.store.network(device)

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        """The bundle's ``preprocessing`` transforms.

        Raises:
            ModelNotFoundError: a checkpoint the preprocessing needs (e.g. a cascade's organ localiser) is missing.
        """
        try:
            return list(self.bundle.inference.get_parsed_content("preprocessing").transforms)
        except Exception as error:
            cause: BaseException | None = error
            while cause is not None and not isinstance(cause, FileNotFoundError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            name = Path(str(cause.filename or "")).name if getattr(cause, "filename", None) else ""
            logger.warning("inference preprocessing cannot be built: %s", cause)
            raise ModelNotFoundError(
                f"a checkpoint the inference config needs is missing{f' ({name})' if name else ''}: put it next to "
                f"the model file {self.store.model_path.name}."
            ) from error

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """Run the pre-processing; a file that cannot be loaded is an input error (HTTP 422), not a server error.

        MONAI Label's ``image_path`` entry is set aside meanwhile: MONAI's ``Spacingd`` treats every ``image_*``
        entry as metadata of ``image`` and fails on a string.
        """
        self.store.require_model()
        if "image_path" in data:
            data = dict(data)
            data[INPUT_PATH_KEY] = data.pop("image_path")
        load_end = next((i + 1 for i, t in enumerate(transforms) if isinstance(t, LoadImaged)), 0)
        source = data.get("image")

        def without_path(message: str) -> str:  # readers and the bundle's checks name the file by its server path
            return message.replace(source, Path(source).name) if isinstance(source, str) and source else message

        try:
            data = super().run_pre_transforms(data, transforms[:load_end])
        except Exception as error:
            raise InvalidInputError(without_path(f"cannot load image: {short_error(error)}")) from error
        try:
            return super().run_pre_transforms(data, transforms[load_end:])
        except InvalidVolumeError as error:
            raise InvalidInputError(without_path(str(error))) from error

    def inferer(self, data: dict | None = None) -> Callable:
        """The bundle's ``inferer`` (sliding window over the config's patch size)."""
        return self.bundle.inference.get_parsed_content("inferer")

    def inverse_transforms(self, data: dict | None = None) -> None:
        """None: the bundle's post-processing inverts the pre-processing itself (``Invertd``)."""
        return None

    def bundle_post_transforms(self, stop_before_invert: bool = False) -> list[Callable]:
        """The bundle's ``postprocessing`` without its file writers (the app returns the result instead) and without
        its suspected-OOD marking, which the segmentation task applies with the same transform and the thresholds of
        the served model (or of the request).

        Args:
            stop_before_invert: keep only the transforms before ``Invertd`` (enough for the case score).
        """
        transforms = []
        for transform in self.bundle.inference.get_parsed_content("postprocessing").transforms:
            if stop_before_invert and isinstance(transform, Invertd):
                break
            if isinstance(transform, HysteresisArgmaxd):
                # the served model may have been retrained since the config was parsed: its own offsets
                transform = HysteresisArgmaxd(
                    transform.keys, offsets=self.store.hysteresis_offsets(), input_type=transform.input_type
                )
            if not isinstance(transform, (SaveImaged, MarkSuspectedOODd)):
                transforms.append(transform)
        return transforms

    def thresholds(self, data: dict[str, Any]) -> OODThresholds:
        """The store's thresholds, overridden by ``ood_threshold`` / ``ood_voxel_threshold`` request parameters."""
        thresholds = self.store.thresholds()
        case = number_or_none(data.get("ood_threshold"))
        voxel = number_or_none(data.get("ood_voxel_threshold"))
        if case is None and voxel is None:
            return thresholds
        return OODThresholds(
            case if case is not None else thresholds.case_threshold,
            voxel if voxel is not None else thresholds.voxel_threshold,
            f"{thresholds.source} + request",
            thresholds.warning,
        )

    def post_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        """The bundle's post-processing followed by the task's own output transforms."""
        data["ood_thresholds"] = self.thresholds(data)
        return self.bundle_post_transforms() + self.output_transforms(data)

    def output_transforms(self, data: dict[str, Any]) -> list[Callable]:
        """Transforms after the bundle's post-processing: drop the channel dimension of both outputs."""
        return [SqueezeDimd(keys=["pred", "ood"], dim=0)]

    def result_params(self, data: dict[str, Any]) -> dict[str, Any]:
        """The JSON result: case OOD score, flag, thresholds and their source."""
        thresholds: OODThresholds = data["ood_thresholds"]
        score = number_or_none(data.get("ood_score"))
        flag = None if score is None or thresholds.case_threshold is None else score > thresholds.case_threshold
        result = {
            "ood_score": score,
            "ood_flag": flag,
            "ood_threshold": thresholds.case_threshold,
            "ood_voxel_threshold": thresholds.voxel_threshold,
            "ood_calibration": thresholds.source,
            "model_version": self.store.model_version(),
        }
        if thresholds.warning:
            result["ood_warning"] = thresholds.warning
        if score is None:
            result["ood_note"] = "no predicted organ or lesion voxel: the case OOD score is undefined."
        return result

    def case_score(self, image_path: str, device: str) -> float | None:
        """The case OOD score of one image, without mapping the outputs back to its grid.

        Runs the pre-processing, the network and the bundle's post-processing up to (not including) ``Invertd``.
        """
        data: dict[str, Any] = {self.input_key: image_path, "device": device}
        data = self.run_pre_transforms(data, self.pre_transforms(data))
        data = self.run_inferer(data, device=device)
        data = run_transforms(data, self.bundle_post_transforms(stop_before_invert=True), log_prefix="SCORE")
        return number_or_none(data.get("ood_score"))

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """Write the output on the input grid (extension of the input unless ``result_extension`` is given)."""
        data["result"] = self.result_params(data)
        if INPUT_PATH_KEY in data:
            data["image_path"] = data.pop(INPUT_PATH_KEY)
        if not (self.client_sets_dtype and data.get("result_dtype")):
            data["result_dtype"] = str(self.output_dtype).removeprefix("torch.")
        data[self.output_key] = data[self.output_key].to(self.output_dtype)
        return Writer(label=self.output_key, json="result", nibabel=True)(data)


class MaxQuerySegmentation(MaxQueryInferTask):
    """Label map of the bundle's classes plus a "suspected_ood" segment, and the case OOD score and flag.

    The suspected-OOD segment holds the predicted organ/lesion voxels whose anomaly value exceeds the calibrated
    voxel threshold; ``ood_flag`` is ``ood_score > ood_threshold`` (the calibrated case threshold).
    """

    output_dtype = torch.uint8
    client_sets_dtype = True

    def __init__(self, bundle: BundleConfig, store: ModelStore, ood_label_value: int, default_device: str) -> None:
        labels = {name: index for index, name in bundle.class_names.items() if index != 0}
        labels[SUSPECTED_OOD] = ood_label_value
        super().__init__(
            bundle,
            store,
            ood_label_value,
            default_device,
            output_key="pred",
            type=InferType.SEGMENTATION,
            labels=labels,
            description=(
                "MaxQuery mask transformer: organ and inlier tumour segmentation with a 'suspected_ood' segment "
                "(anomaly above the calibrated voxel threshold) and a case-level OOD score and flag"
            ),
        )

    def output_transforms(self, data: dict[str, Any]) -> list[Callable]:
        """Mark suspected-OOD voxels, then drop the channel dimension."""
        thresholds: OODThresholds = data["ood_thresholds"]
        mark = MarkSuspectedOODd("pred", "ood", thresholds.voxel_threshold, self.ood_label_value)
        return [mark, *super().output_transforms(data)]

    def result_params(self, data: dict[str, Any]) -> dict[str, Any]:
        """The case-level result plus the size and value of the suspected-OOD segment."""
        result = super().result_params(data)
        result["ood_voxels"] = int(data.get("ood_voxels", 0))
        result["ood_label_value"] = self.ood_label_value
        return result


class MaxQueryAnomalyMap(MaxQueryInferTask):
    """The raw MaxQuery anomaly map ``A = -max_n R`` (float32, higher = more OOD) on the input grid.

    It is always written as float32, whatever ``result_dtype`` a client asks for (OHIF asks uint8 for labels).
    """

    def __init__(self, bundle: BundleConfig, store: ModelStore, ood_label_value: int, default_device: str) -> None:
        super().__init__(
            bundle,
            store,
            ood_label_value,
            default_device,
            output_key="ood",
            type=InferType.OTHERS,
            labels={},
            description=(
                "MaxQuery anomaly map A = -max_n R as a float32 volume on the input grid (higher = more "
                "out-of-distribution), with the case OOD score and flag"
            ),
        )
