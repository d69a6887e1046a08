"""Speed and memory of the mask transformer vs a plain DynUNet with the same backbone configuration.

Usage::

    python benchmarks/speed.py [--size 96 96 64] [--runs 5] [--warmup 2] [--device auto|cpu|cuda] [--threads N]

Reports the parameter count, the median forward time in eval mode under ``torch.no_grad``, the median
forward+backward time in train mode (the mask transformer with its training criterion, deep supervision and QD loss
included; DynUNet with MONAI's DiceCE loss) and peak memory. Timed runs of the two models are interleaved so that
both see the same machine load; peak memory is measured for each model in a fresh subprocess (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size above the size with the model
built, from ``/proc/self/status``). The last line
is ``ratio_train=X ratio_infer=Y`` (mask transformer time / DynUNet time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

NUM_CLASSES = 4
BACKBONE = {"kernel_size": [3, 3, 3, 3, 3], "strides": [1, 2, 2, 2, 2], "filters": [32, 64, 128, 256, 320]}
QUERY_GROUPS = [[4, [0]], [4, [1]], [8, [2, 3]]]
MODELS = ("dynunet", "mask_transformer")

__all__ = ["cpu_name", "main", "measure_memory", "measure_times"]


def _build(name: str):
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    from bundle.losses import MaxQueryCriterion
    from bundle.networks import MaskTransformer

    if name == "dynunet":
        net = DynUNet(3, 1, NUM_CLASSES, upsample_kernel_size=BACKBONE["strides"][1:], **BACKBONE)
        return net, DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    net = MaskTransformer(spatial_dims=3, in_channels=1, num_classes=NUM_CLASSES, **BACKBONE)
    return net, MaxQueryCriterion(NUM_CLASSES, query_groups=QUERY_GROUPS, num_queries=net.num_queries)


def _rss_mib(field: str = "VmHWM") -> float:
    """Peak (``VmHWM``) or current (``VmRSS``) resident set size of this process in MiB.

    Reads ``/proc/self/status`` on Linux: unlike ``getrusage``'s ``ru_maxrss`` (which a child process inherits
    from its parent across fork/exec) the kernel's per-process high-water mark starts fresh in a new process and
    can be reset (see :func:`_reset_peak_rss`). Falls back to ``ru_maxrss`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def cpu_name() -> str:
    """The CPU model name, as /proc/cpuinfo gives it (else what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _steps(net: torch.nn.Module, loss_fn, x: torch.Tensor, label: torch.Tensor):
    def infer() -> None:
        net.eval()
        with torch.no_grad():
            net(x)

    def train_step() -> None:
        net.train()
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), label).backward()

    return infer, train_step


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _inputs(size: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, *size, generator=gen).to(device)
    label = torch.randint(0, NUM_CLASSES, (1, 1, *size), generator=gen).to(device)
    return x, label


def measure_memory(name: str, size: list[int], device: torch.device) -> dict:
    """Peak memory of one eval forward and one training step of one model (run in a fresh process)."""
    torch.manual_seed(0)
    net, loss_fn = _build(name)
    net = net.to(device)
    x, label = _inputs(size, device)
    infer, train_step = _steps(net, loss_fn, x, label)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        infer()
        infer_mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        train_mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        base = _rss_mib("VmRSS")
        _reset_peak_rss()
        infer()
        infer_mem = _rss_mib() - base
        _reset_peak_rss()
        train_step()
        train_mem = _rss_mib() - base
    return {"infer_peak_mib": infer_mem, "train_peak_mib": train_mem}


def measure_times(size: list[int], runs: int, warmup: int, device: torch.device) -> dict[str, dict]:
    """Median eval-forward and training-step times of both models, runs interleaved to share machine load."""
    x, label = _inputs(size, device)
    models = {}
    for name in MODELS:
        torch.manual_seed(0)
        net, loss_fn = _build(name)
        net = net.to(device)
        models[name] = {"params": sum(p.numel() for p in net.parameters()), "steps": _steps(net, loss_fn, x, label)}
    results = {name: {"params": m["params"], "infer": [], "train": []} for name, m in models.items()}
    for phase, index in (("infer", 0), ("train", 1)):
        for _ in range(warmup):
            for m in models.values():
                m["steps"][index]()
        for _ in range(runs):
            for name, m in models.items():
                results[name][phase].append(_timed(m["steps"][index], device))
    return {
        name: {
            "params": r["params"],
            "infer_s": statistics.median(r["infer"]),
            "train_s": statistics.median(r["train"]),
        }
        for name, r in results.items()
    }


def _memory_in_child(args: argparse.Namespace, name: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-of", name, "--size", *map(str, args.size)]
    cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[96, 96, 64], help="input patch size")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args.size, device)))
        return

    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{cpu_name()} ({os.cpu_count()} logical CPUs), {torch.get_num_threads()} torch threads"
    print(f"# machine: {machine}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"# input 1x1x{'x'.join(map(str, args.size))}, median of {args.runs} runs after {args.warmup} warm-up runs")
    memory = {name: _memory_in_child(args, name) for name in MODELS}
    results = measure_times(args.size, args.runs, args.warmup, device)
    for name in MODELS:
        results[name].update(memory[name])
        results[name]["name"] = name
    print(f"{'model':<18}{'params':>12}{'infer_s':>10}{'train_s':>10}{'infer_MiB':>11}{'train_MiB':>11}")
    for r in results.values():
        print(
            f"{r['name']:<18}{r['params']:>12,}{r['infer_s']:>10.3f}{r['train_s']:>10.3f}"
            f"{r['infer_peak_mib']:>11.0f}{r['train_peak_mib']:>11.0f}"
        )
    kind = (
        "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS above the built model (fresh process)"
    )
    print(f"# memory: {kind}; times: the two models' runs interleaved")
    base, mt = results["dynunet"], results["mask_transformer"]
    print(f"ratio_train={mt['train_s'] / base['train_s']:.2f} ratio_infer={mt['infer_s'] / base['infer_s']:.2f}")


if __name__ == "__main__":
    main()
