"""Lesion-type spec: default specs are near-OOD by design, malformed specs are refused naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bundle.data.phantom import SpecError, default_spec_path, generate_dataset, load_spec, spec_from_dict


def _base() -> dict:
    return json.loads(default_spec_path("pancreas").read_text())


def _lesion(spec: dict, name: str) -> dict:
    return next(t for t in spec["lesion_types"] if t["name"] == name)


@pytest.mark.parametrize("task", ["pancreas", "liver"])
def test_default_specs(task: str):
    spec = load_spec(task=task)
    assert spec.organ == task
    assert len(spec.inlier_types) == 2 and len(spec.ood_types) >= 3
    assert [t.value for t in spec.inlier_types] == [2, 3]
    ood_values = [t.value for t in spec.ood_types]
    assert len(set(ood_values)) == len(ood_values) and min(ood_values) >= 4
    # near-OOD: some OOD type's mean HU offset lies inside an inlier tumour type's HU range
    inside = [
        o.name
        for o in spec.ood_types
        for i in spec.inlier_types
        if i.hu_offset[0] <= sum(o.hu_offset) / 2 <= i.hu_offset[1]
    ]
    assert inside
    assert 0 < spec.tumour_free_fraction < 1


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda s: s.update(colour="red"), ["'colour'"]),
        (lambda s: _lesion(s, "pdac").update(hu_ofset=[-3, 2]), ["'hu_ofset'", "'pdac'"]),
        (lambda s: _lesion(s, "pnet").update(size_mm=[-5, 20]), ["'size_mm'", "'pnet'", "positive"]),
        (lambda s: _lesion(s, "pnet").update(size_mm=[30, 10]), ["'size_mm'", "'pnet'", "inverted"]),
        (lambda s: _lesion(s, "pdac").update(role="rare"), ["'role'", "'pdac'"]),
        (lambda s: _lesion(s, "pdac").pop("class_id"), ["'class_id'", "'pdac'"]),
        (lambda s: _lesion(s, "serous_cystadenoma").update(label_value=5), ["'label_value'", "duplicates"]),
        (lambda s: _lesion(s, "serous_cystadenoma").update(label_value=3), ["'label_value'", "'pnet'"]),
        (lambda s: _lesion(s, "pnet").update(class_id=5), ["'class_id'", "contiguous"]),
        (lambda s: _lesion(s, "serous_cystadenoma")["septa"].update(walls=3), ["'walls'", "'septa'"]),
        (lambda s: _lesion(s, "pdac").update(margin_sharpness=2), ["'margin_sharpness'"]),
        (lambda s: _lesion(s, "pdac").update(count=[0, 2]), ["'count'"]),
        (lambda s: s.update(organ="kidney"), ["'organ'"]),
    ],
)
def test_bad_spec_names_the_key(mutate, words):
    spec = _base()
    mutate(spec)
    with pytest.raises(SpecError) as err:
        spec_from_dict(spec)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_spec_file_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad)
    with pytest.raises(SpecError, match="task"):
        load_spec(default_spec_path("liver"), task="pancreas")


def test_a_new_lesion_type_is_data_not_code(tmp_path: Path):
    spec = _base()
    extra = copy.deepcopy(_lesion(spec, "pnet"))
    extra.update(name="lymphoma", role="ood", label_value=9, hu_offset=[-5, 5], septa={"count": [2, 3]})
    extra.pop("class_id")
    spec["lesion_types"] = [t for t in spec["lesion_types"] if t["role"] == "inlier"] + [extra]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = generate_dataset(
        tmp_path / "ds", seed=0, num_train=2, num_val=0, num_test=0, num_ood=1, spec=path, shape=(32, 28, 10)
    )
    data = json.loads((out / "dataset.json").read_text())
    assert data["ood_labels"] == {"9": "lymphoma"}


def test_small_pnet_recipe_is_the_builtin_spec_with_two_changes():
    recipe = load_spec(Path(__file__).resolve().parents[1] / "recipes" / "specs" / "pancreas_small_pnet.json")
    full = _base()
    _lesion(full, "pnet").update(size_mm=[8, 18], count=[1, 3])
    expected = spec_from_dict(full)
    assert recipe.name == "phantom_pancreas_small_pnet"
    assert recipe.lesion_types == expected.lesion_types
    assert recipe.lesion_types != load_spec(task="pancreas").lesion_types
    assert recipe.tumour_free_fraction == expected.tumour_free_fraction


def test_extends_chains_files_and_adds_types(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "middle.json").write_text(
        json.dumps(
            {"extends": "pancreas", "tumour_free_fraction": 0.5, "lesion_types": [{"name": "pdac", "count": [1, 2]}]}
        )
    )
    lymphoma = {"name": "lymphoma", "role": "ood", "label_value": 9, "hu_offset": [-5, 5], "size_mm": [10, 20]}
    leaf = tmp_path / "sub" / "leaf.json"
    leaf.write_text(
        json.dumps({"extends": "../middle.json", "lesion_types": [{"name": "pdac", "frequency": 5}, lymphoma]})
    )
    spec = load_spec(leaf)
    pdac = spec.type_by_name("pdac")
    assert (pdac.count, pdac.frequency) == ((1, 2), 5.0)
    assert pdac.size_mm == tuple(_lesion(_base(), "pdac")["size_mm"])  # untouched keys come from the base
    assert spec.tumour_free_fraction == 0.5
    assert spec.type_by_name("lymphoma").value == 9
    assert [t.name for t in spec.lesion_types][: len(_base()["lesion_types"])] == [
        t["name"] for t in _base()["lesion_types"]
    ]


@pytest.mark.parametrize(
    ("extends", "change", "words"),
    [
        ("kidney", {"name": "pdac"}, ["'extends'", "'kidney'"]),
        ("missing.json", {"name": "pdac"}, ["'extends'", "not found"]),
        ("self.json", {"name": "pdac"}, ["cycle"]),
        ("pancreas", {"count": [1, 2]}, ["entry 0", "'name'"]),
        ("pancreas", {"name": "pdac", "count": [0, 2]}, ["'count'", "'pdac'"]),
        ("pancreas", {"name": "new_type", "role": "ood"}, ["'new_type'", "missing required key"]),
    ],
)
def test_bad_extends_names_the_problem(tmp_path: Path, extends: str, change: dict, words: list[str]):
    path = tmp_path / "self.json"
    path.write_text(json.dumps({"extends": extends, "lesion_types": [change]}))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    for w in words:
        assert w in str(err.value), str(err.value)
