"""Models: each architecture of torch_ref.models / jax_impl.models at a size of its own."""

from __future__ import annotations

import dataclasses

from parity.cases._base import BASE, Case

CASES = (
    Case("SimpleNN/hidden_size=32", "model", BASE),
    # the seed's shapes: 784 inputs, 256 hidden units, on the synthetic MNIST-sized data
    Case("SimpleNN/default", "model", dataclasses.replace(BASE, model="SimpleNN()", data="synthetic")),
)
