"""jax_impl.layers against torch.nn, layer by layer: forward outputs, gradients with respect to
the inputs and to every parameter, and buffers after the step, with the torch layer's weights
converted by parity.convert (so the layout rules are exercised too).

float64 is the semantic check: max |jax - torch| <= 1e-12 times the tensor's largest element
(for gradients, the largest of all the step's gradients, see compare_pair). Measured: <= 1.3e-15
for every layer (GELU's gradient 1.2e-14; dropout, embedding and max pooling exactly 0).
float32 allows 1e-5; measured <= 9.4e-7 (GELU's gradient), <= 6e-7 elsewhere.
Dropout masks are the ones torch itself drew, recorded by :class:`TorchDropoutRecorder` and
handed to the JAX layer. The init tests compare JAX draws with torch's by a two-sample
Kolmogorov-Smirnov test. The last section shows that plausible porting mistakes (Flax's
defaults) produce differences these tolerances catch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.utils._python_dispatch import TorchDispatchMode

import jax_impl.layers as L
from parity.convert import ConversionError, Converter, to_numpy
from tests.parity.test_init import ks_critical, ks_statistic

DTYPES = {"float64": (np.float64, torch.float64, jnp.float64), "float32": (np.float32, torch.float32, jnp.float32)}
#: max |jax - torch| <= RTOL * max(max |torch|, floor), per tensor (see assert_close)
RTOL = {"float64": 1e-12, "float32": 1e-5}


# ------------------------------------------------------------------------------------------
# Helpers (tests/parity/test_models_torch.py uses them too)


class TorchDropoutRecorder(TorchDispatchMode):
    """Records every dropout mask torch draws while active: ``masks[module name]``, the mask
    (0/1, the dtype of the dropped tensor) drawn inside that module (the innermost running
    one: ``nn.Dropout`` itself, or ``nn.MultiheadAttention`` for its attention weights).

    torch's CPU dropout draws ``empty_like(x).bernoulli_(1 - p)`` and then scales it in place,
    so the mask is copied as ``bernoulli_`` returns. torch computes as it always does.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.masks, self._running, self._handles = model, {}, [], []

    def __enter__(self):
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(lambda *_, name=name: self._running.append(name)))
            self._handles.append(module.register_forward_hook(self._leave))
        return super().__enter__()

    def _leave(self, *_) -> None:  # a forward hook's return value would replace the output
        self._running.pop()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.bernoulli_.float:
            name = self._running[-1]
            assert name not in self.masks, f"{name} drew two masks in one forward pass"
            self.masks[name] = out.detach().clone().numpy()
        return out


def assert_close(what: str, jax_value, torch_value, dtype: str, rtol: float | None = None,
                 floor: float = 1e-3) -> float:
    """max |jax - torch| <= rtol * max(max |torch|, floor) (NaNs must coincide); returns the
    measured ratio max |jax - torch| / max(max |torch|, floor)."""
    jax_value, torch_value = np.asarray(jax_value, np.float64), np.asarray(torch_value, np.float64)
    assert jax_value.shape == torch_value.shape, f"{what}: JAX {jax_value.shape} vs torch {torch_value.shape}"
    nan = np.isnan(torch_value)
    assert np.array_equal(nan, np.isnan(jax_value)), f"{what}: NaNs differ"
    scale = max(float(np.abs(torch_value[~nan]).max(initial=0.0)), floor)
    ratio = float(np.abs(jax_value - torch_value)[~nan].max(initial=0.0)) / scale
    limit = RTOL[dtype] if rtol is None else rtol
    assert ratio <= limit, f"{what} ({dtype}): max |jax - torch| = {ratio:.3g} x {scale:.3g} > {limit:g}"
    return ratio


def load_torch_state(jax_layer: nnx.Module, torch_layer: torch.nn.Module) -> Converter:
    """Overwrite the JAX layer's parameters and buffers with the torch layer's."""
    converter = Converter.from_torch_module(torch_layer)
    params = {name: to_numpy(value) for name, value in torch_layer.named_parameters()}
    buffers = {name: to_numpy(value) for name, value in torch_layer.named_buffers()}
    nnx.update(jax_layer, converter.to_jax(params, nnx.state(jax_layer, nnx.Param), what="parameters"))
    nnx.update(jax_layer, converter.to_jax(buffers, nnx.state(jax_layer, nnx.BatchStat), what="buffers"))
    return converter


def _outputs(value) -> list:
    """A layer's result as a flat list of tensors (tuples such as LSTM's are flattened)."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _outputs(item)]
    return [] if value is None else [value]


def compare_pair(
    torch_layer: torch.nn.Module,
    jax_layer: nnx.Module,
    inputs: Sequence[np.ndarray],
    dtype: str,
    *,
    train: bool = True,
    torch_fn: Callable | None = None,
    jax_fn: Callable | None = None,
    backward: bool = True,
    steps: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Run both layers on ``inputs`` (torch layout; float inputs are differentiated) ``steps``
    times, comparing outputs, gradients (inputs and parameters, torch names) and buffers
    after every step. ``torch_fn(layer, *inputs)`` / ``jax_fn(layer, *inputs)`` return the
    outputs in torch's layout. Dropout masks torch draws are handed to the JAX layer.
    Returns the measured ratios by name."""
    torch_fn = torch_fn or (lambda layer, *xs: layer(*xs))
    jax_fn = jax_fn or (lambda layer, *xs: layer(*xs))
    converter = load_torch_state(jax_layer, torch_layer)
    torch_layer.train(train)
    floats = [i for i, x in enumerate(inputs) if np.issubdtype(x.dtype, np.floating)]
    others = [i for i in range(len(inputs)) if i not in floats]

    @jax.jit
    def objective_and_grads(graphdef, params, rest, float_inputs, other_inputs, cotangents):
        def objective(params, float_inputs):
            layer = nnx.merge(graphdef, params, rest, copy=True)
            layer.train() if train else layer.eval()
            args = [None] * len(inputs)
            for i, value in zip(floats + others, list(float_inputs) + list(other_inputs)):
                args[i] = value
            outs = _outputs(jax_fn(layer, *args))
            loss = sum(jnp.sum(out * c) for out, c in zip(outs, cotangents))
            return loss, (outs, nnx.state(layer, nnx.BatchStat))

        if not backward:
            return objective(params, float_inputs)[1], None
        (_, aux), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, float_inputs)
        return aux, grads

    measured = {}
    for step in range(steps):
        tensors = [torch.tensor(x, requires_grad=backward and np.issubdtype(x.dtype, np.floating)) for x in inputs]
        torch_layer.zero_grad()
        with TorchDropoutRecorder(torch_layer) as recorder:
            torch_outputs = _outputs(torch_fn(torch_layer, *tensors))
        rng = np.random.default_rng([1000 + seed, step])  # not _data's stream: a cotangent equal to x hides terms
        cotangents = [rng.standard_normal(tuple(out.shape)).astype(DTYPES[dtype][0]) for out in torch_outputs]
        if backward:
            sum(((out * torch.from_numpy(c)).sum() for out, c in zip(torch_outputs, cotangents))).backward()
        L.set_dropout_masks(jax_layer, recorder.masks)
        graphdef, params, rest = nnx.split(jax_layer, nnx.Param, ...)
        (jax_outputs, stats), grads = objective_and_grads(
            graphdef, params, rest, [jnp.asarray(inputs[i]) for i in floats], [jnp.asarray(inputs[i]) for i in others],
            cotangents)
        nnx.update(jax_layer, stats)
        L.clear_dropout_masks(jax_layer)

        assert len(jax_outputs) == len(torch_outputs)
        for k, (jax_out, torch_out) in enumerate(zip(jax_outputs, torch_outputs)):
            measured[f"step{step}/output{k}"] = assert_close(
                f"step {step} output {k}", jax_out, torch_out.detach(), dtype)
        if backward:
            param_grads, input_grads = grads
            jax_param_grads = converter.to_torch(param_grads)
            torch_grads = {f"input {i}": tensors[i].grad for i in floats} | {
                name: parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
                for name, parameter in torch_layer.named_parameters()}
            jax_grads = {f"input {i}": input_grads[k] for k, i in enumerate(floats)} | jax_param_grads
            # A gradient that is zero in exact arithmetic (a bias before BatchNorm) is a sum of
            # terms as large as the others: its rounding is judged against the largest gradient.
            largest = max([float(g.abs().max()) for g in torch_grads.values() if g.numel()] + [1e-3])
            for name, torch_grad in torch_grads.items():
                measured[f"step{step}/grad {name}"] = assert_close(
                    f"step {step} gradient of {name}", jax_grads[name], torch_grad, dtype, floor=largest)
        jax_buffers = converter.to_torch(nnx.state(jax_layer, nnx.BatchStat))
        assert sorted(jax_buffers) == sorted(name for name, _ in torch_layer.named_buffers())
        for name, buffer in torch_layer.named_buffers():
            if buffer.dtype == torch.long:
                assert int(jax_buffers[name]) == int(buffer), f"step {step} {name}: {jax_buffers[name]} vs {buffer}"
            else:
                measured[f"step{step}/{name}"] = assert_close(
                    f"step {step} buffer {name}", jax_buffers[name], buffer, dtype)
    return measured


def _nchw_in(fn):
    """A channels-last JAX layer called on torch's NCHW input, its output back in NCHW."""
    return lambda layer, x: jnp.moveaxis(fn(layer, jnp.moveaxis(x, 1, -1)), -1, 1)


def _call(layer, x):
    return layer(x)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial affine parameters (BatchNorm/LayerNorm start at ones and zeros, which hide
    swapped or missing terms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _abstract(factory: Callable[[], nnx.Module]) -> nnx.Module:
    """The layer without running its initialisers (compare_pair overwrites every variable with
    torch's): drawing each new shape compiles a random-number program, seconds on a busy CPU.
    Dropout streams get a concrete key (the same for all; compare_pair hands in torch's masks)."""
    module = nnx.eval_shape(factory)
    streams = nnx.state(module, nnx.RngState)
    nnx.update(module, jax.tree.map(
        lambda leaf: jax.random.key(0) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        else jnp.zeros(leaf.shape, leaf.dtype), streams))
    return module


def _data(shape, dtype: str, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(DTYPES[dtype][0])


BOTH = ["float64", "float32"]


def with_dtypes(cases, float32: Sequence[str]) -> list:
    """Every case in float64 (the semantic check), those in ``float32`` also in float32 (the
    rounding check; the options themselves are covered by float64)."""
    assert set(float32) <= set(cases)
    return ([pytest.param(case, "float64", id=f"{case}-float64") for case in cases]
            + [pytest.param(case, "float32", id=f"{case}-float32") for case in float32])


# ------------------------------------------------------------------------------------------
# Conv2d

CONV_CASES = {
    "k3": dict(kernel_size=3),
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "k3x2_s2x1_p1x0": dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    "same_k4_d2": dict(kernel_size=4, padding="same", dilation=2),  # even kernel: asymmetric padding
    "same_k3x4": dict(kernel_size=(3, 4), padding="same"),
    "valid_d2": dict(kernel_size=3, padding="valid", dilation=(2, 1)),
    "groups2_nobias": dict(kernel_size=3, padding=1, groups=2, bias=False),
    "depthwise_s2": dict(kernel_size=3, stride=2, padding=2, groups=4),
    # shallow patches (kernel area x input channels <= 27) take jax_impl's patch formulation on CPU
    "patches_c1_k3_p1": dict(in_channels=1, kernel_size=3, padding=1),
    "patches_c3_k3_s2_d2": dict(in_channels=3, kernel_size=3, stride=2, padding=(2, 1), dilation=2),
    "patches_c1_same_k4": dict(in_channels=1, kernel_size=4, padding="same"),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(("case", "dtype"), with_dtypes(CONV_CASES, ["k3_s2_p1", "groups2_nobias", "patches_c1_k3_p1"]))
def test_conv2d(case: str, dtype: str):
    options = dict(CONV_CASES[case])
    in_channels = options.pop("in_channels", 4)
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    out_channels = 8 if options.get("groups") != 4 else 4
    torch.manual_seed(0)
    torch_layer = torch.nn.Conv2d(in_channels, out_channels, **options).to(torch_dtype)
    jax_layer = _abstract(lambda: L.Conv2d(in_channels, out_channels, **options, rngs=nnx.Rngs(0),
                                           param_dtype=jax_dtype))
    compare_pair(torch_layer, jax_layer, [_data((2, in_channels, 8, 7), dtype)], dtype, jax_fn=_nchw_in(_call))


def test_shallow_convolutions_take_the_patch_formulation_on_cpu(monkeypatch):
    """The conv cases above go through the patch path for shallow kernels (so their comparison
    with torch covers it), and a deep kernel stays on XLA's convolution."""
    calls = []
    original = L.conv2d_patches
    monkeypatch.setattr(L, "conv2d_patches", lambda *a, **k: calls.append(a[1].shape) or original(*a, **k))
    x = jnp.zeros((2, 8, 8, 1), jnp.float32)
    L.Conv2d(1, 4, 3, padding=1, rngs=nnx.Rngs(0))(x)
    L.Conv2d(4, 4, 3, padding=1, rngs=nnx.Rngs(0))(jnp.zeros((2, 8, 8, 4), jnp.float32))
    assert calls == ([(3, 3, 1, 4)] if jax.default_backend() == "cpu" else [])


def test_conv2d_rejects_what_torch_rejects():
    with pytest.raises(ValueError, match="strided"):
        L.Conv2d(2, 2, 3, stride=2, padding="same", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="padding_mode"):
        L.Conv2d(2, 2, 3, padding_mode="reflect", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="groups"):
        L.Conv2d(3, 2, 3, groups=2, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------------------
# BatchNorm

BATCH_NORM_CASES = {
    "default": dict(),
    "momentum0.3_eps1e-3": dict(momentum=0.3, eps=1e-3),
    "cumulative": dict(momentum=None),
    "no_affine": dict(affine=False),
    "no_bias": dict(bias=False),
    "untracked": dict(track_running_stats=False),
}


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(BATCH_NORM_CASES, ["default", "cumulative"]))
def test_batchnorm2d_train_steps_then_eval(case: str, dtype: str):
    """Three training steps (running statistics and num_batches_tracked compared after each),
    then an eval-mode step on the running statistics."""
    options = BATCH_NORM_CASES[case]
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    torch_layer = torch.nn.BatchNorm2d(3, **options).to(torch_dtype)
    _randomise(torch_layer)
    jax_layer = L.BatchNorm2d(3, **options, param_dtype=jax_dtype)
    x = _data((4, 3, 5, 5), dtype, scale=2.0) + 1.5  # non-zero mean
    compare_pair(torch_layer, jax_layer, [x], dtype, jax_fn=_nchw_in(_call), steps=3)
    if options.get("track_running_stats", True):
        assert int(jax_layer.num_batches_tracked[...]) == 3
    compare_pair(torch_layer, jax_layer, [_data((4, 3, 5, 5), dtype, seed=1)], dtype, train=False,
                 jax_fn=_nchw_in(_call))


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)], ids=["NC", "NCL"])
def test_batchnorm1d(shape, dtype: str):
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    torch_layer = torch.nn.BatchNorm1d(3).to(torch_dtype)
    _randomise(torch_layer)
    jax_layer = L.BatchNorm1d(3, param_dtype=jax_dtype)
    fn = _call if len(shape) == 2 else _nchw_in(_call)
    compare_pair(torch_layer, jax_layer, [_data(shape, dtype)], dtype, jax_fn=fn, steps=2)
    compare_pair(torch_layer, jax_layer, [_data(shape, dtype, seed=1)], dtype, jax_fn=fn, train=False)


def test_batchnorm_needs_more_than_one_value_per_channel_when_training():
    with pytest.raises(ValueError, match="more than 1 value"):
        L.BatchNorm1d(3)(jnp.ones((1, 3)))
    L.BatchNorm1d(3, use_running_average=True)(jnp.ones((1, 3)))  # fine in eval mode, as in torch


# ------------------------------------------------------------------------------------------
# LayerNorm and GELU

LAYER_NORM_CASES = {
    "default": (8, dict()),
    "shape2": ((3, 8), dict(eps=1e-3)),
    "no_affine": (8, dict(elementwise_affine=False)),
    "no_bias": (8, dict(bias=False)),
}


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(LAYER_NORM_CASES, ["shape2"]))
def test_layernorm(case: str, dtype: str):
    shape, options = LAYER_NORM_CASES[case]
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    torch_layer = torch.nn.LayerNorm(shape, **options).to(torch_dtype)
    _randomise(torch_layer)
    jax_layer = L.LayerNorm(shape, **options, param_dtype=jax_dtype)
    compare_pair(torch_layer, jax_layer, [_data((2, 3, 8), dtype, scale=3.0) + 2.0], dtype)


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate: str, dtype: str):
    compare_pair(torch.nn.GELU(approximate), L.GELU(approximate), [_data((5, 40), dtype, scale=3.0)], dtype)


# ------------------------------------------------------------------------------------------
# Pooling

MAX_POOL_CASES = {
    "k2": dict(kernel_size=2),
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "k3_s1_overlap": dict(kernel_size=3, stride=1),
    "k3_s2_ceil": dict(kernel_size=3, stride=2, ceil_mode=True),
    "k2_s2_p1_ceil": dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
    "k3x2_s2x1_d2": dict(kernel_size=(3, 2), stride=(2, 1), dilation=2),
    "k3x2_tiles": dict(kernel_size=(3, 2)),  # stride == kernel: the reshape-and-mask path; 9x8 tiles exactly
    "k2_ceil_tiles": dict(kernel_size=2, ceil_mode=True),  # 9 rows: a last, partial window (reduce_window path)
}


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(MAX_POOL_CASES, ["k3_s2_p1"]))
def test_maxpool2d(case: str, dtype: str):
    options = MAX_POOL_CASES[case]
    compare_pair(torch.nn.MaxPool2d(**options), L.MaxPool2d(**options), [_data((2, 3, 9, 8), dtype)], dtype,
                 jax_fn=_nchw_in(_call))


@pytest.mark.parametrize("case", ["k2", "k3x2_tiles", "k2_ceil_tiles", "k3_s1_overlap", "k3_s2_p1", "k2_s2_p1_ceil",
                                  "k3x2_s2x1_d2"])
def test_maxpool2d_gradient_goes_to_the_first_maximum_of_a_tie(case: str):
    """Inputs from {1, 2, 3}: many windows hold several maxima. torch sends the gradient to the
    first in row-major order; so does XLA's select-and-scatter (the gradients agree exactly)."""
    options = MAX_POOL_CASES[case]
    x = np.random.default_rng(0).integers(1, 4, (2, 2, 9, 8)).astype(np.float64)
    torch_x = torch.tensor(x, requires_grad=True)
    torch_out = torch.nn.MaxPool2d(**options)(torch_x)
    cotangent = np.random.default_rng(1).standard_normal(tuple(torch_out.shape))
    (torch_out * torch.from_numpy(cotangent)).sum().backward()
    layer = L.MaxPool2d(**options)
    jax_grad = jax.grad(lambda v: jnp.sum(_nchw_in(_call)(layer, v) * cotangent))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(jax_grad), torch_x.grad.numpy())
    # the check is not vacuous: windows with a tied maximum exist (padding counts as 0 here)
    windows = torch.nn.functional.unfold(torch.from_numpy(x), options["kernel_size"], options.get("dilation", 1),
                                         options.get("padding", 0), options.get("stride") or options["kernel_size"])
    ties = (windows == windows.max(dim=1, keepdim=True).values).sum(dim=1) > 1
    assert ties.float().mean() > 0.2


@pytest.mark.parametrize("case", ["k2", "k3x2_tiles"])
def test_maxpool2d_tiled_windows_with_nan_as_torch(case: str):
    """Windows that tile the input (the reshape-and-mask path): a NaN is the window's maximum and
    torch's CPU kernel sends the gradient to the LAST NaN of the window; elsewhere to the first tie."""
    options = MAX_POOL_CASES[case]
    x = np.random.default_rng(2).integers(1, 4, (2, 2, 9, 8)).astype(np.float64)
    x[np.random.default_rng(3).random(x.shape) < 0.3] = np.nan  # windows with one, two or more NaNs
    torch_x = torch.tensor(x, requires_grad=True)
    torch_out = torch.nn.MaxPool2d(**options)(torch_x)
    cotangent = np.random.default_rng(1).standard_normal(tuple(torch_out.shape))
    (torch_out * torch.from_numpy(cotangent)).sum().backward()
    layer = L.MaxPool2d(**options)
    jax_out, vjp = jax.vjp(lambda v: _nchw_in(_call)(layer, v), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(jax_out), torch_out.detach().numpy())
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(cotangent))[0]), torch_x.grad.numpy())
    windows = torch.nn.functional.unfold(torch.from_numpy(x), options["kernel_size"], stride=options["kernel_size"])
    assert (torch.isnan(windows).sum(dim=1) > 1).any()  # not vacuous: windows with several NaNs exist


AVG_POOL_CASES = {
    "k2": dict(kernel_size=2),
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "k3_s2_p1_exclude_pad": dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "k3_s2_p1_ceil": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "k3_s2_p1_ceil_exclude_pad": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "k2_s3_ceil": dict(kernel_size=2, stride=3, ceil_mode=True),
    "k3x2_divisor5": dict(kernel_size=(3, 2), padding=(1, 0), divisor_override=5),
}


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(AVG_POOL_CASES, ["k3_s2_p1_ceil_exclude_pad"]))
def test_avgpool2d(case: str, dtype: str):
    options = AVG_POOL_CASES[case]
    compare_pair(torch.nn.AvgPool2d(**options), L.AvgPool2d(**options), [_data((2, 3, 9, 8), dtype)], dtype,
                 jax_fn=_nchw_in(_call))


def test_pooling_padding_limit_is_torchs():
    for layer in (torch.nn.MaxPool2d(2, padding=2), torch.nn.AvgPool2d(2, padding=2)):
        with pytest.raises(RuntimeError, match="pad should be"):
            layer(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match="pad should be"):
        L.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="pad should be"):
        L.AvgPool2d(2, padding=2)
    with pytest.raises(RuntimeError, match="pad should be"):  # half the kernel, not of the dilated span
        torch.nn.MaxPool2d(3, padding=2, dilation=2)(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match="pad should be"):
        L.MaxPool2d(3, padding=2, dilation=2)


# ------------------------------------------------------------------------------------------
# Dropout


@pytest.mark.parametrize("dtype", BOTH)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_with_torchs_mask(p: float, dtype: str):
    torch.manual_seed(0)
    measured = compare_pair(torch.nn.Dropout(p), L.Dropout(p), [_data((6, 50), dtype)], dtype)
    # the same scaling as torch's, to the last bit (x * f(1 / f(1 - p)))
    assert all(value == 0.0 for key, value in measured.items() if "output" in key or "input" in key), measured


def test_dropout_mask_as_call_argument_and_variable_agree():
    x = jnp.asarray(_data((4, 10), "float64"))
    mask = np.random.default_rng(0).random((4, 10)) > 0.3
    layer = L.Dropout(0.3)
    by_argument = layer(x, mask=mask)
    L.set_dropout_masks(layer, {"": mask})
    np.testing.assert_array_equal(layer(x), by_argument)
    np.testing.assert_array_equal(by_argument, np.where(mask, np.asarray(x) * (1 / 0.7), 0.0))
    L.clear_dropout_masks(layer)
    with pytest.raises(ValueError, match="needs a dropout mask or rngs"):
        layer(x)


@pytest.mark.parametrize("dtype", BOTH)
def test_dropout_eval_mode_and_extreme_p(dtype: str):
    x = _data((3, 7), dtype)
    compare_pair(torch.nn.Dropout(0.5), L.Dropout(0.5), [x], dtype, train=False)
    compare_pair(torch.nn.Dropout(0.0), L.Dropout(0.0), [x], dtype)
    compare_pair(torch.nn.Dropout(1.0), L.Dropout(1.0), [x], dtype)


def test_dropout_without_a_mask_draws_from_rngs():
    layer = L.Dropout(0.25, rngs=nnx.Rngs(0))
    x = jnp.ones((200, 200), jnp.float32)
    first, second = np.asarray(layer(x)), np.asarray(layer(x))
    assert not np.array_equal(first, second)  # a new mask each call
    assert set(np.unique(first)) == {0.0, np.float32(1 / 0.75)}
    kept = (first != 0).mean()
    assert abs(kept - 0.75) < 5 * math.sqrt(0.75 * 0.25 / first.size)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)


# ------------------------------------------------------------------------------------------
# Embedding


@pytest.mark.parametrize(("padding_idx", "dtype"), [(None, "float64"), (0, "float64"), (-2, "float64"), (0, "float32")])
def test_embedding(padding_idx, dtype: str):
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    torch_layer = torch.nn.Embedding(10, 6, padding_idx=padding_idx).to(torch_dtype)
    jax_layer = L.Embedding(10, 6, padding_idx=padding_idx, rngs=nnx.Rngs(0), param_dtype=jax_dtype)
    if padding_idx is not None:
        np.testing.assert_array_equal(np.asarray(jax_layer.embedding[...])[padding_idx], 0.0)
        with torch.no_grad():  # a padding row that is not zero: still no gradient, returned as it is
            torch_layer.weight[padding_idx] = 1.5
    tokens = np.random.default_rng(0).integers(0, 10, (4, 9))
    tokens[:, :3] = (padding_idx or 0) % 10
    compare_pair(torch_layer, jax_layer, [tokens], dtype)
    if padding_idx is not None:
        assert not torch_layer.weight.grad[padding_idx].any()


# ------------------------------------------------------------------------------------------
# MultiheadAttention


def _mha_masks(batch: int, heads: int, length: int, source: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    key_padding = rng.random((batch, source)) < 0.3
    key_padding[:, 0] = False  # every query has something to attend to
    return {
        "key_padding_mask": key_padding,
        "bool_attn_mask": np.triu(np.ones((length, source), bool), 1),  # causal, True = ignore
        "float_attn_mask": rng.standard_normal((batch * heads, length, source)),
    }


MHA_CASES = {
    # name: (batch_first, cross attention, masks used, need_weights, average_attn_weights, bias, dropout)
    "self_plain": (True, False, (), True, True, True, 0.0),
    "self_seq_first_padding": (False, False, ("key_padding_mask",), True, True, True, 0.0),
    "self_causal_padding_no_weights": (True, False, ("key_padding_mask", "bool_attn_mask"), False, True, True, 0.0),
    "cross_float_mask_per_head": (True, True, ("float_attn_mask",), True, False, True, 0.0),
    "cross_no_bias_padding": (False, True, ("key_padding_mask",), False, True, False, 0.0),
    "self_dropout_weights": (True, False, ("key_padding_mask",), True, False, True, 0.4),
    "self_dropout_no_weights": (True, False, ("key_padding_mask",), False, True, True, 0.4),
}


def _mha_fns(masks: dict, need_weights: bool, average: bool, batch_first: bool):
    def kwargs(convert):
        values = {"key_padding_mask": None, "attn_mask": None}
        for name, mask in masks.items():
            values["key_padding_mask" if name == "key_padding_mask" else "attn_mask"] = convert(mask)
        return dict(values, need_weights=need_weights, average_attn_weights=average)

    def torch_fn(layer, q, k, v):
        out, weights = layer(q, k, v, **kwargs(torch.from_numpy))
        return [out] if weights is None else [out, weights]

    def jax_fn(layer, q, k, v):
        out, weights = layer(q, k, v, **kwargs(jnp.asarray))
        return [out] if weights is None else [out, weights]

    return torch_fn, jax_fn


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(MHA_CASES, ["self_causal_padding_no_weights",
                                                                  "cross_float_mask_per_head", "self_dropout_weights"]))
def test_multihead_attention(case: str, dtype: str):
    batch_first, cross, mask_names, need_weights, average, bias, dropout = MHA_CASES[case]
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    batch, length, source, embed, heads = 3, 5, 6 if cross else 5, 8, 2
    torch.manual_seed(0)
    torch_layer = torch.nn.MultiheadAttention(embed, heads, dropout=dropout, bias=bias, batch_first=batch_first)
    torch_layer = torch_layer.to(torch_dtype)
    if bias:  # torch starts them at zero
        _randomise(torch_layer.out_proj)
        with torch.no_grad():
            torch_layer.in_proj_bias.normal_()
    jax_layer = _abstract(lambda: L.MultiheadAttention(embed, heads, dropout, bias, batch_first, rngs=nnx.Rngs(0),
                                                       param_dtype=jax_dtype))
    masks = {name: mask for name, mask in _mha_masks(batch, heads, length, source).items() if name in mask_names}
    masks = {name: mask if mask.dtype == bool else mask.astype(DTYPES[dtype][0]) for name, mask in masks.items()}

    def shaped(length, seed):
        return _data((batch, length, embed) if batch_first else (length, batch, embed), dtype, seed=seed)

    query = shaped(length, 1)
    inputs = [query, shaped(source, 2), shaped(source, 3)] if cross else [query, query, query]
    if not cross:  # self-attention: the same tensor three times (torch's packed projection path)
        torch_fn, jax_fn = _mha_fns(masks, need_weights, average, batch_first)
        compare_pair(torch_layer, jax_layer, [query], dtype,
                     torch_fn=lambda layer, x: torch_fn(layer, x, x, x), jax_fn=lambda layer, x: jax_fn(layer, x, x, x))
        compare_pair(torch_layer, jax_layer, [query], dtype, train=False,
                     torch_fn=lambda layer, x: torch_fn(layer, x, x, x), jax_fn=lambda layer, x: jax_fn(layer, x, x, x))
    else:
        torch_fn, jax_fn = _mha_fns(masks, need_weights, average, batch_first)
        compare_pair(torch_layer, jax_layer, inputs, dtype, torch_fn=torch_fn, jax_fn=jax_fn)


def test_multihead_attention_unbatched():
    torch.manual_seed(0)
    torch_layer = torch.nn.MultiheadAttention(8, 4).double()
    jax_layer = _abstract(lambda: L.MultiheadAttention(8, 4, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    compare_pair(torch_layer, jax_layer, [_data((5, 8), "float64")], "float64",
                 torch_fn=lambda layer, x: layer(x, x, x), jax_fn=lambda layer, x: layer(x, x, x))


def test_multihead_attention_fully_masked_row_nan_or_zero_as_torch():
    """torch's explicit path (need_weights=True) gives NaN for a query with every key masked;
    its fused path (need_weights=False, what TransformerEncoderLayer calls) gives zeros."""
    torch.manual_seed(0)
    torch_layer = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    jax_layer = _abstract(lambda: L.MultiheadAttention(8, 2, batch_first=True, rngs=nnx.Rngs(0),
                                                       param_dtype=jnp.float64))
    load_torch_state(jax_layer, torch_layer)
    x = _data((2, 4, 8), "float64")
    padding = np.array([[True] * 4, [False, True, False, False]])
    for need_weights in (True, False):
        torch_out = torch_layer(*[torch.from_numpy(x)] * 3, key_padding_mask=torch.from_numpy(padding),
                                need_weights=need_weights)[0].detach().numpy()
        jax_out = np.asarray(jax_layer(*[jnp.asarray(x)] * 3, key_padding_mask=padding, need_weights=need_weights)[0])
        assert np.isnan(torch_out[0]).all() == need_weights
        assert_close(f"need_weights={need_weights}", jax_out, torch_out, "float64")


# ------------------------------------------------------------------------------------------
# LSTM

LSTM_CASES = {
    "1layer_batch_first": dict(num_layers=1, batch_first=True),
    "2layers_seq_first_given_state": dict(num_layers=2),
    "2layers_no_bias_batch_first_given_state": dict(num_layers=2, bias=False, batch_first=True),
}


@pytest.mark.parametrize(("case", "dtype"), with_dtypes(LSTM_CASES, ["2layers_seq_first_given_state"]))
def test_lstm(case: str, dtype: str):
    options = LSTM_CASES[case]
    _, torch_dtype, jax_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    torch_layer = torch.nn.LSTM(5, 6, **options).to(torch_dtype)
    jax_layer = _abstract(lambda: L.LSTM(5, 6, **options, rngs=nnx.Rngs(0), param_dtype=jax_dtype))
    batch, steps, layers = 3, 7, options["num_layers"]
    x = _data((batch, steps, 5) if options.get("batch_first") else (steps, batch, 5), dtype)
    inputs = [x]
    if case.endswith("given_state"):  # (h0, c0), torch's order
        inputs += [_data((layers, batch, 6), dtype, seed=1), _data((layers, batch, 6), dtype, seed=2)]

    def call(layer, x, *state):
        return layer(x, tuple(state) if state else None)

    compare_pair(torch_layer, jax_layer, inputs, dtype, torch_fn=call, jax_fn=call)


def test_lstm_unbatched():
    torch.manual_seed(0)
    torch_layer = torch.nn.LSTM(4, 3, 2).double()
    jax_layer = _abstract(lambda: L.LSTM(4, 3, 2, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    compare_pair(torch_layer, jax_layer, [_data((6, 4), "float64")], "float64")


# ------------------------------------------------------------------------------------------
# Conversion errors


def test_a_shape_mismatch_names_the_key_and_both_shapes():
    torch_layer = torch.nn.Conv2d(4, 8, 3)
    jax_layer = _abstract(lambda: L.Conv2d(4, 8, (3, 2), rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError) as raised:
        load_torch_state(jax_layer, torch_layer)
    message = str(raised.value)
    assert ("size mismatch for weight: copying a param with shape (8, 4, 3, 3) from checkpoint, the shape in current "
            "model is (8, 4, 3, 2) (the JAX model's kernel is (3, 2, 4, 8)).") in message, message


# ------------------------------------------------------------------------------------------
# Initialisation: the JAX layers draw from torch's distributions

SEEDS = range(3)


def _samples(draw: Callable[[int], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    draws = [draw(seed) for seed in SEEDS]
    return {name: np.concatenate([d[name].ravel() for d in draws]) for name in draws[0]}


def _assert_same_distribution(name: str, jax_samples: np.ndarray, torch_samples: np.ndarray) -> None:
    statistic = ks_statistic(jax_samples, torch_samples)
    assert statistic < ks_critical(jax_samples.size, torch_samples.size), f"{name}: KS statistic {statistic:.4f}"


def _torch_draws(factory: Callable[[], torch.nn.Module]) -> Callable[[int], dict[str, np.ndarray]]:
    def draw(seed: int) -> dict[str, np.ndarray]:
        torch.manual_seed(1000 + seed)
        return {name: to_numpy(p) for name, p in factory().named_parameters()}
    return draw


def _jax_draws(factory: Callable[[int], nnx.Module],
               torch_module: torch.nn.Module) -> Callable[[int], dict[str, np.ndarray]]:
    converter = Converter.from_torch_module(torch_module)
    return lambda seed: converter.to_torch(nnx.state(factory(seed), nnx.Param))


INIT_CASES = {
    "Conv2d": (lambda: torch.nn.Conv2d(6, 32, 3, groups=2),
               lambda seed: L.Conv2d(6, 32, 3, groups=2, rngs=nnx.Rngs(seed))),
    "Embedding": (lambda: torch.nn.Embedding(50, 40, padding_idx=3),
                  lambda seed: L.Embedding(50, 40, padding_idx=3, rngs=nnx.Rngs(seed))),
    "LSTM": (lambda: torch.nn.LSTM(10, 16, 2), lambda seed: L.LSTM(10, 16, 2, rngs=nnx.Rngs(seed))),
    "MultiheadAttention": (lambda: torch.nn.MultiheadAttention(32, 4),
                           lambda seed: L.MultiheadAttention(32, 4, rngs=nnx.Rngs(seed))),
}


@pytest.mark.parametrize("layer", list(INIT_CASES))
def test_init_has_torchs_distribution(layer: str):
    torch_factory, jax_factory = INIT_CASES[layer]
    torch_samples = _samples(_torch_draws(torch_factory))
    jax_samples = _samples(_jax_draws(jax_factory, torch_factory()))
    assert sorted(jax_samples) == sorted(torch_samples)
    for name, torch_values in torch_samples.items():
        jax_values = jax_samples[name]
        if not torch_values.any():  # MultiheadAttention's biases: zeros on both sides
            assert not jax_values.any(), name
            continue
        bound = np.abs(torch_values).max()
        assert np.abs(jax_values).max() <= max(bound * 1.01, 6.0), name
        _assert_same_distribution(f"{layer}.{name}", jax_values, torch_values)


def test_embedding_padding_row_starts_at_zero_and_the_ks_check_rejects_flaxs_embed():
    table = np.asarray(L.Embedding(50, 40, padding_idx=3, rngs=nnx.Rngs(0)).embedding[...])
    assert not table[3].any() and table[4].any()
    torch_samples = _samples(_torch_draws(INIT_CASES["Embedding"][0]))["weight"]
    flax_default = np.concatenate([np.asarray(nnx.Embed(50, 40, rngs=nnx.Rngs(seed)).embedding[...]).ravel()
                                   for seed in SEEDS])
    assert ks_statistic(flax_default, torch_samples) > ks_critical(flax_default.size, torch_samples.size)


def test_the_ks_check_rejects_xavier_per_projection():
    """Power: drawing q, k and v's (E, E) blocks each with xavier's bound sqrt(6 / 2E) (a
    plausible unpacked port) is told apart from torch's one (3E, E) draw, bound sqrt(6 / 4E)."""
    torch_samples = _samples(_torch_draws(INIT_CASES["MultiheadAttention"][0]))["in_proj_weight"]
    bound = math.sqrt(6 / (2 * 32))
    wrong = np.random.default_rng(0).uniform(-bound, bound, torch_samples.size)
    assert ks_statistic(wrong, torch_samples) > ks_critical(wrong.size, torch_samples.size)


def test_norm_layers_start_at_ones_and_zeros():
    batch_norm, layer_norm = L.BatchNorm2d(4), L.LayerNorm(4)
    for name, value in {"scale": 1, "bias": 0, "mean": 0, "var": 1, "num_batches_tracked": 0}.items():
        np.testing.assert_array_equal(getattr(batch_norm, name)[...], value)
    np.testing.assert_array_equal(layer_norm.scale[...], 1)
    np.testing.assert_array_equal(layer_norm.bias[...], 0)


# ------------------------------------------------------------------------------------------
# Porting mistakes are caught: each differs from torch far beyond the float64 tolerance


def _relative_difference(first, second) -> float:
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    return float(np.abs(first - second).max() / np.abs(second).max())


def test_layernorm_with_flaxs_eps_differs():
    """eps 1e-6 (nnx.LayerNorm's) instead of 1e-5, on inputs of std 1e-3: var + eps changes."""
    x = _data((4, 16), "float64", scale=1e-3)
    torch_out = torch.nn.LayerNorm(16).double()(torch.from_numpy(x)).detach().numpy()
    planted = L.LayerNorm(16, eps=1e-6, param_dtype=jnp.float64)(jnp.asarray(x))
    assert _relative_difference(planted, torch_out) > 1e-3
    assert_close("control", L.LayerNorm(16, param_dtype=jnp.float64)(jnp.asarray(x)), torch_out, "float64")


def test_tanh_gelu_differs_from_torchs_default():
    x = _data((200,), "float64", scale=3.0)
    torch_out = torch.nn.GELU()(torch.from_numpy(x)).numpy()
    assert _relative_difference(jax.nn.gelu(jnp.asarray(x)), torch_out) > 1e-5  # jax.nn.gelu: tanh by default
    assert_close("control", L.gelu(jnp.asarray(x)), torch_out, "float64")


def test_flax_same_padding_at_stride_2_differs():
    """torch's usual k3 s2 padding=1 pads (1, 1); Flax's 'SAME' pads (0, 1) on even inputs."""
    torch.manual_seed(0)
    torch_layer = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    x = _data((2, 3, 8, 8), "float64")
    torch_out = torch_layer(torch.from_numpy(x)).detach().numpy()
    planted = _abstract(lambda: nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", param_dtype=jnp.float64,
                                         rngs=nnx.Rngs(0)))
    load_torch_state(planted, torch_layer)
    planted_out = _nchw_in(_call)(planted, jnp.asarray(x))
    assert planted_out.shape == torch_out.shape  # same shape: only the numbers give it away
    assert _relative_difference(planted_out, torch_out) > 0.1
    control = _abstract(lambda: L.Conv2d(3, 4, 3, stride=2, padding=1, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    load_torch_state(control, torch_layer)
    assert_close("control", _nchw_in(_call)(control, jnp.asarray(x)), torch_out, "float64")


@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")  # nnx.BatchNorm keeps float32 stats
def test_biased_running_variance_differs():
    """Flax's nnx.BatchNorm (torch's momentum and eps) tracks the biased batch variance (and
    keeps its statistics in float32 whatever param_dtype says, hence the warning)."""
    torch_layer = torch.nn.BatchNorm1d(3).double()
    flax_layer = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, dtype=jnp.float64, param_dtype=jnp.float64,
                               rngs=nnx.Rngs(0))
    ours = L.BatchNorm1d(3, param_dtype=jnp.float64)
    for step in range(3):
        x = _data((8, 3), "float64", seed=step)
        torch_layer(torch.from_numpy(x))
        flax_layer(jnp.asarray(x))
        ours(jnp.asarray(x))
    torch_var = torch_layer.running_var.numpy()
    assert _relative_difference(flax_layer.var[...], torch_var) > 1e-2
    assert_close("control", ours.var[...], torch_var, "float64")


def test_lstm_gate_order_and_carry_order_matter():
    """Loading torch's packed i, f, g, o blocks as i, g, f, o (Haiku's order) changes the
    output, and so does handing (c, h) (Flax's carry order) where torch takes (h, c)."""
    torch.manual_seed(0)
    torch_layer = torch.nn.LSTM(4, 5, batch_first=True).double()
    x, h0, c0 = _data((2, 6, 4), "float64"), _data((1, 2, 5), "float64", seed=1), _data((1, 2, 5), "float64", seed=2)
    torch_out = torch_layer(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))[0].detach().numpy()
    layer = _abstract(lambda: L.LSTM(4, 5, batch_first=True, rngs=nnx.Rngs(0), param_dtype=jnp.float64))
    load_torch_state(layer, torch_layer)
    assert_close("control", layer(jnp.asarray(x), (h0, c0))[0], torch_out, "float64")
    assert _relative_difference(layer(jnp.asarray(x), (c0, h0))[0], torch_out) > 1e-2
    for name in ("kernel_ih_l0", "kernel_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        i, f, g, o = np.split(np.asarray(getattr(layer, name)[...]), 4, axis=-1)
        getattr(layer, name)[...] = jnp.concatenate([i, g, f, o], axis=-1)
    assert _relative_difference(layer(jnp.asarray(x), (h0, c0))[0], torch_out) > 1e-2


def test_flax_optimized_lstm_cell_has_torchs_gate_order():
    """For the record: nnx.OptimizedLSTMCell also stacks i, f, g, o (one bias: b_ih + b_hh), so
    with torch's weights it computes torch's step; its carry is (c, h)."""
    torch.manual_seed(0)
    torch_cell = torch.nn.LSTMCell(4, 5).double()
    x, h0, c0 = _data((3, 4), "float64"), _data((3, 5), "float64", seed=1), _data((3, 5), "float64", seed=2)
    torch_h, torch_c = torch_cell(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    torch_h, torch_c = torch_h.detach().numpy(), torch_c.detach().numpy()
    cell = _abstract(lambda: nnx.OptimizedLSTMCell(4, 5, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    cell.dense_i.kernel.set_value(jnp.asarray(to_numpy(torch_cell.weight_ih).T))
    cell.dense_h.kernel.set_value(jnp.asarray(to_numpy(torch_cell.weight_hh).T))
    cell.dense_h.bias.set_value(jnp.asarray(to_numpy(torch_cell.bias_ih) + to_numpy(torch_cell.bias_hh)))
    (c, h), _ = cell((jnp.asarray(c0), jnp.asarray(h0)), jnp.asarray(x))
    assert_close("h", h, torch_h, "float64")
    assert_close("c", c, torch_c, "float64")
