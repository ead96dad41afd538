"""PyTorch's default initialisations as Flax initialisers.

torch draws ``nn.Linear`` and ``nn.Conv*`` weights with ``kaiming_uniform_(a=sqrt(5))``,
which is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and their biases from the same interval;
``nn.Embedding`` from N(0, 1); ``nn.LSTM`` everything from ``U(+-1/sqrt(hidden_size))``;
``nn.MultiheadAttention``'s packed input projection xavier-uniform, its biases zero.
Flax's defaults differ (truncated LeCun normal weights, zero biases), so a JAX model trained
from scratch with Flax defaults starts from another distribution. The random streams differ
in any case: for bit-identical starting weights, convert a torch ``state_dict``
(``parity.convert``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["fan_in", "torch_kernel_init", "torch_bias_init", "torch_uniform_init", "torch_xavier_uniform_init",
           "torch_normal_init"]


def fan_in(kernel_shape: tuple[int, ...]) -> int:
    """Fan-in of a Flax kernel: every axis but the last (Dense (in, out); Conv (kh, kw, in, out))."""
    return math.prod(kernel_shape[:-1])


def _uniform(key: jax.Array, shape, dtype, bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def torch_kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``kaiming_uniform_(a=sqrt(5))``: ``U(+-1/sqrt(fan_in))`` (std ``1/sqrt(3 fan_in)``)."""
    return _uniform(key, shape, dtype, 1.0 / math.sqrt(fan_in(tuple(shape))))


def torch_bias_init(kernel_fan_in: int):
    """The bias initialiser torch pairs with a layer of the given fan-in: ``U(+-1/sqrt(fan_in))``."""
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
    return _uniform(key, shape, dtype, math.sqrt(6.0 / (fan_in + fan_out)))


def torch_normal_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``init.normal_(w)``: N(0, 1), ``nn.Embedding``'s weight (Flax's ``nnx.Embed`` uses
    std ``1/sqrt(features)``)."""
    return jax.random.normal(key, shape, dtype)
