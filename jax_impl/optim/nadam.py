"""``torch.optim.NAdam`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import Any, NamedTuple

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


class NAdamState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    exp_avg: PyTree  # first moment, shaped like the params
    exp_avg_sq: PyTree  # second moment, shaped like the params
    mu_product: jax.Array  # () in ``scalar_dtype``: torch keeps one per param, all equal


def nadam(
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    scalar_dtype: Any = jnp.float32,
) -> optax.GradientTransformation:
    r"""NAdam exactly as ``torch.optim.NAdam`` computes it (Dozat's momentum schedule).

    .. math::
        \mu_t &= \beta_1 \left(1 - \tfrac12\, 0.96^{t\psi}\right), \quad
        \Pi_t = \Pi_{t-1}\,\mu_t \\
        m_t &= \mathrm{lerp}(m_{t-1}, g, 1-\beta_1), \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2, \quad
        d = \sqrt{v_t / (1-\beta_2^t)} + \epsilon \\
        p &\leftarrow p - \frac{\eta (1-\mu_t)}{1-\Pi_t}\cdot\frac{g}{d}
               - \frac{\eta\,\mu_{t+1}}{1-\Pi_t\,\mu_{t+1}}\cdot\frac{m_t}{d}

    with :math:`\psi` = ``momentum_decay``. Coupled weight decay adds :math:`\lambda p` to
    :math:`g` (after ``maximize`` negates it); decoupled first scales :math:`p` by
    :math:`1 - \eta\lambda`.

    The running product :math:`\Pi_t` (state ``mu_product``) is kept in ``scalar_dtype``:
    torch keeps it as a tensor of its *default* dtype, float32 unless the user called
    ``torch.set_default_dtype(torch.float64)``, so by default it is rounded to float32 at
    every step even for float64 parameters, as in torch (:math:`\mu_t` is rounded to float32
    before the multiplication, as torch casts the Python double). Pass
    ``scalar_dtype=jnp.float64`` (static) to match a torch run with a float64 default dtype.
    Everything else that is a scalar (:math:`\mu_t`, :math:`\mu_{t+1}`, the bias correction,
    both step sizes, which read :math:`\Pi_t` as a double) is a Python double in torch and is
    computed here in the widest float enabled, then cast to the parameter dtype.

    XLA on CPU flushes subnormals to zero: once :math:`\Pi_t` falls below 1.2e-38 in float32
    (near step 110 at the default betas) it is 0 here where torch's is subnormal; the step
    sizes are unaffected (:math:`1 - \Pi_t` is 1 in double either way).

    Per element the roundings are torch's: ``addcmul``'s multiply-add, the division by the
    bias correction, the optional ``p * (1 - lr * wd)`` and the two ``addcdiv`` additions to
    :math:`p`, one at a time. The update returned is the new :math:`p` minus the old, which
    adding back reproduces exactly while the step is smaller than :math:`|p|/2` (Sterbenz).

    Differences from ``optax.nadam``: optax uses a constant :math:`\mu = \beta_1` (torch's
    ``momentum_decay=inf``) and a float64 :math:`\Pi_t`, and has no weight decay or
    ``maximize``.
    """

    def init_fn(params: PyTree) -> NAdamState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return NAdamState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=zeros(),
            exp_avg_sq=zeros(),
            mu_product=jnp.ones([], scalar_dtype),
        )

    def update_fn(updates: PyTree, state: NAdamState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch NAdam needs params in update() (weight decay reads them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        step = count.astype(wide)
        lr_ = jnp.asarray(lr, wide)
        # static betas stay Python floats, so 1 - beta is computed in double, as in torch
        b1 = beta1 if isinstance(beta1, (int, float)) else jnp.asarray(beta1, wide)
        b2 = beta2 if isinstance(beta2, (int, float)) else jnp.asarray(beta2, wide)
        bias_correction2 = one_minus_power(beta2, count)
        mu = b1 * (1 - 0.5 * jnp.asarray(0.96, wide) ** (step * momentum_decay))
        mu_next = b1 * (1 - 0.5 * jnp.asarray(0.96, wide) ** ((step + 1) * momentum_decay))
        # torch: mu_product *= mu, a scalar_dtype tensor times a Python double
        mu_product = state.mu_product * mu.astype(scalar_dtype)
        product = mu_product.astype(wide)
        grad_step = -lr_ * (1 - mu) / (1 - product)
        avg_step = (-lr_ * mu_next) / (1 - product * mu_next)

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

        def delta(g, m, v, p):
            denom = jnp.sqrt(divide(v, scalar(bias_correction2, v))) + scalar(eps, v)
            new_p = p
            if decoupled_weight_decay:
                new_p = rounded_product(p, scalar(1 - lr_ * weight_decay, p))  # torch: p.mul_
            # torch: two addcdiv_ calls, p + (value * t1) / denom each, rounded one at a time
            new_p = new_p + (scalar(grad_step, g) * g) / denom
            new_p = new_p + (scalar(avg_step, m) * m) / denom
            return new_p - p  # exact (Sterbenz) while new_p is within a factor 2 of p

        new_updates = jax.tree.map(delta, grads, exp_avg, exp_avg_sq, params)
        return new_updates, NAdamState(count, exp_avg, exp_avg_sq, mu_product)

    return optax.GradientTransformation(init_fn, update_fn)


def NAdam(
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`nadam` from ``torch.optim.NAdam``'s constructor arguments and defaults.

    Hyperparameters: ``lr``, ``eps``, ``weight_decay``, ``momentum_decay``, and ``beta1`` when
    it is scheduled (a callable); numeric ``betas`` (split into ``beta1``, ``beta2``),
    ``decoupled_weight_decay`` and ``maximize`` are static. ``mu_product`` is float32, as
    torch keeps it under its default default dtype; for a torch run with
    ``torch.set_default_dtype(torch.float64)`` build
    ``optax.inject_hyperparams(nadam, static_args=(...))(..., scalar_dtype=jnp.float64)``.
    """
    del foreach, capturable, differentiable  # choose torch kernels only
    beta1, beta2 = _check(lr, betas, eps, weight_decay)
    if not 0.0 <= momentum_decay:
        raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
    static = _STATIC + static_betas(beta1, beta2)
    return optax.inject_hyperparams(nadam, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
    )


_STATIC = ("decoupled_weight_decay", "maximize", "scalar_dtype")
