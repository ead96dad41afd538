"""``torch.optim.SGD`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, scalar, widest_float


class SGDState(NamedTuple):
    count: jax.Array  # updates applied so far
    momentum_buffer: PyTree  # None when momentum == 0, as torch keeps no buffer then


def sgd(
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""Stochastic gradient descent exactly as ``torch.optim.SGD`` computes it.

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        b_1 &= g, \quad b_t = \mu b_{t-1} + (1 - \tau) g \\
        p &\leftarrow p - \eta\,(g + \mu b_t \text{ if nesterov else } b_t)

    Differences from ``optax.sgd``: the first momentum step stores the gradient itself, with
    no dampening (optax has no dampening at all); weight decay and ``maximize`` act on the
    gradient before momentum, as in torch. ``momentum == 0`` (a Python number) keeps no
    buffer, like torch; pass it as a static argument when injecting hyperparameters.

    The returned updates still have to be added to the parameters
    (``optax.apply_updates``); torch fuses that addition, so float32 results may differ from
    torch's by one unit in the last place.
    """
    has_buffer = not (isinstance(momentum, (int, float)) and momentum == 0)

    def init_fn(params: PyTree) -> SGDState:
        buffer = jax.tree.map(jnp.zeros_like, params) if has_buffer else None
        return SGDState(count=jnp.zeros([], jnp.int32), momentum_buffer=buffer)

    def update_fn(updates: PyTree, state: SGDState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch SGD needs params in update() (weight decay reads them)")

        def direction(g, p):
            g = -g if maximize else g
            return g + scalar(weight_decay, g) * p

        grads = jax.tree.map(direction, updates, params)
        buffer = state.momentum_buffer
        if has_buffer:
            first = state.count == 0

            def momentum_step(b, g):
                later = scalar(momentum, g) * b + scalar(1.0 - dampening, g) * g
                return jnp.where(first, g, later)

            buffer = jax.tree.map(momentum_step, buffer, grads)
            if nesterov:
                grads = jax.tree.map(lambda g, b: g + scalar(momentum, g) * b, grads, buffer)
            else:
                grads = buffer
        new_updates = jax.tree.map(lambda g: -scalar(lr, g) * g, grads)
        return new_updates, SGDState(count=optax.safe_increment(state.count), momentum_buffer=buffer)

    return optax.GradientTransformation(init_fn, update_fn)


def SGD(
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
) -> optax.GradientTransformation:
    """Build :func:`sgd` from ``torch.optim.SGD``'s constructor arguments and defaults."""
    del foreach, differentiable, fused  # choose torch kernels only
    check_lr(lr)
    scheduled = callable(momentum)  # cycled by OneCycleLR or CyclicLR
    if not scheduled and momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if nesterov and ((not scheduled and momentum <= 0) or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    static = ("nesterov", "maximize") + (("momentum",) if not scheduled and momentum == 0 else ())
    return optax.inject_hyperparams(sgd, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
    )
