"""``torch.optim.Adagrad`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, fma, scalar, widest_float


class AdagradState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    sum: PyTree  # torch's key: the running sum of squared gradients


def adagrad(
    lr: float,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""Adagrad exactly as ``torch.optim.Adagrad`` computes it (dense gradients).

    .. math::
        g &\leftarrow \pm g + \lambda p, \qquad s_0 = \text{initial\_accumulator\_value} \\
        s_t &= s_{t-1} + g^2 \\
        p &\leftarrow p - \frac{\eta}{1 + (t - 1)\,\delta} \cdot \frac{g}{\sqrt{s_t} + \epsilon}

    with :math:`t` the update count after this update and :math:`\delta` = ``lr_decay``.
    The decayed rate is computed in the widest float enabled (torch: Python double), then
    cast to the parameter dtype.

    Differences from ``optax.adagrad``: the accumulator starts at 0 (optax: 0.1), ``eps``
    is 1e-10 and added *after* the square root (optax: ``rsqrt(s + 1e-7)``), and there are
    ``lr_decay``, coupled weight decay and ``maximize``. With ``eps=0`` torch divides
    0 by 0 (NaN) where a gradient has always been zero, and so does this.

    Rounding follows torch's CPU kernels (``addcmul`` and ``add(alpha=)`` are FMAs, see
    :func:`jax_impl.optim.adamax.fma`); the update is torch's ``(-clr * g) / std``, so
    ``optax.apply_updates`` adds it as torch's ``addcdiv_`` does.
    """

    def init_fn(params: PyTree) -> AdagradState:
        return AdagradState(
            count=jnp.zeros([], jnp.int32),
            sum=jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params),
        )

    def update_fn(updates: PyTree, state: AdagradState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch Adagrad needs params in update() (weight decay reads them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        step = count.astype(wide)
        clr = jnp.asarray(lr, wide) / (1 + (step - 1) * jnp.asarray(lr_decay, wide))

        def gradient(g, p):  # torch: g.add(p, alpha=weight_decay), one FMA on CPU
            g = -g if maximize else g
            return fma(scalar(weight_decay, g), p, g)

        grads = jax.tree.map(gradient, updates, params)
        sums = jax.tree.map(lambda s, g: fma(g, g, s), state.sum, grads)  # s.addcmul_(g, g)
        # torch: std = s.sqrt().add_(eps); p.addcdiv_(g, std, value=-clr) = p + (-clr * g) / std
        new_updates = jax.tree.map(
            lambda g, s: (-scalar(clr, g) * g) / (jnp.sqrt(s) + scalar(eps, s)), grads, sums
        )
        return new_updates, AdagradState(count=count, sum=sums)

    return optax.GradientTransformation(init_fn, update_fn)


def Adagrad(
    lr: float = 1e-2,
    lr_decay: float = 0,
    weight_decay: float = 0,
    initial_accumulator_value: float = 0,
    eps: float = 1e-10,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
) -> optax.GradientTransformation:
    """Build :func:`adagrad` from ``torch.optim.Adagrad``'s constructor arguments and defaults.

    Sparse gradients (torch's other Adagrad path) do not exist in JAX.
    """
    check_lr(lr)
    if not 0.0 <= lr_decay:
        raise ValueError(f"Invalid lr_decay value: {lr_decay}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not 0.0 <= initial_accumulator_value:
        raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if fused and differentiable:
        raise ValueError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise ValueError("`fused` and `foreach` cannot be `True` together.")
    # foreach, differentiable, fused choose torch kernels only
    return optax.inject_hyperparams(adagrad, static_args=("maximize",), hyperparam_dtype=widest_float())(
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        maximize=maximize,
    )
