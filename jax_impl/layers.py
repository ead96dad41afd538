"""Flax NNX layers built with PyTorch's defaults."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jax_impl.init import torch_bias_init, torch_kernel_init

__all__ = ["Linear"]


def Linear(
    in_features: int, out_features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, bias: bool = True
) -> nnx.Linear:
    """``torch.nn.Linear(in_features, out_features, bias)``: an ``nnx.Linear`` with torch's init.

    The kernel is stored (in, out), the transpose of torch's weight (out, in).
    """
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=bias,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )
