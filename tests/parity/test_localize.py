"""parity.localize against real PyTorch: correct ports flag no layer, and planted layer bugs are
each found at the right module (torch's name), in the right stage.

Every test runs one forward and backward pass of a small model in float64 (the semantic check:
a correct port agrees to ~1e-13). Bugs are planted with pytest's monkeypatch or by building the
JAX side with the wrong setting; the source is never edited.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.layers as L
import jax_impl.models.transformer
import torch_ref.models
from jax_impl.models.cnn import CNN
from jax_impl.models.lstm import LSTMClassifier
from jax_impl.models.simple_nn import SimpleNN
from jax_impl.models.transformer import TransformerClassifier
from parity.compare import Tolerance
from parity.convert import Converter
from parity.layouts import Rule
from parity.localize import STAGES, localize
from tests.parity.test_layers_torch import _abstract

#: name -> (torch class, JAX class, constructor keywords, input shape)
MODELS = {
    "SimpleNN": (torch_ref.models.SimpleNN, SimpleNN, dict(input_size=16, hidden_size=8), (5, 16)),
    "CNN": (torch_ref.models.CNN, CNN, dict(input_size=64, channels=3, dropout=0.5), (6, 64)),
    "Transformer": (torch_ref.models.TransformerClassifier, TransformerClassifier,
                    dict(input_size=8, d_model=8, nhead=2, num_layers=1, dim_feedforward=16, dropout=0.2), (4, 8)),
    "LSTM": (torch_ref.models.LSTMClassifier, LSTMClassifier, dict(input_size=24, hidden_size=6, num_layers=2,
                                                                    seq_len=4), (5, 24)),
}


def _pair(model: str, **options):
    torch_class, jax_class, defaults, _ = MODELS[model]
    options = defaults | options
    torch.manual_seed(0)
    torch_model = torch_class(**options).double()
    jax_model = _abstract(lambda: jax_class(**options, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    return torch_model, jax_model


def _batch(model: str, seed: int = 0):
    shape = MODELS[model][3]
    rng = np.random.default_rng([seed, 11])
    if model == "Transformer":  # tokens, 0 = padding; the first token is never padding
        inputs = rng.integers(0, 17, shape)
        inputs[:, 0] = rng.integers(1, 17, shape[0])
    else:
        inputs = rng.standard_normal(shape)
    return inputs, np.arange(shape[0]) % 10


def _localize(model: str, torch_model=None, jax_model=None, **kwargs):
    if torch_model is None:
        torch_model, jax_model = _pair(model)
    return localize(torch_model, jax_model, _batch(model), **kwargs)


def _assert_only(result, stage: str, name: str) -> None:
    """``stage`` is the first divergent one, at ``name``; the check found nothing earlier."""
    divergence = result.first_divergence
    assert divergence is not None, result.format()
    assert (divergence.stage, divergence.layer.name) == (stage, name), result.format()


# ------------------------------------------------------------------------------------------
# Correct ports


EXPECTED_CALLS = {  # a few of the compared module calls, in the order they finish
    "SimpleNN": ["fc1", "fc2", ""],
    "CNN": ["conv1", "bn1", "pool", "conv2", "bn2", "pool", "dropout", "fc", ""],
    "Transformer": ["embedding", "position", "encoder.layers.0.self_attn", "encoder.layers.0.norm1",
                    "encoder.layers.0.linear1", "encoder.layers.0.dropout", "encoder.layers.0.norm2",
                    "encoder.layers.0", "encoder", "fc", ""],
    "LSTM": ["lstm", "fc", ""],
}


@pytest.mark.parametrize("model", list(MODELS))
def test_a_correct_port_flags_no_layer(model: str):
    result = _localize(model)
    assert result.first_forward is None and result.first_backward is None, result.format()
    assert result.first_buffer is None and result.first_parameter_gradient is None, result.format()
    assert result.ok and result.first_divergence is None
    names = [layer.name for layer in result.layers]
    assert [name for name in names if name in EXPECTED_CALLS[model]] == EXPECTED_CALLS[model]
    token_inputs = {"embedding", "position", ""} if model == "Transformer" else set()
    for layer in result.layers:  # every output was compared, and the gradient w.r.t. every float input
        assert layer.forward is not None, layer.label
        assert (layer.input_gradient is None) == (layer.name in token_inputs), layer.label
    assert "no layer diverges" in result.format()


def test_module_calls_without_a_counterpart_are_listed_not_compared():
    result = _localize("CNN", train=False)
    assert result.torch_only == ("relu",)  # torch's nn.ReLU module; the JAX CNN calls nnx.relu
    assert [layer.label for layer in result.layers if layer.name == "pool"] == ["pool (call 1 of 2)",
                                                                                 "pool (call 2 of 2)"]
    bn1 = result.layer("bn1")  # eval mode: the buffers are read, not updated, and still compared
    assert [error.name for error in bn1.buffers] == ["bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]
    assert result.ok, result.format()


def test_float32_port_agrees_within_the_float32_table():
    torch_model, _ = _pair("CNN")
    jax_model = _abstract(lambda: CNN(**MODELS["CNN"][2], rngs=nnx.Rngs(0), param_dtype=jnp.float32))
    result = localize(torch_model.float(), jax_model, _batch("CNN"))
    assert result.dtype == "float32"
    assert result.ok, result.format()


# ------------------------------------------------------------------------------------------
# Planted bugs


def test_layer_norm_eps_of_flax_is_found_at_the_first_layer_norm():
    torch_model, jax_model = _pair("Transformer")
    for _, module in nnx.iter_modules(jax_model):
        if isinstance(module, L.LayerNorm):
            module.eps = 1e-6  # Flax's default; torch's is 1e-5
    result = _localize("Transformer", torch_model, jax_model)
    assert result.first_forward == "encoder.layers.0.norm1", result.format()
    divergence = result.first("forward")
    assert not divergence.between_modules  # its input agrees: the LayerNorm itself differs
    assert divergence.error.max_rel > 1e-8  # far outside float64's 1e-12

    text = result.format()
    assert text.splitlines()[-1].startswith("first divergent layer: encoder.layers.0.norm1 (forward output, max abs ")
    row = next(line for line in text.splitlines() if line.strip().startswith("encoder.layers.0.norm1 "))
    assert "!" in row
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["first_forward"] == "encoder.layers.0.norm1"
    assert data["first_divergence"]["stage"] == "forward"
    assert [layer["name"] for layer in data["layers"]] == [layer.name for layer in result.layers]
    assert set(data["tolerances"]) == set(STAGES)


def test_tanh_gelu_is_found_between_linear1_and_the_dropout_after_it(monkeypatch):
    """activation='gelu' is a function, not a module, on both sides: the first module whose
    output differs is the dropout that follows it, and its input already differs."""
    monkeypatch.setitem(jax_impl.models.transformer._ACTIVATIONS, "gelu", lambda x: L.gelu(x, "tanh"))
    result = _localize("Transformer", *_pair("Transformer", activation="gelu"))
    assert result.first_forward == "encoder.layers.0.dropout", result.format()
    divergence = result.first("forward")
    assert divergence.between_modules and divergence.previous.name == "encoder.layers.0.linear1"
    assert result.layer("encoder.layers.0.linear1").forward.ok
    assert "arises in code between modules, after encoder.layers.0.linear1" in result.summary()


def test_tanh_gelu_module_is_found_at_the_activation():
    """Passed as a module (nn.GELU() / jax_impl.layers.GELU), the activation has a torch name."""
    torch_model, _ = _pair("Transformer", activation=torch.nn.GELU())
    _, jax_model = _pair("Transformer", activation=L.GELU("tanh"))
    result = _localize("Transformer", torch_model, jax_model)
    assert result.first_forward == "encoder.layers.0.activation", result.format()
    assert not result.first("forward").between_modules


class TorchStridedNet(torch.nn.Module):
    """Conv2d(3x3, stride 2, padding 1) -> BatchNorm2d -> ReLU -> Linear on 1x8x8 images."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x.view(-1, 1, 8, 8))))  # (B, 4, 4, 4)
        return self.fc(torch.flatten(x, 1))


class JaxStridedNet(nnx.Module):
    """The twin, its convolution padded as given (torch's padding=1 is ((1, 1), (1, 1)))."""

    def __init__(self, padding, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), strides=2, padding=padding, param_dtype=jnp.float64, rngs=rngs)
        self.bn = L.BatchNorm2d(4, param_dtype=jnp.float64)
        self.fc = L.Linear(4 * 4 * 4, 3, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        x = x.reshape(-1, 1, 8, 8).transpose(0, 2, 3, 1)  # NCHW -> (B, H, W, C)
        x = nnx.relu(self.bn(self.conv(x)))  # (B, 4, 4, 4)
        return self.fc(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))


@pytest.mark.parametrize(("padding", "first"), [(((1, 1), (1, 1)), None), ("SAME", "conv")])
def test_same_padding_at_stride_2_is_found_at_the_conv(padding, first):
    """Flax's 'SAME' pads (0, 1) at stride 2 on an even input, torch's padding=1 pads (1, 1).
    (The correct twin also checks that channels-last outputs are compared in torch's layout.)"""
    torch.manual_seed(0)
    torch_model = TorchStridedNet().double()
    jax_model = _abstract(lambda: JaxStridedNet(padding, rngs=nnx.Rngs(0)))
    inputs = np.random.default_rng(3).standard_normal((5, 64))
    result = localize(torch_model, jax_model, (inputs, np.arange(5) % 3))
    assert result.first_forward == first, result.format()
    if first is not None:
        _assert_only(result, "forward", "conv")


def test_biased_running_variance_is_found_in_the_first_batch_norms_buffers(monkeypatch):
    """Flax's BatchNorm tracks the biased batch variance; torch the unbiased (n / (n - 1)). The
    forward pass in training mode normalises with the batch's statistics either way, so only
    the running buffer shows it."""
    counts = []
    call, update = L.BatchNorm.__call__, L.BatchNorm._update_running_stats

    def counting_call(self, x, **kwargs):
        counts.append(math.prod(x.shape[:-1]))  # values per channel
        try:
            return call(self, x, **kwargs)
        finally:
            counts.pop()

    def biased_update(self, mean, unbiased_var):
        count = counts[-1]
        return update(self, mean, unbiased_var * (count - 1) / count)

    monkeypatch.setattr(L.BatchNorm, "__call__", counting_call)
    monkeypatch.setattr(L.BatchNorm, "_update_running_stats", biased_update)
    result = _localize("CNN")
    assert result.first_forward is None and result.first_backward is None, result.format()
    assert result.first_buffer == "bn1"
    _assert_only(result, "buffers", "bn1")
    assert result.first_divergence.error.name == "bn1.running_var"
    assert [error.ok for error in result.layer("bn1").buffers] == [True, False, True]  # mean, var, count


def _gate_rules(order: tuple[int, ...]) -> dict[str, Rule]:
    """LSTM weights moved into a JAX model whose gate blocks are in ``order`` of torch's
    (i, f, g, o); back to torch with the inverse."""
    inverse = tuple(np.argsort(order))

    def permute(array, blocks):
        parts = np.split(array, 4, axis=0)
        return np.concatenate([parts[k] for k in blocks], axis=0)

    rules = {}
    for layer in range(2):
        for gate in ("ih", "hh"):
            rules[f"weight_{gate}_l{layer}"] = Rule(f"kernel_{gate}_l{layer}", lambda w: permute(w, order).T.copy(),
                                                    lambda k: permute(k.T, inverse))
            rules[f"bias_{gate}_l{layer}"] = Rule(f"bias_{gate}_l{layer}", lambda b: permute(b, order),
                                                  lambda b: permute(b, inverse))
    return rules


def test_lstm_gates_in_another_frameworks_order_are_found_at_the_lstm():
    """Weights loaded as if the JAX cell stacked its gates i, g, f, o (dm-haiku's order) rather
    than torch's i, f, g, o."""
    torch_model, jax_model = _pair("LSTM")
    converter = Converter.from_torch_module(torch_model, rules={"LSTM": _gate_rules((0, 2, 1, 3))})
    result = _localize("LSTM", torch_model, jax_model, converter=converter)
    _assert_only(result, "forward", "lstm")
    assert result.layer("lstm").input.ok  # the LSTM's own input agrees


def test_a_dropout_mask_from_another_seed_is_found_at_its_layer(monkeypatch):
    """The JAX side receives, for one dropout site, a mask drawn from another seed. The
    attention weights' dropout happens inside MultiheadAttention, so that is the layer (and
    it runs before the other dropout layers of the encoder layer)."""
    site = "encoder.layers.0.self_attn"
    hand_over = L.set_dropout_masks

    def with_one_mask_from_another_seed(model, masks):
        masks = dict(masks)
        mask = np.asarray(masks[site])
        masks[site] = (np.random.default_rng(123).random(mask.shape) >= 0.2).astype(mask.dtype)
        assert not np.array_equal(masks[site], mask)
        hand_over(model, masks)

    monkeypatch.setattr(L, "set_dropout_masks", with_one_mask_from_another_seed)
    result = _localize("Transformer")
    _assert_only(result, "forward", site)
    assert not result.first("forward").between_modules


def test_dropout_masks_given_are_used_by_both_sides():
    """Masks handed in replace torch's draws as well as JAX's: an all-ones mask on the CNN's
    dropout makes it scale by 1 / (1 - p) only."""
    torch_model, jax_model = _pair("CNN")
    running_var = torch_model.bn1.running_var.clone()
    mask = np.ones((6, 2 * 3 * 2 * 2))
    result = _localize("CNN", torch_model, jax_model, dropout_masks={"dropout": mask})
    assert result.ok, result.format()
    # the caller's models are left alone: torch's ran as a copy, JAX's as a clone
    assert torch.equal(torch_model.bn1.running_var, running_var) and torch_model.bn1.weight.grad is None
    assert isinstance(jax_model.bn1.var.get_value(), jax.ShapeDtypeStruct)  # still the shape-only shell


def test_gradient_to_the_last_of_tied_maxima_is_found_backward_at_the_second_pool(monkeypatch):
    """A backward-only bug: the max-pool's forward values agree, but its gradient goes to the
    last of equal maxima (the zeros after ReLU tie) where torch sends it to the first. In the
    backward pass the second pool's input gradient is the first to differ."""
    pool = L.MaxPool2d.__call__

    def last_maximum(self, x):  # windows tile the (even) input exactly: flipping keeps them
        return pool(self, x[..., ::-1, ::-1, :])[..., ::-1, ::-1, :]

    monkeypatch.setattr(L.MaxPool2d, "__call__", last_maximum)
    result = _localize("CNN")
    assert result.first_forward is None, result.format()
    _assert_only(result, "input_gradient", "pool")
    assert result.first("input_gradient").layer.call == 1
    assert result.first_backward == "pool"
    assert result.layer("bn2").input_gradient.ok  # ReLU's zero derivative absorbs the misrouted gradient


def test_a_parameter_left_out_of_the_gradient_is_found_at_its_layer(monkeypatch):
    """LayerNorm's bias behind stop_gradient: forward values and input gradients agree, and
    the bias's gradient is zero where torch's is not. In backward order the last LayerNorm
    to run is the first whose parameter gradient differs."""
    norm = L.LayerNorm.__call__

    def frozen_bias(self, x):
        bias = self.bias[...]
        return norm(self, x) - bias + jax.lax.stop_gradient(bias)

    monkeypatch.setattr(L.LayerNorm, "__call__", frozen_bias)
    result = _localize("Transformer")
    assert result.first_forward is None and result.first_backward is None, result.format()
    _assert_only(result, "parameter_gradient", "encoder.layers.0.norm2")
    assert result.first_divergence.error.name == "encoder.layers.0.norm2.bias"
    assert result.first_parameter_gradient == "encoder.layers.0.norm2"


def test_tolerances_can_be_overridden_per_stage():
    """A tolerance of zero flags float64 rounding differences too: the check is live."""
    exact = Tolerance(0.0, 0.0, "exact, to show rounding differences")
    torch_model, jax_model = _pair("SimpleNN")
    split = nnx.split(jax_model, nnx.Param, ...)  # (graphdef, params, rest) works as well as the module
    result = _localize("SimpleNN", torch_model, split, tolerances={stage: exact for stage in STAGES})
    assert result.tolerances["forward"].atol == 0.0
    assert result.first_divergence is not None, result.format()  # matmuls round differently in XLA
    with pytest.raises(ValueError, match="unknown stage"):
        result.first("loss")
