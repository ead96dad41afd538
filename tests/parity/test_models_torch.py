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
    "lstm_2_layers_dropout_steps_of_16": ("LSTMClassifier", dict(input_size=64, hidden_size=8, num_layers=2, seq_len=4,
                                                                   dropout=0.3),
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
                                                              "lstm_2_layers_dropout_steps_of_16"]))
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


def _move_buffers(torch_model: torch.nn.Module, case: str, passes: int = 3) -> None:
    """Training-mode forward passes: BatchNorm's running statistics leave their defaults and
    ``num_batches_tracked`` counts the passes."""
    torch_model.train()
    with torch.no_grad():
        for seed in range(passes):
            torch_model(torch.from_numpy(_inputs(case, "float64", seed=seed)))


@pytest.mark.parametrize("case", list(CASES))
def test_whole_state_dict_converts_both_ways(case: str):
    """torch -> JAX -> torch is the identity, bit for bit and dtype for dtype, for every
    variable of the state_dict: parameters and buffers (running statistics moved off their
    defaults, ``num_batches_tracked`` an integer on the JAX side too); then JAX -> torch with
    Converter.load_into_torch, strict, into a fresh torch model, gives the same state_dict."""
    torch_model, jax_model = _pair(case, "float64")
    _move_buffers(torch_model, case)
    converter = Converter.from_torch_module(torch_model)
    state_dict = _state_dict(torch_model)
    template = _jax_variables(jax_model)
    assert len(leaves_by_path(template)) == len(state_dict)  # every variable has a torch counterpart
    converted = converter.to_jax(state_dict, template)
    back = converter.to_torch(converted)
    assert list(back) == list(state_dict) or sorted(back) == sorted(state_dict)
    for name, value in state_dict.items():
        assert back[name].dtype == value.dtype, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    for name in (name for name in state_dict if name.endswith("num_batches_tracked")):
        counter = flatten(converted)[converter.jax_path(name)]
        assert np.issubdtype(counter.dtype, np.integer) and int(counter) == 3, name  # int64 here: x64 is on
        assert state_dict[name].dtype == np.int64
    # and from JAX: the JAX model's values loaded into a fresh torch model, strictly
    nnx.update(jax_model, converted)
    model, options, _ = CASES[case]
    torch.manual_seed(1)
    fresh = PAIRS[model][0](**options).to(torch.float64)
    assert converter.load_into_torch(fresh, jax_model) == ([], [])
    for name, value in _state_dict(fresh).items():
        assert value.dtype == state_dict[name].dtype, name
        np.testing.assert_array_equal(value, state_dict[name], err_msg=name)


@pytest.mark.parametrize("case", ["cnn_digits_8x8", "transformer_relu_post_norm", "transformer_gelu_pre_norm",
                                  "lstm_1_layer", "lstm_2_layers_dropout_steps_of_16"])
def test_a_jax_initialised_model_runs_in_torch(case: str):
    """JAX -> torch on values of JAX's own making: the JAX model's torch-default init (not
    torch's draw) and the BatchNorm statistics it tracked in a training-mode pass, loaded with
    Converter.load_into_torch. torch's eval-mode output equals JAX's (float64, 1e-12)."""
    model, options, _ = CASES[case]
    torch_class, jax_class = PAIRS[model]
    jax_model = jax_class(**options, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
    jax_model.train()
    jax_model(jnp.asarray(_inputs(case, "float64", seed=2)))  # dropout from its rngs; BatchNorm tracks
    torch_model = torch_class(**options).to(torch.float64)
    Converter.from_torch_module(torch_model).load_into_torch(torch_model, jax_model)
    for name, buffer in torch_model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert buffer.dtype == torch.long and int(buffer) == 1, name
    jax_model.eval()
    torch_model.eval()
    x = _inputs(case, "float64", seed=1)
    assert_close("eval output", jax_model(jnp.asarray(x)), torch_model(torch.from_numpy(x)).detach(), "float64")


def test_a_shape_mismatch_in_a_model_names_the_key_and_both_shapes():
    torch.manual_seed(0)
    torch_model = torch_ref.models.TransformerClassifier(input_size=12, d_model=8, nhead=2, dim_feedforward=16)
    jax_model = _abstract(lambda: TransformerClassifier(input_size=12, d_model=8, nhead=2, dim_feedforward=32,
                                                        rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError) as raised:
        Converter.from_torch_module(torch_model).to_jax(_state_dict(torch_model), _jax_variables(jax_model))
    message = str(raised.value)
    assert ("size mismatch for encoder.layers.1.linear1.weight: copying a param with shape (16, 8) from checkpoint, "
            "the shape in current model is (32, 8) (the JAX model's encoder/layers/1/linear1/kernel is (8, 32)).\n"
            ) in message, message
    assert ("size mismatch for encoder.layers.0.linear2.weight: copying a param with shape (8, 16) from checkpoint, "
            "the shape in current model is (8, 32)") in message, message


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
