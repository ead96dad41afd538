"""PyTorch's default initialisations as Flax initialisers.

torch draws ``nn.Linear`` and ``nn.Conv*`` weights with ``kaiming_uniform_(a=sqrt(5))``,
which is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and their biases from the same interval.
Flax's defaults differ (truncated LeCun normal weights, zero biases), so a JAX model trained
from scratch with Flax defaults starts from another distribution. The random streams differ
in any case: for bit-identical starting weights, convert a torch ``state_dict``
(``parity.convert``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["fan_in", "torch_kernel_init", "torch_bias_init"]


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
