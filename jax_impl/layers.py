"""Flax NNX layers with PyTorch's semantics and defaults.

Each layer is named after its ``torch.nn`` counterpart and takes the same constructor arguments
(plus ``rngs=`` and ``param_dtype=`` where it owns random parameters). Differences from torch:

- Layout: images are channels-last (N, H, W, C) inside JAX; kernels are Flax's (in, out) and
  (kh, kw, in, out). ``parity.layouts`` converts torch's ``state_dict`` to these layouts.
- Modes: a layer starts in training mode, as a torch module does; ``model.eval()`` /
  ``model.train()`` (Flax's ``deterministic`` / ``use_running_average`` attributes) switch it.
- Dropout masks can be handed in (:class:`DropoutMask`, :func:`set_dropout_masks`), so a
  harness gives both frameworks the same mask; without one, masks are drawn from ``nnx.Rngs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl import amp
from jax_impl.init import (torch_bias_init, torch_kernel_init, torch_normal_init, torch_uniform_init,
                           torch_xavier_uniform_init)

__all__ = [
    "Linear", "Conv2d", "conv_padding", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GELU",
    "gelu", "MaxPool2d", "AvgPool2d", "pool_padding", "Dropout", "DropoutMask", "set_dropout_masks",
    "clear_dropout_masks", "Embedding", "MultiheadAttention", "LSTM",
]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return (int(value[0]), int(value[1]))


def _zeros(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.zeros(shape, dtype)


# ------------------------------------------------------------------------------------------
# Linear and convolution


class AutocastLinear(nnx.Linear):
    """An ``nnx.Linear`` that computes as torch's ``linear`` under CPU autocast when traced
    inside :func:`jax_impl.amp.autocast` (:func:`jax_impl.amp.linear`), and as ``nnx.Linear``
    otherwise."""

    def __call__(self, inputs: jax.Array, *args, **kwargs) -> jax.Array:
        dtype = amp.autocast_dtype()
        if dtype is None:
            return super().__call__(inputs, *args, **kwargs)
        bias = self.bias[...] if self.bias is not None else None
        return amp.linear(inputs, self.kernel[...], bias, dtype)


def Linear(
    in_features: int, out_features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, bias: bool = True
) -> nnx.Linear:
    """``torch.nn.Linear(in_features, out_features, bias)``: an ``nnx.Linear`` with torch's init
    (an :class:`AutocastLinear`, which follows :func:`jax_impl.amp.autocast`).

    The kernel is stored (in, out), the transpose of torch's weight (out, in).
    """
    return AutocastLinear(
        in_features,
        out_features,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )


def conv_padding(
    padding: int | Sequence[int] | str, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """torch's ``padding`` argument as explicit ``(low, high)`` pairs per spatial axis.

    ``'same'`` pads ``dilation * (k - 1)`` in all, ``total // 2`` before and the rest after (the
    extra row goes after, as in torch); torch refuses it for strided convolutions and so do we.
    Flax's own ``'SAME'`` differs at stride 2: it pads ``(0, 1)`` for ``k=3`` on even inputs
    where torch's usual ``padding=1`` pads ``(1, 1)``.
    """
    if padding == "valid":
        return tuple((0, 0) for _ in kernel_size)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError("padding='same' is not supported for strided convolutions (torch refuses it too)")
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((total // 2, total - total // 2) for total in totals)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid'; got {padding!r}")
    return tuple((p, p) for p in _pair(padding))


def _patches(x: jax.Array, kh: int, kw: int, strides: Sequence[int], padding: Sequence[tuple[int, int]],
             dilation: Sequence[int]) -> jax.Array:
    """The ``kh * kw`` shifted (strided, dilated) windows of the zero-padded ``x`` (N, H, W, C)
    side by side: (N, Ho, Wo, kh*kw*C), in the (i, j, c) order of a (kh, kw, C, O) kernel."""
    (top, bottom), (left, right) = padding
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    (sh, sw), (dh, dw) = strides, dilation
    out_h = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
    return jnp.concatenate([
        padded[:, i * dh: i * dh + (out_h - 1) * sh + 1: sh, j * dw: j * dw + (out_w - 1) * sw + 1: sw, :]
        for i in range(kh) for j in range(kw)
    ], axis=-1)


def conv2d_patches(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Sequence[tuple[int, int]],
                   dilation: Sequence[int]) -> jax.Array:
    """An ungrouped 2-d convolution (N, H, W, C) x (kh, kw, C, O) as matrix products over the
    input's patches (:func:`_patches`): the same sums as ``lax.conv_general_dilated``, in
    another order. XLA's CPU convolution is slow on small-channel layers (measured on 2 cores:
    a 1 -> 16 channel 3x3 layer on 28x28, batch 64, takes 2.5 ms forward and weight gradient
    where torch takes 0.9 ms), while its matrix products are fast when oriented well: the
    weight gradient is computed as ``(dy^T P)^T`` (0.26 ms there; ``P^T dy`` takes 2.9 ms)."""
    kh, kw, channels, outputs = kernel.shape

    @jax.custom_vjp
    def convolve(x, kernel):
        return forward(x, kernel)[0]

    def forward(x, kernel):
        patches = _patches(x, kh, kw, strides, padding, dilation)
        flat = patches.reshape(-1, kh * kw * channels)
        y = flat @ kernel.reshape(kh * kw * channels, outputs)
        return y.reshape(*patches.shape[:-1], outputs), (x, flat, kernel)

    def backward(residuals, dy):
        x, flat, kernel = residuals
        dy_flat = dy.reshape(-1, outputs)
        dkernel = (dy_flat.T @ flat).T.reshape(kernel.shape)
        dflat = dy_flat @ kernel.reshape(kh * kw * channels, outputs).T
        _, to_input = jax.vjp(lambda x: _patches(x, kh, kw, strides, padding, dilation), x)
        (dx,) = to_input(dflat.reshape(*dy.shape[:-1], kh * kw * channels))
        return dx, dkernel

    convolve.defvjp(forward, backward)
    return convolve(x, kernel)


#: the largest patch depth (kernel height x width x input channels) convolved as patches on CPU:
#: a first layer's 1-3 input channels (3x3: 9-27). Deeper ones stay XLA's convolution, which
#: was faster there (measured, CNN batch 64: 16 -> 32 channels as patches, the step went from
#: 10.0 to 14.0 ms)
PATCHES_MAX_DEPTH = 27


class TorchConv2d(nnx.Conv):
    """``nnx.Conv`` as torch's ``Conv2d``: under :func:`jax_impl.amp.autocast` torch's CPU
    autocast rule (:func:`jax_impl.amp.conv`); on the CPU backend an ungrouped convolution as
    matrix products over patches (:func:`conv2d_patches`); otherwise ``nnx.Conv`` itself."""

    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=self.strides, padding=self.padding, rhs_dilation=self.kernel_dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.feature_group_count)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        bias = self.bias[...] if self.bias is not None else None
        dtype = amp.autocast_dtype()
        if dtype is not None:
            return amp.conv(inputs, self.kernel[...], bias, dtype, self._convolve)
        kh, kw, channels, _ = self.kernel.shape
        if (inputs.ndim != 4 or self.feature_group_count != 1 or jax.default_backend() != "cpu"
                or kh * kw * channels > PATCHES_MAX_DEPTH):
            return super().__call__(inputs)
        y = conv2d_patches(inputs, self.kernel[...], self.strides, self.padding, self.kernel_dilation)
        return y if bias is None else y + bias


def Conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias: bool = True,
    padding_mode: str = "zeros",
    *,
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
) -> nnx.Conv:
    """``torch.nn.Conv2d`` as an ``nnx.Conv`` on channels-last input (N, H, W, C).

    Torch's init: kernel and bias ``U(+-1/sqrt(fan_in))`` with ``fan_in = in/groups * kh * kw``.
    The kernel is (kh, kw, in/groups, out), torch's weight (out, in/groups, kh, kw) transposed
    by ``(2, 3, 1, 0)``. Padding is always explicit (Flax defaults to ``'SAME'``, torch to 0);
    only ``padding_mode='zeros'`` is supported.
    """
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode={padding_mode!r} is not supported; only 'zeros'")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                         f"groups ({groups})")
    kernel_size, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
    return TorchConv2d(
        in_channels,
        out_channels,
        kernel_size,
        strides=stride,
        padding=conv_padding(padding, kernel_size, stride, dilation),
        kernel_dilation=dilation,
        feature_group_count=groups,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels // groups * kernel_size[0] * kernel_size[1]),
        rngs=rngs,
    )


# ------------------------------------------------------------------------------------------
# Normalisation and activations


def _int_dtype():
    return jax.dtypes.canonicalize_dtype(jnp.int64)  # int64 with x64 on (torch's long), else int32


class BatchNorm(nnx.Module):
    """``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` on channels-last input (..., C).

    Training mode normalises with the batch's biased variance and updates the running
    statistics with the unbiased one (``n / (n - 1)``; Flax's ``nnx.BatchNorm`` uses the biased):

        num_batches_tracked += 1
        f = momentum, or 1 / num_batches_tracked when momentum is None (cumulative average)
        mean <- (1 - f) mean + f batch_mean;    var <- (1 - f) var + f batch_var * n / (n - 1)
        y = x * alpha + beta,  alpha = scale / sqrt(batch_var + eps),  beta = bias - batch_mean * alpha

    Eval mode (``use_running_average=True``) uses the running statistics; with
    ``track_running_stats=False`` there are none and the batch statistics are used in both
    modes. ``momentum`` is torch's (0.1 = 10% new), Flax's is the complement (0.99).

    Variables: ``scale`` and ``bias`` (``nnx.Param``; torch's ``weight``, ``bias``), ``mean``,
    ``var`` and ``num_batches_tracked`` (``nnx.BatchStat``; torch's ``running_mean``,
    ``running_var``, ``num_batches_tracked``, the counter an integer as in torch).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        use_running_average: bool = False,
        param_dtype=jnp.float32,
    ):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype)) if affine else nnx.data(None)
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype)) if affine and bias else nnx.data(None)
        if track_running_stats:
            self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
            self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))
            self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), _int_dtype()))
        else:
            self.mean = self.var = self.num_batches_tracked = nnx.data(None)

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm expects {self.num_features} channels last, got input {x.shape}")
        low = amp.autocast_dtype()
        if low is not None and x.dtype == low:
            # torch's CPU batch_norm on a low-precision input (autocast leaves it on neither list):
            # computed in float32 with the float32 parameters and statistics, the output rounded
            # once to the input's dtype; its input gradient likewise (the backward of the casts)
            wide = self.mean[...].dtype if self.track_running_stats else jnp.float32
            return self._normalize(x.astype(wide), use_running_average).astype(low)
        return self._normalize(x, use_running_average)

    def _normalize(self, x: jax.Array, use_running_average: bool | None) -> jax.Array:
        training = not (self.use_running_average if use_running_average is None else use_running_average)
        axes = tuple(range(x.ndim - 1))  # every axis but the channels
        if training or not self.track_running_stats:
            count = math.prod(x.shape[:-1])  # values per channel
            if training and count < 2:
                raise ValueError(f"BatchNorm: expected more than 1 value per channel when training, got {x.shape}")
            mean = x.mean(axes)  # (C,)
            squares = jnp.square(x - mean).sum(axes)  # two-pass, as torch (Flax's fast variance is one-pass)
            var = squares / count  # biased: normalises
            if training and self.track_running_stats:
                self._update_running_stats(mean, squares / (count - 1))  # unbiased: tracked
        else:
            mean, var = self.mean[...], self.var[...]
        alpha = 1 / jnp.sqrt(var + self.eps)
        if self.scale is not None:
            alpha = alpha * self.scale[...]
        beta = -mean * alpha
        if self.bias is not None:
            beta = self.bias[...] + beta
        return x * alpha + beta

    def _update_running_stats(self, mean: jax.Array, unbiased_var: jax.Array) -> None:
        count = self.num_batches_tracked[...] + 1
        self.num_batches_tracked[...] = count
        dtype = self.mean[...].dtype
        if self.momentum is None:
            factor = 1.0 / count.astype(jnp.float64 if dtype == jnp.float64 else jnp.float32)
        else:
            factor = self.momentum
        mean, unbiased_var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(unbiased_var)
        self.mean[...] = (factor * mean + (1 - factor) * self.mean[...]).astype(dtype)
        self.var[...] = (factor * unbiased_var + (1 - factor) * self.var[...]).astype(dtype)


#: torch's class names; the layer is the same (channels last), 1d for (N, C) or (N, L, C).
BatchNorm1d = BatchNorm
BatchNorm2d = BatchNorm


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``.

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` over the trailing ``normalized_shape``
    axes, with the biased (two-pass) variance. Flax's ``nnx.LayerNorm`` defaults to
    ``epsilon=1e-6`` and a one-pass variance. ``scale`` is torch's ``weight``.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        param_dtype=jnp.float32,
    ):
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.scale = nnx.Param(jnp.ones(shape, param_dtype)) if elementwise_affine else nnx.data(None)
        self.bias = nnx.Param(jnp.zeros(shape, param_dtype)) if elementwise_affine and bias else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[x.ndim - len(self.normalized_shape):] != self.normalized_shape:
            raise ValueError(f"LayerNorm{self.normalized_shape} got input {x.shape}")
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        mean = x.mean(axes, keepdims=True)
        var = jnp.square(x - mean).mean(axes, keepdims=True)
        y = (x - mean) * (1 / jnp.sqrt(var + self.eps))  # torch multiplies by rstd
        if self.scale is not None:
            y = y * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def gelu(x: jax.Array, approximate: str = "none") -> jax.Array:
    """``torch.nn.functional.gelu``: ``x * Phi(x)`` with the exact erf (``'none'``, torch's
    default) or the tanh approximation (``'tanh'``, ``jax.nn.gelu``'s default)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return jax.nn.gelu(x, approximate=approximate == "tanh")


class GELU(nnx.Module):
    """``torch.nn.GELU(approximate='none')``: see :func:`gelu`."""

    def __init__(self, approximate: str = "none"):
        gelu(jnp.zeros(()), approximate)  # validates
        self.approximate = approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(x, self.approximate)


# ------------------------------------------------------------------------------------------
# Pooling


def pool_padding(
    size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool
) -> tuple[int, int, int]:
    """``(low, high, output size)`` of one spatial axis of a torch pooling layer.

    torch: ``out = floor_or_ceil((size + 2p - d(k-1) - 1) / s) + 1``; with ``ceil_mode`` a last
    window that would start beyond the left padding plus the input is dropped. ``high`` pads
    (or, floored, drops) the end so that exactly ``out`` windows fit.
    """
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    high = max((out - 1) * stride + span - size - padding, 0)  # >= 0; floor division drops the rest
    return padding, high, out


class _Pool2d(nnx.Module):
    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)  # torch: stride defaults to kernel
        self.padding, self.dilation, self.ceil_mode = _pair(padding), _pair(dilation), ceil_mode
        for k, p in zip(self.kernel_size, self.padding):
            if p > k // 2:  # torch: half the kernel size, dilation or not
                raise ValueError(f"pad should be at most half of kernel size, got padding={padding}, "
                                 f"kernel_size={kernel_size}")

    def _geometry(self, x: jax.Array):
        """Per spatial axis (H, W) of channels-last x: (low, high, out)."""
        sizes = x.shape[-3:-1]
        return [pool_padding(n, k, s, p, d, self.ceil_mode)
                for n, k, s, p, d in zip(sizes, self.kernel_size, self.stride, self.padding, self.dilation)]

    def _window(self, x: jax.Array, geometry, init, op) -> jax.Array:
        lead = x.ndim - 3
        return jax.lax.reduce_window(  # a Python scalar init: JAX then knows the max/sum and differentiates it
            x, init, op,
            window_dimensions=(1,) * lead + self.kernel_size + (1,),
            window_strides=(1,) * lead + self.stride + (1,),
            padding=((0, 0),) * lead + tuple((low, high) for low, high, _ in geometry) + ((0, 0),),
            window_dilation=(1,) * lead + self.dilation + (1,),
        )


def _tiles(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """(..., H, W, C) -> (..., H/kh, kh, W/kw, kw, C): the windows of a pool whose stride is its kernel."""
    *lead, h, w, c = x.shape
    return x.reshape(*lead, h // kh, kh, w // kw, kw, c)


def _first_maximum(x: jax.Array, kh: int, kw: int) -> list[jax.Array]:
    """Per window element (row-major order), a mask of the windows whose gradient it takes, as
    torch's CPU kernel picks it: the first element equal to the maximum; in a window holding
    NaN (the maximum is then NaN), the last NaN (torch moves its index to every NaN it meets)."""
    tiles = _tiles(x, kh, kw)  # (..., Ho, kh, Wo, kw, C)
    top = tiles.max(axis=(-4, -2))  # (..., Ho, Wo, C)
    elements = [tiles[..., i, :, j, :] for i in range(kh) for j in range(kw)]
    first, taken = [], jnp.zeros(top.shape, bool)
    for element in elements:
        first.append((element == top) & ~taken)
        taken = taken | first[-1]
    last_nan, taken = [], jnp.zeros(top.shape, bool)
    for element in reversed(elements):
        last_nan.append(jnp.isnan(element) & ~taken)
        taken = taken | last_nan[-1]
    has_nan = jnp.isnan(top)
    return [jnp.where(has_nan, nan, tie) for tie, nan in zip(first, reversed(last_nan))]


def _tiled_max_pool(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """Max-pool of channels-last ``x`` (..., H, W, C) whose windows tile it exactly (stride ==
    kernel, no padding or dilation, H and W multiples of the kernel): a reshape and a max.

    Its gradient goes to the first maximum of each window in row-major order, as torch's CPU
    ``max_pool2d_with_indices_backward``: ``dx[window element] = g * [first maximum]``, one
    elementwise pass. It gives the same numbers as XLA's select-and-scatter (the gradient of
    ``reduce_window``), which XLA's CPU backend runs several times slower (issue 6's CNN).
    """
    return _tiled_max_pool_custom(kh, kw)(x)


_CUSTOM_POOLS: dict[tuple[int, int], object] = {}


def _tiled_max_pool_custom(kh: int, kw: int):
    """The custom-gradient function of one window shape (built once per shape)."""
    if (kh, kw) in _CUSTOM_POOLS:
        return _CUSTOM_POOLS[(kh, kw)]

    @jax.custom_vjp
    def pool(x: jax.Array) -> jax.Array:
        return _tiles(x, kh, kw).max(axis=(-4, -2))

    def forward(x: jax.Array):
        return pool(x), x

    def backward(x: jax.Array, g: jax.Array):
        masks = _first_maximum(x, kh, kw)  # kh * kw masks of shape (..., Ho, Wo, C)
        zero = jnp.zeros((), g.dtype)
        rows = [jnp.stack([jnp.where(masks[i * kw + j], g, zero) for j in range(kw)], axis=-2)  # (..., Ho, Wo, kw, C)
                for i in range(kh)]
        dx = jnp.stack(rows, axis=-4)  # (..., Ho, kh, Wo, kw, C)
        return (dx.reshape(x.shape),)

    pool.defvjp(forward, backward)
    _CUSTOM_POOLS[(kh, kw)] = pool
    return pool


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)``
    on channels-last input (..., H, W, C).

    ``stride`` defaults to ``kernel_size`` (Flax's ``max_pool`` to 1); padding is ``-inf``.
    The gradient goes to one maximum of each window, the first in row-major order, as torch's
    (checked with ties in tests/parity/test_layers_torch.py). Windows that tile the input
    (stride == kernel, no padding, no dilation: the CNN's ``MaxPool2d(2)``) take a reshape, a max
    and a one-pass first-maximum mask for the gradient (:func:`_tiled_max_pool`), on every
    backend: XLA's CPU select-and-scatter, the gradient of ``reduce_window``, is several times
    slower there. Other windows use ``reduce_window``, whose select-and-scatter also picks the first;
    JAX has no gradient for a dilated window, so dilated pooling takes the first ``argmax`` of
    the stacked window elements instead. ``return_indices`` is not supported.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)

    def __call__(self, x: jax.Array) -> jax.Array:
        geometry = self._geometry(x)
        tiles = all(high == 0 for _, high, _ in geometry)  # no window reaches past the end (ceil_mode)
        if tiles and self.kernel_size == self.stride and self.padding == (0, 0) and self.dilation == (1, 1):
            (_, _, out_h), (_, _, out_w) = geometry
            kh, kw = self.kernel_size
            return _tiled_max_pool(x[..., :out_h * kh, :out_w * kw, :], kh, kw)
        if self.dilation == (1, 1):
            return self._window(x, geometry, -math.inf, jax.lax.max)
        lead = x.ndim - 3
        padded = jnp.pad(x, ((0, 0),) * lead + tuple((low, high) for low, high, _ in geometry) + ((0, 0),),
                         constant_values=-jnp.inf)
        (_, _, out_h), (_, _, out_w) = geometry
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        windows = jnp.stack([  # (kh * kw, ..., H_out, W_out, C), window elements in row-major order
            padded[..., i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)
        ])
        first = jnp.argmax(windows, axis=0)[None]  # the first maximum (NaN counts as the maximum)
        return jnp.take_along_axis(windows, first, axis=0)[0]


def _avg_divisor(size: int, kernel: int, stride: int, padding: int, out: int, count_include_pad: bool) -> np.ndarray:
    """torch's divisor of each window on one axis: the window clipped to the padded input
    (``count_include_pad``) or to the input itself."""
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True, divisor_override=None)`` on channels-last input (..., H, W, C).

    Each window's sum is divided by ``divisor_override``, or by the window's size clipped to
    the padded input (``count_include_pad``; windows that ``ceil_mode`` adds past the padding
    count only what they cover) or to the input alone.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        if divisor_override is not None and divisor_override == 0:
            raise ValueError("divisor_override must be non-zero")
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def __call__(self, x: jax.Array) -> jax.Array:
        geometry = self._geometry(x)
        sums = self._window(x, geometry, 0.0, jax.lax.add)
        if self.divisor_override is not None:
            return sums / jnp.asarray(self.divisor_override, x.dtype)
        rows, cols = (
            _avg_divisor(n, k, s, p, out, self.count_include_pad)
            for n, k, s, p, (_, _, out) in zip(x.shape[-3:-1], self.kernel_size, self.stride, self.padding, geometry)
        )
        divisor = np.outer(rows, cols)[..., None]  # (H_out, W_out, 1)
        return sums / jnp.asarray(divisor, x.dtype)


# ------------------------------------------------------------------------------------------
# Dropout


class DropoutMask(nnx.Variable):
    """A dropout mask handed in from outside (a parity harness hands both frameworks the same
    one). ``None`` (the default, no pytree leaves): masks are drawn from the layer's ``rngs``.
    Any shape with the layer's mask's number of elements; nonzero = keep. A set mask is used
    on every training-mode call until it is replaced or cleared."""


def _dropout_rngs(p: float, rngs: nnx.Rngs | None):
    return rngs["dropout"].fork() if rngs is not None and 0 < p < 1 else nnx.data(None)


def _apply_dropout(x: jax.Array, p: float, mask, stream, where: str) -> jax.Array:
    """``x * mask / (1 - p)`` as torch computes it: ``noise = mask / f(1 - p)`` in x's dtype,
    then one product (with ``f`` the rounding to x's dtype)."""
    if p == 0:
        return x
    if p == 1:
        return x * jnp.zeros((), x.dtype)  # torch: input * 0
    if mask is None:
        if stream is None:
            raise ValueError(f"{where} in training mode needs a dropout mask or rngs")
        mask = jax.random.bernoulli(stream(), 1.0 - p, x.shape)
    mask = jnp.reshape(mask, x.shape)
    scale = jnp.ones((), x.dtype) / jnp.asarray(1.0 - p, x.dtype)
    noise = jnp.where(mask != 0, scale, jnp.zeros((), x.dtype))
    return x * noise


class Dropout(nnx.Module):
    """``torch.nn.Dropout(p=0.5)``: in training mode zero each element with probability ``p``
    and scale the rest by ``1 / (1 - p)``; the identity in eval mode.

    The mask is, in order of precedence: the ``mask`` call argument, ``self.dropout_mask``
    (a :class:`DropoutMask`, see :func:`set_dropout_masks`), or a draw from ``rngs`` (the
    ``dropout`` stream, forked at construction as ``nnx.Dropout`` does).
    """

    def __init__(self, p: float = 0.5, *, rngs: nnx.Rngs | None = None, deterministic: bool = False):
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.deterministic = p, deterministic
        self.dropout_mask = DropoutMask(None)
        self.rngs = _dropout_rngs(p, rngs)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool | None = None) -> jax.Array:
        if self.deterministic if deterministic is None else deterministic:
            return x
        mask = mask if mask is not None else self.dropout_mask.get_value()
        return _apply_dropout(x, self.p, mask, self.rngs, "Dropout")


def _masked_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    return {"/".join(map(str, path)): module for path, module in nnx.iter_modules(model)
            if isinstance(getattr(module, "dropout_mask", None), DropoutMask)}


def set_dropout_masks(model: nnx.Module, masks: Mapping[str, jax.Array | np.ndarray | None]) -> None:
    """Hand masks to the dropout layers of ``model``: ``{module path: mask}``, the path as
    torch names the module (``"encoder.layers.0.self_attn"``) or with ``/``; ``""`` for
    ``model`` itself. ``None`` clears a mask. Every module with a ``dropout_mask`` (
    :class:`Dropout`, :class:`MultiheadAttention`) can take one."""
    modules = _masked_modules(model)
    for name, mask in masks.items():
        path = name.replace(".", "/")
        if path not in modules:
            raise KeyError(f"no dropout layer at {name!r}; layers with masks: {', '.join(modules) or 'none'}")
        modules[path].dropout_mask.set_value(None if mask is None else jnp.asarray(mask))


def clear_dropout_masks(model: nnx.Module) -> None:
    """Back to drawing masks from ``rngs`` in every dropout layer of ``model``."""
    for module in _masked_modules(model).values():
        module.dropout_mask.set_value(None)


# ------------------------------------------------------------------------------------------
# Embedding


class Embedding(nnx.Module):
    """``torch.nn.Embedding(num_embeddings, embedding_dim, padding_idx=None)``.

    The table ``embedding`` (torch's ``weight``) starts N(0, 1) (Flax's ``nnx.Embed``: std
    ``1/sqrt(dim)``). The ``padding_idx`` row starts at zero and never receives a gradient
    (its lookups are ``stop_gradient``-ed); it is returned as it is, zero unless changed.
    ``max_norm``, ``scale_grad_by_freq`` and ``sparse`` are not supported.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings ({num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        table = torch_normal_init(rngs.params(), (num_embeddings, embedding_dim), param_dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        self.embedding = nnx.Param(table)  # (num_embeddings, embedding_dim)

    def __call__(self, indices: jax.Array) -> jax.Array:
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise TypeError(f"Embedding expects integer indices, got {indices.dtype}")
        out = jnp.take(self.embedding[...], indices, axis=0)  # (..., dim)
        if self.padding_idx is not None:
            out = jnp.where((indices == self.padding_idx)[..., None], jax.lax.stop_gradient(out), out)
        return out


# ------------------------------------------------------------------------------------------
# Attention


def _additive_mask(mask: jax.Array, dtype) -> jax.Array:
    """torch's ``_canonical_mask``: a boolean mask (True = ignore) becomes 0 / -inf; a float
    mask is added as it is."""
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, jnp.asarray(-jnp.inf, dtype), jnp.zeros((), dtype))
    return mask.astype(dtype)


def _safe_softmax(scores: jax.Array) -> jax.Array:
    """torch's ``_safe_softmax``: a row with every score ``-inf`` gives zeros (and zero
    gradients), where a plain softmax gives NaN."""
    dead = jnp.all(scores == -jnp.inf, axis=-1, keepdims=True)
    return jnp.where(dead, 0, jax.nn.softmax(jnp.where(dead, 0, scores), axis=-1))


class MultiheadAttention(nnx.Module):
    """``torch.nn.MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True,
    batch_first=False)`` with the packed input projection.

    Variables: ``in_proj`` (kernel (E, 3E) = torch's ``in_proj_weight`` (3E, E) transposed,
    q/k/v stacked in that order; bias (3E,) = ``in_proj_bias``) and ``out_proj``. torch's init:
    ``in_proj_weight`` xavier-uniform as one (3E, E) matrix, ``out_proj.weight`` as a Linear,
    both biases zero.

    ``__call__(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True)`` returns ``(output, weights or None)`` as torch does:

        scores = q k^T / sqrt(head_dim) + attn_mask + key_padding_mask      (B, H, L, S)
        output = out_proj(dropout(softmax(scores)) v)

    Masks: boolean True = ignore (Flax's attention masks mean the opposite), float masks are
    added; ``attn_mask`` is (L, S) or (B*H, L, S), ``key_padding_mask`` (B, S). Like torch,
    ``need_weights=True`` takes the explicit path (scale on q; a fully masked row gives NaN)
    and ``need_weights=False`` the fused one (scale split between q and k; such a row gives
    zeros). The weights' dropout uses ``dropout_mask`` ((B, H, L, S) or (B*H, L, S)) when
    set, else ``rngs``. ``kdim``, ``vdim``, ``add_bias_kv``, ``add_zero_attn`` and
    ``is_causal`` are not supported.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, *, rngs: nnx.Rngs, param_dtype=jnp.float32, deterministic: bool = False):
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first, self.deterministic = dropout, batch_first, deterministic
        self.in_proj = nnx.Linear(embed_dim, 3 * embed_dim, use_bias=bias, param_dtype=param_dtype,
                                  kernel_init=torch_xavier_uniform_init, bias_init=_zeros, rngs=rngs)
        self.out_proj = nnx.Linear(embed_dim, embed_dim, use_bias=bias, param_dtype=param_dtype,
                                   kernel_init=torch_kernel_init, bias_init=_zeros, rngs=rngs)
        self.dropout_mask = DropoutMask(None)
        self.rngs = _dropout_rngs(dropout, rngs)

    def _project(self, x: jax.Array, part: int) -> jax.Array:
        """q (part 0), k (1) or v (2) of x (B, L, E), as (B, H, L, D)."""
        e = self.embed_dim
        y = x @ self.in_proj.kernel[...][:, part * e:(part + 1) * e]
        if self.in_proj.bias is not None:
            y = y + self.in_proj.bias[...][part * e:(part + 1) * e]
        return y.reshape(*y.shape[:2], self.num_heads, self.head_dim).swapaxes(1, 2)

    def __call__(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                 average_attn_weights: bool = True, *, deterministic: bool | None = None):
        unbatched = query.ndim == 2
        if unbatched:  # (L, E)
            query, key, value = query[None], key[None], value[None]
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.swapaxes(0, 1) for t in (query, key, value))
        b, length, _ = query.shape
        source = key.shape[1]
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)  # (B, H, L|S, D)

        mask = None
        if attn_mask is not None:
            mask = _additive_mask(attn_mask, q.dtype)
            mask = mask[None, None] if mask.ndim == 2 else mask.reshape(b, self.num_heads, length, source)
        if key_padding_mask is not None:
            padding = _additive_mask(key_padding_mask, q.dtype)[:, None, None, :]  # (B, 1, 1, S)
            mask = padding if mask is None else mask + padding

        if need_weights:  # torch: q * sqrt(1/D), baddbmm, softmax
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.swapaxes(-1, -2)  # (B, H, L, S)
            if mask is not None:
                scores = scores + mask
            weights = jax.nn.softmax(scores, axis=-1)
        else:  # torch's scaled_dot_product_attention: sqrt(scale) on q and on k, safe softmax
            root = math.sqrt(1.0 / math.sqrt(self.head_dim))
            scores = (q * root) @ (k.swapaxes(-1, -2) * root)
            if mask is not None:
                scores = scores + mask
            weights = _safe_softmax(scores)
        if not (self.deterministic if deterministic is None else deterministic):
            mask = self.dropout_mask.get_value()
            weights = _apply_dropout(weights, self.dropout, mask, self.rngs, "MultiheadAttention")
        out = (weights @ v).swapaxes(1, 2).reshape(b, length, self.embed_dim)  # (B, L, E)
        out = self.out_proj(out)
        if unbatched:
            out, weights = out[0], weights[0]
        elif not self.batch_first:
            out = out.swapaxes(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(axis=-3) if average_attn_weights else weights


# ------------------------------------------------------------------------------------------
# Recurrent


class LSTM(nnx.Module):
    """``torch.nn.LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False)``.

    Per layer ``k``, time step ``t`` (gates stacked i, f, g, o along the 4H axis, as torch;
    Flax's ``OptimizedLSTMCell`` stacks i, f, g, o too but its ``LSTMCell`` keeps separate
    dense layers and has no ``bias_hh``):

        gates = (h W_hh + b_hh) + (x_t W_ih + b_ih)
        i, f, o = sigmoid;  g = tanh;  c = f c + i g;  h = o tanh(c)

    Variables ``kernel_ih_l{k}`` (in, 4H), ``kernel_hh_l{k}`` (H, 4H) (torch's ``weight_ih_l{k}``
    and ``weight_hh_l{k}`` transposed), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,); all start
    ``U(+-1/sqrt(H))`` as in torch. ``__call__(x, hx=None)`` returns ``(output, (h_n, c_n))``;
    x is (B, T, F) with ``batch_first``, else (T, B, F), or (T, F) unbatched; ``h_n`` and
    ``c_n`` are (num_layers, B, H). ``bidirectional`` and ``proj_size`` are not supported.

    ``dropout`` drops the output of every layer but the last in training mode, as torch does,
    with one mask per layer boundary drawn over the time-major (T, B, H) output (torch's CPU
    kernel runs time-major and draws its mask there); the mask comes from ``dropout_mask`` (a
    :class:`DropoutMask`, the same mask at every boundary, as a parity harness hands one mask per
    module) or from ``rngs``' ``dropout`` stream (a fresh mask at each boundary).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 deterministic: bool = False):
        if not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.deterministic = deterministic
        self.dropout_mask = DropoutMask(None)
        self.rngs = _dropout_rngs(self.dropout if num_layers > 1 else 0.0, rngs)
        init = torch_uniform_init(1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0)
        for layer in range(num_layers):
            features = input_size if layer == 0 else hidden_size
            shapes = {f"kernel_ih_l{layer}": (features, 4 * hidden_size),
                      f"kernel_hh_l{layer}": (hidden_size, 4 * hidden_size)}
            if bias:
                shapes |= {f"bias_ih_l{layer}": (4 * hidden_size,), f"bias_hh_l{layer}": (4 * hidden_size,)}
            for name, shape in shapes.items():
                setattr(self, name, nnx.Param(init(rngs.params(), shape, param_dtype)))

    def _layer(self, layer: int, xs: jax.Array, h: jax.Array, c: jax.Array):
        """One layer over the time-major sequence xs (T, B, F) from state (B, H)."""
        kernel_hh = getattr(self, f"kernel_hh_l{layer}")[...]
        inputs = xs @ getattr(self, f"kernel_ih_l{layer}")[...]  # (T, B, 4H), every step at once
        bias_hh = None
        if self.bias:
            inputs = inputs + getattr(self, f"bias_ih_l{layer}")[...]
            bias_hh = getattr(self, f"bias_hh_l{layer}")[...]

        def step(carry, x_gates):
            h, c = carry  # (B, H)
            recurrent = h @ kernel_hh
            if bias_hh is not None:
                recurrent = recurrent + bias_hh
            i, f, g, o = jnp.split(recurrent + x_gates, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        (h, c), ys = jax.lax.scan(step, (h, c), inputs)
        return ys, h, c

    def __call__(self, x: jax.Array, hx: tuple[jax.Array, jax.Array] | None = None):
        unbatched = x.ndim == 2
        if unbatched:
            xs = x[:, None]  # (T, 1, F)
        else:
            xs = x.swapaxes(0, 1) if self.batch_first else x  # (T, B, F)
        if xs.shape[-1] != self.input_size:
            raise ValueError(f"LSTM expects {self.input_size} input features, got input {x.shape}")
        shape = (self.num_layers, xs.shape[1], self.hidden_size)
        if hx is None:
            h0 = c0 = jnp.zeros(shape, xs.dtype)
        else:
            h0, c0 = (s[:, None] if unbatched else s for s in hx)
        hs, cs = [], []
        for layer in range(self.num_layers):
            xs, h, c = self._layer(layer, xs, h0[layer], c0[layer])
            hs.append(h)
            cs.append(c)
            if layer < self.num_layers - 1 and not self.deterministic:  # (T, B, H) between layers
                xs = _apply_dropout(xs, self.dropout, self.dropout_mask.get_value(), self.rngs, "LSTM")
        h_n, c_n = jnp.stack(hs), jnp.stack(cs)  # (num_layers, B, H)
        if unbatched:
            return xs[:, 0], (h_n[:, 0], c_n[:, 0])
        return (xs.swapaxes(0, 1) if self.batch_first else xs), (h_n, c_n)
