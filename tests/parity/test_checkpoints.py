"""Checkpoints and exact resume (parity.checkpoints): a run stopped after step N and resumed gives
the same trace, bit for bit, as the uninterrupted run, on both sides; a PyTorch checkpoint
resumes in JAX at parity with torch continuing on its own; broken checkpoints are clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import jax_impl.checkpoint as jax_checkpoint
from jax_impl.checkpoint import CheckpointError
from parity import checkpoints, cli, convert
from parity.runner import run
from parity.spec import RunSpec

SGD = dict(optimizer="SGD(lr=0.05, momentum=0.9)", scheduler="StepLR(step_size=1, gamma=0.5)")
ADAM = dict(optimizer="Adam(lr=0.01)", scheduler="OneCycleLR(max_lr=0.05, total_steps=6)", scheduler_interval="step")
SMALL = dict(epochs=2, steps_per_epoch=3, batch_size=32, data="synthetic")


def _traced(spec: RunSpec):
    traces = []
    report = run(spec, on_step=lambda comparison, torch_trace, jax_trace: traces.append(
        (comparison, torch_trace, jax_trace)))
    return report, traces


def _assert_same_traces(expected, actual) -> None:
    """Every step's comparison and both sides' full traces (loss, lr, gradients, optimizer state,
    parameters, buffers, scheduled hyperparameters) identical, bit for bit."""
    assert [c.step for c, _, _ in expected] == [c.step for c, _, _ in actual]
    for (expected_comparison, *expected_traces), (comparison, *traces) in zip(expected, actual, strict=True):
        assert comparison == expected_comparison, comparison.step
        for side, expected_trace, trace in zip(("torch", "JAX"), expected_traces, traces, strict=True):
            where = f"step {comparison.step} {side}"
            assert (trace.loss, trace.lr, trace.hyperparams) == (
                expected_trace.loss, expected_trace.lr, expected_trace.hyperparams), where
            for field in ("grads", "optimizer_state", "params", "buffers"):
                expected_arrays, arrays = getattr(expected_trace, field), getattr(trace, field)
                assert arrays.keys() == expected_arrays.keys(), (where, field)
                for name in arrays:
                    assert np.array_equal(arrays[name], expected_arrays[name]), (where, field, name)


@pytest.fixture(scope="module", params=[("float64", "sgd"), ("float32", "adam")], ids=["f64-SGD-StepLR",
                                                                                          "f32-Adam-OneCycleLR"])
def uninterrupted(request, tmp_path_factory):
    """The 2-epoch run, writing full checkpoints after every epoch and every 2 steps."""
    dtype, which = request.param
    options = dict(SMALL, dtype=dtype, **(SGD if which == "sgd" else ADAM))
    directory = tmp_path_factory.mktemp(f"checkpoints-{dtype}")
    report, traces = _traced(RunSpec(**options, checkpoint_dir=str(directory), checkpoint_every=2))
    assert report.ok
    return options, directory, report, traces


def test_checkpoint_files(uninterrupted):
    _, directory, report, _ = uninterrupted
    names = sorted(p.name for p in directory.iterdir())
    # after steps 2 and 4 (mid-epoch), 3 and 6 (epoch ends); best models on validation loss
    assert names == ["best_jax.npz", "best_torch.pt", "step-000002", "step-000003", "step-000004", "step-000006"]
    best_epoch = int(np.argmin([e.torch_val_loss for e in report.epochs]))
    state_dict = torch.load(directory / "best_torch.pt", weights_only=True)
    assert set(state_dict) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    arrays, metadata = jax_checkpoint.load(directory / "best_jax.npz")
    assert metadata["epoch"] == int(np.argmin([e.jax_val_loss for e in report.epochs]))
    assert metadata["val_loss"] == min(e.jax_val_loss for e in report.epochs)
    final = torch.load(directory / "step-000006" / "torch.pt", weights_only=True)["model"]
    if best_epoch == len(report.epochs) - 1:  # the best model is the final one
        assert all(torch.equal(state_dict[k], final[k]) for k in state_dict)


def test_stop_after_one_epoch_and_resume(uninterrupted):
    """1 epoch, then resume for the second: the same trace as the 2-epoch run, both sides."""
    options, directory, report, traces = uninterrupted
    first, first_traces = _traced(RunSpec(**dict(options, epochs=1)))
    _assert_same_traces(traces[:3], first_traces)
    resumed, resumed_traces = _traced(RunSpec(**options, resume=str(directory / "step-000003")))
    _assert_same_traces(traces[3:], resumed_traces)
    assert resumed.epochs == report.epochs[1:]


def test_resume_mid_epoch(uninterrupted):
    """Stopped after step 4 (batch 1 of epoch 1): the epoch's summary includes the batch before."""
    options, directory, report, traces = uninterrupted
    resumed, resumed_traces = _traced(RunSpec(**options, resume=str(directory / "step-000004")))
    _assert_same_traces(traces[4:], resumed_traces)
    assert resumed.epochs == report.epochs[1:]


def _torch_only(source: Path, target: Path) -> Path:
    """A PyTorch checkpoint: model, optimizer and scheduler state_dicts, and the position."""
    target.mkdir()
    shutil.copy(source / checkpoints.TORCH_FILE, target / checkpoints.TORCH_FILE)
    return target


def test_pytorch_checkpoint_resumes_in_jax(uninterrupted, tmp_path):
    """JAX continues from torch's checkpoint (parameters, optimizer buffers and step counts, the
    scheduler's position) at parity with torch continuing on its own (free mode)."""
    options, directory, _, traces = uninterrupted
    for step in ((3,) if options["dtype"] == "float64" else (4,)):  # after an epoch; mid-epoch
        checkpoint = _torch_only(directory / f"step-{step:06d}", tmp_path / f"torch-{step}")
        resumed, resumed_traces = _traced(RunSpec(**options, mode="free", resume=str(checkpoint)))
        assert resumed.ok, resumed.first_divergence
        assert [c.step for c in resumed.steps] == list(range(step, 6))
        # torch on its own continues exactly as in the uninterrupted run
        for (_, expected, _), (_, actual, _) in zip(traces[step:], resumed_traces, strict=True):
            assert actual.loss == expected.loss
            assert all(np.array_equal(actual.params[k], expected.params[k]) for k in actual.params)


def test_pytorch_resume_with_a_wrong_schedule_position_is_caught(uninterrupted, tmp_path, monkeypatch):
    """Plant: the JAX optimizer's step count not taken from torch (left at 0). The schedule and
    Adam's bias correction then restart: reported at the first resumed step."""
    options, directory, _, _ = uninterrupted
    checkpoint = _torch_only(directory / "step-000003", tmp_path / "torch")
    load = convert.load_torch_optimizer_state
    monkeypatch.setattr(convert, "load_torch_optimizer_state",
                        lambda opt_state, optimizer, names, converter, steps, **kw: load(
                            opt_state, optimizer, names, converter, 0, **kw))
    resumed = run(RunSpec(**options, mode="free", resume=str(checkpoint)))
    step, stage, _ = resumed.first_divergence
    assert (step.step, stage) == (3, "lr")


def test_interrupted_save_keeps_the_previous_checkpoint(uninterrupted, tmp_path, monkeypatch):
    """A crash while jax.npz is half written: no partial checkpoint appears, the earlier one loads."""
    options, directory, _, traces = uninterrupted
    target = tmp_path / "checkpoints"
    shutil.copytree(directory / "step-000003", target / "step-000003")

    def crash(handle, **arrays):  # np.savez inside jax_checkpoint.save: half an archive, then the crash
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="simulated"):
        run(RunSpec(**options, checkpoint_dir=str(target), resume=str(target / "step-000003")))
    names = sorted(p.name for p in target.iterdir())
    # no temporary and no partial checkpoint left behind (torch's best model, written before, may be there)
    assert "step-000003" in names and set(names) <= {"step-000003", "best_torch.pt"}, names
    monkeypatch.undo()
    _, resumed_traces = _traced(RunSpec(**options, resume=str(target / "step-000003")))
    _assert_same_traces(traces[3:], resumed_traces)


def test_interrupted_best_model_save_keeps_the_previous_one(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    checkpoints.save_best(tmp_path, "torch", 0, 1.0, torch_model=model)
    before = torch.load(tmp_path / "best_torch.pt", weights_only=True)
    real_save = torch.save

    def crash(obj, file):
        real_save(obj, file)
        Path(file).write_bytes(Path(file).read_bytes()[:20])
        raise OSError("killed mid-write (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        checkpoints.save_best(tmp_path, "torch", 1, 0.5, torch_model=model)
    after = torch.load(tmp_path / "best_torch.pt", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir()] == ["best_torch.pt"]


@pytest.mark.parametrize("damage", ["truncated torch.pt", "corrupted jax.npz", "missing directory"])
def test_broken_checkpoint_is_bad_input(uninterrupted, tmp_path, capsys, damage):
    options, directory, _, _ = uninterrupted
    checkpoint = tmp_path / "step-000003"
    shutil.copytree(directory / "step-000003", checkpoint)
    if damage == "truncated torch.pt":
        file = checkpoint / "torch.pt"
        file.write_bytes(file.read_bytes()[:100])
    elif damage == "corrupted jax.npz":
        file = checkpoint / "jax.npz"
        file.write_bytes(b"\0" * 64 + file.read_bytes()[64:])
    else:
        file = shutil.rmtree(checkpoint) or checkpoint
    arguments = ["run", "--data", "synthetic", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "32",
                 "--dtype", options["dtype"], "--optimizer", options["optimizer"], "--scheduler", options["scheduler"],
                 "--scheduler-interval", options.get("scheduler_interval", "epoch"), "--resume", str(checkpoint)]
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert str(file) in error
    assert ("not a readable" in error) if damage != "missing directory" else ("no checkpoint directory" in error)


def test_checkpoint_of_another_configuration_is_refused(uninterrupted):
    options, directory, _, _ = uninterrupted
    other = dict(options, optimizer="SGD(lr=0.1)")
    with pytest.raises(CheckpointError, match=r"optimizer: checkpoint .* this run 'SGD\(lr=0.1\)'"):
        run(RunSpec(**other, resume=str(directory / "step-000003")))
    with pytest.raises(Exception, match="at epoch 1; this run has only 1 epoch"):
        run(RunSpec(**dict(options, epochs=1), resume=str(directory / "step-000003")))


def test_torch_plateau_state_continues_in_jax():
    """ReduceLROnPlateau from a torch checkpoint: torch's scheduler stepped on some validation
    losses, its state carried into the JAX state machine, then both stepped on the same further
    losses give torch's learning rates (against a fresh JAX state, which forgets torch's best)."""
    import jax_impl.schedules

    parameter = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    spec = "ReduceLROnPlateau(patience=1, factor=0.5, cooldown=1)"
    torch_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1, factor=0.5, cooldown=1)
    for metric in (1.0, 0.5, 0.9, 0.8):  # best 0.5, then two bad epochs: lr halves, cooldown starts
        torch_scheduler.step(metric)
    plateau = jax_impl.schedules.from_torch(spec, 0.1)
    (state,) = checkpoints.plateau_from_torch([plateau.init()], torch_scheduler, optimizer)
    fresh = plateau.init()
    torch_lrs, jax_lrs, fresh_lrs = [], [], []
    for metric in (0.7, 0.6, 0.55, 0.52):  # all worse than torch's best 0.5
        torch_scheduler.step(metric)
        state, fresh = plateau.step(state, metric), plateau.step(fresh, metric)
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        jax_lrs.append(float(state.lr))
        fresh_lrs.append(float(fresh.lr))
    assert jax_lrs == torch_lrs
    assert fresh_lrs != torch_lrs  # the plant: without torch's state the schedule differs


@pytest.mark.parametrize("components", [
    dict(optimizer="LBFGS(lr=0.5, max_iter=2)", scheduler=None),  # flat state over all parameters
    dict(optimizer="SGD(lr=0.05)", scheduler="ReduceLROnPlateau(patience=0, factor=0.5)"),  # stepped on val loss
], ids=["LBFGS", "ReduceLROnPlateau"])
def test_resume_lbfgs_and_plateau(components, tmp_path):
    """Exact resume after epoch 0 of 2 (float64), and the torch-only checkpoint continued in JAX."""
    options = dict(epochs=2, steps_per_epoch=2, batch_size=32, data="synthetic", dtype="float64", **components)
    report, traces = _traced(RunSpec(**options, checkpoint_dir=str(tmp_path)))
    assert report.ok
    resumed, resumed_traces = _traced(RunSpec(**options, resume=str(tmp_path / "step-000002")))
    _assert_same_traces(traces[2:], resumed_traces)
    assert resumed.epochs == report.epochs[1:]
    checkpoint = _torch_only(tmp_path / "step-000002", tmp_path / "torch-only")
    crossed = run(RunSpec(**dict(options, mode="free"), resume=str(checkpoint)))
    assert crossed.ok, crossed.first_divergence
    assert [c.step for c in crossed.steps] == [2, 3]
