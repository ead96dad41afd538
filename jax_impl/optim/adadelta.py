"""``torch.optim.Adadelta`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, fma, scalar, square_average, widest_float


class AdadeltaState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    square_avg: PyTree  # running average of squared gradients
    acc_delta: PyTree  # running average of squared updates


def adadelta(
    lr: float,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""Adadelta exactly as ``torch.optim.Adadelta`` computes it.

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        v_t &= \rho v_{t-1} + (1 - \rho) g^2 \\
        \Delta &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g, \qquad
        u_t = \rho u_{t-1} + (1 - \rho) \Delta^2 \\
        p &\leftarrow p - \eta\, \Delta

    with :math:`v` = ``square_avg`` and :math:`u` = ``acc_delta``.

    ``optax.adadelta(learning_rate, rho, eps, weight_decay)`` has the same equations; two
    differences: torch's learning rate defaults to 1.0 while optax's defaults to ``None``,
    which skips the sign flip (gradient *ascent*); and there is no ``maximize``.

    Rounding follows torch's CPU kernels, which fuse multiply-adds (``add(alpha=)``,
    ``addcmul``): see :func:`jax_impl.optim.adamax.fma`.
    """

    def init_fn(params: PyTree) -> AdadeltaState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return AdadeltaState(count=jnp.zeros([], jnp.int32), square_avg=zeros(), acc_delta=zeros())

    def update_fn(updates: PyTree, state: AdadeltaState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch Adadelta needs params in update() (weight decay reads them)")
        one_minus_rho = 1 - jnp.asarray(rho, widest_float())

        def gradient(g, p):  # torch: g.add(p, alpha=weight_decay), one FMA on CPU
            g = -g if maximize else g
            return fma(scalar(weight_decay, g), p, g)

        def running_square(avg, x):  # torch: avg.mul_(rho).addcmul_(x, x, value=1 - rho)
            return square_average(avg, x, rho, one_minus_rho)

        grads = jax.tree.map(gradient, updates, params)
        square_avg = jax.tree.map(running_square, state.square_avg, grads)

        def delta(u, v, g):  # torch: sqrt(u + eps).div_(sqrt(v + eps)).mul_(g)
            return jnp.sqrt(u + scalar(eps, u)) / jnp.sqrt(v + scalar(eps, v)) * g

        deltas = jax.tree.map(delta, state.acc_delta, square_avg, grads)
        acc_delta = jax.tree.map(running_square, state.acc_delta, deltas)
        # torch: p.add_(delta, alpha=-lr), one FMA; new_p - p is exact (Sterbenz) while new_p
        # is within a factor 2 of p, so optax.apply_updates lands on torch's new_p
        new_updates = jax.tree.map(lambda d, p: fma(-scalar(lr, d), d, p) - p, deltas, params)
        new_state = AdadeltaState(
            count=optax.safe_increment(state.count), square_avg=square_avg, acc_delta=acc_delta
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def Adadelta(
    lr: float = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0,
    foreach: bool | None = None,
    *,
    capturable: bool = False,
    maximize: bool = False,
    differentiable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`adadelta` from ``torch.optim.Adadelta``'s constructor arguments and defaults."""
    del foreach, capturable, differentiable  # choose torch kernels only
    check_lr(lr)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"Invalid rho value: {rho}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return optax.inject_hyperparams(adadelta, static_args=("maximize",), hyperparam_dtype=widest_float())(
        lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
    )
