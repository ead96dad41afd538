"""torch's own float32 rounding as a tolerance (parity.rounding): the reference is torch in
float64, a gradient that cancels to nearly zero is judged at that rounding instead of being
flagged, and the allowance reaches the comparison."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

import parity  # noqa: F401  (x64 on)
from parity.compare import ROUNDING_FACTOR, Tolerance, compare_tensors
from parity.rounding import RoundingReference, rounding_errors
from parity.runner import run
from parity.spec import RunSpec
from torch_ref.models import CNN


def test_reference_gradients_are_torchs_float64_gradients_of_the_same_weights():
    torch.manual_seed(0)
    model = CNN(input_size=64, channels=2, dropout=0.5)
    x, y = torch.rand(6, 64), torch.arange(6) % 10
    reference = RoundingReference(model, lambda replica, outputs, targets: torch.nn.functional.cross_entropy(
        outputs, targets))
    grads = reference.gradients(model, [(x, y)], seed=3, step=5)

    from parity.dropout import HarnessDropout
    float64 = CNN(input_size=64, channels=2, dropout=0.5).double()
    float64.load_state_dict(model.state_dict())
    float64.train()
    with HarnessDropout(float64, 3, 5):  # the same masks: keyed by (seed, step, module)
        torch.nn.functional.cross_entropy(float64(x.double()), y).backward()
    for name, parameter in float64.named_parameters():
        np.testing.assert_array_equal(grads[name], parameter.grad.numpy(), err_msg=name)
    assert all(g.dtype == np.float64 for g in grads.values())
    # the model itself is untouched: no gradients, same weights
    assert all(p.grad is None for p in model.parameters())


def test_rounding_errors_are_the_largest_difference_per_tensor():
    errors = rounding_errors({"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([1.25, 1.5])})
    assert errors == {"w": 0.5}


def test_the_allowance_is_added_to_each_elements_tolerance():
    tol = Tolerance(0.0, 0.0, "test", tensor_rtol=1e-6)
    torch_value, jax_value = np.array([1e-9, 1.0]), np.array([3e-6, 1.0])
    assert not compare_tensors("b", torch_value, jax_value, tol).ok
    assert compare_tensors("b", torch_value, jax_value, tol, rounding=2.1e-6).ok
    assert not compare_tensors("b", torch_value, jax_value, tol, rounding=1.9e-6).ok


def test_a_cancelling_bias_gradient_is_judged_at_torchs_own_rounding():
    """The CNN's conv1 bias feeds BatchNorm: its gradient is zero in exact arithmetic, a sum of
    4,096 terms per channel that both sides round to noise. Without the reference the default
    float32 run flags it at step 4 (JAX differs by 1.1x the gradient table's allowance); with
    it, torch's own error of that gradient is measured and the run holds; every other stage and
    tensor is judged as before."""
    spec = RunSpec(model="CNN", epochs=1, steps_per_epoch=6, rounding_reference=False)
    without = run(spec)
    divergence = without.first_divergence
    assert divergence is not None and (divergence[0].step, divergence[1], divergence[2].name) == (
        4, "gradient", "conv1.bias")
    with_reference = run(dataclasses.replace(spec, rounding_reference=True))
    assert with_reference.ok
    bias = next(t for t in with_reference.steps[4].stages["gradient"].tensors if t.name == "conv1.bias")
    torch_error = bias.rounding / ROUNDING_FACTOR
    assert 0 < torch_error < bias.max_abs * 2  # JAX's error is of the size of torch's own
