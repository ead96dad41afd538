"""``torch.optim.SparseAdam`` as an optax ``GradientTransformation``, on dense gradients.

torch's SparseAdam takes sparse gradients (``nn.Embedding(sparse=True)``) and updates only the
rows they hold: the moments and the parameters of the other rows stay as they are, while the
bias corrections use the global step. JAX has no sparse gradients, so here a row (an index
along axis 0; an element for a vector) counts as present when **any element of its gradient
is nonzero**. That is torch's rule except for one case: torch also updates a row the
embedding looked up whose gradient happens to be exactly zero (its moments decay, and its
parameters move with the first moment); here such a row is left alone.

torch raises at ``step()`` on a dense gradient ("SparseAdam does not support dense gradients,
please consider Adam instead"); every gradient is dense here, so nothing is raised and any
parameter is accepted, with the row rule above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import (
    PyTree,
    one_minus_power,
    scalar,
    static_betas,
    widest_float,
)


class SparseAdamState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step`` (a Python int there)
    exp_avg: PyTree
    exp_avg_sq: PyTree


def present_rows(grad: jax.Array) -> jax.Array:
    """``True`` for each row (index along axis 0) with a nonzero gradient element, shaped to
    broadcast against ``grad``: ``(rows, 1, ..., 1)``; for a 0-d gradient, whether it is
    nonzero. A NaN counts as nonzero."""
    nonzero = grad != 0
    if grad.ndim <= 1:
        return nonzero
    return jnp.any(nonzero, axis=tuple(range(1, grad.ndim)), keepdims=True)


def sparse_adam(
    lr: float | Callable = 1e-3,
    beta1: float | Callable = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""SparseAdam exactly as ``torch.optim.SparseAdam`` computes it, for the present rows
    (:func:`present_rows`) of each gradient:

    .. math::
        m &\leftarrow m + (1-\beta_1)(g - m), \quad v \leftarrow v + (1-\beta_2)(g^2 - v) \\
        p &\leftarrow p - \frac{\eta\sqrt{1-\beta_2^t}}{1-\beta_1^t}
                 \cdot \frac{m}{\sqrt v + \epsilon}

    Rows without a gradient keep their moments and parameters. Unlike ``Adam``, ``eps`` is
    added to :math:`\sqrt v` before the bias correction is applied, the moments are updated
    as ``old + (1 - beta) * (new - old)`` (torch's sparse form), and there is no weight decay.

    Differences from stock ``optax.adam`` (the closest optax has): it decays the moments of
    every row at every step, so rows absent from a gradient keep moving (with their first
    moment) and their moments shrink; its ``eps`` is added after the bias correction.
    """

    def init_fn(params: PyTree) -> SparseAdamState:
        def check(path: Any, p: jax.Array) -> None:
            if jnp.iscomplexobj(p):
                raise ValueError(
                    f"Complex params at {jax.tree_util.keystr(path)}: SparseAdam does not support "
                    "complex parameters"
                )

        jax.tree_util.tree_map_with_path(check, params)
        return SparseAdamState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=jax.tree.map(jnp.zeros_like, params),
            exp_avg_sq=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates: PyTree, state: SparseAdamState, params: PyTree | None = None):
        del params  # SparseAdam has no weight decay
        count = optax.safe_increment(state.count)
        wide = widest_float()
        # static betas stay Python floats, so 1 - beta is computed in double, as in torch
        b1 = beta1 if isinstance(beta1, (int, float)) else jnp.asarray(beta1, wide)
        b2 = beta2 if isinstance(beta2, (int, float)) else jnp.asarray(beta2, wide)
        bias_correction1 = one_minus_power(beta1, count)
        bias_correction2 = one_minus_power(beta2, count)
        step_size = jnp.asarray(lr, wide) * jnp.sqrt(bias_correction2) / bias_correction1

        grads = jax.tree.map(lambda g: -g if maximize else g, updates)
        present = jax.tree.map(present_rows, grads)
        # torch: change = (new - old) * (1 - beta) on the present rows, then old += change
        m_change = jax.tree.map(lambda g, m: (g - m) * scalar(1 - b1, g), grads, state.exp_avg)
        v_change = jax.tree.map(lambda g, v: (g * g - v) * scalar(1 - b2, g), grads, state.exp_avg_sq)

        def keep_or_add(row, old, change):
            return jnp.where(row, old + change, old)

        exp_avg = jax.tree.map(keep_or_add, present, state.exp_avg, m_change)
        exp_avg_sq = jax.tree.map(keep_or_add, present, state.exp_avg_sq, v_change)

        def delta(row, m, m_step, v, v_step):
            numer = m_step + m  # torch adds the old values back to the changes
            denom = jnp.sqrt(v_step + v) + scalar(eps, m)
            step_update = scalar(-step_size, m) * (numer / denom)
            return jnp.where(row, step_update, jnp.zeros_like(step_update))

        deltas = jax.tree.map(delta, present, state.exp_avg, m_change, state.exp_avg_sq, v_change)
        return deltas, SparseAdamState(count, exp_avg, exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)


def SparseAdam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`sparse_adam` from ``torch.optim.SparseAdam``'s constructor arguments and
    defaults, validated as torch validates them (``lr`` and ``eps`` must be positive)."""
    if not callable(lr):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"Invalid learning rate: {lr!r} (expected a number)")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 < eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    beta1, beta2 = betas
    if not callable(beta1) and not 0.0 <= beta1 < 1.0:  # a callable: cycled by OneCycleLR or CyclicLR
        raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
    return optax.inject_hyperparams(
        sparse_adam, static_args=("maximize",) + static_betas(beta1, beta2), hyperparam_dtype=widest_float()
    )(lr=lr, beta1=beta1, beta2=beta2, eps=eps, maximize=maximize)
