"""Training-step time of the bundle's networks on the CPU in float32 and under bfloat16 autocast (``cpu_amp``).

Usage::

    python benchmarks/cpu_amp.py [--runs 15] [--warmup 3] [--threads N] [--out benchmarks/results/cpu_amp_cpu.txt]

The networks, the mask transformer's criterion and the patch and batch shapes are read from the bundle's configs
(``configs/common.json`` + ``configs/train.json``): the mask transformer at ``train#dataloader#batch_size`` x
``num_samples`` patches of ``patch_size``, the organ localiser likewise with ``localiser#roi_size`` and its
DiceCE loss. A step is forward (through :class:`bundle.inferers.AutocastInferer`, enabled or not), loss, backward
and an AdamW update. The two precisions alternate step by step on the same network, so both see the same machine
load; the median of each is reported. A second table times the decoder's attention kernel alone (forward and
backward of ``scaled_dot_product_attention``, float32 against bfloat16 tensors) for the queries attending to as many
voxels as the decoder's scales hold and more: the reason the decoder attends in float32 under CPU autocast. The last
line is ``speedup_mask_transformer=X speedup_localiser=Y`` (float32 time / bfloat16 time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.speed import cpu_name  # noqa: E402

__all__ = ["alternating_medians", "main", "time_attention", "time_steps", "training_networks"]


def training_networks() -> dict[str, tuple[torch.nn.Module, object, tuple[int, ...], int, int]]:
    """``name -> (network, loss, patch size, patches per step, label classes)`` from the bundle's training configs."""
    from monai.bundle import ConfigParser

    from bundle.configs import config_files

    parser = ConfigParser()
    parser.read_config(config_files("train.json", root=REPO_ROOT))
    parser["device"] = "$torch.device('cpu')"
    # the dataset is only needed for the class names: read them without generating or checking a dataset
    parser["class_names"] = {0: "background", 1: "organ", 2: "tumour_a", 3: "tumour_b"}

    def patches_per_step(section: str, dataloader: str) -> int:
        # a step sees batch_size cases times the patches the section's crop transform draws from each
        cases = parser.get_parsed_content(f"{dataloader}#batch_size")
        return cases * parser.get_parsed_content(f"{section}#random_transforms#0#num_samples")

    transformer_batch = patches_per_step("train", "train#dataloader")
    localiser_batch = patches_per_step("localiser_train", "localiser_train#train#dataloader")
    return {
        "mask_transformer": (
            parser.get_parsed_content("network_def"),
            parser.get_parsed_content("loss"),
            tuple(parser.get_parsed_content("patch_size")),
            transformer_batch,
            parser.get_parsed_content("num_classes"),
        ),
        "localiser": (
            parser.get_parsed_content("localiser#network_def"),
            parser.get_parsed_content("localiser_train#trainer#loss_function"),
            tuple(parser.get_parsed_content("localiser#roi_size")),
            localiser_batch,
            parser.get_parsed_content("localiser#network_def#out_channels"),
        ),
    }


def alternating_medians(steps: dict[str, Callable[[], float]], runs: int, warmup: int) -> dict[str, float]:
    """Median of each step's seconds over ``runs`` rounds after ``warmup``, the steps alternating within a round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(warmup + runs):
        for name, step in steps.items():
            seconds = step()
            if index >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def time_steps(
    network: torch.nn.Module, loss_fn, patch: tuple[int, ...], batch: int, num_labels: int, runs: int, warmup: int
) -> dict[str, float]:
    """Median seconds of one training step in float32 and under bfloat16 autocast, the two alternating."""
    from bundle.inferers import AutocastInferer

    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 1, *patch, generator=gen)
    label = torch.randint(0, num_labels, (batch, 1, *patch), generator=gen)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    inferers = {"float32": AutocastInferer(enabled=False), "bfloat16": AutocastInferer(enabled=True)}
    network.train()

    def step(inferer: AutocastInferer) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(inferer(image, network), label).backward()
        optimizer.step()
        return time.perf_counter() - start

    return alternating_medians({name: partial(step, inferer) for name, inferer in inferers.items()}, runs, warmup)


def time_attention(
    batch: int, heads: int, queries: int, voxels: int, head_dim: int, runs: int, warmup: int
) -> dict[str, float]:
    """Median seconds of attention's forward and backward on float32 and on bfloat16 tensors, the two alternating."""
    gen = torch.Generator().manual_seed(0)
    shapes = ((batch, heads, queries, head_dim), (batch, heads, voxels, head_dim), (batch, heads, voxels, head_dim))
    tensors = [torch.randn(*shape, generator=gen) for shape in shapes]
    inputs = {
        "float32": [t.clone().requires_grad_() for t in tensors],
        "bfloat16": [t.to(torch.bfloat16).requires_grad_() for t in tensors],
    }

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
        start = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, k, v).float().sum().backward()
        return time.perf_counter() - start

    return alternating_medians({name: partial(step, *tensors) for name, tensors in inputs.items()}, runs, warmup)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    from bundle.inferers import cpu_has_fast_bf16

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed steps per precision (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per precision first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--out", type=Path, help="also write the printed table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        f"# machine: {cpu_name()} ({os.cpu_count()} logical CPUs), {torch.get_num_threads()} torch threads; "
        f"native bfloat16: {cpu_has_fast_bf16()}; torch {torch.__version__}",
        f"# training step (forward, loss, backward, AdamW); median of {args.runs} steps after {args.warmup}, "
        "the two precisions alternating",
        f"{'network':<18}{'batch x patch':>18}{'float32_s':>11}{'bfloat16_s':>12}{'speedup':>9}",
    ]
    speedups = []
    networks = training_networks()
    for name, (network, loss_fn, patch, batch, num_labels) in networks.items():
        seconds = time_steps(network, loss_fn, patch, batch, num_labels, args.runs, args.warmup)
        speedup = seconds["float32"] / seconds["bfloat16"]
        speedups.append(f"speedup_{name}={speedup:.2f}")
        shape = f"{batch} x {'x'.join(map(str, patch))}"
        lines.append(f"{name:<18}{shape:>18}{seconds['float32']:>11.3f}{seconds['bfloat16']:>12.3f}{speedup:>9.2f}")
    decoder = networks["mask_transformer"][0].decoder
    heads = decoder.layers[0].cross_attn.num_heads
    head_dim = decoder.layers[0].cross_attn.head_dim
    batch = networks["mask_transformer"][3]
    queries = networks["mask_transformer"][0].num_queries
    lines.append(
        f"# attention alone (forward and backward), {batch} x {heads} heads x {queries} queries of {head_dim}; "
        f"median of {args.runs} after {args.warmup}"
    )
    lines.append(f"{'voxels attended':<18}{'':>18}{'float32_s':>11}{'bfloat16_s':>12}{'speedup':>9}")
    for voxels in (64, 256, 2048, 16384):
        seconds = time_attention(batch, heads, queries, voxels, head_dim, args.runs, args.warmup)
        speedup = seconds["float32"] / seconds["bfloat16"]
        lines.append(f"{voxels:<18}{'':>18}{seconds['float32']:>11.4f}{seconds['bfloat16']:>12.4f}{speedup:>9.2f}")
    lines.append(" ".join(speedups))
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
