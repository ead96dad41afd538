"""``torch.optim.Adamax`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, scalar, widest_float
from jax_impl.optim.adam import _lerp


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
    float32 for float32 parameters, about 1e-5 relative off torch in float32). As in torch the
    step is ``(-step_size * m) / u``, one rounding per operation.
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
        b1 = jnp.asarray(beta1, wide)
        step_size = jnp.asarray(lr, wide) / (1 - b1 ** count.astype(wide))

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


def check_adam_like(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> tuple[Any, Any]:
    """The checks torch's Adamax, NAdam and RAdam constructors share, in torch's order and
    wording; returns ``betas`` split into ``(beta1, beta2)``.

    ``lr`` and ``beta1`` may be callables of the update count (schedules: torch's
    OneCycleLR/CyclicLR cycle ``betas[0]``); they are not checked.
    """
    check_lr(lr)
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    beta1, beta2 = betas
    if not callable(beta1) and not 0.0 <= beta1 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return beta1, beta2


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

    Hyperparameters: ``lr``, ``beta1``, ``beta2`` (torch's ``betas``), ``eps``,
    ``weight_decay``; ``maximize`` is static.
    """
    del foreach, differentiable, capturable  # choose torch kernels only
    beta1, beta2 = check_adam_like(lr, betas, eps, weight_decay)
    return optax.inject_hyperparams(adamax, static_args=("maximize",), hyperparam_dtype=widest_float())(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize,
    )
