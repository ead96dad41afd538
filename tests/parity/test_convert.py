"""parity.convert: torch state_dict <-> NNX state, and torch optimizer state <-> optax state."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.optim
import torch_ref.models
from jax_impl.checkpoint import flatten
from parity.convert import (ConversionError, Converter, jax_optimizer_state, load_torch_optimizer_state,
                            to_numpy, torch_optimizer_state)
from parity.spec import build_torch_optimizer


def _pair(hidden: int = 32, jax_hidden: int | None = None, dtype=torch.float64, jax_dtype=jnp.float64):
    torch.manual_seed(0)
    torch_model = torch_ref.models.SimpleNN(64, hidden, 10).to(dtype)
    jax_model = jax_impl.models.SimpleNN(64, jax_hidden or hidden, 10, rngs=nnx.Rngs(1), param_dtype=jax_dtype)
    _, params, _ = nnx.split(jax_model, nnx.Param, ...)
    return torch_model, jax_model, params


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: to_numpy(value) for name, value in model.state_dict().items()}


def test_round_trip_torch_to_jax_to_torch_is_the_identity():
    torch_model, _, params = _pair()
    converter = Converter.from_torch_module(torch_model)
    state_dict = _state_dict(torch_model)
    back = converter.to_torch(converter.to_jax(state_dict, params))
    assert sorted(back) == sorted(state_dict)
    for name, value in state_dict.items():
        assert back[name].shape == value.shape and back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)


def test_round_trip_jax_to_torch_to_jax_is_the_identity():
    torch_model, _, params = _pair()
    converter = Converter.from_torch_module(torch_model)
    back = converter.to_jax(converter.to_torch(params), params)
    for path, value in flatten(params).items():
        np.testing.assert_array_equal(flatten(back)[path], value)


def test_linear_weight_out_in_becomes_kernel_in_out_and_computes_the_same_function():
    torch_model, jax_model, params = _pair()
    converter = Converter.from_torch_module(torch_model)
    converted = flatten(converter.to_jax(_state_dict(torch_model), params))
    weight = torch_model.fc1.weight.detach().numpy()  # (out, in) = (32, 64)
    assert weight.shape == (32, 64) and converted["fc1/kernel"].shape == (64, 32)
    np.testing.assert_array_equal(converted["fc1/kernel"], weight.T)
    np.testing.assert_array_equal(converted["fc2/bias"], torch_model.fc2.bias.detach().numpy())

    graphdef, _, rest = nnx.split(jax_model, nnx.Param, ...)
    model = nnx.merge(graphdef, converter.to_jax(_state_dict(torch_model), params), rest)
    inputs = np.random.default_rng(0).standard_normal((5, 64))
    expected = torch_model(torch.from_numpy(inputs)).detach().numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(inputs))), expected, rtol=1e-12, atol=1e-14)


def test_values_take_the_jax_models_dtype():
    torch_model, _, params = _pair(jax_dtype=jnp.float32)
    converted = Converter.from_torch_module(torch_model).to_jax(_state_dict(torch_model), params)
    assert {value.dtype for value in flatten(converted).values()} == {np.dtype(np.float32)}


def _conversion_error(arrays, params, converter) -> str:
    with pytest.raises(ConversionError) as raised:
        converter.to_jax(arrays, params, what="parameters")
    return str(raised.value)


def test_a_misspelled_name_is_reported_as_unexpected_and_its_target_as_missing():
    torch_model, _, params = _pair()
    arrays = _state_dict(torch_model)
    arrays["fc1.wieght"] = arrays.pop("fc1.weight")
    message = _conversion_error(arrays, params, Converter.from_torch_module(torch_model))
    assert "fc1.wieght" in message.split("unexpected")[1]
    assert "fc1.weight" in message.split("missing")[1].split("|")[0]


def test_an_unexpected_key_is_named():
    torch_model, _, params = _pair()
    arrays = _state_dict(torch_model) | {"fc3.weight": np.zeros((2, 2))}
    message = _conversion_error(arrays, params, Converter.from_torch_module(torch_model))
    assert "fc3.weight" in message and "unexpected" in message
    assert "missing" not in message


def _segment(message: str, name: str) -> str:
    """The part of the message about ``name``, up to the next key's."""
    return re.search(rf"{re.escape(name)}:[^;|]*", message).group(0)


def test_a_shape_mismatch_names_every_offending_key_with_both_shapes():
    torch_model, _, params = _pair(hidden=32, jax_hidden=16)
    message = _conversion_error(_state_dict(torch_model), params, Converter.from_torch_module(torch_model))
    # torch shape, and the JAX model's shape (kernels are (in, out))
    expected = {"fc1.weight": ((32, 64), (64, 16)), "fc1.bias": ((32,), (16,)), "fc2.weight": ((10, 32), (16, 10))}
    for name, (torch_shape, jax_shape) in expected.items():
        segment = _segment(message, name)
        assert str(torch_shape) in segment and str(jax_shape) in segment, segment
    assert "fc2.bias" not in message  # (10,) on both sides
    assert "missing" not in message  # a mis-shaped key is not also reported missing


def test_every_kind_of_problem_is_reported_at_once():
    torch_model, _, params = _pair(hidden=32, jax_hidden=16)
    arrays = _state_dict(torch_model)
    arrays.pop("fc2.bias")
    arrays["extra"] = np.zeros(3)
    message = _conversion_error(arrays, params, Converter.from_torch_module(torch_model))
    for name in ("fc2.bias", "extra", "fc1.weight", "fc1.bias", "fc2.weight"):
        assert name in message, name


def test_to_torch_rejects_a_jax_variable_with_no_torch_counterpart():
    torch_model, _, params = _pair()
    converter = Converter.from_torch_module(torch_model)
    tree = {"fc1": {"kernel": np.zeros((64, 32))}, "fc9": {"kernel": np.zeros((2, 2))}}
    with pytest.raises(ConversionError, match="fc9/kernel"):
        converter.to_torch(tree)


# ------------------------------------------------------------------------------------------
# Optimizer state

def _torch_training(spec: str, steps: int):
    """A float64 torch SimpleNN trained ``steps`` steps with the torch optimizer of ``spec``."""
    torch_model, _, params = _pair()
    optimizer = build_torch_optimizer(spec, torch_model.parameters())  # torch's class and defaults
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        inputs = torch.randn(16, 64, generator=generator, dtype=torch.float64)
        targets = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(torch_model(inputs), targets).backward()
        optimizer.step()
    names = {parameter: name for name, parameter in torch_model.named_parameters()}
    return torch_model, optimizer, names, params


OPTIMIZER_SPECS = [
    "SGD(lr=0.1, momentum=0.9)",
    "SGD(lr=0.1, momentum=0.9, dampening=0.5, nesterov=False)",
    "Adam(lr=0.01)",
    "Adam(lr=0.01, amsgrad=True)",
    "AdamW(lr=0.01, weight_decay=0.1)",
    "SGD(lr=0.1)",
]


@pytest.mark.parametrize("spec", OPTIMIZER_SPECS)
def test_optimizer_state_round_trip_through_jax(spec: str):
    torch_model, optimizer, names, params = _torch_training(spec, steps=3)
    converter = Converter.from_torch_module(torch_model)
    expected = torch_optimizer_state(optimizer, names, 3)
    fresh = jax_impl.optim.from_torch(spec).init(params)
    loaded = load_torch_optimizer_state(fresh, optimizer, names, converter, 3)
    actual = jax_optimizer_state(loaded, converter, [list(names.values())])
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)
    # not vacuous: the fresh JAX state differs from torch's after 3 steps
    before = jax_optimizer_state(fresh, converter, [list(names.values())])
    assert any(not np.array_equal(before[key], value) for key, value in expected.items() if key in before)


@pytest.mark.parametrize("spec", OPTIMIZER_SPECS + ["SGD(lr=0.1, momentum=0.9, nesterov=True)"])
def test_a_loaded_state_continues_exactly_as_torch(spec: str):
    """After loading torch's state after 3 steps, one more JAX update on the same gradient
    gives torch's 4th step to float64 precision (so every field, count included, was loaded)."""
    torch_model, optimizer, names, params = _torch_training(spec, steps=3)
    converter = Converter.from_torch_module(torch_model)
    tx = jax_impl.optim.from_torch(spec)
    state = load_torch_optimizer_state(tx.init(params), optimizer, names, converter, 3)
    params = converter.to_jax({n: to_numpy(p) for p, n in names.items()}, params)

    inputs = torch.randn(16, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    optimizer.zero_grad()
    torch_model(inputs).square().mean().backward()
    grads = converter.to_jax({n: to_numpy(p.grad) for p, n in names.items()}, params)
    optimizer.step()

    updates, _ = tx.update(grads, state, params)
    new_params = converter.to_torch(optax.apply_updates(params, updates))
    for parameter, name in names.items():
        np.testing.assert_allclose(new_params[name], to_numpy(parameter), rtol=1e-12, atol=1e-14, err_msg=name)


def test_hyperparameters_are_loaded_only_when_asked():
    torch_model, optimizer, names, params = _torch_training("SGD(lr=0.1, momentum=0.9)", steps=1)
    optimizer.param_groups[0]["lr"] = 0.025  # as a torch scheduler or the user would
    converter = Converter.from_torch_module(torch_model)
    fresh = jax_impl.optim.from_torch("SGD(lr=0.1, momentum=0.5)").init(params)
    kept = load_torch_optimizer_state(fresh, optimizer, names, converter, 1, include_hyperparams=False)
    copied = load_torch_optimizer_state(fresh, optimizer, names, converter, 1, include_hyperparams=True)
    assert (float(kept.hyperparams["lr"]), float(kept.hyperparams["momentum"])) == (0.1, 0.5)
    assert (float(copied.hyperparams["lr"]), float(copied.hyperparams["momentum"])) == (0.025, 0.9)
