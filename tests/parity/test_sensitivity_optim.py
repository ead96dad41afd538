"""The harness catches the optimizer and scheduler mistakes a port typically makes: each is
planted on the JAX side and must be reported at the step, stage and tensor that torch's
semantics predict (stated beside each plant), in float64 and float32, with an unplanted
control that passes. Several plants are exactly what stock optax does by default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import pytest

import jax_impl.optim
import jax_impl.schedules
import parity
from parity.cases._base import BASE, Case
from parity.cases.optimizers import _LBFGS_TOLERANCES

DTYPES = ["float64", "float32"]


def _case(tolerances=None, **changes) -> Case:
    return Case("plant", "optimizer", dataclasses.replace(BASE, epochs=1, steps_per_epoch=4, **changes),
                **({"tolerances": tolerances} if tolerances else {}))


def _location(report: parity.ParityReport) -> tuple[int, str, str] | None:
    divergence = report.first_divergence
    if divergence is None:
        return None
    step, stage, error = divergence
    return step.step, stage, error.name


def _describe(report: parity.ParityReport) -> str:
    divergence = report.first_divergence
    return "no divergence" if divergence is None else f"step {divergence[0].step}, {divergence[1]}: {divergence[2].describe()}"


def _groups_without_overrides(monkeypatch) -> None:
    """The port keeps torch's parameter groups but drops each group's options (a wrong
    mapping of torch's param_groups), so every group runs with the spec's defaults."""
    original = jax_impl.optim.from_torch

    @functools.wraps(original)
    def from_torch(spec, *, lr=None, param_groups=None, **kwargs):
        stripped = [{"params": group["params"]} for group in param_groups or ()]
        return original(spec, lr=lr, param_groups=stripped or None, **kwargs)

    monkeypatch.setattr(jax_impl.optim, "from_torch", from_torch)


def _accumulator_starts_at_optax_default(monkeypatch) -> None:
    """Adagrad's accumulator starting at optax's 0.1 instead of torch's 0."""
    original = jax_impl.optim.OPTIMIZERS["Adagrad"]

    @functools.wraps(original)
    def builder(**kwargs):
        return original(**{**kwargs, "initial_accumulator_value": 0.1})

    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "Adagrad", builder)


def _momentum_not_cycled(monkeypatch) -> None:
    """OneCycleLR's lr schedule kept, its momentum cycling dropped (optax's onecycle schedules
    have none)."""
    original = jax_impl.schedules.from_torch

    @functools.wraps(original)
    def from_torch(*args, **kwargs):
        schedule = original(*args, **kwargs)
        return lambda count: schedule(count)  # a plain function: no momentum attribute

    monkeypatch.setattr(jax_impl.schedules, "from_torch", from_torch)


def _plateau_patience_plus_one(monkeypatch) -> None:
    """ReduceLROnPlateau waiting one epoch longer than torch (optax's reduce_on_plateau
    reduces when the count of bad epochs reaches patience, torch when it exceeds it)."""
    original = jax_impl.schedules.SCHEDULERS["ReduceLROnPlateau"]

    @functools.wraps(original)
    def builder(base_lr, **kwargs):
        return original(base_lr, **{**kwargs, "patience": kwargs.get("patience", 10) + 1})

    monkeypatch.setitem(jax_impl.schedules.SCHEDULERS, "ReduceLROnPlateau", builder)


def _lbfgs_one_iteration_short(monkeypatch) -> None:
    """L-BFGS stopping one iteration early (``max_iter - 1``), as a port that counts its first
    evaluation as an iteration would."""
    original = jax_impl.optim.OPTIMIZERS["LBFGS"]

    @functools.wraps(original)
    def builder(**kwargs):
        return original(**{**kwargs, "max_iter": kwargs.get("max_iter", 20) - 1})

    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "LBFGS", builder)


def _kernel_layout_ignored(monkeypatch) -> None:
    """Adafactor or Muon applied to Flax kernels as they are, (in, out), where torch's weight is
    (out, in): the port does not tell the optimizer which axis is which."""
    monkeypatch.setattr(parity.convert, "torch_layout", lambda converter: (lambda path, leaf: None))


@dataclasses.dataclass(frozen=True)
class Plant:
    name: str
    case: Case
    plant: Callable[[pytest.MonkeyPatch], None]
    expected: tuple[int, str, str]  # (first diverging step, stage, tensor)


PLANTS = [
    # AdamW decays p by lr * wd before its step; torch's bias group has wd = 0, the port's 0.1.
    # Loss, gradients, lr and the moments (decoupled decay never enters them) agree at step 0;
    # fc1.weight (group 0 on both sides) agrees; fc1.bias is the first tensor that differs.
    Plant("param group options dropped",
          _case(optimizer="AdamW(lr=1e-3, weight_decay=0.1)", param_groups=("params='bias', weight_decay=0.0",)),
          _groups_without_overrides, (0, "parameters", "fc1.bias")),
    # the accumulator after step 0 is init + g**2: off by 0.1 in every element, first fc1.weight
    Plant("Adagrad accumulator starts at 0.1", _case(optimizer="Adagrad(lr=0.01)"),
          _accumulator_starts_at_optax_default, (0, "optimizer_state", "fc1.weight:sum")),
    # torch's OneCycleLR sets momentum to max_momentum = 0.95 for update 0; the port keeps the
    # spec's 0.9. The lr agrees, so the momentum entry of the lr stage is the first to differ.
    Plant("OneCycleLR momentum not cycled",
          _case(optimizer="SGD(lr=0.01, momentum=0.9)", scheduler="OneCycleLR(max_lr=0.05, total_steps=4)",
                scheduler_interval="step"),
          _momentum_not_cycled, (0, "lr", "momentum")),
    # 1 update per epoch; threshold 0.5 makes every epoch after the first "bad" (no 50% drop):
    # torch (patience 0) reduces after epoch 1 (the first bad epoch), so update 2 runs at
    # factor * lr; the port (patience 1) still at lr.
    Plant("ReduceLROnPlateau patience one longer",
          Case("plant", "scheduler", dataclasses.replace(
              BASE, epochs=4, steps_per_epoch=1, scheduler="ReduceLROnPlateau(patience=0, threshold=0.5, factor=0.5)")),
          _plateau_patience_plus_one, (2, "lr", "lr")),
    # With the fixed step, torch's 5 iterations evaluate the closure 5 times (none after the
    # last); the port's 4 evaluate it 4 times. The counters come first in L-BFGS's state.
    # (with the registered L-BFGS cases' tolerances: its float32 iterates compound rounding)
    Plant("LBFGS one iteration short", _case(optimizer="LBFGS(lr=0.5, max_iter=5, history_size=4)",
                                             tolerances=_LBFGS_TOLERANCES),
          _lbfgs_one_iteration_short, (0, "optimizer_state", "fc1.weight:func_evals")),
    # Adafactor factors the last two axes: the port's row statistics run over fc1's 64 inputs
    # where torch's run over its 32 outputs; the first factored state differs at step 0.
    Plant("Adafactor on Flax's kernel axes", _case(optimizer="Adafactor(lr=0.01)"),
          _kernel_layout_ignored, (0, "optimizer_state", "fc1.weight:row_var")),
    # Muon scales the step by sqrt(max(1, rows / cols)): 1 for torch's (32, 64) fc1.weight,
    # sqrt(2) for the (64, 32) kernel; the momentum buffers agree, the parameters do not.
    Plant("Muon's shape factor from Flax's kernel axes",
          _case(optimizer="Muon(lr=0.02)", model="SimpleNN(hidden_size=32, bias=False)"),
          _kernel_layout_ignored, (0, "parameters", "fc1.weight")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plant", PLANTS, ids=lambda plant: plant.name)
def test_plant_is_reported_at_its_step_stage_and_tensor(plant: Plant, dtype: str, monkeypatch):
    assert plant.case.run(dtype).ok, "the unplanted control must pass"
    plant.plant(monkeypatch)
    report = plant.case.run(dtype)
    assert _location(report) == plant.expected, _describe(report)
