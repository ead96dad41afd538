"""The seed's warning demonstrated: a torch loop that forgets zero_grad against a JAX loop that
carries its gradients across steps, the departure of both from the correct loop, a planted
port that zeroes its gradients while torch does not, and bad input."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest

import jax_impl.step
import parity
from parity.cases.zero_grad import CASES
from tests.parity.test_cli import run_cli
from tests.parity.test_sensitivity_optim import _describe, _location

SGD_CASE = CASES[0]


@pytest.mark.parametrize("mode", ["resync", "free"])
def test_both_forgetful_loops_agree_and_depart_alike_from_the_correct_loop(mode):
    report = parity.run(SGD_CASE.run_spec("float64", mode))
    assert report.ok, _describe(report)
    departure = report.departure
    assert len(departure) == len(report.steps)
    first = departure[0]  # nothing left over before the first step: the loops still agree
    assert first.torch_loss == first.torch_correct_loss and first.torch_parameters == 0.0
    last = departure[-1]
    assert abs(last.torch_loss - last.torch_correct_loss) > 1e-3 and last.torch_parameters > 0.05
    for row in departure:  # each framework is as far from its own correct loop as the other
        assert row.jax_loss == pytest.approx(row.torch_loss, rel=1e-12)
        assert row.jax_parameters == pytest.approx(row.torch_parameters, rel=1e-9, abs=1e-12)


def test_a_port_that_zeroes_its_gradients_is_caught_at_the_second_step(monkeypatch):
    """torch forgets zero_grad, the port does not: step 0 agrees (nothing to carry yet); at
    step 1 torch's optimizer sees the sum of two steps' gradients."""
    original = jax_impl.step.make_train_step
    monkeypatch.setattr(parity.runner, "make_train_step",
                        functools.wraps(original)(lambda *a, **k: original(*a, **(k | {"zero_grad": True}))))
    report = parity.run(SGD_CASE.run_spec("float64"))
    assert _location(report) == (1, "gradient", "fc1.weight"), _describe(report)


def test_cli_prints_the_departure_table_and_writes_it_to_json(capsys, tmp_path):
    path = tmp_path / "forgetful.json"
    code, out, err = run_cli(capsys, "--forget-zero-grad", "--epochs", "1", "--steps-per-epoch", "6",
                             "--batch-size", "32", "--json", str(path))
    assert code == 0, out + err
    assert "Forgetting zero_grad" in out and "PARITY HOLDS: 6 steps" in out
    data = json.loads(path.read_text())
    assert data["config"]["zero_grad"] is False
    rows = data["departure_from_correct_loop"]
    assert [row["step"] for row in rows] == list(range(6)) and rows[-1]["torch_parameters"] > 0


@pytest.mark.parametrize("args, word", [
    (("--accumulate", "2"), "gradient accumulation"),
    (("--amp", "bfloat16"), "mixed precision"),
    (("--optimizer", "LBFGS(lr=0.1)"), "LBFGS"),
])
def test_forgetting_zero_grad_with_what_it_does_not_combine_with_is_exit_2(capsys, args, word):
    code, out, err = run_cli(capsys, "--forget-zero-grad", *args, "--epochs", "1", "--steps-per-epoch", "2")
    assert code == 2, out + err
    assert word in err and "zero_grad" in err, err


def test_the_correct_twin_is_the_same_configuration():
    spec = dataclasses.replace(SGD_CASE.run_spec("float64"), epochs=1, steps_per_epoch=2)
    report = parity.run(spec)
    correct = parity.run(dataclasses.replace(spec, zero_grad=True))
    assert [row.torch_correct_loss for row in report.departure] == [step.torch_loss for step in correct.steps]
