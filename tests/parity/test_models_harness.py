"""The CNN, Transformer and LSTM through the harness: ``--model`` specs, BatchNorm buffers, dropout
at parity (parity/dropout.py), integer token inputs, free mode and eval-mode validation.

The registered cases (parity/cases/models.py) run each model 20 steps in resync mode; these
tests cover what they do not: free mode, the harness's dropout masks themselves, a closure
optimizer re-evaluating the model with the same masks, and bad model/data combinations.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import parity
import parity.runner
import torch_ref.models
from jax_impl.spec import SpecError
from parity import data
from parity.cases._base import BASE
from parity.cases.models import CNN_TOLERANCES
from parity.cli import main
from parity.compare import TOLERANCES
from parity.dropout import HarnessDropout, dropout_mask, hand_masks_to_jax
from parity.spec import build_models

SMALL = dataclasses.replace(BASE, epochs=2, steps_per_epoch=2, batch_size=16)
TRANSFORMER = "Transformer(d_model=8, nhead=2, num_layers=1, dim_feedforward=16, dropout=0.2"

# ------------------------------------------------------------------------------------------
# Free mode, with validation (eval mode) after every epoch


#: free mode: the conv biases before BatchNorm get noise gradients (see CNN_TOLERANCES), and their
#: momentum buffers accumulate that noise on each side on its own
_NOISE_MOMENTUM = dataclasses.replace(
    TOLERANCES["optimizer_state", "float64"], atol=1e-12,
    reason="free mode: the momentum of a conv bias before BatchNorm accumulates each side's own rounding noise")

#: Both models have parameters whose exact gradient is zero (a conv bias before BatchNorm, the key
#: bias of attention: softmax ignores a constant added to a row of scores). Free mode with Adam
#: scales their rounding noise up to lr * noise / eps, a different value on each side, so these
#: run with SGD; the resync cases check Adam on them (the JAX optimizer then gets torch's gradients).
FREE = {
    "CNN": ("CNN(channels=4)", "SGD(lr=0.01, momentum=0.9)",
            CNN_TOLERANCES | {("optimizer_state", "float64"): _NOISE_MOMENTUM}),
    "Transformer": (f"{TRANSFORMER}, norm_first=True, activation='gelu')", "SGD(lr=0.01, momentum=0.9)", {}),
    "LSTM": ("LSTM(hidden_size=8, num_layers=2)", "Adam(lr=1e-3)", {}),
}


@pytest.mark.parametrize("name", list(FREE))
def test_free_mode_in_float64_with_validation(name: str, monkeypatch):
    model, optimizer, tolerances = FREE[name]
    compiled = []
    real = parity.runner.make_train_step
    monkeypatch.setattr(parity.runner, "make_train_step",
                        lambda *args, **kwargs: compiled.append(real(*args, **kwargs)) or compiled[-1])
    spec = dataclasses.replace(SMALL, model=model, optimizer=optimizer, dtype="float64", mode="free")
    report = parity.run(spec, tolerances=tolerances)
    assert report.ok, report.first_divergence and report.first_divergence[2].describe()
    assert len(report.steps) == 4
    # validation in eval mode (BatchNorm's running statistics, no dropout) after each epoch
    assert all(e.torch_val_loss is not None and e.val_ok for e in report.epochs)
    assert abs(report.epochs[-1].torch_val_loss - report.epochs[-1].jax_val_loss) <= 1e-12
    # the masks are handed in as leaves of the state: one compilation for every step
    assert compiled[0]._cache_size() == 1


# ------------------------------------------------------------------------------------------
# The harness's dropout masks


def test_masks_are_keyed_by_seed_step_and_module():
    mask = dropout_mask(0, 3, "dropout", (4, 50), 0.7, np.float64)
    assert mask.dtype == np.float64 and set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask, dropout_mask(0, 3, "dropout", (4, 50), 0.7, np.float64))
    for other in [(1, 3, "dropout"), (0, 4, "dropout"), (0, 3, "encoder.layers.0.dropout")]:
        assert not np.array_equal(mask, dropout_mask(*other, (4, 50), 0.7, np.float64)), other
    assert abs(dropout_mask(0, 0, "x", (100_000,), 0.7).mean() - 0.7) < 0.01  # keep probability 0.7


def _transformer(dtype=torch.float64):
    torch.manual_seed(0)
    model = torch_ref.models.TransformerClassifier(input_size=6, d_model=8, nhead=2, num_layers=1,
                                                   dim_feedforward=16, dropout=0.3).to(dtype)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(1, 17, (3, 6)))
    return model, tokens


def test_torch_uses_the_harness_masks_whatever_its_own_seed():
    model, tokens = _transformer()
    model.train()
    outputs, recorded = [], []
    for torch_seed in (1, 2):
        torch.manual_seed(torch_seed)
        with HarnessDropout(model, seed=5, step=7) as dropout:
            outputs.append(model(tokens))
        recorded.append(dropout.masks)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    sites = {f"encoder.layers.0.{name}" for name in ("self_attn", "dropout", "dropout1", "dropout2")}
    assert set(recorded[0]) == sites
    attention = recorded[0]["encoder.layers.0.self_attn"]
    assert attention.shape == (3, 2, 6, 6) and attention.dtype == np.float64  # (B, H, L, S), the weights' dtype
    np.testing.assert_array_equal(attention, dropout_mask(5, 7, "encoder.layers.0.self_attn", (3, 2, 6, 6), 0.7,
                                                          np.float64))


def test_a_closure_re_evaluating_the_model_gets_the_same_masks():
    """LBFGS calls the model several times in one step: every call sees that step's masks."""
    model, tokens = _transformer()
    model.train()
    with HarnessDropout(model, seed=0, step=3) as dropout:
        first = model(tokens)
        masks = {name: mask.copy() for name, mask in dropout.masks.items()}
        second = model(tokens)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert masks.keys() == dropout.masks.keys()
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, dropout.masks[name])


def test_lbfgs_with_dropout_through_the_harness():
    """Each side evaluates the model several times per step (free mode: each at its own iterates);
    a mask drawn anew per evaluation would change the loss and the step."""
    spec = dataclasses.replace(SMALL, model=f"{TRANSFORMER})", optimizer="LBFGS(lr=0.5, max_iter=3)", epochs=1,
                               dtype="float64", mode="free")
    report = parity.run(spec)
    assert report.ok, report.first_divergence and report.first_divergence[2].describe()


def test_eval_mode_draws_no_masks():
    model, tokens = _transformer()
    model.eval()
    with HarnessDropout(model, seed=0, step=0) as dropout:
        model(tokens)
    assert dropout.masks == {}


class _Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x + 0.1 * torch.randn_like(x))


def test_another_random_draw_inside_the_model_is_an_error():
    model = _Noisy()
    with HarnessDropout(model, seed=0, step=0):
        _Noisy()(torch.ones(3, 4))  # not the model: torch draws as usual
        with pytest.raises(SpecError, match=r"module '_Noisy' draws random numbers with aten\.randn"):
            model(torch.ones(3, 4))


def test_a_mask_the_jax_model_cannot_take_is_bad_input():
    _, jax_model = build_models("CNN(channels=2)", input_size=64, num_classes=10, seed=0, dtype="float64")
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)
    rest = hand_masks_to_jax(graphdef, params, rest, {"dropout": np.ones((2, 32))})
    assert rest["dropout"]["dropout_mask"].get_value().shape == (2, 32)
    with pytest.raises(SpecError, match="no dropout layer at 'fc'"):
        hand_masks_to_jax(graphdef, params, rest, {"fc": np.ones((2, 10))})


# ------------------------------------------------------------------------------------------
# Integer token inputs


def test_digits_pixels_are_the_transformers_tokens():
    dataset = data.load("digits").as_tokens(17)
    assert dataset.x_train.dtype == np.int64 and dataset.x_train.min() == 0 and dataset.x_train.max() == 16
    batch, _ = next(dataset.train_batches(0, 8, 0, dtype=np.float32))
    assert batch.dtype == np.int64  # tokens are not cast to the run's float dtype
    from sklearn.datasets import load_digits
    assert set(map(tuple, dataset.x_val)) <= set(map(tuple, load_digits().data.astype(np.int64)))


@pytest.mark.parametrize("model, data_name, message", [
    (f"{TRANSFORMER})", "synthetic", r"takes integer tokens in \[0, 17\), but --data synthetic is not integer-valued"),
    (f"{TRANSFORMER}, vocab_size=10)", "digits", r"values from 0 to 16; raise vocab_size"),
])
def test_token_model_on_unsuitable_data_is_bad_input(model, data_name, message, capsys):
    spec = dataclasses.replace(SMALL, model=model, data=data_name)
    with pytest.raises(SpecError, match=message):
        parity.run(spec)
    assert main(["run", "--model", model, "--data", data_name, "--epochs", "1", "--steps-per-epoch", "1"]) == 2
    assert "integer tokens" in capsys.readouterr().err


def test_check_port_keeps_integer_inputs_integer():
    """Token batches in int32 reach both models as integers (torch's Embedding refuses floats,
    and so does jax_impl's), in a float32 run."""
    torch_model, jax_model = build_models(f"{TRANSFORMER})", input_size=6, num_classes=3, seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    batches = [(rng.integers(1, 17, (4, 6)).astype(np.int32), rng.integers(0, 3, 4)) for _ in range(2)]
    report = parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)",
                               epochs=[batches], val_batches=batches[:1])
    assert report.ok, report.first_divergence and report.first_divergence[2].describe()


# ------------------------------------------------------------------------------------------
# --model specs


def test_model_specs_build_both_sides():
    torch_model, jax_model = build_models(
        "Transformer(norm_first=True, activation='gelu', padding_idx=0, num_layers=1)",
        input_size=64, num_classes=10, seed=0, dtype="float32")
    assert torch_model.encoder.layers[0].norm_first and jax_model.encoder.layers[0].norm_first
    assert jax_model.encoder.layers[0].activation == "gelu"
    assert torch_model.takes_tokens and jax_model.takes_tokens and jax_model.vocab_size == 17
    torch_model, jax_model = build_models("LSTM(num_layers=2, seq_len=None)", input_size=64, num_classes=10,
                                          seed=0, dtype="float64")
    assert torch_model.seq_len == jax_model.seq_len == 8
    assert jnp.asarray(jax_model.fc.kernel[...]).dtype == jnp.float64


@pytest.mark.parametrize("spec, message", [
    ("Transformer(padding_idx=-1)", "padding_idx must be a non-negative integer"),
    ("Transformer(activation='tanh')", "activation"),
    ("Transformer(norm_first=1)", "norm_first must be True or False"),
    ("CNN(channels=0)", "channels must be a positive integer"),
    ("CNN(chanels=4)", "did you mean 'channels'"),
    ("CNN(input_size=784)", "input_size=784 but the data has 64"),
    ("LSTM(seq_len=3)", "not a multiple of seq_len=3"),
    ("Lstm()", "did you mean 'LSTM'"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        build_models(spec, input_size=64, num_classes=10, seed=0, dtype="float32")
