"""PyTorch's default initialisations as Flax initialisers.

torch draws ``nn.Linear`` and ``nn.Conv*`` weights with ``kaiming_uniform_(a=sqrt(5))``,
which is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and their biases from the same interval;
``nn.Embedding`` from N(0, 1); ``nn.LSTM`` everything from ``U(+-1/sqrt(hidden_size))``;
``nn.MultiheadAttention``'s packed input projection xavier-uniform, its biases zero.
Flax's defaults differ (truncated LeCun normal weights, zero biases), so a JAX model trained
from scratch with Flax defaults starts from another distribution. The random streams differ
in any case: for bit-identical starting weights, convert a torch ``state_dict``
(``parity.convert``).

Empty layers follow torch too: ``nn.init`` leaves a tensor with no elements alone (a kernel
with ``fan_in == 0``, e.g. ``nn.Linear(0, n)``), and the bias of such a layer gets the bound
``0``, so it starts at zeros.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["fan_in", "torch_kernel_init", "torch_bias_init", "torch_uniform_init", "torch_xavier_uniform_init",
           "torch_normal_init"]


def fan_in(kernel_shape: tuple[int, ...]) -> int:
    """Fan-in of a Flax kernel: every axis but the last (Dense (in, out); Conv (kh, kw, in, out)).

    torch's ``_calculate_fan_in_and_fan_out`` gives the same for its layout (``in * kh * kw``
    of (out, in, kh, kw)), and like it this refuses a kernel of fewer than two axes.
    """
    if len(kernel_shape) < 2:
        raise ValueError(f"fan in can not be computed for a kernel of fewer than 2 axes, got shape {kernel_shape}")
    return math.prod(kernel_shape[:-1])


def _uniform(key: jax.Array, shape, dtype, bound: float) -> jax.Array:
    """``U(-bound, bound)``; zeros (``+0.0``, as torch's ``uniform_(-0, 0)``) when the bound is 0.

    Drawn as a flat vector and reshaped: with JAX's default threefry keys the values are the
    same as a draw of ``shape`` (the bits depend on the row-major position only), but XLA on
    CPU compiles the flat draw in a fraction of the time of a 4-D one (a Conv2d kernel)."""
    if bound == 0:
        return jnp.zeros(shape, dtype)
    size = math.prod(shape)
    return jax.random.uniform(key, (size,), dtype, minval=-bound, maxval=bound).reshape(shape)


def torch_kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``kaiming_uniform_(a=sqrt(5))``: ``U(+-1/sqrt(fan_in))`` (std ``1/sqrt(3 fan_in)``).

    A kernel with no elements (``fan_in`` or ``fan_out`` 0) is returned empty: torch's init is
    a no-op on it (with a warning) rather than a division by zero."""
    shape = tuple(shape)
    if math.prod(shape) == 0:
        return jnp.zeros(shape, dtype)
    return _uniform(key, shape, dtype, 1.0 / math.sqrt(fan_in(shape)))


def torch_bias_init(kernel_fan_in: int):
    """The bias initialiser torch pairs with a layer of the given fan-in: ``U(+-1/sqrt(fan_in))``,
    and zeros when ``fan_in`` is 0 (torch's ``bound = 1/sqrt(fan_in) if fan_in > 0 else 0``)."""
    if kernel_fan_in < 0:
        raise ValueError(f"fan_in must be >= 0, got {kernel_fan_in}")
    bound = 1.0 / math.sqrt(kernel_fan_in) if kernel_fan_in > 0 else 0.0

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, bound)

    return init


def torch_uniform_init(bound: float):
    """``init.uniform_(w, -bound, bound)``; e.g. every ``nn.LSTM`` weight and bias with
    ``bound = 1/sqrt(hidden_size)``."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, bound)

    return init


def torch_xavier_uniform_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``xavier_uniform_`` (gain 1) of a 2-D weight: ``U(+-sqrt(6 / (fan_in + fan_out)))``.

    The kernel is (in, out), the transpose of torch's (out, in); the bound is symmetric in the
    two fans, so the layouts agree. ``nn.MultiheadAttention`` draws its packed ``in_proj_weight``
    (3E, E) this way, as one matrix: the bound is ``sqrt(6 / 4E)``, not three ``sqrt(6 / 2E)``.
    """
    fan_in, fan_out = shape  # (in, out)
    if fan_in * fan_out == 0:
        return jnp.zeros(shape, dtype)  # no elements: nothing to draw (torch's bound would divide by 0)
    return _uniform(key, shape, dtype, math.sqrt(6.0 / (fan_in + fan_out)))


def torch_normal_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``init.normal_(w)``: N(0, 1), ``nn.Embedding``'s weight (Flax's ``nnx.Embed`` uses
    std ``1/sqrt(features)``). Drawn flat and reshaped, as :func:`_uniform`."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
