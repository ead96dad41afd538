"""``torch.optim.Rprop`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, scalar, widest_float


class RpropState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    prev: PyTree  # the previous step's (possibly zeroed) gradient
    step_size: PyTree  # per-element step sizes, starting at lr


def rprop(
    lr: float,
    etaminus: float = 0.5,
    etaplus: float = 1.2,
    step_size_min: float = 1e-6,
    step_size_max: float = 50.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""Resilient backpropagation exactly as ``torch.optim.Rprop`` computes it.

    Per element, with :math:`s = \operatorname{sign}(g \cdot g_{\text{prev}})`:

    .. math::
        f &= \eta_+ \text{ if } s > 0, \quad \eta_- \text{ if } s < 0, \quad 1 \text{ if } s = 0 \\
        \Delta_t &= \operatorname{clamp}(\Delta_{t-1} f,\ \Delta_{\min},\ \Delta_{\max}),
            \qquad \Delta_0 = \eta \\
        g &\leftarrow 0 \text{ where } f = \eta_- \text{ (the sign changed)} \\
        p &\leftarrow p - \operatorname{sign}(g)\, \Delta_t, \qquad g_{\text{prev}} \leftarrow g

    So after a sign change the parameter does not move, and the next step sees
    :math:`g_{\text{prev}} = 0` (factor 1). ``lr`` is used only to initialise the step sizes
    (as in torch, a later change of ``lr`` has no effect). torch's ``etas`` and ``step_sizes``
    tuples are split into ``etaminus, etaplus`` and ``step_size_min, step_size_max``.

    Differences from ``optax.rprop`` (optax 0.2.8): optax's update lags one step (its first
    update is zero and each later one is the previous step's; optax pull request #1725);
    where :math:`g \cdot g_{\text{prev}} = 0` optax leaves the step size unclamped, so a
    ``lr`` outside the step-size bounds is never clamped; and it has no ``maximize``.
    ``lr`` here is torch's (only the initial step size; the update is not scaled by it).
    """

    def init_fn(params: PyTree) -> RpropState:
        return RpropState(
            count=jnp.zeros([], jnp.int32),
            prev=jax.tree.map(jnp.zeros_like, params),
            step_size=jax.tree.map(lambda p: jnp.full_like(p, lr), params),
        )

    def update_fn(updates: PyTree, state: RpropState, params: PyTree | None = None):
        del params  # Rprop reads only the gradients

        def factor(g, prev):
            s = jnp.sign(g * prev)
            one = jnp.ones_like(s)
            # where none of the three holds (a NaN), torch leaves the NaN in place
            return jnp.where(
                s > 0, scalar(etaplus, s),
                jnp.where(s < 0, scalar(etaminus, s), jnp.where(s == 0, one, s)),
            )

        grads = jax.tree.map(lambda g: -g if maximize else g, updates)
        factors = jax.tree.map(factor, grads, state.prev)

        def new_step_size(size, f):  # torch: size.mul_(f).clamp_(min, max)
            return jnp.minimum(jnp.maximum(size * f, scalar(step_size_min, size)),
                               scalar(step_size_max, size))

        step_size = jax.tree.map(new_step_size, state.step_size, factors)
        grads = jax.tree.map(
            lambda g, f: jnp.where(f == scalar(etaminus, f), jnp.zeros_like(g), g), grads, factors
        )
        new_updates = jax.tree.map(lambda g, size: -(jnp.sign(g) * size), grads, step_size)
        new_state = RpropState(count=optax.safe_increment(state.count), prev=grads, step_size=step_size)
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def Rprop(
    lr: float = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50),
    *,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`rprop` from ``torch.optim.Rprop``'s constructor arguments and defaults.

    Hyperparameters: ``etas -> (etaminus, etaplus)``,
    ``step_sizes -> (step_size_min, step_size_max)`` (torch's own names for them).
    """
    del capturable, foreach, differentiable  # choose torch kernels only
    check_lr(lr)
    etaminus, etaplus = etas
    if not 0.0 < etaminus < 1.0 < etaplus:
        raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}")
    step_size_min, step_size_max = step_sizes
    return optax.inject_hyperparams(rprop, static_args=("maximize",), hyperparam_dtype=widest_float())(
        lr=lr,
        etaminus=etaminus,
        etaplus=etaplus,
        step_size_min=step_size_min,
        step_size_max=step_size_max,
        maximize=maximize,
    )
