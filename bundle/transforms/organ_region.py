"""Organ-region cascade: find the organ with a coarse localiser, segment inside its box, paste the result back.

Strong pancreatic-tumour systems localise the organ at low resolution first and segment lesions in the cropped
region at full resolution; the compute then goes to the organ instead of bowel and bone. Here:

- :class:`LocaliseOrgand` resamples the (preprocessed) image to the localiser's coarse grid, runs the localiser
  network, keeps the largest connected organ component and crops the image to its bounding box plus a margin;
- the mask transformer runs on the crop;
- :class:`PasteOrganRegiond` puts its outputs back onto the full grid, with the background class (and the lowest
  anomaly value) outside the box, so that the output contract (the input's grid and affine) is unchanged.

The region found is recorded under ``region_key`` (box, whether an organ was found, a message), and the case table
reports the message of a case whose organ was not found (it is then segmented in full).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import MapTransform
from scipy import ndimage

from .validation import source_name

__all__ = ["LocaliseOrgand", "PasteOrganRegiond", "box_with_margin", "largest_component"]

logger = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = "organ localiser found no organ; the whole volume was segmented"


def largest_component(mask: np.ndarray, min_fraction: float = 1.0) -> np.ndarray:
    """The 26-connected components of a boolean mask at least ``min_fraction`` times the size of the largest one.

    With ``min_fraction=1`` only the largest component is kept; a smaller fraction also keeps the other large parts of
    an organ that the coarse localiser split in two, and still drops isolated specks. An all-false mask is returned
    as is.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= min(1.0, min_fraction) * sizes.max()
    keep[0] = False
    return keep[labels]


def box_with_margin(
    mask: np.ndarray, margin: Sequence[int], shape: Sequence[int] | None = None, scale: Sequence[float] | None = None
) -> tuple[list[int], list[int]] | None:
    """Bounding box ``(start, end)`` (end exclusive) of ``mask``, mapped by ``scale`` and widened by ``margin``.

    Args:
        mask: boolean mask.
        margin: voxels added on each side, per axis, on the output grid.
        shape: output grid shape, to clip to; defaults to the mask's shape.
        scale: output voxels per mask voxel, per axis (``1`` = the mask's own grid).

    Returns:
        ``None`` for an empty mask.
    """
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    scale = [1.0] * mask.ndim if scale is None else list(scale)
    shape = list(mask.shape) if shape is None else list(shape)
    start = [max(0, int(np.floor(lo * s)) - m) for lo, s, m in zip(idx.min(0), scale, margin, strict=True)]
    end = [min(n, int(np.ceil((hi + 1) * s)) + m) for hi, s, n, m in zip(idx.max(0), scale, shape, margin, strict=True)]
    return start, end


class LocaliseOrgand(MapTransform):
    """Crop a preprocessed, channel-first image to the organ found by a coarse localiser network.

    The image (already on the fine grid and intensity-scaled) is resampled to ``coarse_pixdim`` with trilinear
    interpolation, segmented by ``localiser`` (any network giving class logits, channel 0 background) with a
    sliding window, and every non-background voxel of the largest connected component forms the organ. Its bounding
    box, mapped back to the fine grid and widened by ``margin`` voxels, is the crop. When no organ is found the crop
    is the whole image and the region's message says so.

    The cropped image keeps the image's meta data, with the affine moved to the crop's first voxel. The full
    image's affine and shape go to ``region_key`` for :class:`PasteOrganRegiond`.

    Args:
        keys: the image key(s) to crop (the first one is localised; the others get the same box).
        localiser: the localiser network, in evaluation mode, with its weights loaded.
        coarse_pixdim: the localiser's voxel size in mm.
        margin: voxels added around the organ box on each side, per axis, on the fine grid.
        roi_size: sliding-window size of the localiser.
        region_key: where to store the region (``{"box_start", "box_end", "full_shape", "full_affine", "found",
            "message"}``).
        device: device for the localiser; by default the localiser's own.
        sw_batch_size: sliding-window batch size.
        min_component_fraction: organ components at least this fraction of the largest one are kept (see
            :func:`largest_component`).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        localiser: torch.nn.Module,
        coarse_pixdim: Sequence[float],
        margin: Sequence[int],
        roi_size: Sequence[int],
        region_key: str = "organ_region",
        device: torch.device | str | None = None,
        sw_batch_size: int = 4,
        min_component_fraction: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_component_fraction = float(min_component_fraction)
        self.localiser = localiser
        self.coarse_pixdim = [float(p) for p in coarse_pixdim]
        self.margin = [int(m) for m in margin]
        self.roi_size = [int(r) for r in roi_size]
        self.region_key = region_key
        self.device = device
        self.sw_batch_size = sw_batch_size

    def organ_mask(self, image: torch.Tensor, pixdim: Sequence[float]) -> tuple[np.ndarray, list[float]]:
        """Localiser organ mask on the coarse grid of ``image`` ``(1, *spatial)`` and fine voxels per coarse voxel."""
        spatial = image.shape[1:]
        coarse_shape = [max(1, round(n * p / c)) for n, p, c in zip(spatial, pixdim, self.coarse_pixdim, strict=True)]
        device = self.device or next(self.localiser.parameters()).device
        x = torch.as_tensor(image, dtype=torch.float32).as_subclass(torch.Tensor)[None].to(device)
        coarse = F.interpolate(x, size=coarse_shape, mode="trilinear", align_corners=False)
        was_training = self.localiser.training
        self.localiser.eval()
        with torch.no_grad():
            logits = sliding_window_inference(coarse, self.roi_size, self.sw_batch_size, self.localiser)
        self.localiser.train(was_training)
        mask = (torch.as_tensor(logits).argmax(1)[0] > 0).cpu().numpy()
        scale = [n / c for n, c in zip(spatial, coarse_shape, strict=True)]
        return largest_component(mask, self.min_component_fraction), scale

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Localise the organ in the first key and crop every key to its box."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        image = d[keys[0]]
        spatial = list(image.shape[1:])
        affine = image.affine.clone() if isinstance(image, MetaTensor) else torch.eye(len(spatial) + 1)
        pixdim = [float(p) for p in torch.linalg.norm(affine[:-1, :-1].float(), dim=0)]
        mask, scale = self.organ_mask(image, pixdim)
        box = box_with_margin(mask, self.margin, spatial, scale)
        found = box is not None
        if box is None:
            box = ([0] * len(spatial), spatial)
            logger.warning("%s: %s.", source_name(d, keys[0]), NOT_FOUND_MESSAGE)
        start, end = box
        region = {
            "box_start": start,
            "box_end": end,
            "full_shape": spatial,
            "full_affine": affine,
            "found": found,
            "message": "" if found else NOT_FOUND_MESSAGE,
        }
        crop_affine = affine.clone()
        crop_affine[:-1, -1] = affine[:-1, :-1] @ torch.as_tensor(start, dtype=affine.dtype) + affine[:-1, -1]
        slices = (slice(None),) + tuple(slice(s, e) for s, e in zip(start, end, strict=True))
        for key in keys:
            cropped = d[key][slices]
            if isinstance(cropped, MetaTensor):
                cropped = cropped.clone()
                cropped.affine = crop_affine
            d[key] = cropped
        d[self.region_key] = region
        return d


class PasteOrganRegiond(MapTransform):
    """Put crop-sized, channel-first outputs back onto the full grid recorded by :class:`LocaliseOrgand`.

    Outside the organ box every channel gets its fill value: with ``fill="background"`` the first channel is
    ``background_value`` and the others 0 (1 for class probabilities; a large logit for class logits), with
    ``fill="min"`` the crop's minimum (an anomaly map: the lowest score), or a number. The results carry the full
    grid's affine and the meta data (applied operations included) of ``reference_key``, and the reference (the
    cropped image) is pasted back too (its minimum outside the box): ``Invertd`` copies the geometry of its
    ``orig_keys``, so they must describe the full grid for it to take the outputs back to the input's grid.

    Args:
        keys: keys of the crop-sized outputs.
        fill: ``"background"``, ``"min"`` or a number, one for all keys or one per key.
        region_key: the region stored by :class:`LocaliseOrgand`.
        reference_key: the (cropped) image whose meta data the results take.
        background_value: the background channel's value outside the box with ``fill="background"``.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        fill: str | float | Sequence[str | float] = "background",
        region_key: str = "organ_region",
        reference_key: str | None = "image",
        background_value: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.background_value = float(background_value)
        fills = [fill] * len(self.keys) if isinstance(fill, (str, int, float)) else list(fill)
        if len(fills) != len(self.keys):
            raise ValueError(f"fill has {len(fills)} entries for {len(self.keys)} keys.")
        for f in fills:
            if isinstance(f, str) and f not in ("background", "min"):
                raise ValueError(f"fill must be 'background', 'min' or a number, got {f!r}.")
        self.fills = fills
        self.region_key = region_key
        self.reference_key = reference_key

    def _fill(self, full: torch.Tensor, fill: str | float, crop: torch.Tensor) -> None:
        if fill == "background":
            full.zero_()
            full[0] = self.background_value
        elif fill == "min":
            full.fill_(float(crop.min()) if crop.numel() else 0.0)
        else:
            full.fill_(float(fill))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Paste every key back onto the full grid."""
        d = dict(data)
        if self.region_key not in d:
            raise KeyError(f"'{self.region_key}' not found: PasteOrganRegiond needs the region of LocaliseOrgand.")
        region = d[self.region_key]
        # after batching and decollation the numbers may come back as tensors
        start, end, shape = ([int(v) for v in region[name]] for name in ("box_start", "box_end", "full_shape"))
        full_affine = torch.as_tensor(region["full_affine"]).reshape(len(shape) + 1, len(shape) + 1)
        expected = [e - s for s, e in zip(start, end, strict=True)]
        reference = d.get(self.reference_key) if self.reference_key is not None else None
        pasted = list(self.key_iterator(d, self.fills))
        meta, ops = {}, []
        if isinstance(reference, MetaTensor):
            meta = {k: v for k, v in reference.meta.items() if k != "affine"}
            ops = list(reference.applied_operations)
            if self.reference_key not in self.keys:
                pasted.append((self.reference_key, "min"))
        box = (slice(None),) + tuple(slice(s, e) for s, e in zip(start, end, strict=True))
        for key, fill in pasted:
            crop = d[key]
            if list(crop.shape[1:]) != expected:
                raise ValueError(f"'{key}' has spatial shape {list(crop.shape[1:])}; the organ box is {expected}.")
            plain = torch.as_tensor(crop).as_subclass(torch.Tensor)
            full = plain.new_empty((plain.shape[0], *shape))
            self._fill(full, fill, plain)
            full[box] = plain
            d[key] = MetaTensor(full, affine=full_affine, meta=dict(meta), applied_operations=list(ops))
        return d
