"""The seed's configuration (RunSpec's defaults: SimpleNN, CrossEntropyLoss,
SGD(lr=0.01, momentum=0.9), StepLR(step_size=2, gamma=0.1) per epoch, 3 epochs of batches of
64 over the digits data) holds at every step, in both dtypes and both modes, and reruns
identically."""

from __future__ import annotations

import functools

import pytest

import parity
from parity.report import to_json
from parity.spec import RunSpec

SEED = RunSpec()
TRAIN_SAMPLES = 1438  # 80% of the 1,797 digits, as parity.data splits them
STEPS_PER_EPOCH = -(-TRAIN_SAMPLES // SEED.batch_size)  # the last batch is smaller, as a DataLoader keeps it


@functools.cache
def seed_report(dtype: str, mode: str) -> parity.ParityReport:
    return parity.run(RunSpec(dtype=dtype, mode=mode))


def _describe(report: parity.ParityReport) -> str:
    divergence = report.first_divergence
    if divergence is None:
        return f"validation differs: {[e for e in report.epochs if not e.val_ok]}"
    step, stage, error = divergence
    return f"{report.dtype} {report.mode}: step {step.step} (epoch {step.epoch}), {stage}: {error.describe()}"


@pytest.mark.parametrize("dtype, mode", [("float64", "resync"), ("float32", "resync"), ("float32", "free")])
def test_seed_configuration_holds_at_every_step(dtype: str, mode: str):
    report = seed_report(dtype, mode)
    assert report.ok, _describe(report)
    assert report.config["train_samples"] == TRAIN_SAMPLES
    assert len(report.steps) == SEED.epochs * STEPS_PER_EPOCH
    assert [e.epoch for e in report.epochs] == [0, 1, 2]
    assert all(e.torch_val_loss is not None and e.val_ok for e in report.epochs)
    # StepLR(step_size=2, gamma=0.1) stepped per epoch: epochs 0 and 1 at 0.01, epoch 2 at 0.001
    expected_lr = {0: 0.01, 1: 0.01, 2: 0.001}
    for step in report.steps:
        assert step.torch_lr == pytest.approx(expected_lr[step.epoch], rel=1e-6)


def _numbers(report: parity.ParityReport) -> list:
    return [
        (step.step, step.epoch, step.torch_loss, step.jax_loss, step.torch_lr, step.jax_lr,
         {name: [(t.name, t.max_abs, t.max_rel, t.index, t.mismatched) for t in stage.tensors]
          for name, stage in step.stages.items()})
        for step in report.steps
    ] + [tuple(vars(epoch).values()) for epoch in report.epochs]


def test_two_identical_runs_give_identical_reports():
    first, second = seed_report("float32", "resync"), parity.run(RunSpec(dtype="float32", mode="resync"))
    assert first is not second
    assert _numbers(first) == _numbers(second)
    first_json, second_json = to_json(first), to_json(second)
    for data in (first_json, second_json):
        data.pop("seconds")
    assert first_json == second_json
