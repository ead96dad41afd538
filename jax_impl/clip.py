"""Gradient clipping with PyTorch's exact formulas: ``torch.nn.utils.clip_grad_norm_`` and
``clip_grad_value_``.

``clip_grad_norm_(parameters, max_norm, norm_type)`` computes

    total_norm = ‖(‖g_1‖_p, ‖g_2‖_p, ...)‖_p          (per-tensor norms, then their norm)
    coef       = min(max_norm * (1 / (total_norm + 1e-6)), 1)
    g_i       <- g_i * coef                             (always multiplied, even by 1)

in the gradients' dtype, and returns ``total_norm`` (of the gradients before clipping).
``max_norm / tensor`` is ``tensor.reciprocal() * max_norm`` in torch, so the coefficient is two
roundings. ``optax.clip_by_global_norm`` differs: no ``1e-6`` (a coefficient ``max_norm / norm``),
and it leaves the gradients untouched unless the norm exceeds ``max_norm`` (torch multiplies by
``max_norm / (norm + 1e-6)`` whenever that is below 1, i.e. already at ``norm = max_norm``);
it has only the 2-norm. ``optax.clip(v)`` is ``clip_grad_value_``.

:func:`clip_grad_norm` and :func:`clip_grad_value` are pure functions of a gradient pytree, for a
train step that clips between differentiation and the optimizer (:func:`jax_impl.step.make_train_step`'s
``clip``); :func:`clip_grad_norm_transform` is the same as an optax ``GradientTransformation``
whose state holds the last total norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["vector_norm", "clip_grad_norm", "clip_grad_value", "make_clip", "ClipGradNormState",
           "clip_grad_norm_transform"]


def _norm_type(norm_type: float | str) -> float:
    value = float(norm_type)  # torch accepts 'inf' and float('inf')
    if math.isnan(value) or value <= 0:
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    return value


def vector_norm(x: jax.Array, norm_type: float = 2.0) -> jax.Array:
    """``torch.linalg.vector_norm(x, norm_type)`` over all elements, in x's dtype: the max of
    ``|x|`` for ``inf``, ``sqrt(sum(x**2))`` for 2, ``sum(|x|**p) ** (1/p)`` otherwise."""
    norm_type = _norm_type(norm_type)
    x = jnp.ravel(x)
    if math.isinf(norm_type):
        return jnp.max(jnp.abs(x), initial=jnp.zeros((), x.dtype))
    if norm_type == 2.0:
        return jnp.sqrt(jnp.sum(x * x))
    if norm_type == 1.0:
        return jnp.sum(jnp.abs(x))
    return jnp.sum(jnp.abs(x) ** norm_type) ** (1.0 / norm_type)


def clip_grad_norm(grads: Any, max_norm: float, norm_type: float = 2.0) -> tuple[Any, jax.Array]:
    """``torch.nn.utils.clip_grad_norm_`` on a gradient pytree: ``(clipped grads, total_norm)``.

    ``error_if_nonfinite`` cannot raise inside a compiled function: check the returned norm
    with ``jnp.isfinite`` outside it."""
    leaves, treedef = jax.tree.flatten(grads)
    if not leaves:
        return grads, jnp.zeros(())
    dtype = leaves[0].dtype
    norms = jnp.stack([vector_norm(leaf, norm_type).astype(dtype) for leaf in leaves])
    total_norm = vector_norm(norms, norm_type)
    coef = (jnp.ones((), dtype) / (total_norm + jnp.asarray(1e-6, dtype))) * jnp.asarray(max_norm, dtype)
    coef = jnp.minimum(coef, jnp.ones((), dtype))
    clipped = [leaf * coef.astype(leaf.dtype) for leaf in leaves]
    return jax.tree.unflatten(treedef, clipped), total_norm


def clip_grad_value(grads: Any, clip_value: float) -> Any:
    """``torch.nn.utils.clip_grad_value_``: every element clamped to ``[-clip_value, clip_value]``."""
    return jax.tree.map(lambda g: jnp.clip(g, -jnp.asarray(clip_value, g.dtype), jnp.asarray(clip_value, g.dtype)),
                        grads)


def make_clip(max_norm: float | None = None, norm_type: float = 2.0,
              clip_value: float | None = None) -> Callable[[Any], tuple[Any, jax.Array | None]] | None:
    """``clip(grads) -> (grads, total_norm or None)``: the norm clipping, then the value clipping,
    as :class:`torch_ref.loop.Clipping` applies them; None when neither is set."""
    if max_norm is None and clip_value is None:
        return None
    if max_norm is not None:
        _norm_type(norm_type)
        if max_norm < 0:
            raise ValueError(f"max_norm must be non-negative, got {max_norm}")
    if clip_value is not None and clip_value < 0:
        raise ValueError(f"clip_value must be non-negative, got {clip_value}")

    def clip(grads: Any) -> tuple[Any, jax.Array | None]:
        total_norm = None
        if max_norm is not None:
            grads, total_norm = clip_grad_norm(grads, max_norm, norm_type)
        if clip_value is not None:
            grads = clip_grad_value(grads, clip_value)
        return grads, total_norm

    return clip


class ClipGradNormState(NamedTuple):
    total_norm: jax.Array  # of the gradients of the last update, before clipping


def clip_grad_norm_transform(max_norm: float, norm_type: float = 2.0) -> optax.GradientTransformation:
    """:func:`clip_grad_norm` as an optax transform, to chain before a torch-exact optimizer:
    ``optax.chain(clip_grad_norm_transform(1.0), jax_impl.optim.from_torch("SGD(lr=0.1)"))``.
    The state keeps the last ``total_norm`` (what ``clip_grad_norm_`` returns)."""
    _norm_type(norm_type)

    def init(params: Any) -> ClipGradNormState:
        leaves = jax.tree.leaves(params)
        return ClipGradNormState(jnp.zeros((), leaves[0].dtype if leaves else jnp.float32))

    def update(updates: Any, state: ClipGradNormState, params: Any = None):
        del params
        clipped, total_norm = clip_grad_norm(updates, max_norm, norm_type)
        return clipped, ClipGradNormState(total_norm.astype(state.total_norm.dtype))

    return optax.GradientTransformation(init, update)
