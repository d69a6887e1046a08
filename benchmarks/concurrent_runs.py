"""Run benchmark variants as concurrent processes and fit their epoch count to a wall-clock budget.

Small 3D models leave most of a large GPU idle, so the variants of a benchmark train faster side by side than one
after the other. :func:`run_concurrently` starts one process per variant, each appending its output to
``WORK/NAME/log.txt``, and fails with the variant's name and the end of its log when one fails.
:func:`fit_epochs` times a few epochs of every variant under the same concurrency (warm-up, training and validation
epochs told apart in ignite's ``Epoch[k] Complete. Time taken`` lines) and returns the epoch count that fits the
budget.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["epoch_seconds", "fit_epochs", "run_concurrently"]

TRAINER_EPOCH = re.compile(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
PROBE_EPOCHS = 4


def run_concurrently(commands: dict[str, Sequence[str]], work: Path) -> None:
    """Run one command per variant at the same time; stop them all and raise, naming it, when one fails.

    Args:
        commands: variant name -> command line.
        work: folder; the output of variant ``NAME`` goes to ``work/NAME/log.txt``.
    """
    processes = {}
    for name, command in commands.items():
        log_path = work / name / "log.txt"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a")  # successive runs (probe, training, re-evaluation) keep their logs
        processes[name] = (subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    while processes and not failed:
        time.sleep(1.0)
        for name, (process, log) in list(processes.items()):
            if process.poll() is None:
                continue
            log.close()
            del processes[name]
            if process.returncode != 0:
                tail = (work / name / "log.txt").read_text(errors="replace").splitlines()[-25:]
                failed.append(f"{name} (exit {process.returncode}, log {work / name / 'log.txt'}):\n" + "\n".join(tail))
    for name, (process, log) in processes.items():  # after a failure: stop the others rather than wait for them
        process.terminate()
        process.wait()
        log.close()
        failed.append(f"{name}: stopped after another variant failed")
    if failed:
        raise SystemExit("variants failed:\n" + "\n\n".join(failed))


def epoch_seconds(log_text: str, val_interval: int) -> float:
    """Seconds per training epoch, validation every ``val_interval`` epochs included, from a probe's log.

    The probe trains :data:`PROBE_EPOCHS` epochs validating every second epoch: epoch 1 warms up (cuDNN autotuning,
    worker start), epoch 3 is training alone, epochs 2 and 4 add one validation each.
    """
    times = {int(m[0]): int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) for m in TRAINER_EPOCH.findall(log_text)}
    if not all(k in times for k in (2, 3, 4)):
        raise ValueError(f"the probe log lacks the trainer's epoch 2-4 timings (found epochs {sorted(times)}).")
    validation = max(0.0, (times[2] + times[4]) / 2 - times[3])
    return times[3] + validation / val_interval


def fit_epochs(
    probe_commands: dict[str, Sequence[str]], work: Path, seconds: float, val_interval: int
) -> tuple[int, dict[str, float]]:
    """Epochs (a multiple of ``val_interval``) that the slowest variant trains in ``seconds`` under concurrency.

    Args:
        probe_commands: variant name -> command that trains :data:`PROBE_EPOCHS` epochs validating every second one.
        work: folder for the probe runs.
        seconds: training budget of each variant.
        val_interval: validation interval of the real runs.

    Returns:
        ``(epochs, seconds_per_epoch)`` with the measured seconds per epoch of every variant.
    """
    run_concurrently(probe_commands, work)
    per_epoch = {
        name: epoch_seconds((work / name / "log.txt").read_text(errors="replace"), val_interval)
        for name in probe_commands
    }
    epochs = math.floor(seconds / max(per_epoch.values()) / val_interval) * val_interval
    return max(epochs, val_interval), per_epoch
