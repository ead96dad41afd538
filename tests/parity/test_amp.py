"""Mixed precision: jax_impl.amp's autocast rule and GradScaler against torch's, the harness on
planted overflowing steps (both sides skip the same steps, hold the same scale, count the same
optimizer steps), planted AMP mistakes reported where they occur, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.amp
import jax_impl.layers
import jax_impl.models
import parity
from jax_impl.amp import GradScaler, LossScaleState
from parity.cases.amp import CASES
from parity.trace import FOUND_INF, SCALER_STATE
from tests.parity.test_cli import run_cli
from tests.parity.test_sensitivity_optim import _describe, _location

DTYPES = {"bfloat16": (torch.bfloat16, jnp.bfloat16, 2.0**-8), "float16": (torch.float16, jnp.float16, 2.0**-11)}
OVERFLOWING = next(case for case in CASES if case.name == "autocast float16/GradScaler overflowing+Adam")
SCHEDULED = next(case for case in CASES if "ExponentialLR" in case.name)


def _mlp_gradients(dtype: str, two_roundings: bool = False):
    """The gradients of Linear -> ReLU -> Linear -> cross-entropy (x 1024, a loss scale) under
    autocast, torch's and jax_impl.amp's; ``two_roundings`` plants a linear that rounds the
    product before adding the bias."""
    torch_dtype, jax_dtype, _ = DTYPES[dtype]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 40)).astype(np.float32)
    w1, b1 = (0.2 * rng.standard_normal((30, 40))).astype(np.float32), (0.1 * rng.standard_normal(30)).astype(np.float32)
    w2, b2 = (0.2 * rng.standard_normal((10, 30))).astype(np.float32), (0.1 * rng.standard_normal(10)).astype(np.float32)
    labels = rng.integers(0, 10, 64)

    tensors = [torch.tensor(a, requires_grad=True) for a in (x, w1, b1, w2, b2)]
    with torch.autocast("cpu", dtype=torch_dtype):
        hidden = torch.relu(torch.nn.functional.linear(tensors[0], tensors[1], tensors[2]))
        logits = torch.nn.functional.linear(hidden, tensors[3], tensors[4])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
    assert hidden.dtype == torch_dtype and loss.dtype == torch.float32  # torch's op lists, as the port assumes
    (loss * 1024).backward()
    torch_grads = [t.grad.numpy() for t in tensors]

    def linear(inputs, kernel, bias):
        if not two_roundings:
            return jax_impl.amp.linear(inputs, kernel, bias, jax_dtype)
        product = jnp.matmul(inputs.astype(jax_dtype).astype(jnp.float32), kernel.astype(jax_dtype).astype(jnp.float32))
        return (product.astype(jax_dtype) + bias.astype(jax_dtype)).astype(jax_dtype)

    def objective(x, k1, b1, k2, b2):
        logits = linear(jax.nn.relu(linear(x, k1, b1)), k2, b2).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(labels)[:, None], axis=1)) * 1024

    jax_grads = jax.grad(objective, argnums=tuple(range(5)))(
        jnp.asarray(x), jnp.asarray(w1.T), jnp.asarray(b1), jnp.asarray(w2.T), jnp.asarray(b2))
    jax_grads = [np.asarray(g) for g in jax_grads]
    jax_grads[1], jax_grads[3] = jax_grads[1].T, jax_grads[3].T
    return torch_grads, jax_grads


def _worst(torch_grads, jax_grads) -> tuple[float, float]:
    """The largest share of differing elements in a tensor (beyond one element: a bias of 8 with
    one element off is not 12% wrong), and the largest difference relative to its tensor's
    largest element."""
    shares = [max(0.0, (np.sum(t != j) - 1) / t.size) for t, j in zip(torch_grads, jax_grads)]
    scaled = [np.max(np.abs(t - j)) / np.max(np.abs(t)) for t, j in zip(torch_grads, jax_grads)]
    return float(max(shares)), float(max(scaled))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_autocast_linear_and_its_backward_are_torchs(dtype):
    """Every gradient (input, weights, biases) of a two-layer MLP under autocast. Measured here:
    bfloat16 bit-identical; float16 differs in at most 0.4% of the elements of a tensor, by one
    float16 rounding (oneDNN's and XLA's float32 sums in different orders)."""
    torch_grads, jax_grads = _mlp_gradients(dtype)
    share, scaled = _worst(torch_grads, jax_grads)
    assert share <= 0.01 and scaled <= 2 * DTYPES[dtype][2], (share, scaled)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_linear_that_rounds_before_the_bias_differs_from_torchs(dtype):
    """The sensitivity of the check above: rounding ``x @ W`` before adding the bias (nnx.Linear
    with dtype=bfloat16 does) changes a quarter of the elements."""
    share, _ = _worst(*_mlp_gradients(dtype, two_roundings=True))
    assert share > 0.05


def test_autocast_conv_batchnorm_and_pool_are_torchs_in_bfloat16():
    """Conv2d -> BatchNorm2d (training) -> ReLU -> MaxPool2d under bfloat16 autocast: the
    input's and every parameter's gradient against torch's. Measured here: identical except a
    rare element one bfloat16 rounding away (different float32 summation orders)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    upstream = rng.standard_normal((16, 8, 6, 6)).astype(np.float32)
    torch_x = torch.tensor(x, requires_grad=True)
    conv, norm = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.max_pool2d(torch.relu(norm(conv(torch_x))), 2)
    assert out.dtype == torch.bfloat16
    out.backward(torch.tensor(upstream).to(torch.bfloat16))
    torch_grads = [torch_x.grad.numpy(), conv.weight.grad.numpy(), conv.bias.grad.numpy()]

    jax_conv = jax_impl.layers.Conv2d(3, 8, 3, padding=1, rngs=nnx.Rngs(0))
    jax_norm, pool = jax_impl.layers.BatchNorm2d(8), jax_impl.layers.MaxPool2d(2)

    jax_conv.kernel[...] = jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    jax_conv.bias[...] = jnp.asarray(conv.bias.detach().numpy())
    graphdef, params, rest = nnx.split((jax_conv, jax_norm, pool), nnx.Param, ...)

    def forward(x, params):
        layer, batch_norm, max_pool = nnx.merge(graphdef, params, rest, copy=True)
        with jax_impl.amp.autocast(jnp.bfloat16):
            y = max_pool(jax.nn.relu(batch_norm(layer(x.transpose(0, 2, 3, 1)))))
        return y.transpose(0, 3, 1, 2)

    outputs, backward = jax.vjp(forward, jnp.asarray(x), params)
    assert outputs.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(outputs.astype(jnp.float32)), out.float().detach().numpy())
    gx, gparams = backward(jnp.asarray(upstream).astype(jnp.bfloat16))
    gconv = gparams[0]
    jax_grads = [np.asarray(gx), np.asarray(gconv["kernel"][...]).transpose(3, 2, 0, 1), np.asarray(gconv["bias"][...])]
    share, scaled = _worst(torch_grads, jax_grads)
    assert share <= 0.01 and scaled <= 2 * DTYPES["bfloat16"][2], (share, scaled)


def test_float16_convolutions_are_refused_naming_the_layer():
    model = jax_impl.models.CNN(input_size=64, num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="conv1 .Conv2d. under float16"):
        jax_impl.amp.check_supported(model, jnp.float16)
    jax_impl.amp.check_supported(model, jnp.bfloat16)  # the same model under bfloat16 has every rule


def _torch_scaler_run(scaler: torch.amp.GradScaler, overflows: list[bool]):
    """Drive a torch GradScaler through steps whose gradients do or do not overflow; the
    (scale, growth tracker, unscaled gradient) after each."""
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    states = []
    for overflow in overflows:
        optimizer.zero_grad()
        loss = (parameter * torch.tensor([0.3, float("inf") if overflow else 0.7])).sum()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad = parameter.grad.clone().numpy()
        scaler.step(optimizer)
        scaler.update()
        states.append((scaler.get_scale(), scaler.state_dict()["_growth_tracker"], grad))
    return states


@pytest.mark.parametrize("arguments", [
    dict(init_scale=3.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=2),  # inexact in binary
    dict(init_scale=2.0**126, growth_factor=2.0, backoff_factor=0.5, growth_interval=1),  # grows into inf
    dict(),  # torch's defaults
])
def test_grad_scaler_follows_torchs_scale_tracker_and_unscaling(arguments):
    overflows = [False, False, True, False, False, False, True, True, False, False, False]
    torch_states = _torch_scaler_run(torch.amp.GradScaler("cpu", **arguments), overflows)
    scaler = GradScaler(**arguments)
    state = scaler.init()
    update = jax.jit(scaler.update)
    for step, (overflow, (torch_scale, torch_tracker, torch_grad)) in enumerate(zip(overflows, torch_states)):
        scaled = state.scale * jnp.asarray([0.3, np.inf if overflow else 0.7], jnp.float32)
        grads, found_inf = scaler.unscale({"p": scaled}, state)
        assert bool(found_inf) == overflow, step
        if not overflow:
            np.testing.assert_array_equal(np.asarray(grads["p"]), torch_grad, err_msg=f"step {step}")
        state = update(state, found_inf)
        assert float(state.scale) == torch_scale and int(state.growth_tracker) == torch_tracker, (
            step, float(state.scale), int(state.growth_tracker), torch_scale, torch_tracker)


def test_grad_scaler_rejects_what_torch_would_misuse():
    for arguments, word in ((dict(growth_factor=1.0), "growth_factor"), (dict(backoff_factor=1.5), "backoff_factor"),
                            (dict(growth_interval=0), "growth_interval"), (dict(init_scale=-1.0), "init_scale")):
        with pytest.raises(ValueError, match=word):
            GradScaler(**arguments)


def _traces(case, **changes):
    """Run ``case`` (float32) and keep both sides' GradScaler records of every step."""
    records = []

    def on_step(comparison, torch_trace, jax_trace):
        records.append((comparison, torch_trace, jax_trace))

    spec = dataclasses.replace(case.run_spec("float32"), **changes)
    return parity.run(spec, on_step=on_step), records


def test_planted_overflows_are_skipped_alike_with_the_same_scale_and_step_counts():
    report, records = _traces(OVERFLOWING)
    assert report.ok, _describe(report)
    torch_skips = [t.found_inf for _, t, _ in records]
    jax_skips = [j.found_inf for _, _, j in records]
    assert torch_skips == jax_skips
    assert any(torch_skips[:3]) and not all(torch_skips), torch_skips  # the plant overflows, then recovers
    for (_, torch_trace, jax_trace), skipped in zip(records, torch_skips):
        assert torch_trace.scaler == jax_trace.scaler  # exactly: powers of two
    applied = np.cumsum([not skipped for skipped in torch_skips])
    torch_steps = [t.optimizer_state.get("fc1.weight:step") for _, t, _ in records]
    jax_steps = [j.optimizer_state.get("fc1.weight:step") for _, _, j in records]
    for step, count in enumerate(applied):  # Adam's own step count: the updates applied, not the steps
        assert float(torch_steps[step]) == count and float(jax_steps[step]) == count, step
    scales = [t.scaler[SCALER_STATE[0]] for _, t, _ in records]
    assert scales[0] == 2.0**23 and max(scales) < 2.0**24  # backed off from the overflowing init_scale


def test_the_schedule_advances_through_skipped_steps_on_both_sides():
    report, records = _traces(SCHEDULED)
    assert report.ok, _describe(report)
    lrs = [t.lr for _, t, _ in records]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # ExponentialLR moved on every step, skipped or not
    assert any(t.found_inf for _, t, _ in records)


def _freeze_everything(skip, new, old):
    """optax.apply_if_finite's behaviour: a skipped step keeps the whole state, schedule included."""
    return jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)


def _never_grows(self, state, found_inf):
    return LossScaleState(jnp.where(found_inf, state.scale * 0.5, state.scale),
                          jnp.where(found_inf, 0, state.growth_tracker + 1).astype(jnp.int32))


def _first_growth(case) -> int:
    """The first step after which torch's scale grew (from torch's own trace)."""
    _, records = _traces(case)
    scales = [t.scaler[SCALER_STATE[0]] for _, t, _ in records]
    return next(step for step in range(1, len(scales)) if scales[step] > scales[step - 1])


@pytest.mark.parametrize("name", ["schedule frozen", "never skips", "never grows"])
def test_planted_amp_mistakes_are_reported_where_they_occur(monkeypatch, name):
    if name == "schedule frozen":
        # step 0 is skipped with the lr it started with; at step 1 torch's scheduler has moved on
        case, expected = SCHEDULED, (1, "lr", "lr")
        monkeypatch.setattr(jax_impl.amp, "skip_nonfinite_update", _freeze_everything)
    elif name == "never skips":
        case, expected = OVERFLOWING, (0, "gradient", FOUND_INF)
        monkeypatch.setattr(GradScaler, "unscale", _never_found_wrapper())
    else:
        case = OVERFLOWING
        expected = (_first_growth(case), "optimizer_state", SCALER_STATE[0])
        monkeypatch.setattr(GradScaler, "update", _never_grows)
    report = parity.run(case.run_spec("float32"))
    assert _location(report) == expected, _describe(report)


def _never_found_wrapper():
    original = GradScaler.unscale

    def unscale(self, grads, state):
        grads, _ = original(self, grads, state)
        return grads, jnp.asarray(False)

    return unscale


def test_cli_amp_run_shows_the_scale_and_skipped_steps(capsys):
    code, out, err = run_cli(capsys, "--amp", "float16", "--init-scale", str(2.0**24), "--growth-interval", "2",
                             "--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "32", "--scheduler", "none")
    assert code == 0, out + err
    assert "autocast float16 + " in out and "GradScaler(init_scale=1.67772e+07, growth_interval=2)" in out
    assert "scale" in out and "both" in out  # a skipped step, on both sides
    assert "PARITY HOLDS: 6 steps" in out


@pytest.mark.parametrize("args, words", [
    (("--amp", "bfloat16", "--model", "Transformer"), ["Embedding", "no autocast rule"]),
    (("--amp", "float16", "--model", "CNN"), ["conv1", "float16"]),
    (("--amp", "bfloat16", "--dtype", "float64"), ["dtype must be float32", "float64"]),
    (("--amp", "bfloat16", "--loss", "BCELoss()"), ["BCELoss", "float32"]),
    (("--amp", "float16", "--growth-factor", "0.5"), ["growth_factor", "0.5"]),
    (("--amp", "float16", "--optimizer", "LBFGS(lr=0.1)"), ["LBFGS"]),
    (("--amp", "bfloat16", "--checkpoint-dir", "amp-checkpoints"), ["GradScaler", "checkpoints"]),
])
def test_bad_amp_input_is_exit_2_naming_the_problem(capsys, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *args, "--epochs", "1", "--steps-per-epoch", "2")
    assert code == 2, out + err
    for word in words:
        assert word in err, err
    assert not any(tmp_path.iterdir())  # nothing written
