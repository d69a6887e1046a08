"""Resumable training: an interrupted run continued from its state file ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from bundle.handlers import BestModelSaver, ResumeTraining, TrainingStateSaver


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    g = torch.Generator().manual_seed(42)  # the same data in every run
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(4)]

    def step(engine, batch):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.item()

    return Engine(step), net, {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler}, data


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    engine, net, objects, data = make_run()
    engine.run(data, max_epochs=5)
    expected = [p.detach().clone() for p in net.parameters()]

    state = tmp_path / "training_state.pt"
    engine, net, objects, data = make_run()
    TrainingStateSaver(state, objects).attach(engine)
    engine.run(data, max_epochs=2)  # interrupted after two epochs
    engine, net, objects, data = make_run(seed=1)  # a fresh process: other initial weights
    ResumeTraining(state, objects).attach(engine)
    TrainingStateSaver(state, objects).attach(engine)
    engine.run(data, max_epochs=5)
    assert engine.state.epoch == 5
    for p, q in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), q)
    assert torch.load(state, weights_only=True)["trainer"]["iteration"] == 5 * len(data)


def test_resume_names_a_missing_or_foreign_state(tmp_path):
    _, _, objects, _ = make_run()
    with pytest.raises(FileNotFoundError, match="training state"):
        ResumeTraining(tmp_path / "absent.pt", objects)
    foreign = tmp_path / "model.pt"
    torch.save({"model": objects["model"].state_dict()}, foreign)
    engine, _, objects, data = make_run()
    ResumeTraining(foreign, objects).attach(engine)
    with pytest.raises(ValueError, match="lacks"):
        engine.run(data, max_epochs=1)


def test_no_resume_path_starts_from_scratch():
    engine, _, objects, data = make_run()
    ResumeTraining(None, objects).attach(engine)
    engine.run(data, max_epochs=1)
    assert engine.state.epoch == 1


def _validations(saver, values):
    """Run an evaluator whose key metric takes ``values`` in turn, one value per run, with ``saver`` attached."""
    results = iter(values)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "val_mean_dice"

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):  # registered before the saver: the metric exists when the saver compares
        engine.state.metrics["val_mean_dice"] = next(results)

    saver.attach(evaluator)
    for _ in values:
        evaluator.run([0], max_epochs=1)


def test_best_model_saver_keeps_the_best_model_across_a_resume(tmp_path):
    net = torch.nn.Linear(4, 1)
    path = tmp_path / "model.pt"
    saver = BestModelSaver(path, {"model": net})
    with torch.no_grad():
        net.weight.fill_(1.0)
    _validations(saver, [0.5])
    with torch.no_grad():
        net.weight.fill_(2.0)
    _validations(saver, [0.3, float("nan")])  # worse, then not a number: the best model stays
    assert torch.load(path, weights_only=True)["weight"].eq(1.0).all()
    assert saver.state_dict()["best_metric"] == 0.5
    state = saver.state_dict()

    resumed = BestModelSaver(path, {"model": net})  # a new process after a resume
    resumed.load_state_dict(state)
    _validations(resumed, [0.4])
    assert torch.load(path, weights_only=True)["weight"].eq(1.0).all(), "a worse model replaced the best"
    _validations(resumed, [0.6])
    assert torch.load(path, weights_only=True)["weight"].eq(2.0).all()
    assert resumed.state_dict()["best_metric"] == 0.6 and not list(tmp_path.glob("*tmp*"))

    fresh = BestModelSaver(path, {"model": net})  # no state: the first validation always saves
    with torch.no_grad():
        net.weight.fill_(3.0)
    _validations(fresh, [0.1])
    assert torch.load(path, weights_only=True)["weight"].eq(3.0).all()


def test_a_state_of_an_older_version_resumes_without_its_optional_entries(tmp_path, caplog):
    engine, net, objects, data = make_run()
    state = tmp_path / "training_state.pt"
    TrainingStateSaver(state, objects).attach(engine)
    engine.run(data, max_epochs=1)
    engine, net, objects, data = make_run()
    best = BestModelSaver(tmp_path / "model.pt", {"model": net})
    with_best = {**objects, "best_model": best}
    ResumeTraining(state, with_best).attach(engine)
    with pytest.raises(ValueError, match="best_model"):
        engine.run(data, max_epochs=2)
    engine, net, objects, data = make_run()
    ResumeTraining(state, with_best, optional=["best_model"]).attach(engine)
    engine.run(data, max_epochs=2)
    assert engine.state.epoch == 2 and best.best_metric is None and "older training state" in caplog.text
