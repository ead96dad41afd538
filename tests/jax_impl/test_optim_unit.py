"""jax_impl.optim.from_torch: argument checking as torch.optim's constructors do it, and a few
updates worked out by hand from torch's documented algorithms (the parity suite compares
against torch itself)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_impl.optim
import jax_impl.schedules
from jax_impl.spec import SpecError


@pytest.mark.parametrize("spec, fragment", [
    ("Adagrd(lr=0.1)", "unknown optimizer 'Adagrd' (did you mean 'Adagrad'?)"),
    ("SGD(lr=0.1, momentun=0.9)", "unknown argument 'momentun'"),
    ("SGD(lr=-0.1)", "Invalid learning rate"),
    ("Adam(lr=-1e-3)", "Invalid learning rate"),
    ("AdamW(lr=-1e-3)", "Invalid learning rate"),
    ("SGD(lr=0.1, momentum=-0.5)", "momentum"),
    ("SGD(lr=0.1, weight_decay=-1.0)", "weight_decay"),
    ("SGD(lr=0.1, nesterov=True)", "Nesterov"),  # nesterov needs momentum
    ("SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)", "Nesterov"),  # and no dampening
    ("Adam(betas=(1.0, 0.999))", "beta parameter at index 0"),
    ("Adam(betas=(-0.1, 0.999))", "beta parameter at index 0"),
    ("Adam(betas=(0.9, 1.5))", "beta parameter at index 1"),
    ("AdamW(betas=(0.9, -0.5))", "beta parameter at index 1"),
    ("Adam(eps=-1e-8)", "epsilon"),
    ("Adam(weight_decay=-0.1)", "weight_decay"),
])
def test_invalid_specs_are_spec_errors(spec, fragment):
    with pytest.raises(SpecError) as raised:
        jax_impl.optim.from_torch(spec)
    assert fragment in str(raised.value)


def _updates(tx, steps: int = 3):
    params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(0.25)}
    state = tx.init(params)
    for step in range(steps):
        grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("plain, with_options", [
    ("SGD(lr=0.1, momentum=0.9)", "SGD(lr=0.1, momentum=0.9, foreach=True, fused=False, differentiable=False)"),
    ("Adam(lr=0.01)", "Adam(lr=0.01, foreach=False, fused=True, capturable=True, differentiable=False)"),
    ("AdamW(lr=0.01)", "AdamW(lr=0.01, foreach=None, fused=None, capturable=False)"),
])
def test_implementation_only_options_are_accepted_and_change_nothing(plain, with_options):
    expected, actual = _updates(jax_impl.optim.from_torch(plain)), _updates(jax_impl.optim.from_torch(with_options))
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_zero_lr_is_valid():
    params = _updates(jax_impl.optim.from_torch("SGD(lr=0.0, momentum=0.9)"))
    np.testing.assert_array_equal(params["w"], [0.5, -1.0, 2.0])


def _one_parameter(spec: str, grads: list[float], p0: float = 1.0, lr=None) -> list[float]:
    tx = jax_impl.optim.from_torch(spec, lr=lr)
    params = jnp.asarray(p0, jnp.float64)
    state, trajectory = tx.init(params), []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float64), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(float(params))
    return trajectory


def test_sgd_dampening_is_skipped_on_the_first_step():
    # torch: b1 = g1; bt = mu b(t-1) + (1 - dampening) gt; p -= lr bt
    mu, tau, lr = 0.9, 0.5, 0.1
    b1 = 2.0
    b2 = mu * b1 + (1 - tau) * 4.0
    expected = [1.0 - lr * b1, 1.0 - lr * b1 - lr * b2]
    actual = _one_parameter(f"SGD(lr={lr}, momentum={mu}, dampening={tau})", [2.0, 4.0])
    np.testing.assert_allclose(actual, expected, rtol=1e-15)


def test_sgd_weight_decay_and_maximize_act_on_the_gradient_before_momentum():
    # torch: g = -g (maximize); g += wd p; then momentum; nesterov: g + mu b
    mu, wd, lr, p0 = 0.5, 0.1, 0.1, 1.0
    g1 = -2.0 + wd * p0
    b1 = g1
    p1 = p0 - lr * (g1 + mu * b1)
    g2 = -3.0 + wd * p1
    b2 = mu * b1 + g2
    p2 = p1 - lr * (g2 + mu * b2)
    actual = _one_parameter(f"SGD(lr={lr}, momentum={mu}, weight_decay={wd}, nesterov=True, maximize=True)", [2.0, 3.0])
    np.testing.assert_allclose(actual, [p1, p2], rtol=1e-15)


def test_adam_first_step_moves_each_parameter_by_lr():
    # torch: m1 = (1-b1) g, v1 = (1-b2) g^2; step = lr/(1-b1) * m1 / (sqrt(v1)/sqrt(1-b2) + eps)
    # = lr * g / (|g| + eps)
    lr, eps = 0.01, 1e-8
    for g in (3.0, -0.5, 1e-6):
        actual = _one_parameter(f"Adam(lr={lr}, eps={eps})", [g])[0]
        np.testing.assert_allclose(actual, 1.0 - lr * g / (abs(g) + eps), rtol=1e-14)


def test_adamw_decays_the_parameter_before_the_adam_step_with_torchs_default_weight_decay():
    # torch.optim.AdamW: weight_decay defaults to 1e-2; p *= 1 - lr wd; then the Adam step
    lr, g = 0.01, 2.0
    expected = 1.0 * (1 - lr * 1e-2) - lr * g / (abs(g) + 1e-8)
    np.testing.assert_allclose(_one_parameter(f"AdamW(lr={lr})", [g])[0], expected, rtol=1e-14)


def test_a_schedule_replaces_the_spec_lr():
    # StepLR(step_size=1, gamma=0.5) stepped per update: lr 0.1, 0.05, 0.025
    schedule = jax_impl.schedules.from_torch("StepLR(step_size=1, gamma=0.5)", 0.1)
    actual = _one_parameter("SGD(lr=0.1)", [1.0, 1.0, 1.0], lr=schedule)
    np.testing.assert_allclose(actual, [0.9, 0.85, 0.825], rtol=1e-15)
