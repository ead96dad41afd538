"""torch_ref.loop: the seed's stateful PyTorch loop. Best-model checkpoints, and the scheduler
stepped per epoch or per iteration as torch documents StepLR:
``lr = base_lr * gamma ** (number of scheduler.step() calls // step_size)``."""

from __future__ import annotations

import os

import pytest
import torch

from torch_ref import loop
from torch_ref.models import SimpleNN

INPUTS, CLASSES, BATCH = 10, 3, 16


def _batches(seed: int, count: int):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(INPUTS, CLASSES, generator=torch.Generator().manual_seed(0))
    batches = []
    for _ in range(count):
        x = torch.randn(BATCH, INPUTS, generator=generator)
        batches.append((x, (x @ teacher).argmax(dim=1)))
    return batches


def _model():
    torch.manual_seed(0)
    return SimpleNN(INPUTS, 8, CLASSES)


def _run(optimizer_factory, epochs, path, scheduler_factory=None, interval="epoch"):
    model = _model()
    optimizer = optimizer_factory(model.parameters())
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    history = loop.train_with_validation(
        model, lambda epoch: _batches(epoch + 1, 4), lambda: _batches(999, 2), torch.nn.CrossEntropyLoss(),
        optimizer, epochs, scheduler, interval, path)
    return model, optimizer, history


def test_best_state_dict_is_saved_when_validation_improves_and_loads_with_weights_only(tmp_path):
    path = tmp_path / "best.pt"
    sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    model, _, history = _run(sgd, 4, path)
    best = float("inf")
    for entry in history:
        assert entry["saved"] == (entry["val_loss"] < best)
        best = min(best, entry["val_loss"])
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    state_dict = torch.load(path, weights_only=True)
    assert set(state_dict) == set(model.state_dict())
    last_saved = max(entry["epoch"] for entry in history if entry["saved"])
    at_best, _, _ = _run(sgd, last_saved + 1, tmp_path / "again.pt")  # the model after that epoch
    for key, value in at_best.state_dict().items():
        torch.testing.assert_close(state_dict[key], value, rtol=0, atol=0)
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == []


def test_a_worsening_run_keeps_the_first_epochs_state_dict(tmp_path):
    path = tmp_path / "best.pt"
    ascent = lambda p: torch.optim.SGD(p, lr=0.5, maximize=True)  # noqa: E731
    model, _, history = _run(ascent, 3, path)
    assert [entry["saved"] for entry in history] == [True, False, False]
    after_one, _, _ = _run(ascent, 1, tmp_path / "one.pt")
    saved = torch.load(path, weights_only=True)
    for key, value in after_one.state_dict().items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    assert not torch.equal(saved["fc1.weight"], model.state_dict()["fc1.weight"])


def test_validation_is_the_mean_batch_loss_and_the_accuracy():
    model = _model()
    criterion = torch.nn.CrossEntropyLoss()
    batches = _batches(5, 3)
    batches[-1] = (batches[-1][0][:5], batches[-1][1][:5])  # a smaller last batch counts as one batch
    val_loss, accuracy = loop.evaluate(model, criterion, batches)
    with torch.no_grad():
        losses = [criterion(model(x), y).item() for x, y in batches]
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in batches)
    assert val_loss == pytest.approx(sum(losses) / 3)
    assert accuracy == pytest.approx(hits / (2 * BATCH + 5))
    assert not model.training


def _recorded_lrs(interval: str, step_size: int, epochs: int = 2, per_epoch: int = 3) -> tuple[list[float], float]:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.1)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    loop.train(model, lambda epoch: _batches(epoch, per_epoch), torch.nn.CrossEntropyLoss(), optimizer, epochs,
               scheduler, interval)
    return seen, optimizer.param_groups[0]["lr"]


def test_scheduler_stepped_per_epoch():
    # one scheduler.step() after each epoch of 3 updates; step_size=1
    seen, final = _recorded_lrs("epoch", step_size=1)
    assert seen == pytest.approx([0.1] * 3 + [0.01] * 3)
    assert final == pytest.approx(0.001)  # two epochs, two steps


def test_scheduler_stepped_per_iteration():
    # one scheduler.step() after every update; step_size=2 over 6 updates
    seen, final = _recorded_lrs("step", step_size=2)
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert final == pytest.approx(1e-4)  # six steps


def test_train_with_validation_steps_the_scheduler_like_train(tmp_path):
    for interval, expected in (("epoch", 0.1 * 0.1**3), ("step", 0.1 * 0.1**(3 * 4 // 2))):
        _, optimizer, _ = _run(lambda p: torch.optim.SGD(p, lr=0.1), 3, None,
                               lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1 if interval == "epoch" else 2,
                                                                         gamma=0.1),
                               interval)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected), interval


def test_train_returns_the_running_loss_of_each_epoch():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays put
    history = loop.train(model, lambda epoch: _batches(epoch, 3), torch.nn.CrossEntropyLoss(), optimizer, 2)
    with torch.no_grad():
        expected = [sum(torch.nn.functional.cross_entropy(model(x), y).item() for x, y in _batches(e, 3)) / 3
                    for e in range(2)]
    assert history == pytest.approx(expected)


def test_save_state_dict_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    model = _model()
    loop.save_state_dict(model, path)

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        loop.save_state_dict(model, path)
    monkeypatch.undo()
    torch.load(path, weights_only=True)  # the previous file is intact
    assert os.listdir(tmp_path) == ["best.pt"]
