"""Checkpoint averaging: the mean of the float tensors, refusals that name the checkpoint and the tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bundle.networks.checkpoint import load_weights
from bundle.scripts.average_checkpoints import average_state_dicts, main


def _net() -> nn.Module:
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2))
    net[1].num_batches_tracked.fill_(7)  # an integer buffer, equal in both runs
    return net


def test_the_average_is_the_mean_of_the_floats_and_keeps_the_integers() -> None:
    a, b = _net().state_dict(), _net().state_dict()
    averaged = average_state_dicts([a, b])
    for key, value in a.items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged[key], (value + b[key]) / 2)
        else:
            assert torch.equal(averaged[key], value)
    itself = average_state_dicts([a, a, a])
    assert all(torch.equal(itself[k], a[k]) for k in a)


def test_checkpoints_of_other_models_are_refused_with_the_names() -> None:
    a = _net().state_dict()
    other = nn.Sequential(nn.Conv3d(1, 3, 3), nn.BatchNorm3d(3)).state_dict()
    with pytest.raises(ValueError, match=r"0\.weight: run2 has \(3, 1, 3, 3, 3\)"):
        average_state_dicts([a, other], ["run1", "run2"])
    with pytest.raises(ValueError, match="only in run2 \\['extra'\\]"):
        average_state_dicts([a, {**a, "extra": torch.zeros(1)}], ["run1", "run2"])
    counted = {**a, "1.num_batches_tracked": torch.tensor(8)}
    with pytest.raises(ValueError, match="num_batches_tracked: the non-float tensor differs"):
        average_state_dicts([a, counted])
    with pytest.raises(ValueError, match="at least two"):
        average_state_dicts([a])
    with pytest.raises(ValueError, match="run2 holds no state dict"):
        average_state_dicts([a, [1, 2]], ["run1", "run2"])


def test_the_command_writes_a_loadable_average_and_never_overwrites_an_input(tmp_path: Path) -> None:
    nets = [_net(), _net()]
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    torch.save(nets[0].state_dict(), paths[0])
    torch.save({"model": nets[1].state_dict()}, paths[1])  # a CheckpointSaver-style file
    out = tmp_path / "soup" / "model.pt"
    assert main([str(p) for p in paths] + ["--out", str(out)]) == 0
    loaded = load_weights(_net(), out)
    torch.testing.assert_close(loaded[0].weight, (nets[0][0].weight + nets[1][0].weight) / 2)
    with pytest.raises(SystemExit, match="is one of the inputs"):
        main([str(p) for p in paths] + ["--out", str(paths[0])])
    with pytest.raises(SystemExit, match="checkpoint not found: .*missing.pt"):
        main([str(paths[0]), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")])
    (tmp_path / "truncated.pt").write_bytes(paths[0].read_bytes()[:20])
    with pytest.raises(SystemExit, match="cannot read the checkpoint .*truncated.pt"):
        main([str(paths[0]), str(tmp_path / "truncated.pt"), "--out", str(tmp_path / "x.pt")])
    assert not (tmp_path / "x.pt").exists()
