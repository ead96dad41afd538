"""The rounding helpers the torch-exact optimizers are written with (jax_impl.optim._base) round
float32 as torch's CPU kernels do, on every array size: a product stored on its own is rounded
once before the next addition, and a multiply-add is rounded once.

Checked against numpy, which computes float32 products and sums element by element with one
rounding each, inside a jitted expression where XLA would otherwise fuse differently. (The
optimizers themselves are checked against torch in tests/parity/test_optim_*.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl.optim._base import fma, rounded_product

#: a single element (where XLA folds scalar code differently), small arrays (no full vector),
#: and arrays with a vector body and a remainder
SHAPES = [(), (1,), (2,), (3,), (17,), (1001,), (8, 129)]


def _draw(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape).astype(np.float32), (1 - rng.random(shape) * 1e-3).astype(np.float32),
            (rng.standard_normal(shape) * 1e-3).astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_a_rounded_product_is_rounded_before_the_sum_it_enters(shape):
    step = jax.jit(lambda p, c, u: (rounded_product(p, c) + u) - p)  # torch: p.mul_(c); p.add_(u)
    mismatches = 0
    for seed in range(40 if np.prod(shape) < 100 else 4):
        p, c, u = _draw(shape, seed)
        expected = (p * c + u) - p  # numpy: one rounding per operation
        mismatches += int(np.sum(np.asarray(step(p, c, u)) != expected))
    # measured with the product fused into the sum instead (one rounding, not two): 22-25% of the
    # elements differ at every shape here
    assert mismatches == 0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fma_rounds_once(shape):
    step = jax.jit(lambda a, b, c: fma(a, b, rounded_product(c, b)))
    mismatches = 0
    for seed in range(40 if np.prod(shape) < 100 else 4):
        a, b, c = _draw(shape, seed)
        cb = c * b  # numpy: rounded once, as rounded_product
        # a * b is exact in float64 and the sum's rounding to float64 then float32 differs from a
        # single rounding only when the float64 sum lands on a float32 halfway point (about
        # 2**-29 of random cases)
        expected = (a.astype(np.float64) * b + cb).astype(np.float32)
        mismatches += int(np.sum(np.asarray(step(a, b, c)) != expected))
    # measured with two roundings instead (product, then sum): 22-31% of the elements differ
    assert mismatches == 0


def test_the_helpers_keep_the_dtype():
    a = jnp.ones((3,), jnp.float32)
    assert rounded_product(a, jnp.float32(2)).dtype == jnp.float32
    assert fma(a, a, a).dtype == jnp.float32
    assert fma(jnp.ones((), jnp.float32), jnp.float32(2), jnp.float32(1)).dtype == jnp.float32
