"""The CNN, Transformer and LSTM classifiers of torch_ref.models against their jax_impl twins.

Whole models, with every torch variable converted by ``Converter.from_torch_module``:
training-mode forward and backward with the dropout masks torch drew handed to JAX
(max |jax - torch| <= 1e-12 of the tensor's largest element in float64, measured <= 7.8e-15;
1e-5 in float32, measured <= 6.4e-7),
BatchNorm statistics and ``num_batches_tracked`` over several steps, eval mode (also under
``torch.no_grad()``, where torch takes its fused Transformer path), the whole ``state_dict``
both ways, and one optimizer step through jax_impl.step's functional train step, the way the
parity harness runs a model.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.layers as L
import jax_impl.losses
import torch_ref.models
from jax_impl.checkpoint import flatten, leaves_by_path
from jax_impl.models.cnn import CNN
from jax_impl.models.lstm import LSTMClassifier
from jax_impl.models.transformer import TransformerClassifier
from jax_impl.step import init_train_state, make_train_step
from parity.convert import ConversionError, Converter, to_numpy
from tests.parity.test_layers_torch import (DTYPES, TorchDropoutRecorder, _abstract, assert_close, compare_pair,
                                            load_torch_state, with_dtypes)

PAIRS = {"CNN": (torch_ref.models.CNN, CNN),
         "TransformerClassifier": (torch_ref.models.TransformerClassifier, TransformerClassifier),
         "LSTMClassifier": (torch_ref.models.LSTMClassifier, LSTMClassifier)}

#: name -> (model class name, constructor keywords, input shape)
CASES = {
    "cnn_digits_8x8": ("CNN", dict(input_size=64, channels=4, dropout=0.5), (6, 64)),
    "cnn_mnist_28x28_nchw": ("CNN", dict(input_size=784, channels=2, dropout=0.3), (3, 1, 28, 28)),
    "transformer_relu_post_norm": ("TransformerClassifier", dict(input_size=12, d_model=8, nhead=2, num_layers=2,
                                                                 dim_feedforward=16, dropout=0.2), (4, 12)),
    "transformer_gelu_pre_norm": ("TransformerClassifier", dict(input_size=12, d_model=8, nhead=2, num_layers=2,
                                                                dim_feedforward=16, dropout=0.2, activation="gelu",
                                                                norm_first=True), (4, 10)),
    "lstm_1_layer": ("LSTMClassifier", dict(input_size=64, hidden_size=8), (5, 64)),
    "lstm_2_layers_steps_of_16": ("LSTMClassifier", dict(input_size=64, hidden_size=8, num_layers=2, seq_len=4),
                                  (5, 64)),
}


def _inputs(case: str, dtype: str, seed: int = 0) -> np.ndarray:
    model, _, shape = CASES[case]
    rng = np.random.default_rng([seed, 7])
    if model == "TransformerClassifier":  # tokens of vocab 17, 0 = padding; the first token is never padding
        tokens = rng.integers(0, 17, shape)
        tokens[:, 0] = rng.integers(1, 17, shape[0])
        return tokens
    return rng.random(shape).astype(DTYPES[dtype][0])


def _pair(case: str, dtype: str, seed: int = 0):
    model, options, _ = CASES[case]
    torch_class, jax_class = PAIRS[model]
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    torch.manual_seed(seed)
    torch_model = torch_class(**options).to(torch_dtype)
    jax_model = _abstract(lambda: jax_class(**options, rngs=nnx.Rngs(seed), param_dtype=jax_dtype))
    return torch_model, jax_model


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(CASES, ["cnn_digits_8x8", "transformer_relu_post_norm",
                                                              "lstm_2_layers_steps_of_16"]))
def test_train_steps_then_eval(case: str, dtype: str):
    """Two training steps (dropout masks from torch; outputs, gradients and BatchNorm buffers
    compared after each), then eval mode as a torch user evaluates: under torch.no_grad()
    (eval-mode gradients are checked layer by layer in test_layers_torch.py)."""
    torch_model, jax_model = _pair(case, dtype)
    compare_pair(torch_model, jax_model, [_inputs(case, dtype)], dtype, steps=2)
    compare_pair(torch_model, jax_model, [_inputs(case, dtype, seed=1)], dtype, train=False, torch_fn=_no_grad,
                 backward=False)


def test_dropout_masks_reach_every_dropout_layer():
    """The recorder finds a mask for each of torch's dropout sites (attention weights included),
    and each has a JAX layer at the same path."""
    torch_model, jax_model = _pair("transformer_relu_post_norm", "float64")
    torch_model.train()
    with TorchDropoutRecorder(torch_model) as recorder:
        torch_model(torch.from_numpy(_inputs("transformer_relu_post_norm", "float64")))
    expected = {f"encoder.layers.{i}.{name}" for i in range(2)
                for name in ("self_attn", "dropout", "dropout1", "dropout2")}
    assert set(recorder.masks) == expected
    assert recorder.masks["encoder.layers.0.self_attn"].shape == (4, 2, 12, 12)  # (B, H, L, S)
    L.set_dropout_masks(jax_model, recorder.masks)
    with pytest.raises(KeyError, match="no dropout layer at 'encoder.layers.0.linear1'"):
        L.set_dropout_masks(jax_model, {"encoder.layers.0.linear1": np.ones(3)})


def test_cnn_accepts_flat_and_nchw_inputs():
    torch_model, jax_model = _pair("cnn_digits_8x8", "float64")
    load_torch_state(jax_model, torch_model)
    jax_model.eval()
    flat = _inputs("cnn_digits_8x8", "float64")
    np.testing.assert_array_equal(jax_model(jnp.asarray(flat)), jax_model(jnp.asarray(flat.reshape(-1, 1, 8, 8))))


# ------------------------------------------------------------------------------------------
# Conversion of whole models


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: to_numpy(value) for name, value in model.state_dict().items()}


def _jax_variables(model: nnx.Module) -> nnx.State:
    """What has a torch counterpart: parameters and batch statistics (not dropout streams)."""
    return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


@pytest.mark.parametrize("case", ["cnn_digits_8x8", "transformer_gelu_pre_norm", "lstm_2_layers_steps_of_16"])
def test_whole_state_dict_converts_both_ways(case: str):
    torch_model, jax_model = _pair(case, "float64")
    converter = Converter.from_torch_module(torch_model)
    state_dict = _state_dict(torch_model)
    template = _jax_variables(jax_model)
    assert len(leaves_by_path(template)) == len(state_dict)  # every variable has a torch counterpart
    converted = converter.to_jax(state_dict, template)
    back = converter.to_torch(converted)
    assert sorted(back) == sorted(state_dict)
    for name, value in state_dict.items():
        assert back[name].dtype == value.dtype, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    # and from JAX: the JAX model's own values survive the trip through torch's layout
    nnx.update(jax_model, converted)
    from_jax = converter.to_torch(_jax_variables(jax_model))
    torch_model.load_state_dict({name: torch.from_numpy(value) for name, value in from_jax.items()})
    again = converter.to_jax(_state_dict(torch_model), template)
    for path, value in flatten(converted).items():
        np.testing.assert_array_equal(flatten(again)[path], value, err_msg=path)


def test_a_shape_mismatch_in_a_model_names_the_key_and_both_shapes():
    torch.manual_seed(0)
    torch_model = torch_ref.models.TransformerClassifier(input_size=12, d_model=8, nhead=2, dim_feedforward=16)
    jax_model = _abstract(lambda: TransformerClassifier(input_size=12, d_model=8, nhead=2, dim_feedforward=32,
                                                        rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError) as raised:
        Converter.from_torch_module(torch_model).to_jax(_state_dict(torch_model), _jax_variables(jax_model))
    message = str(raised.value)
    assert ("encoder.layers.1.linear1.weight: torch (16, 8) -> encoder/layers/1/linear1/kernel (8, 16), "
            "JAX model has (8, 32)") in message, message
    assert "encoder.layers.0.linear2.weight: torch (8, 16)" in message


def test_constructor_signatures_mirror_torch():
    for name, (torch_class, jax_class) in PAIRS.items():
        torch_parameters = dict(inspect.signature(torch_class.__init__).parameters)
        jax_parameters = dict(inspect.signature(jax_class.__init__).parameters)
        assert set(jax_parameters) - set(torch_parameters) == {"rngs", "param_dtype"}, name
        for key, parameter in torch_parameters.items():
            assert jax_parameters[key].default == parameter.default, (name, key)


def test_transformer_layers_start_equal_but_draw_their_own_masks():
    """torch's TransformerEncoder deep-copies its layer: every layer starts with the same
    weights. So does the JAX one; each copy's dropout still has a stream of its own."""
    torch.manual_seed(0)
    torch_model = torch_ref.models.TransformerClassifier(num_layers=2)
    first, second = (dict(layer.named_parameters()) for layer in torch_model.encoder.layers)
    assert all(torch.equal(first[name], second[name]) for name in first)
    jax_model = TransformerClassifier(num_layers=2, rngs=nnx.Rngs(0))
    layers = [flatten(nnx.state(layer, nnx.Param)) for layer in jax_model.encoder.layers]
    assert all(np.array_equal(layers[0][path], layers[1][path]) for path in layers[0])
    x = jnp.ones((50, 50), jnp.float32)
    assert not np.array_equal(jax_model.encoder.layers[0].dropout(x), jax_model.encoder.layers[1].dropout(x))


# ------------------------------------------------------------------------------------------
# One step of training, as the harness runs it


@pytest.mark.parametrize("case", ["cnn_digits_8x8", "transformer_relu_post_norm"])
def test_one_sgd_step_through_the_functional_train_step(case: str):
    """torch: forward (masks recorded), CrossEntropyLoss, backward, SGD step. JAX: the masks set
    on the model, then jax_impl.step.make_train_step. Parameters and BatchNorm buffers after
    the step agree; the dropout streams and masks stay in ``rest`` and have no torch names."""
    torch_model, jax_model = _pair(case, "float64")
    converter = load_torch_state(jax_model, torch_model)
    x, targets = _inputs(case, "float64"), np.arange(CASES[case][2][0]) % 10
    torch_optimizer = torch.optim.SGD(torch_model.parameters(), lr=0.1, momentum=0.9)
    torch_model.train()
    with TorchDropoutRecorder(torch_model) as recorder:
        torch_loss = torch.nn.CrossEntropyLoss()(torch_model(torch.from_numpy(x)), torch.from_numpy(targets))
    torch_loss.backward()
    torch_optimizer.step()

    L.set_dropout_masks(jax_model, recorder.masks)
    graphdef, state = init_train_state(jax_model, optax.sgd(0.1, momentum=0.9))
    jax_loss = jax_impl.losses.from_torch("CrossEntropyLoss()")
    train_step = make_train_step(graphdef, jax_loss, optax.sgd(0.1, momentum=0.9))
    state, metrics = train_step(state, (jnp.asarray(x), jnp.asarray(targets)))
    assert_close("loss", metrics["loss"], torch_loss.item(), "float64")
    jax_params = converter.to_torch(state.params)
    for name, parameter in torch_model.named_parameters():
        assert_close(name, jax_params[name], parameter.detach(), "float64")
    stepped = nnx.merge(graphdef, state.params, state.rest)
    jax_buffers = converter.to_torch(nnx.state(stepped, nnx.BatchStat))
    for name, buffer in torch_model.named_buffers():
        assert_close(name, jax_buffers[name], buffer, "float64")
