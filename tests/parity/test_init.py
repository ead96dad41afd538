"""jax_impl's PyTorch initialisers draw from torch's distributions: nn.Linear's
kaiming_uniform_(a=sqrt(5)) weight and its bias are both U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

The samples are compared with samples from torch itself by a two-sample Kolmogorov-Smirnov
test: :func:`ks_statistic` and :func:`ks_critical` (numpy only), and :func:`assert_same_distribution`
(scipy's ``ks_2samp``, asymptotic p-value, p > 1e-3) for whole models in test_init_models.py;
the two agree (checked below). Seeds are fixed, so the tests are deterministic; power checks
show the threshold rejects near misses. Also here: torch's behaviour for empty layers
(``fan_in == 0``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from flax import nnx

import jax_impl.init
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


#: a KS test of JAX's draws against torch's passes when its p-value is above this
ALPHA = 1e-3


def assert_same_distribution(name: str, jax_samples: np.ndarray, torch_samples: np.ndarray,
                             alpha: float = ALPHA) -> float:
    """Two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, asymptotic p-value):
    fails when p <= alpha, i.e. when the samples are unlikely to share one distribution.
    Returns the p-value."""
    result = scipy.stats.ks_2samp(np.ravel(jax_samples), np.ravel(torch_samples), method="asymp")
    assert result.pvalue > alpha, (
        f"{name}: JAX's init differs from torch's: KS statistic {result.statistic:.4f}, p = {result.pvalue:.3g} "
        f"<= {alpha:g} (JAX {np.size(jax_samples)} samples, torch {np.size(torch_samples)})")
    return float(result.pvalue)


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


def test_ks_helpers_agree_with_scipy():
    rng = np.random.default_rng(0)
    first, second = rng.uniform(-1, 1, 700), rng.uniform(-1.1, 1.1, 900)
    result = scipy.stats.ks_2samp(first, second, method="asymp")
    assert ks_statistic(first, second) == pytest.approx(result.statistic, abs=1e-12)
    # the critical value is where the asymptotic p-value is alpha (up to the finite-n correction)
    critical = ks_critical(700, 900)
    assert scipy.stats.kstwobign.sf(critical * math.sqrt(700 * 900 / 1600)) == pytest.approx(ALPHA, rel=1e-6)
    assert assert_same_distribution("same", first, rng.uniform(-1, 1, 800)) > ALPHA
    with pytest.raises(AssertionError, match="wider: JAX's init differs from torch's"):
        assert_same_distribution("wider", first, rng.uniform(-2, 2, 800))


# ------------------------------------------------------------------------------------------
# Empty layers: torch's nn.init leaves a tensor with no elements alone, and a bias of fan_in 0
# gets the bound 0 (nn.Linear.reset_parameters: ``1 / sqrt(fan_in) if fan_in > 0 else 0``)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize(("in_features", "out_features"), [(0, 4), (4, 0), (0, 0)])
def test_an_empty_linear_layer_is_initialised_as_torch_does(in_features: int, out_features: int):
    torch_layer = torch.nn.Linear(in_features, out_features)
    jax_layer = jax_impl.layers.Linear(in_features, out_features, rngs=nnx.Rngs(0))
    assert jax_layer.kernel[...].shape == tuple(torch_layer.weight.T.shape)
    bias = np.asarray(jax_layer.bias[...])
    np.testing.assert_array_equal(bias, torch_layer.bias.detach().numpy())  # zeros, or no elements
    assert not np.signbit(bias).any()  # +0.0, as torch's uniform_(-0.0, 0.0)
    x = np.ones((2, in_features), np.float32)
    np.testing.assert_array_equal(jax_layer(jnp.asarray(x)), torch_layer(torch.from_numpy(x)).detach().numpy())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_an_empty_conv_layer_has_a_zero_bias_as_in_torch():
    torch_layer = torch.nn.Conv2d(0, 4, 3)
    jax_layer = jax_impl.layers.Conv2d(0, 4, 3, rngs=nnx.Rngs(0))
    assert jax_layer.kernel[...].shape == (3, 3, 0, 4)
    np.testing.assert_array_equal(jax_layer.bias[...], torch_layer.bias.detach().numpy())


def test_initialisers_at_fan_in_zero():
    key = jax.random.key(0)
    assert jax_impl.init.torch_kernel_init(key, (0, 5)).shape == (0, 5)  # no ZeroDivisionError
    assert jax_impl.init.torch_kernel_init(key, (3, 3, 0, 8)).shape == (3, 3, 0, 8)
    assert jax_impl.init.torch_xavier_uniform_init(key, (0, 6)).shape == (0, 6)
    np.testing.assert_array_equal(jax_impl.init.torch_bias_init(0)(key, (5,)), np.zeros(5))
    bias = np.asarray(jax_impl.init.torch_bias_init(4)(key, (1000,)))
    assert np.abs(bias).max() <= 0.5 and np.abs(bias).max() > 0.49
    with pytest.raises(ValueError, match="fewer than 2 axes"):
        jax_impl.init.fan_in((5,))  # torch: "Fan in and fan out can not be computed ... fewer than 2 dimensions"
    with pytest.raises(ValueError):
        jax_impl.init.torch_bias_init(-1)


def test_flat_draws_are_the_draws_of_the_shape():
    """init draws a flat vector and reshapes it (XLA compiles it much faster on CPU than a 4-D
    draw): with JAX's threefry keys the values are exactly those of drawing the shape."""
    key = jax.random.key(7)
    np.testing.assert_array_equal(jax_impl.init.torch_kernel_init(key, (3, 3, 2, 4)),
                                  jax.random.uniform(key, (3, 3, 2, 4), jnp.float32, -1 / math.sqrt(18),
                                                     1 / math.sqrt(18)))
    np.testing.assert_array_equal(jax_impl.init.torch_normal_init(key, (5, 3)), jax.random.normal(key, (5, 3), jnp.float32))
