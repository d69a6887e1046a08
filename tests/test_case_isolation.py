"""Multi-case inference: a case that fails in the network or the post-processing leaves a row, not a crash."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, LoadImaged, SaveImaged

from bundle.engines import CaseIsolatingDataset, CaseIsolatingEvaluator
from bundle.handlers import OODCaseWriter


class FailsOnBrightImages(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 0.5:
            raise RuntimeError("simulated failure inside the network")
        return torch.cat([1 - x, x], dim=1)


def _write(path, value: float) -> str:
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), value, np.float32), np.eye(4)), str(path))
    return str(path)


def test_a_case_failing_in_the_network_or_the_writer_gets_a_row_and_leaves_no_file(tmp_path):
    out = tmp_path / "out"
    datalist = [
        {"image": _write(tmp_path / "dark.nii.gz", 0.1)},
        {"image": _write(tmp_path / "bright.nii.gz", 0.9)},  # the network fails
        {"image": _write(tmp_path / "late.nii.gz", 0.3)},  # the post-processing fails after writing one file
        {"image": str(tmp_path / "missing.nii.gz")},  # loading fails
    ]

    def score(pred: torch.Tensor) -> torch.Tensor:
        if abs(float(pred[1].mean()) - 0.3) < 1e-3:
            raise ValueError("simulated failure after the first output was written")
        return pred

    postprocessing = Compose(
        [
            SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", separate_folder=False, print_log=False),
            Lambdad(keys="pred", func=score),
            Lambdad(keys="pred", func=lambda p: p, overwrite="ood_score"),
            Lambdad(keys="ood_score", func=lambda p: float(p[1].mean())),
        ]
    )
    dataset = CaseIsolatingDataset(datalist, Compose([LoadImaged("image"), EnsureChannelFirstd("image")]))
    evaluator = CaseIsolatingEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(dataset, batch_size=1),
        network=FailsOnBrightImages(),
        postprocessing=postprocessing,
        case_outputs=[str(out / "{case}_seg.nii.gz")],
    )
    OODCaseWriter(str(out), threshold=0.5).attach(evaluator)
    with pytest.raises(RuntimeError, match="3 of 4 case"):
        evaluator.run()
    rows = {row["case"]: row for row in csv.DictReader((out / "ood_cases.csv").open())}
    assert rows["dark"]["score"] == "0.100000" and rows["dark"]["flag"] == "0"
    assert "simulated failure inside the network" in rows["bright"]["message"] and rows["bright"]["score"] == ""
    assert "simulated failure after the first output" in rows["late"]["message"]
    assert "missing.nii.gz" in rows["missing"]["message"] and "loading failed" in rows["missing"]["message"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["dark_seg.nii.gz"]


def test_an_empty_datalist_is_an_error():
    with pytest.raises(ValueError, match="datalist is empty"):
        CaseIsolatingDataset([], None)
