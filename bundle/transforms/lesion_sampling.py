"""Crop centres that give every lesion of a case the same chance, whatever its size.

``RandCropByLabelClassesd`` draws a class, then a voxel of that class, so within a class a lesion is drawn in
proportion to its volume. Where a case holds two lesions of one type, a 30-voxel tumour beside a 500-voxel one is the
crop's centre once in 17 draws, and a patch centred on the large one often misses it. On the phantom benchmark the
mask transformer misses about a quarter of the tumours under 120 voxels of its grid even in its own training cases
(and none larger), and half of the small ones share their case with a larger tumour of the same type.
:class:`LesionBalancedClassIndicesd` gives ``RandCropByLabelClassesd`` (through its
``indices_key``) per-class voxel lists in which every lesion, a face-connected component of a lesion class, fills the
same number of entries: a lesion is drawn uniformly among the case's lesions of the drawn class, then a voxel
uniformly within it. The class ratios are unchanged, and so is every other class's list (all its voxels, as
``ClassesToIndicesd`` gives). With ``balance_lesions=False`` the lesion classes get their plain voxel lists too, which
is exactly the sampling without ``indices_key``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = ["LesionBalancedClassIndicesd", "lesion_balanced_class_indices"]


def lesion_balanced_class_indices(
    label: np.ndarray, num_classes: int, lesion_classes: Sequence[int], balance_lesions: bool = True
) -> list[np.ndarray]:
    """Flat voxel indices of each class of ``label`` (spatial, integer values); for a lesion class every component
    fills the same number of entries (the size of its largest component, cycling through the smaller ones' voxels).

    Raises:
        ValueError: ``num_classes`` < 1, or a lesion class outside ``[1, num_classes)``.
    """
    checked = _checked_lesion_classes(num_classes, lesion_classes)
    lesions = checked if balance_lesions else set()
    # int32 halves what a cached dataset holds (the background's list covers most of the organ region)
    dtype = np.int32 if label.size < np.iinfo(np.int32).max else np.int64
    indices = []
    for c in range(num_classes):
        mask = label == c
        components, count = ndimage.label(mask) if c in lesions else (None, 0)
        if count > 1:
            flat = components.ravel()
            groups = [np.flatnonzero(flat == i) for i in range(1, count + 1)]
            longest = max(len(g) for g in groups)
            voxels = np.concatenate([np.resize(g, longest) for g in groups])
        else:
            voxels = np.flatnonzero(mask)
        indices.append(voxels.astype(dtype, copy=False))
    return indices


def _checked_lesion_classes(num_classes: int, lesion_classes: Sequence[int]) -> set[int]:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    bad = [c for c in lesion_classes if not 1 <= int(c) < num_classes]
    if bad:
        raise ValueError(f"lesion classes {bad} are not foreground classes of 0..{num_classes - 1}.")
    return {int(c) for c in lesion_classes}


class LesionBalancedClassIndicesd(MapTransform):
    """Per-class crop-centre lists for ``RandCropByLabelClassesd(indices_key=...)`` in which each lesion of a case
    is equally likely (see the module docstring).

    Args:
        keys: the label key (an index map ``(1, *spatial)``).
        num_classes: classes of the label, background included.
        lesion_classes: the classes whose components are balanced (e.g. the tumour classes).
        indices_key: where the lists go; ``RandCropByLabelClassesd`` pops it.
        balance_lesions: ``False`` gives every class its plain voxel list (sampling as without the lists).
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        lesion_classes: Sequence[int],
        indices_key: str = "label_class_indices",
        balance_lesions: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LesionBalancedClassIndicesd takes one label key, got {list(self.keys)}.")
        self.num_classes = num_classes
        self.lesion_classes = sorted(_checked_lesion_classes(num_classes, lesion_classes))
        self.indices_key = indices_key
        self.balance_lesions = bool(balance_lesions)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            label = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            if label.ndim < 2 or label.shape[0] != 1:
                raise ValueError(f"'{key}' must be an index map of shape (1, *spatial), got {tuple(label.shape)}.")
            d[self.indices_key] = lesion_balanced_class_indices(
                np.rint(label[0]).astype(np.int64), self.num_classes, self.lesion_classes, self.balance_lesions
            )
        return d
