"""``torch.optim.Adam`` and ``torch.optim.AdamW`` as optax ``GradientTransformation``s."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import (
    PyTree,
    check_lr,
    one_minus_power,
    rounded_product,
    scalar,
    square_average,
    static_betas,
    widest_float,
)


class AdamState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    exp_avg: PyTree
    exp_avg_sq: PyTree
    max_exp_avg_sq: PyTree  # None unless amsgrad


def _lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """``torch.lerp``: the two-branch formula torch uses, exact at both ends."""
    return jnp.where(
        weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight)
    )


def adam(
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> optax.GradientTransformation:
    r"""Adam exactly as ``torch.optim.Adam`` (and AdamW, with ``decoupled_weight_decay``).

    .. math::
        m_t &= \mathrm{lerp}(m_{t-1}, g, 1-\beta_1), \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t} \cdot
              \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    where :math:`\hat v_t = \max(\hat v_{t-1}, v_t)` with amsgrad (the maximum of the *raw*
    second moment, unlike ``optax.amsgrad``). Coupled weight decay adds :math:`\lambda p` to
    the gradient; decoupled (AdamW) first scales :math:`p` by :math:`1 - \eta\lambda`.

    torch computes the bias corrections and the step size in Python double precision; here
    they are computed in the widest float JAX has enabled (float64 under ``jax_enable_x64``),
    then cast to the parameter dtype, as torch casts them. Betas given as Python floats (the
    builders pass them so, unless scheduled) keep ``1 - beta`` and the bias corrections in
    double even without x64 (:func:`~jax_impl.optim._base.one_minus_power`).
    """

    def init_fn(params: PyTree) -> AdamState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return AdamState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=zeros(),
            exp_avg_sq=zeros(),
            max_exp_avg_sq=zeros() if amsgrad else None,
        )

    def update_fn(updates: PyTree, state: AdamState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch Adam needs params in update() (weight decay reads them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        # static betas stay Python floats, so 1 - beta is computed in double, as in torch
        b1 = beta1 if isinstance(beta1, (int, float)) else jnp.asarray(beta1, wide)
        b2 = beta2 if isinstance(beta2, (int, float)) else jnp.asarray(beta2, wide)
        bias_correction1 = one_minus_power(beta1, count)
        bias_correction2_sqrt = jnp.sqrt(one_minus_power(beta2, count))
        step_size = jnp.asarray(lr, wide) / bias_correction1

        def gradient(g, p):
            g = -g if maximize else g
            if decoupled_weight_decay:
                return g
            return g + scalar(weight_decay, g) * p

        grads = jax.tree.map(gradient, updates, params)
        exp_avg = jax.tree.map(
            lambda m, g: _lerp(m, g, scalar(1 - b1, g)), state.exp_avg, grads
        )
        # torch: v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        exp_avg_sq = jax.tree.map(lambda v, g: square_average(v, g, b2, 1 - b2), state.exp_avg_sq, grads)
        max_exp_avg_sq = state.max_exp_avg_sq
        second = exp_avg_sq
        if amsgrad:
            max_exp_avg_sq = jax.tree.map(jnp.maximum, max_exp_avg_sq, exp_avg_sq)
            second = max_exp_avg_sq

        def delta(m, v, p):
            denom = jnp.sqrt(v) / scalar(bias_correction2_sqrt, v) + scalar(eps, v)
            # torch: p.addcdiv_(m, denom, value=-step_size), which its CPU kernel computes as
            # p + (value * m) / denom: the product first (value * (m / denom) differs in ~3%)
            step_update = rounded_product(m, -scalar(step_size, m)) / denom
            if decoupled_weight_decay:
                # torch: p.mul_(1 - lr * wd), then the Adam step on the decayed p. Rounded in that
                # order, as the difference from p: apply_updates' p + (new - p) gives new exactly
                # (Sterbenz) wherever the step is small, which it is
                decayed = rounded_product(p, scalar(1 - jnp.asarray(lr, wide) * weight_decay, p))
                return (decayed + step_update) - p
            return step_update

        new_updates = jax.tree.map(delta, exp_avg, second, params)
        return new_updates, AdamState(count, exp_avg, exp_avg_sq, max_exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)


def _check(lr, betas, eps, weight_decay) -> tuple[float, float]:
    check_lr(lr)
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    beta1, beta2 = betas
    if not callable(beta1) and not 0.0 <= beta1 < 1.0:  # a callable: cycled by OneCycleLR or CyclicLR
        raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return beta1, beta2


_STATIC = ("amsgrad", "maximize", "decoupled_weight_decay")


def Adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`adam` from ``torch.optim.Adam``'s constructor arguments and defaults."""
    del foreach, capturable, differentiable, fused  # choose torch kernels only
    beta1, beta2 = _check(lr, betas, eps, weight_decay)
    return optax.inject_hyperparams(adam, static_args=_STATIC + static_betas(beta1, beta2),
                                    hyperparam_dtype=widest_float())(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
    )


def AdamW(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW``: Adam with decoupled weight decay, whose default is 1e-2.

    (``optax.adamw`` defaults to 1e-4; it adds ``lr * wd * p`` to the update where torch
    first scales ``p`` by ``1 - lr * wd``: equal in exact arithmetic, rounded differently.)
    """
    return Adam(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
        maximize=maximize, foreach=foreach, capturable=capturable,
        differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
    )
