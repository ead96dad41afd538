"""``torch.optim.Adafactor`` as an optax ``GradientTransformation``.

Against stock ``optax.adafactor(learning_rate)`` (measured in tests/parity/test_optim_special.py):
optax leaves dimensions under ``min_dim_size_to_factor=128`` unfactored (torch factors every
parameter of two or more dimensions), so on small matrices it is another algorithm (0.093
relative after 20 steps). With factoring forced it agrees with torch's defaults to 2.4e-9
(optax adds ``eps=1e-30`` to the squared gradient where torch clamps with ``eps1``), but it
factors the two *largest* dimensions (torch: the last two; 0.057 on a (4, 2, 3) tensor), its
``weight_decay_rate`` is not multiplied by the learning rate (torch's ``weight_decay`` is;
0.89), and it multiplies the update by ``learning_rate`` where torch caps the relative step
size, ``min(lr, 1/sqrt(t))`` (the same until ``t > 1/lr**2``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl.optim._base import PyTree, scalar, widest_float
from jax_impl.optim.adam import _lerp


class AdafactorState(NamedTuple):
    """torch's ``state[p]`` keys. A parameter of two or more dimensions has ``row_var`` and
    ``col_var`` (``variance`` is ``None`` at its leaf); a vector or scalar has ``variance``
    (``row_var`` and ``col_var`` are ``None`` at its leaf)."""

    count: jax.Array  # torch's ``step`` (a float32 tensor there; exact below 2**24)
    row_var: PyTree  # (..., m, 1): running mean of g**2 over the last axis
    col_var: PyTree  # (..., 1, n): running mean of g**2 over the second-to-last axis
    variance: PyTree  # like the parameter: running mean of g**2


#: ``layout(path, param)``: the axis permutation taking ``param`` to torch's layout of it, or None
Layout = Callable[[tuple, jax.Array], "tuple[int, ...] | None"]


def layout_permutations(layout: Layout | None, params: PyTree) -> list[tuple[int, ...] | None]:
    """Each leaf's permutation to torch's layout (``jnp.transpose(leaf, perm)`` is torch's
    tensor), in ``jax.tree.leaves`` order; None where the leaf already has torch's layout.

    ``layout`` is called with each leaf's key path and array: a Flax ``Linear`` kernel (in, out)
    is torch's weight transposed, ``(1, 0)``; a ``Conv`` kernel (kh, kw, in, out) is torch's
    (out, in, kh, kw) permuted, ``(3, 2, 0, 1)``. ``layout=None``: every leaf is in torch's layout.
    """
    found = jax.tree_util.tree_flatten_with_path(params)[0]
    if layout is None:
        return [None] * len(found)
    perms = []
    for path, leaf in found:
        perm = layout(path, leaf)
        if perm is not None:
            perm = tuple(int(axis) for axis in perm)
            if sorted(perm) != list(range(jnp.ndim(leaf))):
                raise ValueError(f"layout gave {perm} for {jax.tree_util.keystr(path)} of shape "
                                 f"{jnp.shape(leaf)}: not a permutation of its axes")
            if perm == tuple(range(jnp.ndim(leaf))):
                perm = None
        perms.append(perm)
    return perms


def to_torch_layout(x: jax.Array, perm: tuple[int, ...] | None) -> jax.Array:
    return x if perm is None else jnp.transpose(x, perm)


def from_torch_layout(x: jax.Array, perm: tuple[int, ...] | None) -> jax.Array:
    return x if perm is None else jnp.transpose(x, tuple(int(a) for a in np.argsort(perm)))


def _norm(x: jax.Array) -> jax.Array:
    """``x.norm(2)`` in ``x``'s dtype."""
    return jnp.sqrt(jnp.sum(x * x))


def adafactor(
    lr: float | Callable = 1e-2,
    beta2_decay: float = -0.8,
    eps1: float | None = None,
    eps2: float = 1e-3,
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    *,
    layout: Layout | None = None,
) -> optax.GradientTransformation:
    r"""Adafactor exactly as ``torch.optim.Adafactor`` computes it (single-tensor path).

    With :math:`\hat\beta_t = 1 - t^{\tau}` (``tau = beta2_decay``), per parameter:

    .. math::
        \rho_t &= \min(\eta, 1/\sqrt t), \quad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(p_{t-1}))\,\rho_t \\
        p &\leftarrow p\,(1 - \eta\lambda) \\
        R_t &= \mathrm{lerp}(R_{t-1}, \mathrm{mean}_{-1}(g^2), t^{\tau}), \quad
        C_t = \mathrm{lerp}(C_{t-1}, \mathrm{mean}_{-2}(g^2), t^{\tau}), \quad
        \hat V = R_t C_t / \max(\mathrm{mean}_{-2}(R_t), \epsilon_1) \\
        \hat V &= \mathrm{lerp}(V_{t-1}, g^2, t^{\tau}) \quad \text{(fewer than 2 dims)} \\
        U &= g / \sqrt{\max(\hat V, \epsilon_1^2)}, \quad
        p \leftarrow p - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U)/d)}\,U

    The RMS of the parameter (for :math:`\alpha_t`) is taken before the weight decay, as in
    torch. ``eps1=None`` means ``finfo(dtype).eps`` of each parameter (torch takes the dtype
    of the first parameter of the group for all of them: the same unless dtypes are mixed).
    The row and column means are torch's ``norm(...)**2 / n``; the scalar factors
    (:math:`t^\tau`, :math:`\rho_t`, :math:`\alpha_t`, the clipping divisor) are computed in
    the widest float enabled, as torch computes them in Python double.

    Layout: torch factors over the last two axes of *its* tensor. A Flax ``Linear`` kernel is
    torch's weight transposed, so pass ``layout`` (see :func:`layout_permutations`, a static
    argument) for such parameters: the factors are then taken over torch's axes, and kept in
    the parameter's own layout (``row_var`` of a kernel (in, out) is (1, out): torch's (out, 1)
    transposed), so the state converts to and from torch's with the parameters' layout rules.
    Without it a kernel is factored as if it were torch's tensor (the update is the same in
    exact arithmetic, the state is not torch's).
    """
    static_eps1 = eps1

    def init_fn(params: PyTree) -> AdafactorState:
        def check(path: Any, p: jax.Array) -> None:
            if jnp.iscomplexobj(p):
                raise ValueError(
                    f"Adafactor does not support complex parameters (at {jax.tree_util.keystr(path)})"
                )

        jax.tree_util.tree_map_with_path(check, params)

        leaves, treedef = jax.tree.flatten(params)
        rows, cols, variances = [], [], []
        for p, perm in zip(leaves, layout_permutations(layout, params), strict=True):
            shape = p.shape if perm is None else tuple(p.shape[axis] for axis in perm)  # torch's
            if len(shape) < 2:
                rows.append(None)
                cols.append(None)
                variances.append(jnp.zeros_like(p))
                continue
            rows.append(from_torch_layout(jnp.zeros(shape[:-1] + (1,), p.dtype), perm))  # torch: (..., m, 1)
            cols.append(from_torch_layout(jnp.zeros(shape[:-2] + (1,) + shape[-1:], p.dtype), perm))  # (..., 1, n)
            variances.append(None)
        return AdafactorState(
            count=jnp.zeros([], jnp.int32),
            row_var=treedef.unflatten(rows),
            col_var=treedef.unflatten(cols),
            variance=treedef.unflatten(variances),
        )

    def update_fn(updates: PyTree, state: AdafactorState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch Adafactor needs params in update() (the step size reads them)")
        count = optax.safe_increment(state.count)
        wide = widest_float()
        step = count.astype(wide)
        lr_wide = jnp.asarray(lr, wide)
        one_minus_beta2 = step ** jnp.asarray(beta2_decay, wide)
        rho = jnp.minimum(lr_wide, 1 / jnp.sqrt(step))

        leaves, treedef = jax.tree.flatten(params)
        grads = treedef.flatten_up_to(updates)
        rows = treedef.flatten_up_to(state.row_var)  # None leaves for vectors
        cols = treedef.flatten_up_to(state.col_var)
        variances = treedef.flatten_up_to(state.variance)  # None leaves for matrices
        deltas, new_rows, new_cols, new_variances = [], [], [], []
        perms = layout_permutations(layout, params)
        for p, g, row_var, col_var, variance, perm in zip(leaves, grads, rows, cols, variances, perms, strict=True):
            g = to_torch_layout(-g if maximize else g, perm)  # torch's layout from here on
            eps1 = jnp.finfo(p.dtype).eps if static_eps1 is None else jnp.asarray(static_eps1, wide)
            weight = scalar(one_minus_beta2, g)
            alpha = jnp.maximum(eps2, _norm(p).astype(wide) / p.size**0.5) * rho
            if p.ndim >= 2:
                row_mean = jnp.square(jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True))) / g.shape[-1]  # (..., m, 1)
                row_var = _lerp(to_torch_layout(row_var, perm), row_mean, weight)
                col_mean = jnp.square(jnp.sqrt(jnp.sum(g * g, axis=-2, keepdims=True))) / g.shape[-2]  # (..., 1, n)
                col_var = _lerp(to_torch_layout(col_var, perm), col_mean, weight)
                row_scale = jnp.maximum(jnp.mean(row_var, axis=-2, keepdims=True), scalar(eps1, g))  # (..., 1, 1)
                var_estimate = (row_var * col_var) / row_scale  # (..., m, n)
            else:
                variance = _lerp(to_torch_layout(variance, perm), g * g, weight)
                var_estimate = variance
            update = (1 / jnp.sqrt(jnp.maximum(var_estimate, scalar(eps1 * eps1, g)))) * g
            clip = jnp.maximum(1.0, _norm(update).astype(wide) / (update.size**0.5 * d))
            update = from_torch_layout(update, perm)
            # torch: p.mul_(1 - lr * wd); p.add_(update, alpha=-alpha / clip). Rounded in that
            # order, returned as the difference from p (apply_updates adds it back)
            decayed = p * scalar(1 - lr_wide * weight_decay, p)
            deltas.append((decayed + scalar(-alpha / clip, p) * update) - p)
            new_rows.append(None if row_var is None else from_torch_layout(row_var, perm))
            new_cols.append(None if col_var is None else from_torch_layout(col_var, perm))
            new_variances.append(None if variance is None else from_torch_layout(variance, perm))
        new_state = AdafactorState(
            count=count,
            row_var=treedef.unflatten(new_rows),
            col_var=treedef.unflatten(new_cols),
            variance=treedef.unflatten(new_variances),
        )
        return treedef.unflatten(deltas), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def Adafactor(
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Build :func:`adafactor` from ``torch.optim.Adafactor``'s constructor arguments and
    defaults. ``eps`` is split into the hyperparameters ``eps1`` and ``eps2`` (torch's own
    names); ``eps1=None`` (``finfo(dtype).eps``) is static. For parameters in another layout
    than torch's (Flax kernels), see :func:`build_with_layout`."""
    return build_with_layout(None, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                             weight_decay=weight_decay, foreach=foreach, maximize=maximize)


def build_with_layout(layout: Layout | None, **torch_kwargs: Any) -> optax.GradientTransformation:
    """:func:`Adafactor` (``torch_kwargs`` are its arguments) for parameters whose layout
    differs from torch's: ``layout`` as in :func:`layout_permutations`."""
    arguments = inspect.signature(Adafactor).bind(**torch_kwargs)
    arguments.apply_defaults()
    lr, beta2_decay, eps, d, weight_decay, _, maximize = arguments.arguments.values()  # foreach: torch's kernel choice
    if not callable(lr):
        if not _is_number(lr):
            raise TypeError(f"Learning rate should be a number but is: {lr!r}")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 >= beta2_decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"eps should be a pair (eps1, eps2) but is: {eps!r}")
    eps1, eps2 = eps
    if eps1 is not None and not 0.0 <= eps1:
        raise ValueError(f"epsilon1 should be >= 0 but is: {eps1}")
    if not 0.0 <= eps2:
        raise ValueError(f"epsilon2 should be >= 0 but is: {eps2}")
    if not 1.0 <= d:
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
    static = ("maximize", "layout") + (("eps1",) if eps1 is None else ())
    return optax.inject_hyperparams(adafactor, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr, beta2_decay=beta2_decay, eps1=eps1, eps2=eps2, d=d, weight_decay=weight_decay,
        maximize=maximize, layout=layout,
    )
