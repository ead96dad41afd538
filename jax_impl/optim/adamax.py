"""``torch.optim.Adamax`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

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
from jax_impl.optim.adam import _check, _lerp


class AdamaxState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    exp_avg: PyTree  # first moment, shaped like the params
    exp_inf: PyTree  # exponentially weighted infinity norm, shaped like the params


def adamax(
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""Adamax exactly as ``torch.optim.Adamax`` computes it.

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        m_t &= \mathrm{lerp}(m_{t-1}, g, 1-\beta_1), \quad
        u_t = \max(\beta_2 u_{t-1}, |g| + \epsilon) \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t} \cdot \frac{m_t}{u_t}

    Differences from ``optax.adamax``: ``weight_decay`` (coupled: added to the gradient) and
    ``maximize``, which optax lacks; the bias correction :math:`1-\beta_1^t` and the step size
    are computed in the widest float enabled (float64 under ``jax_enable_x64``), as torch
    computes them in Python double, then cast to the parameter dtype (optax computes them in
    the parameter dtype: after 200 float32 steps its parameters are 1e-7 relative off torch's,
    where these are bit-identical on CPU). As in torch the step is ``(-step_size * m) / u``,
    one rounding per operation; XLA fuses the weight decay and the ``lerp`` into
    multiply-adds, as torch's CPU kernels do.
    """

    def init_fn(params: PyTree) -> AdamaxState:
        return AdamaxState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=jax.tree.map(jnp.zeros_like, params),
            exp_inf=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates: PyTree, state: AdamaxState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch Adamax needs params in update() (weight decay reads them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        # static betas stay Python floats, so 1 - beta is computed in double, as in torch
        b1 = beta1 if isinstance(beta1, (int, float)) else jnp.asarray(beta1, wide)
        step_size = jnp.asarray(lr, wide) / one_minus_power(beta1, count)

        def gradient(g, p):
            g = -g if maximize else g
            return g + scalar(weight_decay, g) * p

        grads = jax.tree.map(gradient, updates, params)
        exp_avg = jax.tree.map(
            lambda m, g: _lerp(m, g, scalar(1 - b1, g)), state.exp_avg, grads
        )
        exp_inf = jax.tree.map(
            lambda u, g: jnp.maximum(u * scalar(beta2, u), jnp.abs(g) + scalar(eps, g)),
            state.exp_inf, grads,
        )
        # torch: p.addcdiv_(m, u, value=-step_size), i.e. p + (value * m) / u
        new_updates = jax.tree.map(lambda m, u: (scalar(-step_size, m) * m) / u, exp_avg, exp_inf)
        return new_updates, AdamaxState(count, exp_avg, exp_inf)

    return optax.GradientTransformation(init_fn, update_fn)


def Adamax(
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`adamax` from ``torch.optim.Adamax``'s constructor arguments and defaults.

    Hyperparameters: ``lr``, ``eps``, ``weight_decay``, and ``beta1`` when it is scheduled (a
    callable); numeric ``betas`` (split into ``beta1``, ``beta2``) and ``maximize`` are static.
    """
    del foreach, differentiable, capturable  # choose torch kernels only
    beta1, beta2 = _check(lr, betas, eps, weight_decay)
    static = ("maximize",) + static_betas(beta1, beta2)
    return optax.inject_hyperparams(adamax, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize,
    )
