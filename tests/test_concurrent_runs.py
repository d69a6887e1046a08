"""The benchmark's concurrent runs and the fitting of epochs to a time budget."""

from __future__ import annotations

import sys

import pytest

from benchmarks.concurrent_runs import epoch_seconds, fit_epochs, run_concurrently

TRAINER = "2026-01-01 00:00:00,000 - ignite.engine.engine.SupervisedTrainer - INFO - "
EVALUATOR = "2026-01-01 00:00:00,000 - ignite.engine.engine.SupervisedEvaluator - INFO - "


def probe_log(seconds: dict[int, float]) -> str:
    lines = [f"{EVALUATOR}Epoch[1] Complete. Time taken: 00:09:59.000"]  # an evaluator's epoch is not training
    for epoch, value in seconds.items():
        minutes, secs = divmod(value, 60)
        lines.append(f"{TRAINER}Epoch[{epoch}] Complete. Time taken: 00:{int(minutes):02d}:{secs:06.3f}")
    return "\n".join(lines)


def test_epoch_seconds_spreads_the_validation_over_its_interval():
    # epoch 3 trains only (10 s); epochs 2 and 4 add a 4 s validation; epoch 1 (warm-up) is ignored
    log = probe_log({1: 95.0, 2: 14.0, 3: 10.0, 4: 14.0})
    assert epoch_seconds(log, val_interval=1) == pytest.approx(14.0)
    assert epoch_seconds(log, val_interval=4) == pytest.approx(11.0)


def test_epoch_seconds_names_missing_epochs():
    with pytest.raises(ValueError, match=r"epoch 2-4 timings \(found epochs \[1, 2\]\)"):
        epoch_seconds(probe_log({1: 5.0, 2: 5.0}), val_interval=2)


def test_fit_epochs_fits_the_slowest_variant(tmp_path):
    def printer(seconds):
        return [sys.executable, "-c", f"print({probe_log(seconds)!r})"]

    commands = {"fast": printer({2: 1.0, 3: 1.0, 4: 1.0}), "slow": printer({2: 3.0, 3: 2.0, 4: 3.0})}
    epochs, per_epoch = fit_epochs(commands, tmp_path, seconds=100.0, val_interval=10)
    assert per_epoch == pytest.approx({"fast": 1.0, "slow": 2.1})
    assert epochs == 40  # 100 s / 2.1 s = 47.6 epochs, down to a multiple of the validation interval
    assert fit_epochs(commands, tmp_path, seconds=1.0, val_interval=10)[0] == 10  # at least one validation


def test_run_concurrently_stops_the_others_when_one_fails(tmp_path):
    commands = {
        "sleeper": [sys.executable, "-c", "import time; time.sleep(600)"],
        "broken": [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
    }
    with pytest.raises(SystemExit) as failure:
        run_concurrently(commands, tmp_path)
    message = str(failure.value)
    assert "broken (exit 3" in message and "bad config" in message
    assert "sleeper: stopped after another variant failed" in message


def test_run_concurrently_logs_each_variant(tmp_path):
    commands = {name: [sys.executable, "-c", f"print('{name} done')"] for name in ("a", "b")}
    run_concurrently(commands, tmp_path)
    assert (tmp_path / "a" / "log.txt").read_text().strip() == "a done"
    assert (tmp_path / "b" / "log.txt").read_text().strip() == "b done"
