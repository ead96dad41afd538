"""``torch.optim.NAdam`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, scalar, widest_float
from jax_impl.optim.adam import _lerp
from jax_impl.optim.adamax import check_adam_like


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
    :math:`1 - \eta\lambda` (here: adds :math:`-\eta\lambda p` to the update).

    The running product :math:`\Pi_t` (state ``mu_product``) is kept in ``scalar_dtype``:
    torch keeps it as a tensor of its *default* dtype, float32 unless the user called
    ``torch.set_default_dtype(torch.float64)``, so by default it is rounded to float32 at
    every step even for float64 parameters, as in torch (:math:`\mu_t` is rounded to float32
    before the multiplication, as torch casts the Python double). Pass
    ``scalar_dtype=jnp.float64`` (static) to match a torch run with a float64 default dtype.
    Everything else that is a scalar (:math:`\mu_t`, :math:`\mu_{t+1}`, the bias correction,
    both step sizes, which read :math:`\Pi_t` as a double) is a Python double in torch and is
    computed here in the widest float enabled, then cast to the parameter dtype.

    Differences from ``optax.nadam``: optax uses a constant :math:`\mu = \beta_1` (torch's
    ``momentum_decay=inf``) with Adam's bias corrections, and has no weight decay,
    ``maximize`` or ``mu_product``.
    """

    def init_fn(params: PyTree) -> NAdamState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
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
        lr_, b1, b2 = (jnp.asarray(x, wide) for x in (lr, beta1, beta2))
        bias_correction2 = 1 - b2**step
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
        exp_avg_sq = jax.tree.map(
            lambda v, g: v * scalar(b2, v) + (scalar(1 - b2, g) * g) * g, state.exp_avg_sq, grads
        )

        def delta(g, m, v, p):
            denom = jnp.sqrt(v / scalar(bias_correction2, v)) + scalar(eps, v)
            # torch: two addcdiv_ calls, p + (value * t1) / denom each
            step_update = (scalar(grad_step, g) * g) / denom + (scalar(avg_step, m) * m) / denom
            if decoupled_weight_decay:
                # torch: p.mul_(1 - lr * wd) before the step, i.e. p += -lr*wd*p
                step_update = step_update - scalar(lr_ * weight_decay, p) * p
            return step_update

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

    Hyperparameters: ``lr``, ``beta1``, ``beta2`` (torch's ``betas``), ``eps``,
    ``weight_decay``, ``momentum_decay``; ``decoupled_weight_decay`` and ``maximize`` are
    static. ``mu_product`` is float32, as torch keeps it under its default default dtype; for
    a torch run with ``torch.set_default_dtype(torch.float64)`` build
    ``optax.inject_hyperparams(nadam, static_args=(...))(..., scalar_dtype=jnp.float64)``.
    """
    del foreach, capturable, differentiable  # choose torch kernels only
    beta1, beta2 = check_adam_like(lr, betas, eps, weight_decay)
    if not 0.0 <= momentum_decay:
        raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
    return optax.inject_hyperparams(nadam, static_args=_STATIC, hyperparam_dtype=widest_float())(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
    )


_STATIC = ("decoupled_weight_decay", "maximize", "scalar_dtype")
