"""``torch.optim.ASGD`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, fma, rounded_product, scalar, widest_float


class ASGDState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    eta: jax.Array  # () the current step size; one scalar, equal for every parameter
    mu: jax.Array  # () the averaging weight; one scalar, equal for every parameter
    ax: PyTree  # the averaged parameters


def asgd(
    lr: float,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    scalar_dtype: jnp.dtype = jnp.float32,
) -> optax.GradientTransformation:
    r"""Averaged SGD exactly as ``torch.optim.ASGD`` computes it.

    With :math:`\eta_0 = \eta` (``lr``), :math:`\mu_0 = 1` and :math:`t` the update count
    after this update:

    .. math::
        g &\leftarrow \pm g + \lambda_{wd}\, p \\
        p &\leftarrow p\,(1 - \lambda \eta_{t-1}) - \eta_{t-1}\, g \\
        a &\leftarrow a + \mu_{t-1} (p - a) \text{ if } \mu_{t-1} \ne 1
              \text{, else } a \leftarrow p \\
        \eta_t &= \frac{\eta}{(1 + \lambda \eta t)^{\alpha}}, \qquad
        \mu_t = \frac{1}{\max(1,\ t - t_0)}

    so averaging starts once :math:`t > t_0 + 1`; ``ax`` is the average (torch never
    swaps it into the model; neither does this).

    torch keeps ``eta`` and ``mu`` as 0-d tensors of its *default* dtype (float32 unless
    ``torch.set_default_dtype(torch.float64)``): they are computed in Python double and
    rounded to float32 every step, also for float64 parameters. ``scalar_dtype`` (default
    float32) reproduces that; pass ``jnp.float64`` to match a float64 default dtype.

    ``optax`` has no ASGD. Rounding follows torch's CPU kernels (``add(alpha=)`` is one FMA,
    see :func:`jax_impl.optim.adamax.fma`). The update returned is ``new_p - p`` (torch
    scales and then steps ``p`` in place): exact (Sterbenz) while ``new_p`` is within a
    factor 2 of ``p``, so ``optax.apply_updates`` lands on torch's ``new_p``; otherwise it
    can differ in the last place.
    """

    def init_fn(params: PyTree) -> ASGDState:
        return ASGDState(
            count=jnp.zeros([], jnp.int32),
            eta=jnp.asarray(lr, scalar_dtype),
            mu=jnp.ones([], scalar_dtype),
            ax=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates: PyTree, state: ASGDState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch ASGD needs params in update() (it scales them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        eta = state.eta.astype(wide)
        decay = 1 - jnp.asarray(lambd, wide) * eta

        def new_param(g, p):
            g = -g if maximize else g
            g = fma(scalar(weight_decay, g), p, g)  # torch: g.add(p, alpha=weight_decay)
            p = rounded_product(p, scalar(decay, p))  # torch: p.mul_(1 - lambd * eta)
            return fma(scalar(-eta, g), g, p)  # torch: p.add_(g, alpha=-eta), one FMA

        new_params = jax.tree.map(new_param, updates, params)

        def average(a, p):  # torch: a.add_(p.sub(a).mul_(mu)), or a.copy_(p) while mu == 1
            moved = a + rounded_product(p - a, state.mu.astype(a.dtype))
            return jnp.where(state.mu != 1, moved, p)

        ax = jax.tree.map(average, state.ax, new_params)
        step = count.astype(wide)
        lr_wide, lambd_wide = jnp.asarray(lr, wide), jnp.asarray(lambd, wide)
        new_eta = lr_wide / (1 + lambd_wide * lr_wide * step) ** jnp.asarray(alpha, wide)
        new_mu = 1 / jnp.maximum(1, step - jnp.asarray(t0, wide))
        new_updates = jax.tree.map(jnp.subtract, new_params, params)
        new_state = ASGDState(
            count=count,
            eta=new_eta.astype(scalar_dtype),
            mu=new_mu.astype(scalar_dtype),
            ax=ax,
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


_STATIC = ("maximize", "scalar_dtype")  # scalar_dtype: a dtype is callable, never a schedule


def ASGD(
    lr: float = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`asgd` from ``torch.optim.ASGD``'s constructor arguments and defaults.

    ``eta`` and ``mu`` are kept in float32, as torch keeps them under its default dtype.
    """
    del foreach, differentiable, capturable  # choose torch kernels only
    check_lr(lr)
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return optax.inject_hyperparams(asgd, static_args=_STATIC, hyperparam_dtype=widest_float())(
        lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize,
    )
