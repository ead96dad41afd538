"""The seed's multilayer perceptron."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.layers import Linear


class SimpleNN(nnx.Module):
    """``Linear(input_size, hidden_size) -> ReLU -> Linear(hidden_size, num_classes)``.

    Inputs of any shape are flattened to ``(-1, input_size)``, as torch's ``x.view(-1, 784)``.
    """

    def __init__(
        self,
        input_size: int = 784,
        hidden_size: int = 256,
        num_classes: int = 10,
        bias: bool = True,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        self.input_size = input_size
        self.fc1 = Linear(input_size, hidden_size, bias=bias, rngs=rngs, param_dtype=param_dtype)
        self.fc2 = Linear(hidden_size, num_classes, bias=bias, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(-1, self.input_size)  # (B, input_size)
        x = nnx.relu(self.fc1(x))  # (B, hidden_size)
        return self.fc2(x)  # (B, num_classes)
