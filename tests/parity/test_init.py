"""jax_impl's PyTorch initialisers draw from torch's distributions: nn.Linear's
kaiming_uniform_(a=sqrt(5)) weight and its bias are both U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

The samples are compared with samples from torch itself by a two-sample Kolmogorov-Smirnov
test (numpy only). Seeds are fixed, so the test is deterministic; the threshold is the KS
critical value at alpha = 1e-3, and a power check shows it rejects near misses.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.layers
import jax_impl.models

SEEDS = range(4)


def ks_statistic(first: np.ndarray, second: np.ndarray) -> float:
    """sup_x |F1(x) - F2(x)| of the two empirical distribution functions."""
    first, second = np.sort(first.ravel()), np.sort(second.ravel())
    points = np.concatenate([first, second])
    cdf_first = np.searchsorted(first, points, side="right") / first.size
    cdf_second = np.searchsorted(second, points, side="right") / second.size
    return float(np.max(np.abs(cdf_first - cdf_second)))


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def _jax_simple_nn(seed: int) -> dict[str, np.ndarray]:
    model = jax_impl.models.SimpleNN(64, 256, 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float32)
    # in torch's layout, (out, in)
    return {"fc1.weight": np.asarray(model.fc1.kernel[...]).T, "fc1.bias": np.asarray(model.fc1.bias[...]),
            "fc2.weight": np.asarray(model.fc2.kernel[...]).T}


def _torch_simple_nn(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(1000 + seed)
    layers = {"fc1": torch.nn.Linear(64, 256), "fc2": torch.nn.Linear(256, 10)}
    return {f"{name}.{kind}": getattr(layer, kind).detach().numpy() for name, layer in layers.items()
            for kind in ("weight", "bias")}


FAN_IN = {"fc1.weight": 64, "fc1.bias": 64, "fc2.weight": 256}


@pytest.mark.parametrize("name", list(FAN_IN))
def test_simple_nn_parameters_have_torchs_distribution(name: str):
    jax_samples = np.concatenate([_jax_simple_nn(seed)[name].ravel() for seed in SEEDS])
    torch_samples = np.concatenate([_torch_simple_nn(seed)[name].ravel() for seed in SEEDS])
    assert _jax_simple_nn(0)[name].shape == _torch_simple_nn(0)[name].shape
    bound = 1 / math.sqrt(FAN_IN[name])
    assert np.abs(jax_samples).max() <= bound
    assert np.abs(jax_samples).max() > 0.97 * bound  # it fills the interval
    assert abs(jax_samples.mean()) < 5 * bound / math.sqrt(3 * jax_samples.size)
    assert jax_samples.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    statistic = ks_statistic(jax_samples, torch_samples)
    assert statistic < ks_critical(jax_samples.size, torch_samples.size), statistic


def test_linear_bias_has_torchs_distribution():
    """A wide layer (fan_in 256, 4096 biases per draw), so the bias sample is large."""
    jax_biases = np.concatenate([
        np.asarray(jax_impl.layers.Linear(256, 4096, rngs=nnx.Rngs(seed)).bias[...]) for seed in SEEDS])
    torch_biases = []
    for seed in SEEDS:
        torch.manual_seed(2000 + seed)
        torch_biases.append(torch.nn.Linear(256, 4096).bias.detach().numpy())
    torch_biases = np.concatenate(torch_biases)
    assert np.abs(jax_biases).max() <= 1 / 16
    statistic = ks_statistic(jax_biases, torch_biases)
    assert statistic < ks_critical(jax_biases.size, torch_biases.size), statistic


def test_draws_differ_between_seeds_and_layers():
    first, second = _jax_simple_nn(0), _jax_simple_nn(1)
    assert not np.array_equal(first["fc1.weight"], second["fc1.weight"])
    assert not np.array_equal(first["fc1.weight"][:10, :10], first["fc2.weight"][:10, :10])


def test_the_ks_check_rejects_near_misses():
    """Power: the same check fails for Flax's default Linear init (truncated LeCun normal) and
    for a U(+-1/sqrt(fan_out)) init, the mistakes a port makes."""
    torch_samples = np.concatenate([_torch_simple_nn(seed)["fc1.weight"].ravel() for seed in SEEDS])
    flax_default = np.concatenate([
        np.asarray(nnx.Linear(64, 256, rngs=nnx.Rngs(seed)).kernel[...]).ravel() for seed in SEEDS])
    fan_out = np.random.default_rng(0).uniform(-1 / 16, 1 / 16, torch_samples.size)
    for wrong in (flax_default, fan_out):
        assert ks_statistic(wrong, torch_samples) > ks_critical(wrong.size, torch_samples.size)


def test_ks_statistic_against_known_values():
    assert ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert ks_statistic(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ks_statistic(np.array([0.0, 2.0]), np.array([1.0, 3.0])) == 0.5
