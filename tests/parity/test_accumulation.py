"""Gradient accumulation: planted accumulation mistakes reported where torch's loop predicts, the
JAX step against torch's accumulation_step directly, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.optim
import jax_impl.step
import parity.runner
from jax_impl.losses import from_torch as jax_loss
from jax_impl.models import SimpleNN as JaxSimpleNN
from jax_impl.step import init_train_state, make_train_step
from parity.cases._base import LONG, Case
from parity.cases.models import CNN, CNN_TOLERANCES
from parity.convert import Converter
from tests.parity.test_cli import run_cli
from tests.parity.test_sensitivity_optim import Plant, _describe, _location
from torch_ref.loop import accumulation_step
from torch_ref.models import SimpleNN


def _undivided(monkeypatch) -> None:
    """The port sums the micro-batch losses without dividing by K: K times the seed's loss."""
    real = parity.runner.make_train_step
    monkeypatch.setattr(parity.runner, "make_train_step",
                        lambda *args, **kwargs: real(*args, **(kwargs | {"accumulate_reduction": "sum"})))


def _statistics_not_threaded(monkeypatch) -> None:
    """Every micro-batch starts from the step's variables, not the previous micro-batch's: the
    running statistics see only the last micro-batch (a vmap or a scan that drops the carry)."""
    def accumulated(objective, accumulate, reduction, seeded=False):
        assert not seeded  # no loss scaling in this plant
        value_and_grad = jax.value_and_grad(lambda p, r, b: (lambda out: (out[0] / accumulate, out[1]))(
            objective(p, r, b)), has_aux=True)

        def step(params, rest, batch, seed=None):
            inputs, targets = batch
            total, grads, last = None, None, None
            for k in range(accumulate):
                (loss, last), micro = value_and_grad(params, rest, (inputs[k], targets[k]))
                total = loss if total is None else total + loss
                grads = micro if grads is None else jax.tree.map(jnp.add, grads, micro)
            return (total, last), grads
        return step

    monkeypatch.setattr(jax_impl.step, "_accumulated", accumulated)


SMALL = dataclasses.replace(LONG, epochs=1, steps_per_epoch=2, accumulate=2)
PLANTS = [
    # the step's loss is K times torch's: the first stage of step 0
    Plant("losses not divided by K", Case("plant", "accumulation", SMALL), _undivided, (0, "loss", "loss")),
    # loss and gradients agree (training-mode BatchNorm normalises with each batch's statistics); the
    # running mean after the step lacks the first micro-batch's update
    Plant("BatchNorm statistics not carried across micro-batches",
          Case("plant", "accumulation", dataclasses.replace(SMALL, model=CNN), CNN_TOLERANCES),
          _statistics_not_threaded, (0, "buffers", "bn1.running_mean")),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("plant", PLANTS, ids=lambda plant: plant.name)
def test_accumulation_plants_are_reported_at_their_step_stage_and_tensor(plant, dtype, monkeypatch):
    assert plant.case.run(dtype).ok, "the unplanted control must pass"
    plant.plant(monkeypatch)
    report = plant.case.run(dtype)
    assert _location(report) == plant.expected, _describe(report)


def test_the_jax_step_is_torchs_accumulation_step_on_its_own():
    """jax_impl.step without the harness: K=3 stacked micro-batches, one SGD step, float64."""
    torch.manual_seed(0)
    torch_model = SimpleNN(input_size=12, hidden_size=8, num_classes=5).double()
    jax_model = JaxSimpleNN(input_size=12, hidden_size=8, num_classes=5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    converter = Converter.from_torch_module(torch_model)
    nnx.update(jax_model, converter.to_jax({k: v.numpy() for k, v in torch_model.state_dict().items()},
                                           nnx.state(jax_model)))
    rng = np.random.default_rng(1)
    micro = [(rng.standard_normal((4, 12)), rng.integers(0, 5, 4)) for _ in range(3)]
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    torch_loss, _ = accumulation_step(torch_model, torch.nn.CrossEntropyLoss(), optimizer,
                                      [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in micro])
    tx = jax_impl.optim.from_torch("SGD(lr=0.1)")
    graphdef, state = init_train_state(jax_model, tx)
    step = make_train_step(graphdef, jax_loss("CrossEntropyLoss()"), tx, accumulate=3)
    state, metrics = step(state, (jnp.asarray(np.stack([x for x, _ in micro])),
                                  jnp.asarray(np.stack([y for _, y in micro]))))
    np.testing.assert_allclose(float(metrics["loss"]), float(torch_loss), rtol=1e-14)
    for name, array in converter.to_torch(state.params).items():
        np.testing.assert_allclose(array, torch_model.state_dict()[name].numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("args, message", [
    (["--accumulate", "0"], "accumulate must be a positive integer"),
    (["--accumulate", "2", "--steps-per-epoch", "1000"], "x accumulate=2 exceeds"),
    (["--accumulate", "2", "--optimizer", "LBFGS(lr=0.1)"], "cannot accumulate micro-batches"),
])
def test_bad_accumulation_is_exit_2(capsys, args, message):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and message in err, err
