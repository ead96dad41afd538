"""``torch.optim.RAdam`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import (
    PyTree,
    divide,
    one_minus_power,
    rounded_product,
    scalar,
    square_average,
    static_betas,
    widest_float,
)
from jax_impl.optim.adam import _check, _lerp


class RAdamState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    exp_avg: PyTree  # first moment, shaped like the params
    exp_avg_sq: PyTree  # second moment, shaped like the params


def radam(
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""Rectified Adam exactly as ``torch.optim.RAdam`` computes it.

    .. math::
        m_t &= \mathrm{lerp}(m_{t-1}, g, 1-\beta_1), \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \quad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}, \quad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}} \\
        p &\leftarrow p - \frac{m_t}{1-\beta_1^t}\,\eta \cdot
            \begin{cases}
                \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon}\, r_t & \rho_t > 5 \\
                1 & \text{otherwise}
            \end{cases}

    Coupled weight decay adds :math:`\lambda p` to the gradient (after ``maximize`` negates
    it); decoupled first scales :math:`p` by :math:`1 - \eta\lambda`. The scalars (bias
    corrections, :math:`\rho_t`, :math:`r_t`) are Python doubles in torch: here they are
    computed in the widest float enabled, then cast to the parameter dtype.

    Per element the roundings are torch's (``addcmul``'s multiply-add, the division by the
    bias correction, each product rounded before it reaches :math:`p`); with decoupled weight
    decay the update returned is the new :math:`p` minus the old, which adding back
    reproduces exactly while the step is smaller than :math:`|p|/2` (Sterbenz).

    Differences from ``optax.radam``: torch adds :math:`\epsilon` to :math:`\sqrt{v_t}`
    before the bias correction, so its effective epsilon is :math:`\epsilon/\sqrt{1-\beta_2^t}`
    (optax: :math:`\hat m/(\sqrt{\hat v}+\epsilon)`); torch rectifies when
    :math:`\rho_t > 5`, optax when :math:`\rho_t \ge 5`; optax has no weight decay or
    ``maximize``.
    """

    def init_fn(params: PyTree) -> RAdamState:
        return RAdamState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=jax.tree.map(jnp.zeros_like, params),
            exp_avg_sq=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates: PyTree, state: RAdamState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch RAdam needs params in update() (weight decay reads them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        step = count.astype(wide)
        lr_ = jnp.asarray(lr, wide)
        # static betas stay Python floats, so 1 - beta is computed in double, as in torch
        b1 = beta1 if isinstance(beta1, (int, float)) else jnp.asarray(beta1, wide)
        b2 = beta2 if isinstance(beta2, (int, float)) else jnp.asarray(beta2, wide)
        bias_correction1 = one_minus_power(beta1, count)
        bias_correction2 = one_minus_power(beta2, count)
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * step * b2**step / bias_correction2
        rect = jnp.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )  # NaN while rho_t < 4, where it is not used
        rectify = rho_t > 5

        def gradient(g, p):
            g = -g if maximize else g
            if decoupled_weight_decay:
                return g
            return g + scalar(weight_decay, g) * p

        grads = jax.tree.map(gradient, updates, params)
        exp_avg = jax.tree.map(
            lambda m, g: _lerp(m, g, scalar(1 - b1, g)), state.exp_avg, grads
        )
        # torch: v.mul_(b2).addcmul_(g, g, value=1 - b2)
        exp_avg_sq = jax.tree.map(lambda v, g: square_average(v, g, b2, 1 - b2), state.exp_avg_sq, grads)

        def delta(m, v, p):
            plain = divide(m, scalar(bias_correction1, m)) * scalar(lr_, m)
            # torch: sqrt(1 - beta2^t) / (sqrt(v) + eps) is reciprocal(sqrt(v) + eps) * scalar
            adaptive = (1 / (jnp.sqrt(v) + scalar(eps, v))) * scalar(jnp.sqrt(bias_correction2), v)
            rectified = rounded_product(plain * adaptive, scalar(rect, m))
            descent = jnp.where(rectify, rectified, plain)
            if not decoupled_weight_decay:
                return -descent
            # torch: p.mul_(1 - lr * wd), then p.add_(descent, alpha=-1), rounded one at a time
            new_p = rounded_product(p, scalar(1 - lr_ * weight_decay, p)) - descent
            return new_p - p  # exact (Sterbenz) while new_p is within a factor 2 of p

        new_updates = jax.tree.map(delta, exp_avg, exp_avg_sq, params)
        return new_updates, RAdamState(count, exp_avg, exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)


def RAdam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`radam` from ``torch.optim.RAdam``'s constructor arguments and defaults.

    Hyperparameters: ``lr``, ``eps``, ``weight_decay``, and ``beta1`` when it is scheduled (a
    callable); numeric ``betas`` (split into ``beta1``, ``beta2``), ``decoupled_weight_decay``
    and ``maximize`` are static.
    """
    del foreach, capturable, differentiable  # choose torch kernels only
    beta1, beta2 = _check(lr, betas, eps, weight_decay)
    static = ("decoupled_weight_decay", "maximize") + static_betas(beta1, beta2)
    return optax.inject_hyperparams(radam, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
    )
