"""``torch.optim.RMSprop`` as an optax ``GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, check_lr, fma, rounded_product, scalar, square_average, widest_float


def _lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """``torch.lerp`` with a scalar weight as torch's CPU kernel computes it: one FMA,
    ``start + w (end - start)`` for ``w < 0.5``, else ``end + (w - 1)(end - start)``."""
    small = weight < 0.5
    return fma(jnp.where(small, weight, weight - 1), end - start, jnp.where(small, start, end))


class RMSpropState(NamedTuple):
    count: jax.Array  # torch's per-parameter ``step``
    square_avg: PyTree
    momentum_buffer: PyTree  # None when momentum == 0, as torch keeps no buffer then
    grad_avg: PyTree  # None unless centered


def rmsprop(
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformation:
    r"""RMSprop exactly as ``torch.optim.RMSprop`` computes it.

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g^2, \quad
        \bar g_t = \mathrm{lerp}(\bar g_{t-1}, g, 1 - \alpha) \text{ (centered)} \\
        d &= \sqrt{v_t - \bar g_t^2} + \epsilon \quad (\sqrt{v_t} + \epsilon
              \text{ when not centered}) \\
        b_t &= \mu b_{t-1} + g / d, \quad p \leftarrow p - \eta\, b_t
              \quad (p \leftarrow p - \eta\, g / d \text{ when } \mu = 0)

    Differences from ``optax.rmsprop``: torch's decay ``alpha`` defaults to 0.99 (optax's
    ``decay`` to 0.9); ``eps`` is added *after* the square root (optax's default
    ``eps_in_sqrt=True`` adds it inside); the learning rate multiplies the momentum buffer
    on the way out (optax folds it into the buffer, which differs once ``lr`` changes);
    weight decay and ``maximize`` act on the gradient first. ``momentum`` may be a schedule
    (a callable of the update count, as torch's OneCycleLR/CyclicLR cycle it); a step whose
    momentum is 0 leaves the buffer untouched, as torch does. ``momentum == 0`` (a Python
    number) keeps no buffer; pass it as a static argument when injecting hyperparameters.

    Rounding follows torch's CPU kernels, which fuse multiply-adds (``add(alpha=)``,
    ``addcmul``, ``lerp``): see :func:`jax_impl.optim.adamax.fma`. With momentum the update
    returned is ``new_p - p``, exact while ``new_p`` is within a factor 2 of ``p``, so
    ``optax.apply_updates`` lands on torch's ``new_p``.
    """
    has_buffer = not (isinstance(momentum, (int, float)) and momentum == 0)

    def init_fn(params: PyTree) -> RMSpropState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return RMSpropState(
            count=jnp.zeros([], jnp.int32),
            square_avg=zeros(),
            momentum_buffer=zeros() if has_buffer else None,
            grad_avg=zeros() if centered else None,
        )

    def update_fn(updates: PyTree, state: RMSpropState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch RMSprop needs params in update() (weight decay reads them)")
        wide = widest_float()
        one_minus_alpha = 1 - jnp.asarray(alpha, wide)

        def gradient(g, p):  # torch: g.add(p, alpha=weight_decay), one FMA on CPU
            g = -g if maximize else g
            return fma(scalar(weight_decay, g), p, g)

        grads = jax.tree.map(gradient, updates, params)
        # torch: square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        square_avg = jax.tree.map(lambda v, g: square_average(v, g, alpha, one_minus_alpha), state.square_avg, grads)
        grad_avg = state.grad_avg
        if centered:
            grad_avg = jax.tree.map(
                lambda m, g: _lerp(m, g, scalar(one_minus_alpha, g)), grad_avg, grads
            )
            # torch: square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_().add_(eps)
            denom = jax.tree.map(
                lambda v, m: jnp.sqrt(fma(-m, m, v)) + scalar(eps, v), square_avg, grad_avg
            )
        else:
            denom = jax.tree.map(lambda v: jnp.sqrt(v) + scalar(eps, v), square_avg)

        buffer = state.momentum_buffer
        if has_buffer:
            use_buffer = jnp.asarray(momentum) > 0  # a scheduled momentum may reach 0

            def momentum_step(b, g, d):  # torch: buf.mul_(momentum).addcdiv_(g, d)
                return jnp.where(use_buffer, rounded_product(b, scalar(momentum, b)) + g / d, b)

            def delta(b, g, d, p):
                # torch: p.add_(buf, alpha=-lr), one FMA; new_p - p is exact (Sterbenz) while
                # new_p is within a factor 2 of p, so apply_updates gives torch's new_p
                with_buffer = fma(-scalar(lr, b), b, p) - p
                return jnp.where(use_buffer, with_buffer, (-scalar(lr, g) * g) / d)

            buffer = jax.tree.map(momentum_step, buffer, grads, denom)
            new_updates = jax.tree.map(delta, buffer, grads, denom, params)
        else:
            # torch: p.addcdiv_(g, d, value=-lr), i.e. p + (-lr * g) / d
            new_updates = jax.tree.map(lambda g, d: (-scalar(lr, g) * g) / d, grads, denom)
        new_state = RMSpropState(
            count=optax.safe_increment(state.count),
            square_avg=square_avg,
            momentum_buffer=buffer,
            grad_avg=grad_avg,
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def RMSprop(
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0,
    momentum: float = 0,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`rmsprop` from ``torch.optim.RMSprop``'s constructor arguments and defaults.

    ``lr`` and ``momentum`` may be schedules (callables of the update count).
    """
    del capturable, foreach, differentiable  # choose torch kernels only
    check_lr(lr)
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not callable(momentum) and not 0.0 <= momentum:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not 0.0 <= alpha:
        raise ValueError(f"Invalid alpha value: {alpha}")
    no_buffer = not callable(momentum) and momentum == 0
    static = ("centered", "maximize") + (("momentum",) if no_buffer else ())
    return optax.inject_hyperparams(rmsprop, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
    )
