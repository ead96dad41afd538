"""jax_impl.losses against torch.nn's losses directly, beyond what training runs reach: every
reduction, K-dimensional inputs, class weights, ignore_index, label smoothing, and gradients."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl.losses
from parity.spec import build_torch_loss

CLASSES = 4
OPTIONS = list(itertools.product([None, "(0.5, 2.0, 1.0, 0.25)"], [-100, 2], [0.0, 0.3]))


def _spec(weight, ignore_index, reduction, label_smoothing) -> str:
    arguments = ([f"weight={weight}"] if weight else []) + [
        f"ignore_index={ignore_index}", f"reduction={reduction!r}", f"label_smoothing={label_smoothing}"]
    return f"CrossEntropyLoss({', '.join(arguments)})"


def _data(shape):
    rng = np.random.default_rng(sum(shape))
    logits = rng.standard_normal(shape) * 3
    target = rng.integers(0, CLASSES, (shape[0],) + shape[2:])
    target.flat[0] = 2  # at least one sample of the class ignore_index=2 drops
    target.flat[-1] = 1  # and one it keeps
    return logits, target


def _both(spec, logits, target):
    torch_value = build_torch_loss(spec, "float64")(torch.from_numpy(logits), torch.from_numpy(target)).numpy()
    jax_value = np.asarray(jax_impl.losses.from_torch(spec)(jnp.asarray(logits), jnp.asarray(target)))
    return torch_value, jax_value


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, CLASSES), (3, CLASSES, 5), (2, CLASSES, 3, 2)], ids=str)
def test_cross_entropy_matches_torch(shape, reduction):
    logits, target = _data(shape)
    for weight, ignore_index, label_smoothing in OPTIONS:
        spec = _spec(weight, ignore_index, reduction, label_smoothing)
        torch_value, jax_value = _both(spec, logits, target)
        assert jax_value.shape == torch_value.shape, spec
        np.testing.assert_allclose(jax_value, torch_value, rtol=1e-12, atol=1e-14, err_msg=spec)


@pytest.mark.parametrize("shape", [(6, CLASSES), (3, CLASSES, 5)], ids=str)
def test_cross_entropy_gradient_matches_torch(shape):
    logits, target = _data(shape)
    for weight, ignore_index, label_smoothing in OPTIONS:
        spec = _spec(weight, ignore_index, "mean", label_smoothing)
        torch_logits = torch.from_numpy(logits).requires_grad_()
        build_torch_loss(spec, "float64")(torch_logits, torch.from_numpy(target)).backward()
        jax_grad = jax.grad(jax_impl.losses.from_torch(spec))(jnp.asarray(logits), jnp.asarray(target))
        np.testing.assert_allclose(np.asarray(jax_grad), torch_logits.grad.numpy(), rtol=1e-10, atol=1e-14,
                                   err_msg=spec)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_a_batch_with_every_target_ignored_is_nan_as_in_torch(label_smoothing):
    logits, target = np.random.default_rng(0).standard_normal((3, CLASSES)), np.full(3, 1)
    spec = f"CrossEntropyLoss(ignore_index=1, label_smoothing={label_smoothing})"
    torch_value, jax_value = _both(spec, logits, target)
    assert np.isnan(torch_value) and np.isnan(jax_value)


def test_float32_inputs_give_float32_losses_close_to_torch():
    logits, target = _data((6, CLASSES))
    spec = _spec("(0.5, 2.0, 1.0, 0.25)", 2, "mean", 0.1)
    torch_value = build_torch_loss(spec, "float32")(torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(target))
    jax_value = jax_impl.losses.from_torch(spec)(jnp.asarray(logits, jnp.float32), jnp.asarray(target))
    assert jax_value.dtype == jnp.float32
    np.testing.assert_allclose(float(jax_value), float(torch_value), rtol=1e-6)
