"""Gradient clipping: jax_impl.clip against torch.nn.utils' clip_grad_norm_ and clip_grad_value_,
planted clipping mistakes reported where torch's formula predicts, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jax_impl.clip
import parity.runner
from jax_impl.clip import clip_grad_norm, clip_grad_norm_transform, clip_grad_value, make_clip
from parity.cases._base import LONG, Case
from parity.spec import RunSpec, SpecError
from tests.parity.test_cli import run_cli
from tests.parity.test_sensitivity_optim import Plant, _describe, _location

SHAPES = [(7, 5), (5,), (3, 2, 4)]


def _grads(scale: float, dtype=np.float64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(dtype) for shape in SHAPES]


def _torch_clip(grads, max_norm, norm_type):
    parameters = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
    for parameter, g in zip(parameters, grads):
        parameter.grad = torch.from_numpy(g.copy())
    total = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type)
    return [p.grad.numpy() for p in parameters], float(total)


@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0, 3.0, 0.5])
@pytest.mark.parametrize("scale", [1e-3, 0.3, 10.0])
def test_clip_grad_norm_is_torchs_in_float64(norm_type, scale):
    grads = _grads(scale)
    torch_grads, torch_total = _torch_clip(grads, 0.5, norm_type)
    jax_grads, jax_total = jax.jit(lambda g: clip_grad_norm(g, 0.5, norm_type))([jnp.asarray(g) for g in grads])
    np.testing.assert_allclose(float(jax_total), torch_total, rtol=1e-13)
    for torch_grad, jax_grad in zip(torch_grads, jax_grads):
        np.testing.assert_allclose(np.asarray(jax_grad), torch_grad, rtol=1e-13, atol=0)


def test_at_the_threshold_torch_still_scales_and_float32_agrees_to_ulps():
    """Just above the total norm torch still multiplies by max_norm / (norm + 1e-6) < 1
    (optax's clip_by_global_norm leaves the gradients alone there)."""
    grads = _grads(0.05, np.float32, seed=1)  # a norm of about 0.4
    norm = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))) * (1 + 1e-6)
    torch_grads, _ = _torch_clip(grads, norm, 2.0)
    jax_grads, _ = clip_grad_norm([jnp.asarray(g) for g in grads], norm, 2.0)
    assert not np.array_equal(torch_grads[0], grads[0])  # torch scaled them
    for torch_grad, jax_grad in zip(torch_grads, jax_grads):
        np.testing.assert_allclose(np.asarray(jax_grad), torch_grad, rtol=4e-7)
    optax_grads, _ = optax.clip_by_global_norm(norm).update([jnp.asarray(g) for g in grads], None)
    np.testing.assert_array_equal(np.asarray(optax_grads[0]), grads[0])  # optax did not


def test_clip_grad_value_is_torchs():
    grads = _grads(1.0)
    parameters = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for parameter, g in zip(parameters, grads):
        parameter.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_value_(parameters, 0.4)
    for parameter, jax_grad in zip(parameters, clip_grad_value([jnp.asarray(g) for g in grads], 0.4)):
        np.testing.assert_array_equal(np.asarray(jax_grad), parameter.grad.numpy())


def test_the_transform_keeps_the_total_norm_and_chains_before_an_optimizer():
    params = [jnp.zeros(shape, jnp.float64) for shape in SHAPES]
    grads = [jnp.asarray(g) for g in _grads(0.3)]
    tx = optax.chain(clip_grad_norm_transform(0.5), optax.sgd(1.0))
    updates, state = tx.update(grads, tx.init(params), params)
    expected_grads, expected_total = clip_grad_norm(grads, 0.5)
    assert float(state[0].total_norm) == float(expected_total)
    np.testing.assert_array_equal(np.asarray(updates[0]), -np.asarray(expected_grads[0]))


def test_make_clip_refuses_bad_arguments():
    assert make_clip() is None
    for kwargs in ({"max_norm": 1.0, "norm_type": 0.0}, {"max_norm": -1.0}, {"clip_value": -0.1}):
        with pytest.raises(ValueError):
            make_clip(**kwargs)


# ------------------------------------------------------------------------------------------
# Plants: each reported at (step, stage, tensor)


def _without_epsilon(monkeypatch) -> None:
    """optax's coefficient max_norm / norm (no + 1e-6): gradients 1e-6 / norm apart, relative."""
    original = jax_impl.clip.clip_grad_norm

    def clip_grad_norm(grads, max_norm, norm_type=2.0):
        _, total = original(grads, max_norm, norm_type)
        coef = jnp.minimum(max_norm / total, 1.0)
        return jax.tree.map(lambda g: g * coef, grads), total

    monkeypatch.setattr(jax_impl.clip, "clip_grad_norm", clip_grad_norm)


def _values_before_norm(monkeypatch) -> None:
    """The value clipping applied before the norm clipping: another norm, other gradients."""
    def make_clip(max_norm=None, norm_type=2.0, clip_value=None):
        def clip(grads):
            grads = jax_impl.clip.clip_grad_value(grads, clip_value)
            return jax_impl.clip.clip_grad_norm(grads, max_norm, norm_type)
        return clip

    monkeypatch.setattr(parity.runner.jax_impl.clip, "make_clip", make_clip)


CLIPPED = Case("plant", "clipping", dataclasses.replace(LONG, epochs=1, steps_per_epoch=2, clip_grad_norm=0.25))
BOTH = Case("plant", "clipping", dataclasses.replace(CLIPPED.spec, clip_grad_value=0.01))

PLANTS = [
    # every gradient is scaled 1 + 1e-6/0.6 too much: the first tensor, fc1.weight, differs (float64 only:
    # 1.7e-6 relative is within float32's gradient tolerance)
    (Plant("clip coefficient without + 1e-6", CLIPPED, _without_epsilon, (0, "gradient", "fc1.weight")),
     ["float64"]),
    (Plant("value clipping before norm clipping", BOTH, _values_before_norm, (0, "gradient", "fc1.weight")),
     ["float64", "float32"]),
]


@pytest.mark.parametrize("plant, dtype", [(p, d) for p, dtypes in PLANTS for d in dtypes],
                         ids=lambda v: v.name if isinstance(v, Plant) else v)
def test_clipping_plants_are_reported_at_their_step_stage_and_tensor(plant, dtype, monkeypatch):
    assert plant.case.run(dtype).ok, "the unplanted control must pass"
    plant.plant(monkeypatch)
    report = plant.case.run(dtype)
    assert _location(report) == plant.expected, _describe(report)


def test_a_non_finite_norm_with_error_if_nonfinite_halts_the_run_with_torchs_message():
    spec = dataclasses.replace(CLIPPED.spec, clip_grad_norm=1.0, error_if_nonfinite=True,
                               optimizer="SGD(lr=1e30)", dtype="float32")
    report = parity.runner.run(spec)
    assert not report.ok and report.halted and "clip_grad_norm_ raised" in report.halted, report.halted


@pytest.mark.parametrize("kwargs, message", [
    ({"norm_type": 3.0}, "set clip_grad_norm too"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm must be a finite non-negative number"),
    ({"clip_grad_norm": 1.0, "norm_type": 0.0}, "norm_type must be a positive number"),
])
def test_bad_clipping_settings_are_spec_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        RunSpec(**kwargs)


def test_cli_clipping_flags(capsys):
    code, out, err = run_cli(capsys, "--epochs", "1", "--steps-per-epoch", "2", "--clip-grad-norm", "0.3",
                             "--norm-type", "inf")
    assert code == 0, out + err
    code, _, err = run_cli(capsys, "--norm-type", "1")
    assert code == 2 and "set clip_grad_norm too" in err
    code, _, err = run_cli(capsys, "--clip-grad-norm", "1", "--optimizer", "LBFGS(lr=0.1)")
    assert code == 2 and "LBFGS" in err
