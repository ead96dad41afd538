"""Every jax_impl model starts from torch's default initialisation, variable by variable.

For each model and each variable of its ``state_dict``: a variable torch starts at a constant
(LayerNorm and BatchNorm weights and biases, MultiheadAttention's biases, BatchNorm's running
statistics and counter) must start at exactly that constant in JAX; every random one must pass
a two-sample Kolmogorov-Smirnov test (p > 1e-3) between JAX's draws and torch's, each side
pooled over enough seeds for at least ``MIN_SAMPLES`` values (at most ``MAX_SEEDS``). Seeds are
fixed, so the tests are deterministic. The last section shows that the same check, at the same
sample sizes, rejects the plausible wrong inits (Flax's defaults, a bound off by sqrt(3), fan-out
for fan-in), so these tests can fail.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.models.simple_nn
import torch_ref.models
from jax_impl.models.cnn import CNN
from jax_impl.models.lstm import LSTMClassifier
from jax_impl.models.transformer import TransformerClassifier
from parity.convert import Converter, to_numpy
from tests.parity.test_init import assert_same_distribution

MIN_SAMPLES, MAX_SEEDS = 640, 48

#: name -> (torch class, JAX class, constructor keywords); small, so many seeds are cheap
MODELS = {
    "SimpleNN": (torch_ref.models.SimpleNN, jax_impl.models.SimpleNN,
                 dict(input_size=64, hidden_size=32, num_classes=64)),
    "CNN": (torch_ref.models.CNN, CNN, dict(input_size=64, num_classes=64, channels=16)),
    "TransformerClassifier": (torch_ref.models.TransformerClassifier, TransformerClassifier,
                              dict(input_size=12, num_classes=64, d_model=32, nhead=2, num_layers=2,
                                   dim_feedforward=48)),
    "LSTMClassifier": (torch_ref.models.LSTMClassifier, LSTMClassifier,
                       dict(input_size=64, num_classes=64, hidden_size=16, num_layers=2, seq_len=4)),
}


def _torch_state(model: str, seed: int) -> dict[str, np.ndarray]:
    torch_class, _, options = MODELS[model]
    torch.manual_seed(10_000 + seed)  # not the JAX seeds: the two sides are independent samples
    return {name: to_numpy(value) for name, value in torch_class(**options).state_dict().items()}


@functools.cache
def _seeds(model: str) -> int:
    """Enough seeds that the smallest random variable pools MIN_SAMPLES values (at most MAX_SEEDS)."""
    sizes = [value.size for value in _torch_state(model, 0).values() if np.unique(value).size > 1]
    return min(MAX_SEEDS, math.ceil(MIN_SAMPLES / min(sizes)))


@functools.cache
def _converter(model: str) -> Converter:
    torch_class, _, options = MODELS[model]
    return Converter.from_torch_module(torch_class(**options))


def _jax_model(model: str, seed: int, **changes) -> nnx.Module:
    _, jax_class, options = MODELS[model]
    return jax_class(**options, **changes, rngs=nnx.Rngs(seed))


def _jax_state(jax_model: nnx.Module, model: str) -> dict[str, np.ndarray]:
    """The JAX model's variables under torch's names, in torch's layout."""
    return _converter(model).to_torch(nnx.state(jax_model, nnx.Any(nnx.Param, nnx.BatchStat)))


@functools.cache
def _draws(model: str, side: str) -> dict[str, np.ndarray]:
    """Each variable's values pooled over the model's seeds: (seeds, *torch shape)."""
    if side == "torch":
        states = [_torch_state(model, seed) for seed in range(_seeds(model))]
    else:
        states = [_jax_state(_jax_model(model, seed), model) for seed in range(_seeds(model))]
    return {name: np.stack([state[name] for state in states]) for name in states[0]}


VARIABLES = [pytest.param(model, name, id=f"{model}.{name}") for model in MODELS for name in _torch_state(model, 0)]


@pytest.mark.parametrize(("model", "name"), VARIABLES)
def test_every_variable_starts_from_torchs_distribution(model: str, name: str):
    torch_values, jax_values = _draws(model, "torch")[name], _draws(model, "jax")[name]
    assert jax_values.shape == torch_values.shape and jax_values.dtype == torch_values.dtype, (
        jax_values.shape, jax_values.dtype, torch_values.shape, torch_values.dtype)
    constants = np.unique(torch_values)
    if constants.size == 1:  # ones, zeros, the counter: exactly, on every seed
        np.testing.assert_array_equal(jax_values, np.broadcast_to(constants[0], jax_values.shape), err_msg=name)
        return
    assert_same_distribution(f"{model}.{name}", jax_values, torch_values)


def test_the_models_draw_something_else_on_every_seed():
    """Not one draw repeated: each seed gives new values (and torch's own check above is not
    comparing constants)."""
    for model in MODELS:
        draws = _draws(model, "jax")
        for name, values in draws.items():
            if np.unique(values).size > 1:
                assert not np.array_equal(values[0], values[1]), f"{model}.{name}"


def test_the_padding_row_starts_at_zero_on_every_seed():
    table = _draws("TransformerClassifier", "jax")["embedding.weight"]  # (seeds, vocab, d_model)
    assert not table[:, 0].any() and table[:, 1:].all()


# ------------------------------------------------------------------------------------------
# Sensitivity: the same check, at the same pooled sizes, rejects each plausible mistake


def _flax_default(model: str, name: str, path: str, module_factory) -> np.ndarray:
    """The variable as Flax's own layer would start it, for every seed, in torch's layout."""
    rule = _converter(model).mapping[name][1]
    return np.stack([rule.to_torch(np.asarray(module_factory(seed)[path][...]))
                     for seed in range(_seeds(model))])


def _uniform(shape, bound: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-bound, bound, shape).astype(np.float32)


def _rejected(model: str, name: str, wrong: np.ndarray) -> None:
    torch_values = _draws(model, "torch")[name]
    assert wrong.shape == torch_values.shape
    with pytest.raises(AssertionError, match="JAX's init differs from torch's"):
        assert_same_distribution(f"{model}.{name}", wrong, torch_values)


def test_flaxs_default_linear_and_conv_kernels_are_rejected():
    """nnx.Linear and nnx.Conv start their kernels LeCun normal (truncated, std 1/sqrt(fan_in)),
    torch U(+-1/sqrt(fan_in)) (std 1/sqrt(3 fan_in)). The Conv kernel (3, 3, 16, 32) is drawn
    as the (144, 32) matrix of the same fan-in, the same distribution (a 4-D draw compiles slowly)."""
    _rejected("SimpleNN", "fc1.weight",
              _flax_default("SimpleNN", "fc1.weight", "kernel", lambda seed: vars(nnx.Linear(64, 32, rngs=nnx.Rngs(seed)))))
    rule = _converter("CNN").mapping["conv2.weight"][1]
    lecun_normal = nnx.initializers.lecun_normal()
    flax_conv = np.stack([rule.to_torch(np.asarray(lecun_normal(jax.random.key(seed), (144, 32))).reshape(3, 3, 16, 32))
                          for seed in range(_seeds("CNN"))])
    _rejected("CNN", "conv2.weight", flax_conv)


def test_flaxs_zero_bias_is_rejected_even_for_the_smallest_variable():
    """conv1.bias has 16 values per draw, pooled over the seeds: Flax's zero bias is caught."""
    torch_values = _draws("CNN", "torch")["conv1.bias"]
    _rejected("CNN", "conv1.bias", np.zeros_like(torch_values))


@pytest.mark.parametrize(("model", "name", "fan_in"), [("CNN", "fc.bias", 128), ("LSTMClassifier", "lstm.bias_hh_l1", 16)])
def test_a_bound_off_by_sqrt_3_is_rejected(model: str, name: str, fan_in: int):
    """U(+-sqrt(3 / fan_in)) (LeCun uniform, std 1/sqrt(fan_in)) instead of U(+-1/sqrt(fan_in));
    for the LSTM, whose bound is 1/sqrt(hidden_size), the same factor."""
    shape = _draws(model, "torch")[name].shape
    _rejected(model, name, _uniform(shape, math.sqrt(3 / fan_in)))
    assert_same_distribution("control", _uniform(shape, 1 / math.sqrt(fan_in)), _draws(model, "torch")[name])


def test_fan_out_for_fan_in_is_rejected():
    """SimpleNN.fc1 is (32, 64): U(+-1/sqrt(32)) is the bound computed from the wrong axis."""
    shape = _draws("SimpleNN", "torch")["fc1.weight"].shape
    _rejected("SimpleNN", "fc1.weight", _uniform(shape, 1 / math.sqrt(32)))


def test_flaxs_default_embedding_is_rejected():
    """nnx.Embed starts N(0, 1/features) (std 1/sqrt(32) here); torch's nn.Embedding N(0, 1)."""
    _rejected("TransformerClassifier", "position.weight", _flax_default(
        "TransformerClassifier", "position.weight", "embedding",
        lambda seed: vars(nnx.Embed(12, 32, rngs=nnx.Rngs(seed)))))


def test_a_planted_wrong_init_in_a_model_is_caught(monkeypatch):
    """End to end: SimpleNN with its Linear layers built with Flax's initialisers, through the
    same conversion and check, fails on both weights and both biases."""
    def flax_linear(in_features, out_features, *, rngs, param_dtype=jnp.float32, bias=True):
        return nnx.Linear(in_features, out_features, use_bias=bias, param_dtype=param_dtype, rngs=rngs)

    monkeypatch.setattr(jax_impl.models.simple_nn, "Linear", flax_linear)
    planted = [_jax_state(_jax_model("SimpleNN", seed), "SimpleNN") for seed in range(_seeds("SimpleNN"))]
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        _rejected("SimpleNN", name, np.stack([state[name] for state in planted]))
