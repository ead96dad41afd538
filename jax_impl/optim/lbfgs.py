r"""``torch.optim.LBFGS`` as an optax ``GradientTransformationExtraArgs``.

One ``update`` is one ``optimizer.step(closure)``: up to ``max_iter`` L-BFGS iterations on the
flat vector of all parameters, re-evaluating the loss and its gradient through ``value_fn``
(the closure's counterpart) as torch does, with torch's fixed-step or strong-Wolfe line search
and torch's stopping rules, in torch's order of operations.

    >>> tx = LBFGS(lr=1, max_iter=20, line_search_fn="strong_wolfe")
    >>> value_fn = jax.value_and_grad(loss_fn)          # params -> (loss, grads)
    >>> state = tx.init(params)
    >>> loss, grads = value_fn(params)                  # torch's first closure() call
    >>> updates, state = tx.update(grads, state, params, value=loss, value_fn=value_fn)
    >>> params = optax.apply_updates(params, updates)   # torch's parameters after step()

The whole update is traceable (``jax.lax.while_loop`` for the iterations, the two-loop
recursion and the line search), for both line searches; ``value_fn`` is traced once inside the
loops. Call it under ``jax.jit``: an eager call traces and compiles the loops every time.

The flat vector is every leaf of ``params`` raveled (C order) and concatenated in
``jax.tree.leaves`` order (:func:`ravel` / :func:`unravel`), in the leaves' common dtype; torch
concatenates its parameters in ``param_groups`` order. The two agree when ``params`` is a list
in torch's order; otherwise pass a permutation to :func:`state_to_torch` /
:func:`state_from_torch`. :func:`state_to_torch` / :func:`state_from_torch` convert the state to
and from the dict torch keeps in ``optimizer.state[first parameter]`` (numpy, no torch import).

Where results can differ from torch's: dot products and sums are reduced in XLA's order, not
torch's BLAS order, and XLA fuses ``a * b + c`` into one rounding in some scalar line-search
formulas that Python rounds twice: one ulp, which L-BFGS amplifies on ill-conditioned problems
as it amplifies any perturbation (torch started 1e-15 away drifts as far). The returned updates
are ``new - old`` parameters, re-added by ``optax.apply_updates``: in float32 that may differ from
torch's in-place result by one ulp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jax_impl.optim._base import PyTree, check_lr, widest_float

__all__ = ["LBFGS", "LBFGSState", "lbfgs", "ravel", "state_from_torch", "state_to_torch", "unravel"]

# torch's _strong_wolfe is always called with its own defaults for these (LBFGS passes only
# max_ls): note its tolerance_change is 1e-9 whatever the optimizer's tolerance_change is.
_C1, _C2, _WOLFE_TOLERANCE_CHANGE = 1e-4, 0.9, 1e-9
_CURVATURE_MIN = 1e-10  # a (y, s) pair is kept only when y.s > 1e-10


class LBFGSState(NamedTuple):
    """torch's ``optimizer.state[first parameter]``, with fixed shapes. ``N`` is the number of
    parameter elements, ``m`` the history size."""

    count: jax.Array  # int32: update() calls so far (= optimizer.step() calls; not a torch key)
    func_evals: jax.Array  # int32: closure evaluations, all steps together
    n_iter: jax.Array  # int32: L-BFGS iterations, all steps together
    d: jax.Array  # (N,) the last search direction
    t: jax.Array  # () widest float: the last step length
    old_dirs: jax.Array  # (m, N) gradient differences y, oldest first; rows >= num_old unused
    old_stps: jax.Array  # (m, N) steps s = t d, oldest first
    ro: jax.Array  # (m,) 1 / (y . s)
    num_old: jax.Array  # int32: pairs held (torch's len(old_dirs)); not a torch key
    H_diag: jax.Array  # () (y.s)/(y.y) of the newest pair; 1 while there is none
    prev_flat_grad: jax.Array  # (N,) the gradient at the start of the last iteration
    prev_loss: jax.Array  # () widest float: the loss there
    al: jax.Array  # (m,) two-loop scratch; rows >= num_old unused


# ------------------------------------------------------------------------------------------
# The flat vector


def ravel(tree: PyTree, dtype: Any = None) -> jax.Array:
    """Every leaf raveled and concatenated in ``jax.tree.leaves`` order: ``(N,)``, in ``dtype``
    (default: the leaves' common dtype, as ``torch.cat`` promotes)."""
    leaves = jax.tree.leaves(tree)
    dtype = jnp.result_type(*leaves) if dtype is None else dtype
    return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])


def unravel(flat: jax.Array, like: PyTree) -> PyTree:
    """The inverse of :func:`ravel`: ``flat`` cut into ``like``'s leaves, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(like)
    pieces, offset = [], 0
    for leaf in leaves:
        size = int(np.prod(jnp.shape(leaf)))
        pieces.append(flat[offset : offset + size].reshape(jnp.shape(leaf)).astype(jnp.result_type(leaf)))
        offset += size
    return jax.tree.unflatten(treedef, pieces)


# ------------------------------------------------------------------------------------------
# Scalars as torch holds them. In torch's code a step length is sometimes a Python double and
# sometimes a 0-d tensor of the parameters' dtype (e.g. ``1.0 / flat_grad.abs().sum()``), and
# arithmetic or a comparison that involves a tensor happens in the tensor's dtype, the double
# being rounded to it first. In float32 that decides line-search branches near convergence, so
# every scalar carries its kind.


class _Num(NamedTuple):
    value: jax.Array  # widest float (a tensor's value is exact in the parameters' dtype)
    tensor: jax.Array  # bool: a 0-d tensor, not a Python double


@dataclasses.dataclass(frozen=True)
class _Scalars:
    """Python-double / 0-d-tensor arithmetic with torch's promotion rules."""

    dtype: Any  # the parameters' dtype
    wide: Any  # widest float: a Python double

    def double(self, x: Any) -> _Num:
        return _Num(jnp.asarray(x, self.wide), jnp.asarray(False))

    def tensor(self, x: Any) -> _Num:
        return _Num(jnp.asarray(x, self.dtype).astype(self.wide), jnp.asarray(True))

    def narrow(self, a: _Num) -> jax.Array:
        """``a`` as torch's kernels see it when it scales a tensor: in the tensor's dtype."""
        return jnp.asarray(a.value).astype(self.dtype)

    @property
    def same(self) -> bool:
        """Tensors are as wide as doubles (float64 parameters): only the kinds are tracked."""
        return jnp.dtype(self.dtype) == jnp.dtype(self.wide)

    def _arith(self, op: Callable, a: _Num, b: _Num) -> _Num:
        tensor = a.tensor | b.tensor
        if self.same:
            return _Num(op(a.value, b.value), tensor)
        in_dtype = op(self.narrow(a), self.narrow(b)).astype(self.wide)
        return _Num(jnp.where(tensor, in_dtype, op(a.value, b.value)), tensor)

    def add(self, a: _Num, b: _Num) -> _Num:
        return self._arith(jnp.add, a, b)

    def sub(self, a: _Num, b: _Num) -> _Num:
        return self._arith(jnp.subtract, a, b)

    def mul(self, a: _Num, b: _Num) -> _Num:
        return self._arith(jnp.multiply, a, b)

    def div(self, a: _Num, b: _Num) -> _Num:
        """``a / b``; a double over a tensor is ``b.reciprocal() * a`` (``Tensor.__rdiv__``)."""
        quotient = self._arith(jnp.divide, a, b)
        reciprocal = (1 / self.narrow(b)) * self.narrow(a)
        value = jnp.where(~a.tensor & b.tensor, reciprocal.astype(self.wide), quotient.value)
        return _Num(value, quotient.tensor)

    def abs(self, a: _Num) -> _Num:
        return _Num(jnp.abs(a.value), a.tensor)

    def _compare(self, op: Callable, a: _Num, b: _Num) -> jax.Array:
        if self.same:
            return op(a.value, b.value)
        return jnp.where(a.tensor | b.tensor, op(self.narrow(a), self.narrow(b)), op(a.value, b.value))

    def lt(self, a: _Num, b: _Num) -> jax.Array:
        return self._compare(jnp.less, a, b)

    def le(self, a: _Num, b: _Num) -> jax.Array:
        return self._compare(jnp.less_equal, a, b)

    def gt(self, a: _Num, b: _Num) -> jax.Array:
        return self._compare(jnp.greater, a, b)

    def ge(self, a: _Num, b: _Num) -> jax.Array:
        return self._compare(jnp.greater_equal, a, b)

    @staticmethod
    def select(condition: jax.Array, a: _Num, b: _Num) -> _Num:
        return _Num(jnp.where(condition, a.value, b.value), jnp.where(condition, a.tensor, b.tensor))

    def max(self, a: _Num, b: _Num) -> _Num:
        """Python's ``max(a, b)``: ``b`` if ``b > a`` else ``a`` (the object itself)."""
        return self.select(self.gt(b, a), b, a)

    def min(self, a: _Num, b: _Num) -> _Num:
        """Python's ``min(a, b)``: ``b`` if ``b < a`` else ``a``."""
        return self.select(self.lt(b, a), b, a)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, precision=lax.Precision.HIGHEST)


def _cubic_interpolate(S: _Scalars, x1, f1, g1, x2, f2, g2, bounds=None) -> _Num:
    """torch's ``_cubic_interpolate``: the minimiser of the cubic through two points with
    values ``f`` (doubles) and slopes ``g`` (tensors), clamped to ``bounds``, or the middle of
    the bounds when the cubic has no real minimiser. ``x``: steps (:class:`_Num`)."""
    ordered = S.le(x1, x2)
    if bounds is None:
        xmin_bound, xmax_bound = S.select(ordered, x1, x2), S.select(ordered, x2, x1)
    else:
        xmin_bound, xmax_bound = bounds
    g1, g2 = S.tensor(g1), S.tensor(g2)
    slope = S.div(S.mul(S.double(3), S.sub(S.double(f1), S.double(f2))), S.sub(x1, x2))
    d1 = S.sub(S.add(g1, g2), slope)
    d2_square = S.sub(S.mul(d1, d1), S.mul(g1, g2))
    d2 = S.tensor(jnp.sqrt(S.narrow(d2_square)))  # NaN where d2_square < 0, then not selected
    two_d2 = S.mul(S.double(2), d2)
    min_pos_12 = S.sub(x2, S.mul(S.sub(x2, x1), S.div(S.sub(S.add(g2, d2), d1), S.add(S.sub(g2, g1), two_d2))))
    min_pos_21 = S.sub(x1, S.mul(S.sub(x1, x2), S.div(S.sub(S.add(g1, d2), d1), S.add(S.sub(g1, g2), two_d2))))
    min_pos = S.select(ordered, min_pos_12, min_pos_21)
    clamped = S.min(S.max(min_pos, xmin_bound), xmax_bound)
    middle = S.div(S.add(xmin_bound, xmax_bound), S.double(2.0))
    return S.select(S.ge(d2_square, S.double(0)), clamped, middle)


# ------------------------------------------------------------------------------------------
# Strong-Wolfe line search: torch's ``_strong_wolfe`` as one loop doing one closure evaluation
# per pass, first bracketing (slots [previous, current]) then zooming into the bracket (``low``
# indexes its lower end). Each pass: evaluate, update the bracket as the phase says, then one
# cubic step gives the next trial (extrapolation bounds while bracketing, the bracket when
# zooming, moved away from the ends when progress is insufficient).


class _Point(NamedTuple):
    t: _Num  # step length
    f: jax.Array  # loss (widest float: torch's Python float)
    g: jax.Array  # (N,) gradient
    gtd: jax.Array  # () g . d (parameters' dtype)


class _Search(NamedTuple):
    evals: jax.Array  # int32: closure evaluations (torch's ls_func_evals; ls_iter = evals - 1)
    zooming: jax.Array  # bool: past the bracketing phase
    active: jax.Array  # bool: evaluate `trial` next
    done: jax.Array  # bool: a point meeting the strong Wolfe conditions was found
    insuf_progress: jax.Array  # bool
    trial: _Num  # the step to evaluate next
    bracket: _Point  # every field with a leading axis of 2
    low: jax.Array  # int32: index of the bracket's lower end (the high end is 1 - low)


def _slot(bracket: _Point, i: Any) -> _Point:
    return jax.tree.map(lambda leaf: leaf[i], bracket)


def _put(bracket: _Point, i: Any, point: _Point) -> _Point:
    return jax.tree.map(lambda leaf, value: leaf.at[i].set(value), bracket, point)


def _where(condition: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), a, b)


def _strong_wolfe(S: _Scalars, evaluate, x, t: _Num, d, f, g, gtd, max_ls, active=True):
    """torch's ``_strong_wolfe(obj_func, x, t, d, f, g, gtd, max_ls=max_ls)``: returns the
    accepted point and the number of evaluations. ``active=False`` evaluates nothing and returns
    (step 0, f, g) with 0 evaluations."""
    d_norm = jnp.max(jnp.abs(d))
    c2_gtd = jnp.asarray(-_C2, S.dtype) * gtd  # torch: -c2 * gtd, a tensor
    start = _Point(S.double(0), f, g, gtd)

    def armijo_fails(point: _Point) -> jax.Array:  # f_new > f + c1 * t * gtd, in torch's dtypes
        bound = S.add(S.double(f), S.mul(S.mul(S.double(_C1), point.t), S.tensor(gtd)))
        return S.gt(S.double(point.f), bound)

    def low_of(bracket: _Point) -> jax.Array:
        return jnp.where(bracket.f[0] <= bracket.f[1], 0, 1).astype(jnp.int32)

    def body(s: _Search) -> _Search:
        f_new, g_new = evaluate(x + S.narrow(s.trial) * d)
        new = _Point(s.trial, f_new, g_new, _dot(g_new, d))
        evals = s.evals + 1
        ls_iter = evals - 1
        sufficient_fails = armijo_fails(new)
        wolfe = jnp.abs(new.gtd) <= c2_gtd

        # bracketing (torch's first loop): slot 0 is the previous point
        prev = _slot(s.bracket, 0)
        in_loop = ls_iter < max_ls
        fails = sufficient_fails | ((ls_iter > 1) & (new.f >= prev.f))
        uphill = new.gtd >= 0
        to_bracket = in_loop & (fails | (~wolfe & uphill))
        found = in_loop & ~fails & wolfe
        extrapolate = in_loop & ~fails & ~wolfe & ~uphill
        # brackets: [prev, new]; [new] (found); [0, new] (max_ls reached); going on: [prev, new]
        first = _where(to_bracket | extrapolate, prev, _where(in_loop, new, start))
        bracketed = _put(_put(s.bracket, 0, first), 1, new)

        # zooming (torch's second loop)
        low, high = s.low, 1 - s.low
        low_point, high_point = _slot(s.bracket, low), _slot(s.bracket, high)
        replaces_high = sufficient_fails | (new.f >= low_point.f)
        flips = S.ge(S.mul(S.tensor(new.gtd), S.sub(high_point.t, low_point.t)), S.double(0))
        as_high = _put(s.bracket, high, new)
        as_low = _put(_where(~wolfe & flips, _put(s.bracket, high, low_point), s.bracket), low, new)
        zoomed = _where(replaces_high, as_high, as_low)

        bracket = _where(s.zooming, zoomed, bracketed)
        zooming = s.zooming | ~extrapolate
        done = jnp.where(s.zooming, s.done | (~replaces_high & wolfe), found)
        new_low = jnp.where(s.zooming & ~replaces_high, low, low_of(bracket))

        # the next trial: one cubic step between the two slots
        b0, b1 = _slot(bracket, 0), _slot(bracket, 1)
        ordered = S.le(b0.t, b1.t)
        bottom, top = S.select(ordered, b0.t, b1.t), S.select(ordered, b1.t, b0.t)
        min_step = S.add(b1.t, S.mul(S.double(0.01), S.sub(b1.t, b0.t)))
        max_step = S.mul(b1.t, S.double(10))
        bounds = (S.select(zooming, bottom, min_step), S.select(zooming, top, max_step))
        trial = _cubic_interpolate(S, b0.t, b0.f, b0.gtd, b1.t, b1.f, b1.gtd, bounds)
        # zooming: stop on a tiny bracket; keep away from its ends when progress is insufficient
        width = S.mul(S.abs(S.sub(b1.t, b0.t)), S.tensor(d_norm))
        keep_zooming = ~done & (ls_iter < max_ls) & ~S.lt(width, S.double(_WOLFE_TOLERANCE_CHANGE))
        top, bottom = S.max(b0.t, b1.t), S.min(b0.t, b1.t)  # Python's max(bracket), min(bracket)
        eps = S.mul(S.double(0.1), S.sub(top, bottom))
        near_end = S.lt(S.min(S.sub(top, trial), S.sub(trial, bottom)), eps)
        at_end = s.insuf_progress | S.ge(trial, top) | S.le(trial, bottom)
        toward_top = S.lt(S.abs(S.sub(trial, top)), S.abs(S.sub(trial, bottom)))
        moved = S.select(toward_top, S.sub(top, eps), S.add(bottom, eps))
        zoom_trial = S.select(near_end & at_end, moved, trial)
        insuf = jnp.where(zooming & keep_zooming, near_end & ~at_end, s.insuf_progress)

        return _Search(
            evals=evals,
            zooming=zooming,
            active=~zooming | keep_zooming,
            done=done,
            insuf_progress=insuf,
            trial=S.select(zooming, zoom_trial, trial),
            bracket=_where(zooming, bracket, _put(bracket, 0, new)),  # extrapolating: prev <- new
            low=new_low,
        )

    pair = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), start)
    false = jnp.asarray(False)
    search = _Search(jnp.asarray(0, jnp.int32), false, jnp.asarray(active), false, false, t, pair,
                     jnp.asarray(0, jnp.int32))  # fmt: skip
    search = lax.while_loop(lambda s: s.active, body, search)
    return _slot(search.bracket, search.low), search.evals


# ------------------------------------------------------------------------------------------
# The L-BFGS direction


def _two_loop(g, old_dirs, old_stps, ro, num_old, H_diag, al):
    """d = -H g by the two-loop recursion over the ``num_old`` held pairs (torch's loops, the
    ``q.add_(y, alpha=-al[i])`` updates as fused multiply-adds, as torch's CPU kernels do)."""

    def newest_first(i, carry):
        q, al = carry
        j = num_old - 1 - i
        a = _dot(old_stps[j], q) * ro[j]
        return q + (-a) * old_dirs[j], al.at[j].set(a)

    q, al = lax.fori_loop(0, num_old, newest_first, (-g, al))
    r = q * H_diag

    def oldest_first(i, r):
        be = _dot(old_dirs[i], r) * ro[i]
        return r + (al[i] - be) * old_stps[i]

    return lax.fori_loop(0, num_old, oldest_first, r), al


def _direction(g, st: LBFGSState):
    """torch's L-BFGS update of the history (keep (y, s) when y.s > 1e-10, dropping the oldest
    pair when full) and the two-loop direction. Returns d and the new history fields."""
    history_size = st.ro.shape[0]
    y = g - st.prev_flat_grad
    s = st.d * st.t.astype(g.dtype)
    ys = _dot(y, s)
    accept = ys > jnp.asarray(_CURVATURE_MIN, g.dtype)

    def shift(buffers):  # drop the oldest pair
        return jax.tree.map(lambda a: jnp.roll(a, -1, axis=0), buffers)

    full = st.num_old == history_size
    old_dirs, old_stps, ro = lax.cond(accept & full, shift, lambda b: b, (st.old_dirs, st.old_stps, st.ro))
    position = jnp.minimum(st.num_old, history_size - 1)
    old_dirs = old_dirs.at[position].set(jnp.where(accept, y, old_dirs[position]))
    old_stps = old_stps.at[position].set(jnp.where(accept, s, old_stps[position]))
    ro = ro.at[position].set(jnp.where(accept, 1 / ys, ro[position]))  # torch: 1.0 / ys = ys.reciprocal()
    num_old = jnp.where(accept, jnp.minimum(st.num_old + 1, history_size), st.num_old)
    H_diag = jnp.where(accept, ys / _dot(y, y), st.H_diag)
    d, al = _two_loop(g, old_dirs, old_stps, ro, num_old, H_diag, st.al)
    return d, old_dirs, old_stps, ro, num_old, H_diag, al


# ------------------------------------------------------------------------------------------
# The transformation


class _Carry(NamedTuple):
    n_iter: jax.Array  # int32: iterations in this step
    stop: jax.Array  # bool
    x: jax.Array  # (N,) the parameters
    loss: jax.Array  # widest float
    g: jax.Array  # (N,) the gradient at x
    current_evals: jax.Array  # int32: closure evaluations in this step
    state: LBFGSState


def lbfgs(
    lr: float = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""L-BFGS exactly as ``torch.optim.LBFGS.step(closure)`` computes it.

    Each ``update`` runs up to ``max_iter`` iterations from the parameters :math:`x`:

    .. math::
        d &= -H g \quad\text{(two-loop recursion over the kept pairs } (y_i, s_i),\
              H_0 = \tfrac{y^\top s}{y^\top y};\ d = -g \text{ at torch's very first iteration)} \\
        t &= \min(1, 1/\lVert g\rVert_1)\,\eta \text{ (first iteration ever), else } \eta \\
        x &\leftarrow x + t d \quad\text{(} t \text{ from the strong-Wolfe search when chosen)}

    keeping the pair :math:`y = g_{k+1} - g_k,\ s = t d` when :math:`y^\top s > 10^{-10}`
    (``history_size`` pairs at most, oldest dropped). It stops as torch does: gradient max-norm
    at most ``tolerance_grad`` (also before the first iteration), directional derivative above
    ``-tolerance_change``, ``max_iter`` iterations, ``max_eval`` evaluations, step max-norm or
    loss change below ``tolerance_change``. With ``line_search_fn=None`` the loss is not
    re-evaluated after the last iteration. The state (history, last direction and step, the
    counters ``func_evals`` and ``n_iter``) carries over to the next update as in torch.

    ``update(updates, state, params, *, value=None, value_fn)``: ``updates`` is the gradient
    at ``params`` and ``value`` the loss there (torch's first ``closure()`` call, counted in
    ``func_evals``); ``value_fn(params) -> (loss, grads)`` re-evaluates the closure (note:
    ``optax.lbfgs``'s ``value_fn`` returns the loss only). With ``value=None`` the loss and
    gradient are computed here by ``value_fn(params)`` and ``updates`` is ignored.

    Differences from ``optax.lbfgs``: torch's algorithm (several iterations per update, torch's
    initial step, its curvature test and its line search with torch's constants
    ``c1=1e-4, c2=0.9`` and bracket tolerance 1e-9) rather than one iteration with a zoom line
    search. Scalars follow torch's types: a step length that torch holds as a 0-d tensor is
    rounded to the parameters' dtype, one held as a Python double is kept in the widest float.
    The history is allocated at ``init`` (``2 * history_size * N`` elements), not grown.
    """
    if max_eval is None:
        max_eval = max_iter * 5 // 4

    def init_fn(params: PyTree) -> LBFGSState:
        flat = ravel(params)
        n, dtype, wide = flat.shape[0], flat.dtype, widest_float()
        zero_int = jnp.zeros([], jnp.int32)
        return LBFGSState(
            count=zero_int, func_evals=zero_int, n_iter=zero_int,
            d=jnp.zeros([n], dtype), t=jnp.zeros([], wide),
            old_dirs=jnp.zeros([history_size, n], dtype), old_stps=jnp.zeros([history_size, n], dtype),
            ro=jnp.zeros([history_size], dtype), num_old=zero_int, H_diag=jnp.ones([], dtype),
            prev_flat_grad=jnp.zeros([n], dtype), prev_loss=jnp.zeros([], wide),
            al=jnp.zeros([history_size], dtype),
        )  # fmt: skip

    def update_fn(updates, state: LBFGSState, params=None, *, value=None, value_fn=None, **extra_args):
        del extra_args
        if params is None or value_fn is None:
            raise ValueError("torch LBFGS needs params and value_fn (the closure) in update()")
        wide = widest_float()
        x0 = ravel(params)
        dtype = x0.dtype
        S = _Scalars(dtype, wide)

        def evaluate(x):
            loss, grads = value_fn(unravel(x, params))
            return jnp.asarray(loss).astype(wide), ravel(grads, dtype)

        if value is None:
            loss0, g0 = evaluate(x0)
        else:
            loss0, g0 = jnp.asarray(value).astype(wide), ravel(updates, dtype)
        eta = jnp.asarray(lr, wide)
        grad_limit = jnp.asarray(tolerance_grad, wide).astype(dtype)  # torch compares in the tensor's dtype
        change_limit = jnp.asarray(tolerance_change, wide)
        change_limit_narrow = change_limit.astype(dtype)

        def optimal(g):
            return jnp.max(jnp.abs(g)) <= grad_limit

        def iteration(c: _Carry) -> _Carry:
            st = c.state
            n_iter, total = c.n_iter + 1, st.n_iter + 1
            first = total == 1  # torch's very first iteration: d = -g, no history
            d, old_dirs, old_stps, ro, num_old, H_diag, al = _direction(c.g, st)
            d = jnp.where(first, -c.g, d)
            num_old = jnp.where(first, 0, num_old)
            H_diag = jnp.where(first, jnp.ones([], dtype), H_diag)
            prev_flat_grad, prev_loss = c.g, c.loss
            # initial step: min(1, 1 / |g|_1) * lr at torch's first iteration ever, else lr
            t_first = S.mul(S.min(S.double(1.0), S.tensor(1 / jnp.sum(jnp.abs(c.g)))), S.double(eta))
            t = S.select(first, t_first, S.double(eta))
            gtd = _dot(c.g, d)
            halt = gtd > -change_limit_narrow  # directional derivative below tolerance: stop here

            if line_search_fn == "strong_wolfe":
                max_ls = max_eval - c.current_evals
                point, evals = _strong_wolfe(S, evaluate, c.x, t, d, c.loss, c.g, gtd, max_ls, active=~halt)
                step, loss, g = S.select(halt, t, point.t), point.f, point.g
                is_optimal = optimal(g)
            else:
                step = t
                moved = c.x + S.narrow(t) * d
                # re-evaluate except in the last iteration (torch: no use in a stochastic setting)
                reevaluate = ~halt & (n_iter != max_iter)
                loss, g = lax.cond(reevaluate, evaluate, lambda _: (c.loss, c.g), moved)
                evals = reevaluate.astype(jnp.int32)
                is_optimal = optimal(g)
            x = jnp.where(halt, c.x, c.x + S.narrow(step) * d)
            current_evals = c.current_evals + evals
            stop = (
                halt
                | (n_iter == max_iter)
                | (current_evals >= max_eval)
                | is_optimal
                | (jnp.max(jnp.abs(d * S.narrow(step))) <= change_limit_narrow)
                | (jnp.abs(loss - prev_loss) < change_limit)
            )
            st = st._replace(
                func_evals=st.func_evals + evals, n_iter=total, d=d, t=step.value, old_dirs=old_dirs,
                old_stps=old_stps, ro=ro, num_old=num_old, H_diag=H_diag, prev_flat_grad=prev_flat_grad,
                prev_loss=prev_loss, al=al,
            )  # fmt: skip
            return _Carry(n_iter, stop, x, loss, g, current_evals, st)

        carry = _Carry(
            n_iter=jnp.zeros([], jnp.int32), stop=optimal(g0), x=x0, loss=loss0, g=g0,
            current_evals=jnp.ones([], jnp.int32), state=state._replace(func_evals=state.func_evals + 1),
        )  # fmt: skip
        carry = lax.while_loop(lambda c: ~c.stop & (c.n_iter < max_iter), iteration, carry)
        new_params = unravel(carry.x, params)
        new_updates = jax.tree.map(lambda new, old: new - old, new_params, params)
        return new_updates, carry.state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Invalid {name} value: {value!r} (expected an int)")  # noqa: TRY004 (as check_lr)


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name} value: {value!r} (expected a number)")  # noqa: TRY004


def LBFGS(
    lr: float = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Build :func:`lbfgs` from ``torch.optim.LBFGS``'s constructor arguments and defaults.

    torch checks only the learning rate; the other checks here reject values with which
    torch's ``step`` would fail (an unknown ``line_search_fn``: RuntimeError "only
    'strong_wolfe' is supported"; ``history_size < 1``: IndexError; ``max_eval < 1`` with the
    strong-Wolfe search: UnboundLocalError) or change meaning (non-integer counts).
    ``max_eval=None`` becomes ``max_iter * 5 // 4``, as torch stores it in the param group.
    Injected hyperparameters (``state.hyperparams``, torch's param-group keys): ``lr``,
    ``tolerance_grad``, ``tolerance_change`` (widest float) and ``max_iter``, ``max_eval``
    (integers: they only bound loops, so changing them does not recompile); ``history_size``
    (the buffers' shape) and ``line_search_fn`` are static.
    """
    check_lr(lr)
    _check_int("max_iter", max_iter)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    _check_int("max_eval", max_eval)
    _check_number("tolerance_grad", tolerance_grad)
    _check_number("tolerance_change", tolerance_change)
    _check_int("history_size", history_size)
    if history_size < 1:
        raise ValueError(f"Invalid history_size value: {history_size} (torch's step fails below 1)")
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError("only 'strong_wolfe' is supported")
    if line_search_fn == "strong_wolfe" and max_eval < 1:
        raise ValueError(f"Invalid max_eval value: {max_eval} (the strong_wolfe line search needs at least 1)")
    static = ("history_size", "line_search_fn")
    return optax.inject_hyperparams(lbfgs, static_args=static, hyperparam_dtype=widest_float())(
        lr=lr if callable(lr) else float(lr),
        max_iter=int(max_iter),
        max_eval=int(max_eval),
        tolerance_grad=float(tolerance_grad),
        tolerance_change=float(tolerance_change),
        history_size=int(history_size),
        line_search_fn=line_search_fn,
    )


# ------------------------------------------------------------------------------------------
# torch state <-> LBFGSState (numpy only)


def _search_state(tree: Any) -> LBFGSState | None:
    if isinstance(tree, LBFGSState):
        return tree
    if isinstance(tree, tuple):  # optax states (inject_hyperparams, chain) are tuples
        for child in tree:
            if (found := _search_state(child)) is not None:
                return found
    return None


def _find_state(tree: Any) -> LBFGSState:
    found = _search_state(tree)
    if found is None:
        raise ValueError("no LBFGSState in this optimizer state")
    return found


def _replace_state(tree: Any, new: LBFGSState) -> Any:
    if isinstance(tree, LBFGSState):
        return new
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return tree._replace(**{name: _replace_state(getattr(tree, name), new) for name in tree._fields})
    if isinstance(tree, tuple):
        return type(tree)(_replace_state(child, new) for child in tree)
    return tree


def state_to_torch(
    opt_state: Any, *, to_torch_flat: Callable[[np.ndarray], np.ndarray] | None = None
) -> dict[str, Any]:
    """torch's ``optimizer.state[first parameter]`` from an :class:`LBFGSState` (or any optimizer
    state holding one, e.g. ``LBFGS(...)``'s injected state), as numpy and Python values.

    Flat vectors are ``(N,)`` arrays, ``old_dirs``/``old_stps``/``ro`` lists (oldest first),
    ``ro``/``H_diag`` 0-d arrays (``H_diag`` the int 1 while no pair is held, as torch), ``t``
    and ``prev_loss`` Python floats, ``al`` a list of ``history_size`` entries, ``None`` past the
    held pairs (present from the second iteration on, as torch). Before any iteration only
    ``func_evals`` and ``n_iter`` are returned. ``to_torch_flat`` maps a flat vector from our
    order (:func:`ravel`) to torch's (default: the same).
    """
    st = _find_state(opt_state)
    convert = to_torch_flat or (lambda v: v)
    n_iter = int(st.n_iter)
    result: dict[str, Any] = {"func_evals": int(st.func_evals), "n_iter": n_iter}
    if n_iter == 0:
        return result
    held = int(st.num_old)
    flat = lambda v: np.array(convert(np.asarray(v)))
    ro = np.asarray(st.ro)
    result.update(
        d=flat(st.d),
        t=float(st.t),
        old_dirs=[flat(v) for v in np.asarray(st.old_dirs)[:held]],
        old_stps=[flat(v) for v in np.asarray(st.old_stps)[:held]],
        ro=[np.array(ro[i]) for i in range(held)],
        H_diag=np.array(np.asarray(st.H_diag)) if held else 1,
        prev_flat_grad=flat(st.prev_flat_grad),
        prev_loss=float(st.prev_loss),
    )
    if n_iter >= 2:
        al = np.asarray(st.al)
        result["al"] = [np.array(al[i]) if i < held else None for i in range(al.shape[0])]
    return result


def state_from_torch(
    torch_state: Mapping[str, Any],
    like: Any,
    *,
    from_torch_flat: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Any:
    """``like`` (an :class:`LBFGSState`, or any optimizer state holding one, e.g. from
    ``tx.init(params)``) with torch's L-BFGS state put in: the dict torch keeps in
    ``optimizer.state[first parameter]``, tensors converted to numpy by the caller.

    ``like`` gives the history size, ``N`` and the dtypes; its ``count`` is kept (set it with
    :func:`jax_impl.optim.set_update_count`). ``from_torch_flat`` maps a flat vector from
    torch's order to ours (:func:`ravel`; default: the same).
    """
    st = _find_state(like)
    convert = from_torch_flat or (lambda v: v)
    history_size, n = st.old_dirs.shape
    dtype = np.dtype(st.d.dtype)
    n_iter = int(torch_state.get("n_iter", 0))
    changes: dict[str, Any] = {
        "func_evals": jnp.asarray(int(torch_state.get("func_evals", 0)), jnp.int32),
        "n_iter": jnp.asarray(n_iter, jnp.int32),
    }
    if n_iter > 0 and torch_state.get("d") is not None:

        def flat(v):
            v = np.asarray(convert(np.asarray(v).reshape(-1)), dtype)
            if v.shape != (n,):
                raise ValueError(f"torch's flat vectors have {v.size} elements, the parameters {n}")
            return v

        old_dirs, old_stps, ro = torch_state["old_dirs"], torch_state["old_stps"], torch_state["ro"]
        held = len(old_dirs)
        if held > history_size:
            raise ValueError(f"torch holds {held} pairs, more than history_size={history_size}")

        def rows(vectors):
            buffer = np.zeros([history_size, n], dtype)
            for i, v in enumerate(vectors):
                buffer[i] = flat(v)
            return buffer

        def entries(values):
            buffer = np.zeros([history_size], dtype)
            for i, v in enumerate(values):
                if v is not None and i < history_size:
                    buffer[i] = np.asarray(v, np.float64)
            return buffer

        wide = st.t.dtype
        changes.update(
            d=jnp.asarray(flat(torch_state["d"])),
            t=jnp.asarray(float(np.asarray(torch_state["t"], np.float64)), wide),
            old_dirs=jnp.asarray(rows(old_dirs)),
            old_stps=jnp.asarray(rows(old_stps)),
            ro=jnp.asarray(entries(ro)),
            num_old=jnp.asarray(held, jnp.int32),
            H_diag=jnp.asarray(np.asarray(torch_state["H_diag"], np.float64), dtype),
            prev_flat_grad=jnp.asarray(flat(torch_state["prev_flat_grad"])),
            prev_loss=jnp.asarray(float(torch_state["prev_loss"]), wide),
            al=jnp.asarray(entries(torch_state.get("al") or [])),
        )
    return _replace_state(like, st._replace(**changes))
