"""Lesion-type specification of the phantom benchmark: schema, defaults and a validating loader.

A spec is a JSON document. Lesion types are data: adding a tumour type means adding an entry to
``lesion_types``, not writing code. Every key is checked; a wrong spec raises :class:`SpecError`
whose message names the offending key (and the lesion type it belongs to).

Example (one entry of ``lesion_types``)::

    {"name": "pdac", "role": "inlier", "class_id": 2,
     "hu_offset": [-40, -18], "heterogeneity": 8, "margin_sharpness": 0.3,
     "shape_irregularity": 0.6, "size_mm": [14, 34], "count": [1, 1], "frequency": 3}

A spec can state only how it differs from another: ``"extends"`` names a built-in spec (``"pancreas"``) or a spec
file (a path ending in ``.json``, relative to the extending file). Its top-level keys replace the base's, and each
entry of its ``lesion_types`` changes the keys it gives of the base type of the same name (or adds a new type)::

    {"extends": "pancreas", "name": "phantom_pancreas_small_pnet",
     "lesion_types": [{"name": "pnet", "size_mm": [8, 18], "count": [1, 3]}]}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ORGANS",
    "SPEC_DIR",
    "Calcifications",
    "LesionType",
    "NecroticCore",
    "PhantomSpec",
    "RimEnhancement",
    "Septa",
    "SpecError",
    "default_spec_path",
    "expand_extends",
    "load_spec",
    "spec_from_dict",
]

#: Organs of interest the anatomy model can label (the ``organ`` key of a spec, the ``--task`` option).
ORGANS = ("pancreas", "liver")

#: Folder holding the default spec of each task (``<task>.json``).
SPEC_DIR = Path(__file__).resolve().parent / "specs"


class SpecError(ValueError):
    """A phantom spec is malformed; the message names the offending key (and lesion type)."""


# --------------------------------------------------------------------------------------------------------------------
# dataclasses
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calcifications:
    """Small dense foci inside a lesion.

    Attributes:
        probability: chance that a lesion of this type has calcifications at all.
        count: [min, max] number of foci.
        size_mm: [min, max] diameter of one focus in mm.
        hu: [min, max] absolute HU of a focus.
        location: ``"central"``, ``"peripheral"`` or ``"random"`` placement inside the lesion.
    """

    probability: float = 1.0
    count: tuple[int, int] = (1, 3)
    size_mm: tuple[float, float] = (1.5, 3.0)
    hu: tuple[float, float] = (250.0, 600.0)
    location: str = "random"


@dataclass(frozen=True)
class Septa:
    """Thin internal walls dividing the lesion into cells (a honeycomb of cysts when ``hu_offset`` > 0).

    Attributes:
        count: [min, max] number of cells (Voronoi seeds).
        thickness_mm: [min, max] wall thickness in mm.
        hu_offset: [min, max] HU of the walls relative to the lesion's base HU.
    """

    count: tuple[int, int] = (4, 8)
    thickness_mm: tuple[float, float] = (1.0, 2.0)
    hu_offset: tuple[float, float] = (30.0, 50.0)


@dataclass(frozen=True)
class NecroticCore:
    """A central region of different density (necrosis, haemorrhage, fibrous scar).

    Attributes:
        fraction: [min, max] radius of the core as a fraction of the lesion radius.
        hu_offset: [min, max] HU of the core relative to the lesion's base HU.
    """

    fraction: tuple[float, float] = (0.3, 0.5)
    hu_offset: tuple[float, float] = (-30.0, -15.0)


@dataclass(frozen=True)
class RimEnhancement:
    """A peripheral shell of different density (capsule, rim or nodular peripheral enhancement).

    Attributes:
        thickness_mm: [min, max] shell thickness in mm.
        hu_offset: [min, max] HU of the shell relative to the lesion's base HU.
        continuity: fraction of the shell that is present (1 = complete ring, < 1 = nodular/discontinuous).
    """

    thickness_mm: tuple[float, float] = (1.5, 3.0)
    hu_offset: tuple[float, float] = (15.0, 30.0)
    continuity: float = 1.0


@dataclass(frozen=True)
class LesionType:
    """One lesion (tumour) type of the benchmark.

    Attributes:
        name: identifier (letters, digits, ``_`` and ``-``), unique within the spec.
        role: ``"inlier"`` (a training class) or ``"ood"`` (appears only in ``test_ood`` cases).
        class_id: label value of an inlier type (2..K-1, contiguous over the inlier types).
        label_value: label value of an OOD type (unique, not an inlier class, 1..255).
        hu_offset: [lo, hi] HU of the lesion's solid component relative to the organ's mean HU in
            that case; one value is drawn per lesion.
        heterogeneity: standard deviation (HU) of the lesion's internal texture.
        texture_mm: correlation length (mm) of that texture.
        margin_sharpness: 1 = sharp, encapsulated margin; 0 = infiltrative margin blending into the organ
            over several mm.
        shape_irregularity: 0 = smooth ellipsoid; 1 = strongly lobulated/spiculated outline.
        size_mm: [min, max] lesion diameter in mm.
        count: [min, max] number of lesions of this type in a case that has this type.
        frequency: relative weight when drawing a type among the types of the same role.
        description: free text.
        calcifications, septa, necrotic_core, rim_enhancement: optional internal structure.
    """

    name: str
    role: str
    class_id: int | None = None
    label_value: int | None = None
    hu_offset: tuple[float, float] = (-30.0, -15.0)
    heterogeneity: float = 6.0
    texture_mm: float = 2.5
    margin_sharpness: float = 0.5
    shape_irregularity: float = 0.3
    size_mm: tuple[float, float] = (10.0, 30.0)
    count: tuple[int, int] = (1, 1)
    frequency: float = 1.0
    description: str = ""
    calcifications: Calcifications | None = None
    septa: Septa | None = None
    necrotic_core: NecroticCore | None = None
    rim_enhancement: RimEnhancement | None = None

    @property
    def value(self) -> int:
        """The label value this type is written with (class id of an inlier, label value of an OOD type)."""
        return int(self.class_id if self.role == "inlier" else self.label_value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PhantomSpec:
    """A whole benchmark spec: the organ of interest and its lesion types.

    Attributes:
        organ: organ of interest, one of :data:`ORGANS` (label 1).
        lesion_types: inlier and OOD lesion types.
        name: dataset name written to ``dataset.json``.
        description: dataset description written to ``dataset.json``.
        tumour_free_fraction: fraction of inlier cases (training, validation, test) without any tumour.
        ood_inlier_cooccurrence: probability that a ``test_ood`` case also holds an inlier tumour.
    """

    organ: str
    lesion_types: tuple[LesionType, ...]
    name: str = ""
    description: str = ""
    tumour_free_fraction: float = 0.2
    ood_inlier_cooccurrence: float = 0.3
    source: str = field(default="", compare=False)

    @property
    def inlier_types(self) -> tuple[LesionType, ...]:
        """Inlier types sorted by class id."""
        return tuple(sorted((t for t in self.lesion_types if t.role == "inlier"), key=lambda t: t.value))

    @property
    def ood_types(self) -> tuple[LesionType, ...]:
        """OOD types sorted by label value."""
        return tuple(sorted((t for t in self.lesion_types if t.role == "ood"), key=lambda t: t.value))

    @property
    def num_classes(self) -> int:
        """K: background, organ and the inlier tumour classes."""
        return 2 + len(self.inlier_types)

    def labels(self) -> dict[str, str]:
        """``dataset.json`` ``labels``: inlier classes keyed by value."""
        out = {"0": "background", "1": self.organ}
        out.update({str(t.value): t.name for t in self.inlier_types})
        return out

    def ood_labels(self) -> dict[str, str]:
        """``dataset.json`` ``ood_labels``: OOD lesion label values."""
        return {str(t.value): t.name for t in self.ood_types}

    def type_by_name(self, name: str) -> LesionType:
        """Look a lesion type up by name."""
        for t in self.lesion_types:
            if t.name == name:
                return t
        raise KeyError(name)


# --------------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------------


def _where(lesion: str | None, key: str) -> str:
    return f"lesion type '{lesion}': key '{key}'" if lesion else f"key '{key}'"


def _check_keys(obj: Any, allowed: set[str], required: set[str], context: str, lesion: str | None) -> dict:
    if not isinstance(obj, dict):
        raise SpecError(f"{_where(lesion, context)} must be a JSON object, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            prefix = f"lesion type '{lesion}': " if lesion else ""
            scope = f" in '{context}'" if context else ""
            raise SpecError(f"{prefix}unknown key '{key}'{scope} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in obj:
            prefix = f"lesion type '{lesion}': " if lesion else ""
            scope = f" in '{context}'" if context else ""
            raise SpecError(f"{prefix}missing required key '{key}'{scope}")
    return obj


def _number(value: Any, key: str, lesion: str | None, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{_where(lesion, key)} must be a finite number, got {value!r}")
    if lo is not None and value < lo:
        raise SpecError(f"{_where(lesion, key)} must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise SpecError(f"{_where(lesion, key)} must be <= {hi}, got {value!r}")
    return float(value)


def _integer(value: Any, key: str, lesion: str | None, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{_where(lesion, key)} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise SpecError(f"{_where(lesion, key)} must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise SpecError(f"{_where(lesion, key)} must be <= {hi}, got {value!r}")
    return int(value)


def _range(
    value: Any, key: str, lesion: str | None, *, positive: bool = False, lo: float | None = None, integer: bool = False
) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SpecError(f"{_where(lesion, key)} must be a [min, max] pair, got {value!r}")
    if integer:
        a, b = (_integer(v, key, lesion) for v in value)
    else:
        a, b = (_number(v, key, lesion) for v in value)
    if positive and (a <= 0 or b <= 0):
        raise SpecError(f"{_where(lesion, key)} must be positive, got {list(value)!r}")
    if lo is not None and (a < lo or b < lo):
        raise SpecError(f"{_where(lesion, key)} must be >= {lo}, got {list(value)!r}")
    if a > b:
        raise SpecError(f"{_where(lesion, key)} is inverted (min > max): {list(value)!r}")
    return (a, b)


def _calcifications(obj: Any, lesion: str) -> Calcifications | None:
    if obj is None or obj is False:
        return None
    if obj is True:
        return Calcifications()
    key = "calcifications"
    _check_keys(obj, {"probability", "count", "size_mm", "hu", "location"}, set(), key, lesion)
    d = Calcifications()
    loc = obj.get("location", d.location)
    if loc not in ("central", "peripheral", "random"):
        raise SpecError(f"{_where(lesion, key + '.location')} must be central, peripheral or random, got {loc!r}")
    return Calcifications(
        probability=_number(obj.get("probability", d.probability), key + ".probability", lesion, 0.0, 1.0),
        count=_range(obj.get("count", list(d.count)), key + ".count", lesion, lo=1, integer=True),
        size_mm=_range(obj.get("size_mm", list(d.size_mm)), key + ".size_mm", lesion, positive=True),
        hu=_range(obj.get("hu", list(d.hu)), key + ".hu", lesion),
        location=loc,
    )


def _septa(obj: Any, lesion: str) -> Septa | None:
    if obj is None or obj is False:
        return None
    if obj is True:
        return Septa()
    key = "septa"
    _check_keys(obj, {"count", "thickness_mm", "hu_offset"}, set(), key, lesion)
    d = Septa()
    return Septa(
        count=_range(obj.get("count", list(d.count)), key + ".count", lesion, lo=2, integer=True),
        thickness_mm=_range(
            obj.get("thickness_mm", list(d.thickness_mm)), key + ".thickness_mm", lesion, positive=True
        ),
        hu_offset=_range(obj.get("hu_offset", list(d.hu_offset)), key + ".hu_offset", lesion),
    )


def _necrotic_core(obj: Any, lesion: str) -> NecroticCore | None:
    if obj is None or obj is False:
        return None
    if obj is True:
        return NecroticCore()
    key = "necrotic_core"
    _check_keys(obj, {"fraction", "hu_offset"}, set(), key, lesion)
    d = NecroticCore()
    frac = _range(obj.get("fraction", list(d.fraction)), key + ".fraction", lesion, positive=True)
    if frac[1] >= 1.0:
        raise SpecError(f"{_where(lesion, key + '.fraction')} must be < 1, got {list(frac)!r}")
    return NecroticCore(
        fraction=frac, hu_offset=_range(obj.get("hu_offset", list(d.hu_offset)), key + ".hu_offset", lesion)
    )


def _rim(obj: Any, lesion: str) -> RimEnhancement | None:
    if obj is None or obj is False:
        return None
    if obj is True:
        return RimEnhancement()
    key = "rim_enhancement"
    _check_keys(obj, {"thickness_mm", "hu_offset", "continuity"}, set(), key, lesion)
    d = RimEnhancement()
    cont = _number(obj.get("continuity", d.continuity), key + ".continuity", lesion, 0.0, 1.0)
    if cont <= 0:
        raise SpecError(f"{_where(lesion, key + '.continuity')} must be > 0, got {cont!r}")
    return RimEnhancement(
        thickness_mm=_range(
            obj.get("thickness_mm", list(d.thickness_mm)), key + ".thickness_mm", lesion, positive=True
        ),
        hu_offset=_range(obj.get("hu_offset", list(d.hu_offset)), key + ".hu_offset", lesion),
        continuity=cont,
    )


_LESION_KEYS = {
    "name",
    "role",
    "class_id",
    "label_value",
    "hu_offset",
    "heterogeneity",
    "texture_mm",
    "margin_sharpness",
    "shape_irregularity",
    "size_mm",
    "count",
    "frequency",
    "description",
    "calcifications",
    "septa",
    "necrotic_core",
    "rim_enhancement",
}
_LESION_REQUIRED = {"name", "role", "hu_offset", "size_mm"}
_SPEC_KEYS = {"organ", "task", "name", "description", "tumour_free_fraction", "ood_inlier_cooccurrence", "lesion_types"}
_EXTENDS = "extends"


def _base_spec_path(reference: Any, base_dir: Path) -> Path:
    if not isinstance(reference, str) or not reference:
        raise SpecError(f"key '{_EXTENDS}' must be a built-in spec name or a .json path, got {reference!r}")
    if not reference.endswith(".json"):
        if reference not in ORGANS:
            raise SpecError(
                f"key '{_EXTENDS}' {reference!r} is neither a built-in spec ({', '.join(ORGANS)}) nor a .json path"
            )
        return default_spec_path(reference)
    path = (base_dir / reference).resolve()
    if not path.is_file():
        raise SpecError(f"key '{_EXTENDS}': spec file not found: {path}")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpecError(f"{path} is not valid JSON: {err}") from err


def _merge_lesion_types(base: list, changes: Any) -> list:
    if not isinstance(changes, list):
        raise SpecError("key 'lesion_types' must be a list")
    merged = [dict(item) if isinstance(item, dict) else item for item in base]
    index = {item.get("name"): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for i, change in enumerate(changes):
        if not isinstance(change, dict) or not isinstance(change.get("name"), str):
            raise SpecError(f"entry {i} of key 'lesion_types' must be an object with a 'name' (the type it changes)")
        if change["name"] in index:
            merged[index[change["name"]]].update(change)
        else:
            index[change["name"]] = len(merged)
            merged.append(dict(change))
    return merged


def expand_extends(obj: Any, base_dir: str | Path = ".", chain: tuple[Path, ...] = ()) -> Any:
    """The spec object ``obj`` with its ``"extends"`` chain applied (``obj`` itself when it extends nothing).

    Args:
        obj: a parsed spec document.
        base_dir: the folder that a relative ``"extends"`` path is read from (the extending file's).
        chain: the spec files already being expanded (to refuse a cycle).

    Raises:
        SpecError: the base is unknown, missing, not valid JSON or part of a cycle, or a ``lesion_types`` entry
            has no name.
    """
    if not isinstance(obj, dict) or _EXTENDS not in obj:
        return obj
    path = _base_spec_path(obj[_EXTENDS], Path(base_dir))
    if path in chain:
        raise SpecError(f"key '{_EXTENDS}' forms a cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    base = expand_extends(_read_json(path), path.parent, (*chain, path))
    if not isinstance(base, dict):
        raise SpecError(f"{path} (named by key '{_EXTENDS}') must hold a JSON object")
    merged = {**base, **{k: v for k, v in obj.items() if k not in (_EXTENDS, "lesion_types")}}
    if "lesion_types" in obj:
        merged["lesion_types"] = _merge_lesion_types(base.get("lesion_types", []), obj["lesion_types"])
    return merged


def _lesion_type(obj: Any, index: int) -> LesionType:
    if not isinstance(obj, dict):
        raise SpecError(f"key 'lesion_types[{index}]' must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise SpecError(
            f"key 'lesion_types[{index}].name' must be a non-empty identifier (letters, digits, _ -), got {name!r}"
        )
    _check_keys(obj, _LESION_KEYS, _LESION_REQUIRED, "", name)
    role = obj["role"]
    if role not in ("inlier", "ood"):
        raise SpecError(f"lesion type '{name}': key 'role' must be 'inlier' or 'ood', got {role!r}")
    class_id = label_value = None
    if role == "inlier":
        if "class_id" not in obj:
            raise SpecError(f"lesion type '{name}': missing required key 'class_id' (inlier types need a class id)")
        if "label_value" in obj:
            raise SpecError(f"lesion type '{name}': key 'label_value' is only for OOD types (inliers use 'class_id')")
        class_id = _integer(obj["class_id"], "class_id", name, 2, 255)
    else:
        if "label_value" not in obj:
            raise SpecError(f"lesion type '{name}': missing required key 'label_value' (OOD types need a label value)")
        if "class_id" in obj:
            raise SpecError(
                f"lesion type '{name}': key 'class_id' is only for inlier types (OOD types use 'label_value')"
            )
        label_value = _integer(obj["label_value"], "label_value", name, 1, 255)
    d = LesionType(name=name, role=role)
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"lesion type '{name}': key 'description' must be a string")
    size = _range(obj["size_mm"], "size_mm", name, positive=True)
    return LesionType(
        name=name,
        role=role,
        class_id=class_id,
        label_value=label_value,
        hu_offset=_range(obj["hu_offset"], "hu_offset", name),
        heterogeneity=_number(obj.get("heterogeneity", d.heterogeneity), "heterogeneity", name, 0.0, 500.0),
        texture_mm=_number(obj.get("texture_mm", d.texture_mm), "texture_mm", name, 0.1, 100.0),
        margin_sharpness=_number(obj.get("margin_sharpness", d.margin_sharpness), "margin_sharpness", name, 0.0, 1.0),
        shape_irregularity=_number(
            obj.get("shape_irregularity", d.shape_irregularity), "shape_irregularity", name, 0.0, 1.0
        ),
        size_mm=size,
        count=_range(obj.get("count", list(d.count)), "count", name, lo=1, integer=True),
        frequency=_number(obj.get("frequency", d.frequency), "frequency", name, 1e-9),
        description=description,
        calcifications=_calcifications(obj.get("calcifications"), name),
        septa=_septa(obj.get("septa"), name),
        necrotic_core=_necrotic_core(obj.get("necrotic_core"), name),
        rim_enhancement=_rim(obj.get("rim_enhancement"), name),
    )


def spec_from_dict(obj: Any, source: str = "", base_dir: str | Path = ".") -> PhantomSpec:
    """Validate a spec given as a parsed JSON object.

    Args:
        obj: the parsed JSON document; an ``"extends"`` key is expanded first (:func:`expand_extends`).
        source: where it came from (for messages).
        base_dir: the folder that a relative ``"extends"`` path is read from.

    Returns:
        The validated :class:`PhantomSpec`.

    Raises:
        SpecError: naming the offending key (and lesion type).
    """
    obj = expand_extends(obj, base_dir)
    _check_keys(obj, _SPEC_KEYS, {"organ", "lesion_types"}, "", None)
    organ = obj["organ"]
    if organ not in ORGANS:
        raise SpecError(f"key 'organ' must be one of {', '.join(ORGANS)}, got {organ!r}")
    if "task" in obj and obj["task"] != organ:
        raise SpecError(f"key 'task' ({obj['task']!r}) must equal key 'organ' ({organ!r})")
    for key in ("name", "description"):
        if key in obj and not isinstance(obj[key], str):
            raise SpecError(f"key '{key}' must be a string")
    items = obj["lesion_types"]
    if not isinstance(items, list) or not items:
        raise SpecError("key 'lesion_types' must be a non-empty list")
    types = [_lesion_type(item, i) for i, item in enumerate(items)]

    names = [t.name for t in types]
    for n in names:
        if names.count(n) > 1:
            raise SpecError(f"lesion type '{n}': key 'name' is duplicated")
    inliers = sorted((t for t in types if t.role == "inlier"), key=lambda t: t.value)
    if not inliers:
        raise SpecError("key 'lesion_types' needs at least one type with role 'inlier'")
    seen: dict[int, str] = {}
    for t in inliers:
        if t.value in seen:
            raise SpecError(
                f"lesion type '{t.name}': key 'class_id' {t.value} duplicates lesion type '{seen[t.value]}'"
            )
        seen[t.value] = t.name
    expected = list(range(2, 2 + len(inliers)))
    if [t.value for t in inliers] != expected:
        bad = next(t for t, e in zip(inliers, expected, strict=True) if t.value != e)
        raise SpecError(
            f"lesion type '{bad.name}': key 'class_id' must make the inlier classes contiguous "
            f"{expected} (0 = background, 1 = organ), got {[t.value for t in inliers]}"
        )
    ood_seen: dict[int, str] = {}
    for t in types:
        if t.role != "ood":
            continue
        if t.value <= 1 or t.value in seen:
            other = "background/organ" if t.value <= 1 else f"inlier type '{seen[t.value]}'"
            raise SpecError(f"lesion type '{t.name}': key 'label_value' {t.value} collides with {other}")
        if t.value in ood_seen:
            raise SpecError(
                f"lesion type '{t.name}': key 'label_value' {t.value} duplicates lesion type '{ood_seen[t.value]}'"
            )
        ood_seen[t.value] = t.name
    return PhantomSpec(
        organ=organ,
        lesion_types=tuple(types),
        name=obj.get("name", f"phantom_{organ}"),
        description=obj.get("description", ""),
        tumour_free_fraction=_number(obj.get("tumour_free_fraction", 0.2), "tumour_free_fraction", None, 0.0, 0.95),
        ood_inlier_cooccurrence=_number(
            obj.get("ood_inlier_cooccurrence", 0.3), "ood_inlier_cooccurrence", None, 0.0, 1.0
        ),
        source=source,
    )


def default_spec_path(task: str = "pancreas") -> Path:
    """Path of the default spec shipped for ``task``."""
    if task not in ORGANS:
        raise SpecError(f"unknown task {task!r}; choose one of {', '.join(ORGANS)}")
    return SPEC_DIR / f"{task}.json"


def load_spec(path: str | Path | None = None, task: str | None = None) -> PhantomSpec:
    """Load and validate a spec.

    Args:
        path: a JSON spec file; ``None`` loads the default spec of ``task``.
        task: organ of interest. With ``path`` given, the spec's ``organ`` must match it when not ``None``.

    Returns:
        The validated :class:`PhantomSpec`.

    Raises:
        SpecError: malformed spec (the message names the key), or a task mismatch.
        FileNotFoundError: ``path`` does not exist.
    """
    if path is None:
        path = default_spec_path(task or "pancreas")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file not found: {path}")
    spec = spec_from_dict(_read_json(path), source=str(path), base_dir=path.resolve().parent)
    if task is not None and spec.organ != task:
        raise SpecError(f"key 'organ' of {path} is {spec.organ!r} but the task is {task!r}")
    return spec
