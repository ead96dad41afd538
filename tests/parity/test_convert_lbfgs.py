"""L-BFGS's optimizer state both ways between torch and JAX, and the kernel layout that
Adafactor and Muon are given: the conversions ``parity run`` relies on for these optimizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.losses
import jax_impl.models
import jax_impl.optim
import torch_ref.models
from jax_impl.optim.lbfgs import ravel
from jax_impl.step import make_objective, make_update_step
from parity.convert import (
    ConversionError,
    Converter,
    FlatOrder,
    jax_optimizer_state,
    load_jax_optimizer_state_into_torch,
    load_torch_optimizer_state,
    torch_layout,
    torch_optimizer_state,
)
from torch_ref.loop import train_step


SPEC = dict(lr=0.5, max_iter=4, history_size=3, line_search_fn="strong_wolfe")


def _models():
    torch.manual_seed(0)
    torch_model = torch_ref.models.SimpleNN(12, 6, 3).double()
    jax_model = jax_impl.models.SimpleNN(12, 6, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)
    converter = Converter.from_torch_module(torch_model)
    params = converter.to_jax({n: p.detach().numpy() for n, p in torch_model.named_parameters()}, params)
    return torch_model, graphdef, params, rest, converter


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 12)), rng.integers(0, 3, size=16)


def _torch_step(model, optimizer, batch):
    x, y = batch
    return train_step(model, torch.nn.CrossEntropyLoss(), optimizer, torch.from_numpy(x), torch.from_numpy(y))


def test_flat_order_maps_our_flat_vector_to_torchs():
    torch_model, _, params, _, converter = _models()
    names = [name for name, _ in torch_model.named_parameters()]
    order = FlatOrder.build(converter, params, names)
    torch_flat = torch.cat([p.detach().reshape(-1) for p in torch_model.parameters()]).numpy()
    np.testing.assert_array_equal(order.to_torch(np.asarray(ravel(params))), torch_flat)
    np.testing.assert_array_equal(order.from_torch(torch_flat), np.asarray(ravel(params)))


def test_flat_order_names_a_parameter_set_that_differs():
    torch_model, _, params, _, converter = _models()
    with pytest.raises(ConversionError, match="fc2.bias"):
        FlatOrder.build(converter, params, ["fc1.weight", "fc1.bias", "fc2.weight"])


def test_lbfgs_state_goes_both_ways_and_both_continue_like_torch():
    """torch trains 3 steps; its state, loaded into JAX, reads back identical; JAX then takes
    step 4 from it, and a fresh torch LBFGS loaded from the JAX state takes step 4 too: both
    land where the original torch optimizer does."""
    torch_model, graphdef, params, rest, converter = _models()
    names = {p: n for n, p in torch_model.named_parameters()}
    optimizer = torch.optim.LBFGS(torch_model.parameters(), **SPEC)
    for seed in range(3):
        _torch_step(torch_model, optimizer, _batch(seed))
    order = FlatOrder.build(converter, params, list(names.values()))
    tx = jax_impl.optim.LBFGS(**SPEC)
    params = converter.to_jax({n: p.detach().numpy() for n, p in torch_model.named_parameters()}, params)
    opt_state = load_torch_optimizer_state(tx.init(params), optimizer, names, converter, 3, flat_order=order)

    torch_state = torch_optimizer_state(optimizer, names, 3)
    jax_state = jax_optimizer_state(opt_state, converter, [list(names.values())], flat_order=order)
    assert set(torch_state) == set(jax_state) and "fc1.weight:old_dirs" in torch_state
    for key, value in torch_state.items():
        np.testing.assert_array_equal(jax_state[key], value, err_msg=key)

    # a fresh torch optimizer continuing from the JAX state
    twin = torch_ref.models.SimpleNN(12, 6, 3).double()
    twin.load_state_dict(torch_model.state_dict())
    twin_names = {p: n for n, p in twin.named_parameters()}
    twin_optimizer = torch.optim.LBFGS(twin.parameters(), **SPEC)
    load_jax_optimizer_state_into_torch(twin_optimizer, opt_state, twin_names, converter, flat_order=order)

    batch = _batch(3)
    loss, _ = _torch_step(torch_model, optimizer, batch)
    _torch_step(twin, twin_optimizer, batch)
    update_step = make_update_step(tx, objective=make_objective(graphdef, jax_impl.losses.from_torch("CrossEntropyLoss()")))
    x, y = batch
    (_, _), grads = jax.value_and_grad(make_objective(graphdef, jax_impl.losses.from_torch("CrossEntropyLoss()")),
                                       has_aux=True)(params, rest, (jnp.asarray(x), jnp.asarray(y)))
    new_params, _, _ = update_step(params, opt_state, grads, jnp.asarray(loss.item()), rest,
                                   (jnp.asarray(x), jnp.asarray(y)))
    for name, p in torch_model.named_parameters():
        np.testing.assert_array_equal(dict(twin.named_parameters())[name].detach().numpy(), p.detach().numpy())
    for name, value in converter.to_torch(new_params).items():
        np.testing.assert_allclose(value, dict(torch_model.named_parameters())[name].detach().numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=name)


def test_lbfgs_state_without_flat_order_is_a_clear_error():
    torch_model, _, params, _, converter = _models()
    names = {p: n for n, p in torch_model.named_parameters()}
    opt_state = jax_impl.optim.LBFGS(**SPEC).init(params)
    with pytest.raises(ConversionError, match="flat_order"):
        jax_optimizer_state(opt_state, converter, [list(names.values())])


def test_torch_layout_is_the_axis_permutation_of_each_kernel():
    torch_model, _, params, _, converter = _models()
    layout = torch_layout(converter)
    perms = {jax.tree_util.keystr(path): layout(path, leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert sorted(p for p in perms.values() if p is not None) == [(1, 0), (1, 0)]
    assert all(perms[key] is None for key in perms if "bias" in key)
