"""The harness catches the model-state mistakes a port typically makes: each is planted on the
JAX side (monkeypatched, the source untouched) and must be reported at the step, stage and tensor
that torch's semantics predict (stated beside each plant), in float64 and float32, with an
unplanted control that passes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import jax
import pytest
from flax import nnx

import jax_impl.layers as L
import jax_impl.models.with_loss
import parity
import parity.runner
from parity.cases._base import BASE, Case
from parity.cases.models import CNN_TOLERANCES
from parity.dropout import dropout_mask
from tests.parity.test_sensitivity_optim import Plant, _describe, _location

DTYPES = ["float64", "float32"]

#: CNN(channels=4) on the 8x8 digits, 2 steps of 8 samples: BatchNorm sees 8 x 8 x 8 = 512 values
#: per channel in bn1 (a biased variance is then 1/512 smaller), dropout 0.5 before the head.
CNN = Case("plant", "model", dataclasses.replace(BASE, model="CNN(channels=4)", epochs=1, steps_per_epoch=2,
                                                 batch_size=8), tolerances=CNN_TOLERANCES)


def _masks_from_another_seed(monkeypatch) -> None:
    """The JAX side drops with masks of its own (another seed), not the ones torch used: what a
    port gets when its dropout keeps drawing from its own RNG."""
    real = parity.runner.hand_masks_to_jax
    steps = itertools.count()

    def hand_masks_to_jax(graphdef, params, rest, masks):
        step = next(steps)
        other = {name: None if mask is None else dropout_mask(1, step, name, mask.shape, 0.5, mask.dtype)
                 for name, mask in masks.items()}  # CNN's dropout: p = 0.5
        return real(graphdef, params, rest, other)

    monkeypatch.setattr(parity.runner, "hand_masks_to_jax", hand_masks_to_jax)


def _with_count(monkeypatch, update: Callable) -> None:
    """Replace BatchNorm's running-statistics update by ``update(self, original, mean,
    unbiased_var, count)``, ``count`` the values per channel of the current input."""
    original_call, original_update = L.BatchNorm.__call__, L.BatchNorm._update_running_stats
    counts = []

    def call(self, x, **kwargs):
        counts.append(math.prod(x.shape[:-1]))
        try:
            return original_call(self, x, **kwargs)
        finally:
            counts.pop()

    monkeypatch.setattr(L.BatchNorm, "__call__", call)
    monkeypatch.setattr(L.BatchNorm, "_update_running_stats",
                        lambda self, mean, var: update(self, original_update, mean, var, counts[-1]))


def _biased_running_var(monkeypatch) -> None:
    """The running variance tracked with the batch's biased variance (Flax's ``nnx.BatchNorm``),
    torch tracks the unbiased one (n / (n - 1))."""
    _with_count(monkeypatch, lambda self, update, mean, var, n: update(self, mean, var * (n - 1) / n))


def _counter_steps_by_two(monkeypatch) -> None:
    """``num_batches_tracked`` incremented twice per training batch."""
    def update(self, original, mean, var, n):
        original(self, mean, var)
        self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1

    _with_count(monkeypatch, update)


#: SimpleNN's 16 outputs feed LinearCrossEntropyLoss's own Linear(16, 10): the loss trains with the model
WITH_LOSS = Case("plant", "loss", dataclasses.replace(
    BASE, loss="LinearCrossEntropyLoss(in_features=16, num_classes=10, bias=True)", epochs=1, steps_per_epoch=2))


def _criterion_not_trained(monkeypatch) -> None:
    """The loss's own parameters enter the loss as constants (a port that closes over a copy of
    the loss module, or leaves it out of the differentiated state): torch trains them."""
    def loss(self, outputs, targets):
        graphdef, state = nnx.split(self.criterion)
        return nnx.merge(graphdef, jax.lax.stop_gradient(state))(outputs, targets)

    monkeypatch.setattr(jax_impl.models.with_loss.WithLoss, "loss", loss)


PLANTS = [
    # another mask changes the head's input, so the loss of step 0 already differs
    Plant("dropout mask from another seed", CNN, _masks_from_another_seed, (0, "loss", "loss")),
    # training-mode BatchNorm normalises with the biased variance either way: loss, gradients and
    # parameters agree; the tracked variance is 1/512 smaller x momentum 0.1; running_mean (first in
    # torch's buffer order) agrees, running_var differs
    Plant("BatchNorm biased running variance", CNN, _biased_running_var, (0, "buffers", "bn1.running_var")),
    # momentum 0.1 does not read the counter: mean and variance agree, the counter is 2, not 1
    Plant("num_batches_tracked += 2", CNN, _counter_steps_by_two, (0, "buffers", "bn1.num_batches_tracked")),
    # the model's gradients (through the loss's input) agree; the loss's weight gets zero, not torch's
    Plant("loss parameters not trained", WITH_LOSS, _criterion_not_trained,
          (0, "gradient", "criterion.linear.weight")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plant", PLANTS, ids=lambda plant: plant.name)
def test_plant_is_reported_at_its_step_stage_and_tensor(plant: Plant, dtype: str, monkeypatch):
    assert plant.case.run(dtype).ok, "the unplanted control must pass"
    plant.plant(monkeypatch)
    report = plant.case.run(dtype)
    assert _location(report) == plant.expected, _describe(report)


def test_batchnorm_on_batch_statistics_in_eval_mode_fails_validation(monkeypatch):
    """A port whose BatchNorm ignores eval mode (normalises validation batches with their own
    statistics): every training step agrees, the validation loss after the epoch does not."""
    original = L.BatchNorm.__call__
    monkeypatch.setattr(L.BatchNorm, "__call__",
                        lambda self, x, use_running_average=None: original(self, x, use_running_average=False))
    report = CNN.run("float64")
    assert all(step.ok for step in report.steps), _describe(report)
    assert not report.ok and not report.epochs[0].val_ok
