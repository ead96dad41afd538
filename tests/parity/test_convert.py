"""parity.convert: torch state_dict <-> NNX state, and torch optimizer state <-> optax state."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.layers
import jax_impl.models
import jax_impl.optim
import torch_ref.models
from jax_impl.checkpoint import flatten
from parity.convert import (LAYOUT_RULES, ConversionError, Converter, jax_optimizer_state, load_torch_optimizer_state,
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


# ------------------------------------------------------------------------------------------
# Conversion errors: every offending key in one error, worded and ordered as torch's
# load_state_dict(strict=True) words them, in both directions


def _conversion_error(arrays, params, converter) -> str:
    with pytest.raises(ConversionError) as raised:
        converter.to_jax(arrays, params, what="parameters")
    return str(raised.value)


def _torch_error(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> str:
    """torch's own message for loading ``arrays`` into ``model`` strictly."""
    with pytest.raises(RuntimeError) as raised:
        model.load_state_dict({name: torch.as_tensor(np.array(value)) for name, value in arrays.items()})
    return str(raised.value)


def _torch_size(match: re.Match) -> str:
    return f"torch.Size([{match.group(1).rstrip(',')}])"


def _as_torch_prints_it(message: str) -> list[str]:
    """Our message's lines, less the header and the JAX detail, shapes printed as torch prints them."""
    lines = message.split("\n\t")[1:]
    lines = [re.sub(r" \(the JAX (?:model|state)'s \S+ is \([\d, ]*\)\)\.$", ".", line) for line in lines]
    return [re.sub(r"\(([\d, ]*)\)", _torch_size, line) for line in lines]


def _break(arrays: dict[str, np.ndarray], problems: str) -> dict[str, np.ndarray]:
    arrays = dict(arrays)
    if "missing" in problems:
        arrays.pop("fc2.bias")
    if "unexpected" in problems:
        arrays["fc3.weight"] = np.zeros((2, 2))
        arrays["extra"] = np.zeros(3)
    return arrays


#: problems -> (torch hidden size, JAX hidden size)
PROBLEMS = {"missing": (32, 32), "unexpected": (32, 32), "size": (32, 16), "missing+unexpected+size": (32, 16)}


@pytest.mark.parametrize("problems", list(PROBLEMS))
def test_to_jax_errors_are_torchs_load_state_dict_errors(problems: str):
    """The lines of the error are torch's own for the same state_dict loaded into a torch model
    of the JAX model's shape (shapes in torch's layout), each size mismatch with the JAX shape added."""
    hidden, jax_hidden = PROBLEMS[problems]
    torch_model, _, params = _pair(hidden, jax_hidden)
    arrays = _break(_state_dict(torch_model), problems)
    message = _conversion_error(arrays, params, Converter.from_torch_module(torch_model))
    assert message.startswith("Error(s) in loading parameters into the JAX model:\n\t"), message
    torch.manual_seed(0)
    like_jax = torch_ref.models.SimpleNN(64, jax_hidden, 10).double()  # a torch model shaped as the JAX one
    torch_lines = _torch_error(like_jax, arrays).split("\n\t")[1:]
    assert _as_torch_prints_it(message) == torch_lines, (message, torch_lines)


def test_the_whole_message():
    torch_model, _, params = _pair(hidden=32, jax_hidden=16)
    arrays = _break(_state_dict(torch_model), "missing+unexpected")
    assert _conversion_error(arrays, params, Converter.from_torch_module(torch_model)) == (
        'Error(s) in loading parameters into the JAX model:\n'
        '\tMissing key(s) in state_dict: "fc2.bias". \n'
        '\tUnexpected key(s) in state_dict: "fc3.weight", "extra". \n'
        '\tsize mismatch for fc1.weight: copying a param with shape (32, 64) from checkpoint, '
        "the shape in current model is (16, 64) (the JAX model's fc1/kernel is (64, 16)).\n"
        '\tsize mismatch for fc1.bias: copying a param with shape (32,) from checkpoint, '
        "the shape in current model is (16,) (the JAX model's fc1/bias is (16,)).\n"
        '\tsize mismatch for fc2.weight: copying a param with shape (10, 32) from checkpoint, '
        "the shape in current model is (10, 16) (the JAX model's fc2/kernel is (16, 10)).")


def test_a_misspelled_name_is_reported_as_unexpected_and_its_target_as_missing():
    torch_model, _, params = _pair()
    arrays = _state_dict(torch_model)
    arrays["fc1.wieght"] = arrays.pop("fc1.weight")
    lines = _conversion_error(arrays, params, Converter.from_torch_module(torch_model)).split("\n\t")[1:]
    assert lines == ['Missing key(s) in state_dict: "fc1.weight". ', 'Unexpected key(s) in state_dict: "fc1.wieght". ']


def test_a_variable_only_the_jax_model_has_is_missing_under_its_path():
    torch_model, _, params = _pair()
    template = {"fc1": {"kernel": params["fc1"]["kernel"], "bias": params["fc1"]["bias"]},
                "fc2": {"kernel": params["fc2"]["kernel"], "bias": params["fc2"]["bias"], "scale": np.ones(10)}}
    message = _conversion_error(_state_dict(torch_model), template, Converter.from_torch_module(torch_model))
    assert message.split("\n\t")[1:] == ['Missing key(s) in state_dict: "fc2/scale". ']


def test_a_weight_of_the_wrong_rank_is_a_size_mismatch():
    """A 2-D array for a Conv2d weight: the (out, in, kh, kw) -> (kh, kw, in, out) layout does
    not apply, and the error says so rather than failing inside numpy."""
    converter = Converter.from_torch_module(torch.nn.Conv2d(4, 8, 3))
    template = {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)}
    message = _conversion_error({"weight": np.zeros((8, 36)), "bias": np.zeros(8)}, template, converter)
    assert message.split("\n\t")[1:] == [
        "size mismatch for weight: copying a param with shape (8, 36) from checkpoint, the shape in current model "
        "is (8, 4, 3, 3) (the JAX model's kernel is (3, 3, 4, 8))."]


def test_to_torch_rejects_a_jax_variable_with_no_torch_counterpart():
    torch_model, _, params = _pair()
    converter = Converter.from_torch_module(torch_model)
    tree = {"fc1": {"kernel": np.zeros((64, 32))}, "fc9": {"kernel": np.zeros((2, 2))}, "fc8": {"bias": np.zeros(1)}}
    with pytest.raises(ConversionError) as raised:
        converter.to_torch(tree)
    assert str(raised.value).endswith('no torch variable corresponds): "fc8/bias", "fc9/kernel". ')


# ------------------------------------------------------------------------------------------
# JAX -> torch: Converter.load_into_torch, strict as load_state_dict


def _jax_state(jax_model: nnx.Module) -> dict[str, np.ndarray]:
    """The JAX model's variables as a flat tree ({"fc1/kernel": ...}), easy to break."""
    return flatten(nnx.state(jax_model, nnx.Param))


def test_load_into_torch_copies_every_variable_in_torchs_layout_and_dtype():
    torch_model, jax_model, params = _pair(dtype=torch.float64, jax_dtype=jnp.float32)
    converter = Converter.from_torch_module(torch_model)
    assert converter.load_into_torch(torch_model, jax_model) == ([], [])
    for name, value in torch_model.state_dict().items():
        assert value.dtype == torch.float64, name  # cast to the torch model's dtype, as load_state_dict does
    np.testing.assert_array_equal(torch_model.fc1.weight.detach().numpy(), np.asarray(jax_model.fc1.kernel[...]).T)
    np.testing.assert_array_equal(torch_model.fc2.bias.detach().numpy(), np.asarray(jax_model.fc2.bias[...]))


@pytest.mark.parametrize("problems", list(PROBLEMS))
def test_load_into_torch_errors_are_torchs_own(problems: str):
    """The same lines torch gives for the converted state_dict; the module is left unchanged
    (torch's own strict load copies the matching keys before it raises)."""
    hidden, jax_hidden = PROBLEMS[problems]
    torch_model, jax_model, _ = _pair(hidden, jax_hidden)
    # a converter that also knows an fc3 (a layer this torch model lacks): its variable is unexpected
    converter = Converter.from_torch_module(torch_model)
    converter = Converter(converter.mapping | {"fc3.weight": ("fc3/kernel", LAYOUT_RULES["Linear"]["weight"])})
    jax_state = _jax_state(jax_model)
    if "missing" in problems:
        jax_state.pop("fc2/bias")
    if "unexpected" in problems:
        jax_state["fc3/kernel"] = np.zeros((2, 2))
    before = _state_dict(torch_model)
    with pytest.raises(ConversionError) as raised:
        converter.load_into_torch(torch_model, jax_state)
    message = str(raised.value)
    assert message.startswith("Error(s) in loading state into the torch model SimpleNN:\n\t"), message
    for name, value in _state_dict(torch_model).items():  # (torch's own load_state_dict, below, is not atomic)
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    torch_lines = _torch_error(torch_model, converter.to_torch(jax_state)).split("\n\t")[1:]
    assert _as_torch_prints_it(message) == torch_lines, (message, torch_lines)


def test_load_into_torch_names_a_jax_variable_with_no_torch_counterpart_by_its_path():
    torch_model, jax_model, _ = _pair()
    jax_state = _jax_state(jax_model) | {"fc9/kernel": np.zeros((2, 2))}
    with pytest.raises(ConversionError) as raised:
        Converter.from_torch_module(torch_model).load_into_torch(torch_model, jax_state)
    assert str(raised.value).split("\n\t")[1:] == ['Unexpected key(s) in state_dict: "fc9/kernel". ']


def test_load_into_torch_not_strict_loads_the_rest_but_never_a_wrong_shape():
    torch_model, jax_model, _ = _pair()
    converter = Converter.from_torch_module(torch_model)
    jax_state = _jax_state(jax_model) | {"fc9/kernel": np.zeros((2, 2))}
    jax_state.pop("fc2/bias")
    fc2_bias = torch_model.fc2.bias.detach().clone()
    result = converter.load_into_torch(torch_model, jax_state, strict=False)
    assert result.missing_keys == ["fc2.bias"] and result.unexpected_keys == ["fc9/kernel"]
    np.testing.assert_array_equal(torch_model.fc1.weight.detach().numpy(), jax_state["fc1/kernel"].T)
    assert torch.equal(torch_model.fc2.bias, fc2_bias)
    _, narrow, _ = _pair(jax_hidden=16)
    with pytest.raises(ConversionError, match="size mismatch for fc1.weight"):
        converter.load_into_torch(torch_model, narrow, strict=False)


# ------------------------------------------------------------------------------------------
# Integer buffers: BatchNorm's num_batches_tracked, torch's int64


def _batch_norm_after(steps: int) -> torch.nn.BatchNorm2d:
    torch_layer = torch.nn.BatchNorm2d(3).double()
    for step in range(steps):
        torch_layer(torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(step)))
    return torch_layer


@pytest.mark.parametrize("x64", [True, False], ids=["x64", "int32-default"])
def test_num_batches_tracked_is_an_exact_integer_both_ways(x64: bool):
    """JAX holds the counter as its default integer (int64 with x64, int32 without, the cast
    documented on Converter); it comes back to torch as torch's int64, the same number."""
    torch_layer = _batch_norm_after(3)
    converter = Converter.from_torch_module(torch_layer)
    with jax.enable_x64(x64):
        jax_layer = jax_impl.layers.BatchNorm2d(3, param_dtype=jnp.float64 if x64 else jnp.float32)
        stats = converter.to_jax(_state_dict(torch_layer), nnx.state(jax_layer, nnx.Any(nnx.Param, nnx.BatchStat)))
        nnx.update(jax_layer, stats)
        counter = jax_layer.num_batches_tracked[...]
        assert counter.dtype == (jnp.int64 if x64 else jnp.int32) and int(counter) == 3
        back = converter.to_torch(nnx.state(jax_layer, nnx.BatchStat))
        assert back["num_batches_tracked"].dtype == np.int64 and int(back["num_batches_tracked"]) == 3
        fresh = torch.nn.BatchNorm2d(3)
        converter.load_into_torch(fresh, jax_layer)
    assert fresh.num_batches_tracked.dtype == torch.long and int(fresh.num_batches_tracked) == 3


def test_a_counter_too_large_for_int32_is_an_error_not_a_wraparound():
    torch_layer = _batch_norm_after(1)
    torch_layer.num_batches_tracked.fill_(2**31)
    template = {"scale": np.ones(3), "bias": np.zeros(3), "mean": np.zeros(3), "var": np.ones(3),
                "num_batches_tracked": np.zeros((), np.int32)}
    message = _conversion_error(_state_dict(torch_layer), template, Converter.from_torch_module(torch_layer))
    assert message.split("\n\t")[1:] == [
        "value out of range for num_batches_tracked: 2147483648 does not fit the JAX model's num_batches_tracked "
        "(int32; JAX holds integers as int32 unless jax_enable_x64 is on)."]
    template["num_batches_tracked"] = np.zeros((), np.int64)
    converted = Converter.from_torch_module(torch_layer).to_jax(_state_dict(torch_layer), template)
    assert int(converted["num_batches_tracked"]) == 2**31


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
