"""Checkpoint loading: messages name the file (by its path, or by the name the caller gives) and what does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bundle.networks.checkpoint import load_weights, read_state_dict


def test_weights_load_from_a_plain_or_a_model_entry_checkpoint(tmp_path: Path) -> None:
    source = nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "saver.pt")
    for name in ("plain.pt", "saver.pt"):
        loaded = load_weights(nn.Linear(3, 2), tmp_path / name)
        assert not loaded.training
        torch.testing.assert_close(loaded.weight, source.weight)


def test_messages_name_the_path_by_default_and_the_given_name_otherwise(tmp_path: Path) -> None:
    truncated = tmp_path / "model.pt"
    torch.save(nn.Linear(3, 2).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:20])
    with pytest.raises(ValueError, match="cannot read the checkpoint") as by_path:
        read_state_dict(truncated)
    assert str(truncated) in str(by_path.value)

    absent = tmp_path / "absent.pt"
    for call in (
        lambda: read_state_dict(absent, name="absent.pt"),
        lambda: load_weights(nn.Linear(3, 2), absent, name="absent.pt"),
    ):
        with pytest.raises((ValueError, FileNotFoundError)) as by_name:
            call()
        assert "absent.pt" in str(by_name.value) and str(tmp_path) not in str(by_name.value)


def test_weights_of_another_network_or_no_state_dict_are_described(tmp_path: Path) -> None:
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"^the checkpoint other\.pt does not fit .*shape mismatches.*weight"):
        load_weights(nn.Linear(3, 2), tmp_path / "other.pt", name="other.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds a list, not a state dict"):
        load_weights(nn.Linear(3, 2), tmp_path / "list.pt")
