"""``torch.optim.RAdam`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, scalar, widest_float
from jax_impl.optim.adam import _lerp
from jax_impl.optim.adamax import check_adam_like


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
    it); decoupled first scales :math:`p` by :math:`1 - \eta\lambda` (here: adds
    :math:`-\eta\lambda p` to the update). The scalars (bias corrections, :math:`\rho_t`,
    :math:`r_t`) are Python doubles in torch: here they are computed in the widest float
    enabled, then cast to the parameter dtype.

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
        lr_, b1, b2 = (jnp.asarray(x, wide) for x in (lr, beta1, beta2))
        bias_correction1 = 1 - b1**step
        bias_correction2 = 1 - b2**step
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
        exp_avg_sq = jax.tree.map(
            lambda v, g: v * scalar(b2, v) + (scalar(1 - b2, g) * g) * g, state.exp_avg_sq, grads
        )

        def delta(m, v, p):
            plain = (m / scalar(bias_correction1, m)) * scalar(lr_, m)
            # torch: sqrt(1 - beta2^t) / (sqrt(v) + eps) is reciprocal(sqrt(v) + eps) * scalar
            adaptive = (1 / (jnp.sqrt(v) + scalar(eps, v))) * scalar(jnp.sqrt(bias_correction2), v)
            rectified = (plain * adaptive) * scalar(rect, m)
            step_update = -jnp.where(rectify, rectified, plain)
            if decoupled_weight_decay:
                # torch: p.mul_(1 - lr * wd) before the step, i.e. p += -lr*wd*p
                step_update = step_update - scalar(lr_ * weight_decay, p) * p
            return step_update

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

    Hyperparameters: ``lr``, ``beta1``, ``beta2`` (torch's ``betas``), ``eps``,
    ``weight_decay``; ``decoupled_weight_decay`` and ``maximize`` are static.
    """
    del foreach, capturable, differentiable  # choose torch kernels only
    beta1, beta2 = check_adam_like(lr, betas, eps, weight_decay)
    return optax.inject_hyperparams(
        radam, static_args=("decoupled_weight_decay", "maximize"), hyperparam_dtype=widest_float()
    )(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
    )
