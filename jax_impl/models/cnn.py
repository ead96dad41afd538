"""A small convolutional network, the twin of ``torch_ref.models.CNN``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.layers import BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d


def image_side(input_size: int, in_channels: int = 1) -> int:
    """The side of the square images that ``input_size`` flat features hold (784 -> 28, 64 -> 8)."""
    side = math.isqrt(input_size // in_channels)
    if side * side * in_channels != input_size:
        raise ValueError(f"input_size={input_size} is not {in_channels} channel(s) of a square image")
    return side


class CNN(nnx.Module):
    """``(Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2))`` twice, then
    flatten, Dropout, Linear.

    The boundary is torch's: inputs are flat ``(B, input_size)`` or NCHW ``(B, C, H, W)``, as
    the torch model takes them; the model moves them to NHWC (JAX's convolution layout) inside,
    and back to NCHW before flattening, so the flattened features, the dropout mask and
    ``fc``'s kernel are in torch's (C, H, W) order. Users and the harness never transpose.
    """

    def __init__(self, input_size: int = 784, num_classes: int = 10, in_channels: int = 1, channels: int = 16,
                 dropout: float = 0.5, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.in_channels, self.side = in_channels, image_side(input_size, in_channels)
        self.conv1 = Conv2d(in_channels, channels, 3, padding=1, rngs=rngs, param_dtype=param_dtype)
        self.bn1 = BatchNorm2d(channels, param_dtype=param_dtype)
        self.conv2 = Conv2d(channels, 2 * channels, 3, padding=1, rngs=rngs, param_dtype=param_dtype)
        self.bn2 = BatchNorm2d(2 * channels, param_dtype=param_dtype)
        self.pool = MaxPool2d(2)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.fc = Linear(2 * channels * (self.side // 4) ** 2, num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(-1, self.in_channels, self.side, self.side).transpose(0, 2, 3, 1)  # NCHW -> (B, H, W, C)
        x = self.pool(nnx.relu(self.bn1(self.conv1(x))))  # (B, H/2, W/2, c)
        x = self.pool(nnx.relu(self.bn2(self.conv2(x))))  # (B, H/4, W/4, 2c)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's flatten order: (B, 2c * H/4 * W/4)
        return self.fc(self.dropout(x))  # (B, num_classes)
