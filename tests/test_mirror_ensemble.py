"""Tests of mirroring: at test time the averaged prediction is mirror-equivariant and equals the mean of the passes;
in training (``mirror_prob``) a patch's image and label are mirrored together."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import Compose

from bundle.configs import config_files
from bundle.inferers import MirrorEnsembleInferer


def lopsided_network() -> torch.nn.Module:
    """A convolution whose kernel is not symmetric: its own output changes when the input is mirrored."""
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 2, kernel_size=3, padding=1).eval()


def test_mirroring_makes_the_prediction_equivariant_to_mirrored_inputs():
    network = lopsided_network()
    image = torch.rand(1, 1, 8, 6, 4)
    plain, mirrored = SimpleInferer(), MirrorEnsembleInferer(SimpleInferer(), mirror_axes=(0, 1, 2))
    with torch.no_grad():
        for dims in ([2], [3], [4], [2, 3, 4]):
            flipped_input = torch.flip(image, dims)
            assert not torch.allclose(plain(flipped_input, network), torch.flip(plain(image, network), dims))
            torch.testing.assert_close(
                mirrored(flipped_input, network), torch.flip(mirrored(image, network), dims), atol=1e-6, rtol=0
            )


def test_the_average_runs_every_combination_of_the_axes_once():
    network = lopsided_network()
    image = torch.rand(1, 1, 8, 6, 4)
    with torch.no_grad():
        expected = (
            sum(
                torch.flip(network(torch.flip(image, dims)), dims) if dims else network(image)
                for dims in ([], [2], [3], [2, 3])
            )
            / 4
        )
        result = MirrorEnsembleInferer(SimpleInferer(), mirror_axes=[0, 1])(image, network)
    torch.testing.assert_close(result, expected)


def test_no_mirror_axes_is_the_wrapped_inferer_itself():
    network = lopsided_network()
    image = torch.rand(1, 1, 16, 16, 8)
    window = SlidingWindowInferer(roi_size=(8, 8, 4), overlap=0.25)
    with torch.no_grad():
        torch.testing.assert_close(
            MirrorEnsembleInferer(window, mirror_axes=[])(image, network), window(image, network)
        )


def test_bad_axes_and_outputs_are_named():
    with pytest.raises(ValueError, match="distinct"):
        MirrorEnsembleInferer(SimpleInferer(), mirror_axes=[0, 0])
    with pytest.raises(ValueError, match="beyond"):
        MirrorEnsembleInferer(SimpleInferer(), mirror_axes=[3])(torch.rand(1, 1, 4, 4, 4), lopsided_network())
    with pytest.raises(TypeError, match="one output tensor"):
        MirrorEnsembleInferer(SimpleInferer(), mirror_axes=[0])(torch.rand(1, 1, 4, 4, 4), lambda x: {"pred": x})


def _training_mirrors(mirror_prob: float | None) -> Compose:
    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=Path(__file__).resolve().parents[1]))
    if mirror_prob is not None:
        parser["mirror_prob"] = mirror_prob
    mirrors = Compose(parser.get_parsed_content("train#mirror_transforms"))
    mirrors.set_random_state(0)
    return mirrors


def test_training_mirrors_image_and_label_together_and_is_off_by_default():
    image = torch.rand(1, 8, 6, 4)
    label = (image > 0.7).float()  # every label voxel marks a bright image voxel, wherever the patch is mirrored
    patch = {"image": image, "label": label}
    unchanged = _training_mirrors(None)(dict(patch))
    assert torch.equal(unchanged["image"], image) and torch.equal(unchanged["label"], label)

    mirrors = _training_mirrors(1.0)
    out = mirrors(dict(patch))
    torch.testing.assert_close(torch.as_tensor(out["image"]), torch.flip(image, [1, 2, 3]))
    assert torch.equal(torch.as_tensor(out["label"]), (torch.as_tensor(out["image"]) > 0.7).float())

    half = _training_mirrors(0.5)
    combinations = [c for r in range(4) for c in itertools.combinations((1, 2, 3), r)]
    seen = set()
    for _ in range(40):
        out = torch.as_tensor(half(dict(patch))["image"])
        seen.update(c for c in combinations if torch.equal(out, torch.flip(image, list(c)) if c else image))
    assert len(seen) == len(combinations), "each axis is mirrored on its own draw"
