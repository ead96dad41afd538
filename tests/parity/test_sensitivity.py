"""The harness can fail: a difference planted on the JAX side is reported at the right step,
stage and tensor, in float64 and float32.

Each plant is put in without touching library code: through the registries ``from_torch``
reads (pytest's ``monkeypatch`` on the dict), through ``check_port``'s ``converter``, or by
passing ``check_port`` a JAX model of our own. The expected location of each plant is derived
from torch's semantics (stated beside each one), never from what the harness printed. Every
plant has an unplanted control that must pass, so a plant cannot be "found" vacuously.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.optim
import jax_impl.schedules
import parity
import torch_ref.models
from parity import data
from parity.convert import LAYOUT_RULES, Converter, Rule
from parity.spec import DTYPES, RunSpec

DTYPE_NAMES = ["float64", "float32"]

# ---------------------------------------------------------------------------------------------
# The unplanted configurations: small runs (1 epoch of 5 updates, or 3 epochs of 2).

_SMALL = RunSpec(model="SimpleNN(hidden_size=32)", optimizer="SGD(lr=0.01, momentum=0.9)", scheduler=None,
                 epochs=1, steps_per_epoch=5, batch_size=32, data="digits")

SPECS = {
    "sgd_momentum": _SMALL,
    "adam": dataclasses.replace(_SMALL, optimizer="Adam(lr=1e-3)"),
    # the lr of update k (0-based) is 0.01 * 0.1 ** (k // 3): it first drops at update 3
    "steplr_per_step": dataclasses.replace(_SMALL, scheduler="StepLR(step_size=3, gamma=0.1)",
                                           scheduler_interval="step"),
    # 3 epochs of 2 updates; epoch e runs at 0.01 * 0.1 ** (e // 2): the first drop is epoch 2
    "steplr_per_epoch": dataclasses.replace(_SMALL, scheduler="StepLR(step_size=2, gamma=0.1)",
                                            scheduler_interval="epoch", epochs=3, steps_per_epoch=2),
}


def _check_port(dtype: str, mode: str, jax_model_class=jax_impl.models.SimpleNN,
                converter_rules=None) -> parity.ParityReport:
    """check_port on a 64-32-10 SimpleNN pair and 3 digits batches of 32, SGD with momentum."""
    torch_dtype, jax_dtype, numpy_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    torch_model = torch_ref.models.SimpleNN(64, 32, 10).to(torch_dtype)
    jax_model = jax_model_class(64, 32, 10, rngs=nnx.Rngs(0), param_dtype=jax_dtype)
    converter = None if converter_rules is None else Converter.from_torch_module(torch_model, converter_rules)
    batches = list(data.digits(0).train_batches(0, 32, 0, 3, numpy_dtype))
    return parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()",
                             optimizer="SGD(lr=0.01, momentum=0.9)", epochs=[batches],
                             converter=converter, mode=mode)


def _run(config: str, dtype: str, mode: str, **port_arguments) -> parity.ParityReport:
    if config == "check_port":
        return _check_port(dtype, mode, **port_arguments)
    return parity.run(dataclasses.replace(SPECS[config], dtype=dtype, mode=mode))


# ---------------------------------------------------------------------------------------------
# The plants. Each patches what it needs and returns extra check_port arguments.

def _plant_inner_momentum(monkeypatch) -> dict:
    """SGD whose update uses half the momentum while its hyperparameters still say 0.9: only
    the update itself is wrong."""
    def halved(lr, momentum, dampening, weight_decay, nesterov, maximize):
        return jax_impl.optim.sgd(lr, momentum * 0.5, dampening, weight_decay, nesterov, maximize)

    @functools.wraps(jax_impl.optim.SGD)
    def builder(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *, maximize=False, **_):
        return optax.inject_hyperparams(halved, static_args=("nesterov", "maximize"),
                                        hyperparam_dtype=jnp.result_type(float))(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize)

    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "SGD", builder)
    return {}


def _plant_builder_momentum(monkeypatch) -> dict:
    """The SGD builder passes on half the spec's momentum (a wrong argument mapping)."""
    original = jax_impl.optim.OPTIMIZERS["SGD"]

    @functools.wraps(original)
    def builder(**kwargs):
        return original(**{**kwargs, "momentum": kwargs.get("momentum", 0.0) * 0.5})

    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "SGD", builder)
    return {}


def _plant_schedule_shift(monkeypatch) -> dict:
    """StepLR evaluated one scheduler step ahead: f(n + 1) where torch uses f(n)."""
    original = jax_impl.schedules.SCHEDULERS["StepLR"]

    @functools.wraps(original)
    def builder(base_lr, **kwargs):
        schedule = original(base_lr, **kwargs)
        return lambda n: schedule(jnp.asarray(n) + 1)

    monkeypatch.setitem(jax_impl.schedules.SCHEDULERS, "StepLR", builder)
    return {}


def _reshape_not_transpose(array):
    return array.reshape(array.shape[::-1])  # (32, 64) -> (64, 32): right shape, garbled values


def _plant_reshaped_weights(monkeypatch) -> dict:
    """A converter whose Linear rule reshapes torch's (out, in) weight instead of transposing it."""
    rules = dict(LAYOUT_RULES) | {"Linear": {"weight": Rule("kernel", _reshape_not_transpose, _reshape_not_transpose),
                                             "bias": Rule("bias")}}
    return {"converter_rules": rules}


def _eps_inside_sqrt_adam(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                          decoupled_weight_decay) -> optax.GradientTransformation:
    """jax_impl's Adam moments, but the step ``-lr/bc1 * m / sqrt(v/bc2 + eps)``: eps inside the
    square root (optax's ``eps_root`` place) instead of torch's ``sqrt(v)/sqrt(bc2) + eps``."""
    exact = jax_impl.optim.adam(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay)

    def update_fn(updates, state, params=None):
        _, state = exact.update(updates, state, params)
        step = state.count.astype(jnp.float64)
        bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
        wrong = jax.tree.map(
            lambda m, v: (-lr / bias_correction1 * m / jnp.sqrt(v / bias_correction2 + eps)).astype(m.dtype),
            state.exp_avg, state.exp_avg_sq)
        return wrong, state

    return optax.GradientTransformation(exact.init, update_fn)


def _plant_eps_inside_sqrt(monkeypatch) -> dict:
    @functools.wraps(jax_impl.optim.Adam)
    def builder(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *, maximize=False, **_):
        # float64 hyperparameters as jax_impl keeps them, so that eps is the only difference
        return optax.inject_hyperparams(_eps_inside_sqrt_adam, static_args=("amsgrad", "maximize", "decoupled_weight_decay"),
                                        hyperparam_dtype=jnp.result_type(float))(
            lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=False)

    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "Adam", builder)
    return {}


class _NoBiasGradient(jax_impl.models.SimpleNN):
    """SimpleNN whose output bias is held out of differentiation: the same forward values,
    a zero gradient for fc2's bias."""

    def __call__(self, x):
        hidden = nnx.relu(self.fc1(x.reshape(-1, self.input_size)))  # (B, 32)
        return hidden @ self.fc2.kernel[...] + jax.lax.stop_gradient(self.fc2.bias[...])  # (B, 10)


def _plant_no_bias_gradient(monkeypatch) -> dict:
    return {"jax_model_class": _NoBiasGradient}


@dataclasses.dataclass(frozen=True)
class Plant:
    name: str
    config: str  # the unplanted configuration it modifies
    plant: Callable[[pytest.MonkeyPatch], dict]
    expected: tuple[int, str, str]  # (first diverging step, stage, tensor)
    lrs: tuple[float, float] | None = None  # (torch, JAX) lr at that step, for lr plants


PLANTS = [
    # Step 0: torch's first momentum step stores the gradient itself (b = g, no momentum term),
    # so any momentum agrees. Step 1 starts from resynced parameters and buffer, so loss,
    # gradient and lr agree; b = mu*b + g then differs, first for fc1.weight (torch's order).
    Plant("wrong momentum in the update", "sgd_momentum", _plant_inner_momentum,
          (1, "optimizer_state", "fc1.weight:momentum_buffer")),
    # The same mistake one level up: the builder passes on a wrong momentum, so the JAX
    # hyperparameters say 0.45. Resync resets buffers and counters, not the port's
    # hyperparameters, so the same step, stage and tensor.
    Plant("wrong momentum from the builder", "sgd_momentum", _plant_builder_momentum,
          (1, "optimizer_state", "fc1.weight:momentum_buffer")),
    # Update k uses f(k + 1) instead of f(k): f drops at k = 3, so the JAX lr drops at k = 2,
    # where loss and gradients (resynced parameters) still agree.
    Plant("lr schedule one update early", "steplr_per_step", _plant_schedule_shift, (2, "lr", "lr"),
          lrs=(0.01, 0.001)),
    # Epoch e uses f(e + 1): f drops at e = 2, so the JAX lr drops in epoch 1, whose first
    # update is step 2 (2 updates per epoch).
    Plant("lr schedule one epoch early", "steplr_per_epoch", _plant_schedule_shift, (2, "lr", "lr"),
          lrs=(0.01, 0.001)),
    # The JAX model starts from garbled fc1 and fc2 weights: the very first forward differs.
    Plant("weights reshaped, not transposed", "check_port", _plant_reshaped_weights, (0, "loss", "loss")),
    # eps only enters the step, not the moments: loss, gradients, lr and exp_avg/exp_avg_sq
    # agree; the parameters after step 0 differ wherever |g| is not >> sqrt(eps) (many of
    # fc1's inputs are nearly constant pixels), first in fc1.weight.
    Plant("Adam eps inside the sqrt", "adam", _plant_eps_inside_sqrt, (0, "parameters", "fc1.weight")),
    # The forward is unchanged (loss agrees); fc2.bias gets a zero gradient, torch's is the
    # column sum of dloss/dlogits; fc1.weight, fc1.bias and fc2.weight, earlier in torch's
    # order, are unaffected.
    Plant("no gradient for fc2.bias", "check_port", _plant_no_bias_gradient, (0, "gradient", "fc2.bias")),
]


def _describe(report: parity.ParityReport) -> str:
    divergence = report.first_divergence
    return "no divergence" if divergence is None else f"step {divergence[0].step}, {divergence[1]}: {divergence[2].describe()}"


def _location(report: parity.ParityReport) -> tuple[int, str, str] | None:
    divergence = report.first_divergence
    if divergence is None:
        return None
    step, stage, error = divergence
    return step.step, stage, error.name


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("plant", PLANTS, ids=lambda plant: plant.name)
def test_plant_is_reported_at_its_step_stage_and_tensor(plant: Plant, dtype: str, monkeypatch):
    port_arguments = plant.plant(monkeypatch)
    report = _run(plant.config, dtype, "resync", **port_arguments)
    assert not report.ok
    assert _location(report) == plant.expected, _describe(report)
    assert all(step.ok for step in report.steps[: plant.expected[0]])
    if plant.lrs is not None:
        step = report.steps[plant.expected[0]]
        assert (step.torch_lr, step.jax_lr) == pytest.approx(plant.lrs, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("config", sorted({plant.config for plant in PLANTS}))
def test_unplanted_configuration_passes(config: str, dtype: str):
    report = _run(config, dtype, "resync")
    assert report.ok, _describe(report)


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_free_mode_reports_a_planted_difference(dtype: str, monkeypatch):
    assert _run("sgd_momentum", dtype, "free").ok  # the control
    _plant_builder_momentum(monkeypatch)
    report = _run("sgd_momentum", dtype, "free")
    # as for the plant in the update: step 0's buffer is the gradient itself
    assert _location(report) == (1, "optimizer_state", "fc1.weight:momentum_buffer"), _describe(report)


# ---------------------------------------------------------------------------------------------
# How check_port reads its epochs, and how a validation-only difference is reported.

def _tiny_port_pair():
    torch.manual_seed(0)
    return torch_ref.models.SimpleNN(64, 8, 10), jax_impl.models.SimpleNN(64, 8, 10, rngs=nnx.Rngs(0))


def _digits_batches(count: int):
    return list(data.digits(0).train_batches(0, 16, 0, count))


@pytest.mark.parametrize("epochs, message", [
    ([], "non-empty list of epochs"),
    ([[]], "epoch 0 has no batches"),
])
def test_check_port_rejects_malformed_epochs(epochs, message):
    torch_model, jax_model = _tiny_port_pair()
    with pytest.raises(parity.SpecError, match=message):
        parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)", epochs=epochs)


def test_check_port_names_a_flat_list_of_batches():
    torch_model, jax_model = _tiny_port_pair()
    with pytest.raises(parity.SpecError, match=r"pass \[batches\] for one epoch"):
        parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)",
                          epochs=_digits_batches(2))


def test_unequal_epochs_need_only_a_per_epoch_scheduler_to_be_refused():
    batches = _digits_batches(3)
    torch_model, jax_model = _tiny_port_pair()
    report = parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)",
                               epochs=[batches[:1], batches])
    assert report.ok and len(report.steps) == 4
    torch_model, jax_model = _tiny_port_pair()
    with pytest.raises(parity.SpecError, match="same number of batches in every epoch"):
        parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)",
                          scheduler="StepLR(step_size=1)", epochs=[batches[:1], batches])


def test_a_validation_only_difference_is_reported_with_both_values():
    from rich.console import Console

    from parity.compare import Tolerance
    from parity.report import render

    strict = {("loss", "float32"): Tolerance(0.0, 0.0, "bit-exact, to force a validation difference")}
    # resync keeps training identical; float32 validation losses differ by an ulp or so
    candidates = [parity.run(dataclasses.replace(_SMALL, seed=seed), tolerances=strict) for seed in range(3)]
    report = next((r for r in candidates if any(not e.val_ok for e in r.epochs)), None)
    assert report is not None, "no seed gave a float32 validation loss that is not bit-identical"
    assert not report.ok
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    epoch = next(e for e in report.epochs if not e.val_ok)
    assert f"validation loss differs in epoch {epoch.epoch}: torch {epoch.torch_val_loss:.10g}" in text


def test_a_float32_only_difference_is_caught_in_float32_and_absent_in_float64(monkeypatch):
    """Adam whose hyperparameters are stored in the parameters' dtype (optax's default): in
    float32, beta2 = 0.999 becomes 0.99900001 and 1 - beta2 is off by 1.3e-5 relative, where
    torch rounds the Python double 1 - 0.999 once. The first step's exp_avg_sq is v = (1 - beta2) g**2,
    so step 0 differs there (exp_avg's 1 - beta1 = 0.1 is off by 2 ulps only, inside
    tolerance). In float64 nothing is rounded to float32, so the same port holds."""
    real = jax_impl.optim.adam

    @functools.wraps(jax_impl.optim.Adam)
    def builder(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *, maximize=False, **_):
        return optax.inject_hyperparams(real, static_args=("amsgrad", "maximize", "decoupled_weight_decay"))(
            lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=False)

    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "Adam", builder)
    float32 = parity.run(dataclasses.replace(SPECS["adam"], dtype="float32"))
    step, stage, error = float32.first_divergence
    assert (step.step, stage, error.name) == (0, "optimizer_state", "fc1.weight:exp_avg_sq")
    assert parity.run(dataclasses.replace(SPECS["adam"], dtype="float64")).ok
