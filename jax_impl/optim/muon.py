"""``torch.optim.Muon`` as an optax ``GradientTransformation``.

Muon keeps a momentum buffer per 2-D parameter and replaces the (Nesterov) momentum direction by
an approximately orthogonal matrix with the same singular vectors, computed by a few quintic
Newton-Schulz iterations. torch runs those iterations in **bfloat16** (it casts the direction
with ``.bfloat16()`` whatever the parameter's dtype), and so does :func:`zeropower_via_newtonschulz`
here: every intermediate is rounded to bfloat16 where torch rounds it, each matrix product is
accumulated in float32, and ``addmm``'s ``beta * C + alpha * (A @ B)`` is one fused
multiply-add, as torch's CPU kernel computes it. What is left is the summation order inside a
matrix product (the BLAS's own: torch's CPU kernel and XLA's differ), which puts an element on
the other side of a bfloat16 rounding boundary now and then; the iteration spreads such a
one-ulp difference (bfloat16's ulp is 2**-8 relative) over the matrix, by up to ~2% of its
largest element (torch against itself, with the columns of the gradient permuted, differs as
much). On small matrices a flip is rare, and then float64 parameters agree with torch to
~1e-15: measured, no flip in 10 random 4x3, 3x5, 8x5, 16x16 or 64x16 matrices, and 2 of 120
twenty-step runs with an 8x8 parameter had one (torch's CPU kernel summed those products in
sequence, XLA did not).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.optim._base import PyTree, scalar, widest_float
from jax_impl.optim.adafactor import Layout, layout_permutations
from jax_impl.optim.adam import _lerp

#: torch's defaults (Keller Jordan's coefficients, chosen to maximise the slope at zero)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
EPS = 1e-7
NS_STEPS = 5
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


class MuonState(NamedTuple):
    count: jax.Array  # updates applied so far (torch keeps no ``step`` for Muon)
    momentum_buffer: PyTree  # like the params; torch keeps one whatever the momentum


def _check_ns(ns_coefficients: Any, ns_steps: int) -> None:
    """The checks torch makes in its Newton-Schulz function, i.e. at the first ``step()``."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")


def zeropower_via_newtonschulz(
    grad: jax.Array,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    ns_steps: int = NS_STEPS,
    eps: float = EPS,
) -> jax.Array:
    r"""torch's ``_zeropower_via_newtonschulz``: an approximate :math:`UV^\top` of a 2-D ``grad``
    (:math:`U S V^\top` its SVD), as a **bfloat16** matrix of ``grad``'s shape.

    .. math::
        X_0 = G / \max(\lVert G\rVert_F, \epsilon), \quad A = X X^\top, \quad
        X \leftarrow a X + (b A + c A^2) X \quad (k \text{ times})

    on the wide orientation (a tall ``grad`` is transposed first and back at the end). Every
    step is rounded to bfloat16 as torch rounds it: the cast of ``grad`` (a float64 through
    float32, as torch converts), the norm, the division, ``A``, ``b A + c A A`` and ``a X + B X``
    (one rounding each, the products accumulated in float32, as ``torch.addmm`` in bfloat16).
    """
    _check_ns(ns_coefficients, ns_steps)
    if grad.ndim != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    bf16, f32 = jnp.bfloat16, jnp.float32
    a, b, c = (jnp.asarray(coefficient, f32) for coefficient in ns_coefficients)

    def matmul(left: jax.Array, right: jax.Array) -> jax.Array:  # bf16 x bf16 -> f32 sums
        return jnp.matmul(left, right, preferred_element_type=f32)

    x = grad.astype(f32).astype(bf16)  # as torch casts grad to bfloat16: double -> float -> bfloat16
    tall = grad.shape[0] > grad.shape[1]
    if tall:
        x = x.T  # (rows <= cols)
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(f32)))).astype(bf16)  # Frobenius, in bf16
    norm = jnp.maximum(norm.astype(f32), jnp.asarray(eps, f32)).astype(bf16)  # clamp(min=eps)
    x = (x.astype(f32) / norm.astype(f32)).astype(bf16)

    def iteration(_, x):  # x: (r, cols), r <= cols
        gram = matmul(x, x.T).astype(bf16)  # (r, r)
        # as torch's addmm of gram, gram, gram with beta=b, alpha=c: fma(b, gram, c * (gram @ gram))
        gram_update = _fma(b, gram.astype(f32), c * matmul(gram, gram)).astype(bf16)  # (r, r)
        # as torch's addmm of x, gram_update, x with beta=a: fma(a, x, gram_update @ x)
        return _fma(a, x.astype(f32), matmul(gram_update, x)).astype(bf16)  # (r, cols)

    x = jax.lax.fori_loop(0, ns_steps, iteration, x)
    return x.T if tall else x


def _fma(k: jax.Array, m: jax.Array, z: jax.Array) -> jax.Array:
    """``k * m + z`` with one rounding (a fused multiply-add), for a float32 scalar ``k`` and a
    float32 ``m`` holding bfloat16 values: torch's CPU ``addmm`` in bfloat16 evaluates
    ``beta * C + alpha * (A @ B)`` so (in float32, one rounding of ``beta * C``), and the
    difference decides a bfloat16 rounding now and then. JAX has no FMA primitive: ``k`` is
    split into a 16-bit head and an 8-bit tail so both products with an 8-bit ``m`` are exact,
    and the three terms are added with an error-free TwoSum. (Exact products also make the
    result immune to a compiler's own contraction into FMAs.)
    """
    bits = jax.lax.bitcast_convert_type(k, jnp.uint32) & jnp.uint32(0xFFFFFF00)
    k_head = jax.lax.bitcast_convert_type(bits, jnp.float32)  # top 16 significant bits of k
    k_tail = k - k_head  # the other 8 bits, exactly
    head, tail = k_head * m, k_tail * m  # both exact
    total = head + z
    z_part = total - head
    error = (head - (total - z_part)) + (z - z_part)  # TwoSum: head + z == total + error exactly
    return total + (error + tail)


def adjusted_lr_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch's ``_adjust_lr`` factor for a parameter of ``shape`` (A, B): ``"original"`` (and
    None) :math:`\\sqrt{\\max(1, A/B)}`, ``"match_rms_adamw"`` :math:`0.2\\sqrt{\\max(A, B)}`."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def check_2d(params: PyTree) -> None:
    """torch's constructor check: Muon takes 2-D parameters only (the leaf's path is named)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.ndim(leaf) != 2:
            raise ValueError(
                "Muon only supports 2D parameters whereas we found a parameter with size: "
                f"{tuple(jnp.shape(leaf))} (at {jax.tree_util.keystr(path)})"
            )
        if jnp.iscomplexobj(leaf):
            raise ValueError(f"Muon does not support complex parameters (at {jax.tree_util.keystr(path)})")


def muon(
    lr: float | Callable,
    weight_decay: float = 0.1,
    momentum: float | Callable = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: str | None = None,
    *,
    layout: Layout | None = None,
) -> optax.GradientTransformation:
    r"""Muon exactly as ``torch.optim.Muon`` computes it (single-tensor path).

    .. math::
        B_t &= \mathrm{lerp}(B_{t-1}, g, 1 - \mu) \\
        \tilde B_t &= \mathrm{lerp}(g, B_t, \mu) \text{ if nesterov else } B_t \\
        O_t &= \mathrm{NS}^{(a,b,c)}_k(\tilde B_t; \epsilon) \quad \text{(in bfloat16)} \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\,r(A, B)\,O_t

    with :math:`r` from ``adjust_lr_fn`` (:func:`adjusted_lr_ratio`) on torch's shape
    ``(A, B)`` of the parameter. The momentum buffer is an exponential average without bias
    correction; weight decay is decoupled and always applied.

    Differences from ``optax.contrib.muon`` (measured 0.25 relative after 20 steps): that one
    bias-corrects the momentum (and its Nesterov mix), runs Newton-Schulz in the parameters'
    dtype (torch: bfloat16), clamps the norm with ``eps=1e-8`` (torch 1e-7), scales by
    :math:`\sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}` reading a matrix as (in, out)
    (Flax's layout: torch's ``"original"`` for torch's weight), has no weight decay by default
    (torch 0.1), and runs Adam on non-2-D leaves (torch refuses them; so does :func:`check_2d`
    in ``init`` here).

    ``ns_coefficients``, ``ns_steps``, ``adjust_lr_fn`` and ``nesterov`` are static (they shape
    the computation). ``momentum`` may be a schedule (a callable of the update count).

    Layout: ``r`` reads torch's shape of the parameter. A Flax ``Linear`` kernel (in, out) is
    torch's weight transposed: pass ``layout`` (a static argument, see
    :func:`~jax_impl.optim.adafactor.layout_permutations`; ``(1, 0)`` for kernels), or
    ``"original"`` (:math:`\sqrt{\max(1, A/B)}`) gives a kernel ``sqrt(max(1, in/out))`` where
    torch gives its weight ``sqrt(max(1, out/in))``. Newton-Schulz itself needs no layout: it
    works on the wide orientation of the matrix, whichever way it is stored.
    """
    _check_ns(ns_coefficients, ns_steps)

    def init_fn(params: PyTree) -> MuonState:
        check_2d(params)
        return MuonState(count=jnp.zeros([], jnp.int32), momentum_buffer=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates: PyTree, state: MuonState, params: PyTree | None = None):
        if params is None:
            raise ValueError("torch Muon needs params in update() (weight decay reads them)")
        wide = widest_float()
        mu = jnp.asarray(momentum, wide)
        lr_wide = jnp.asarray(lr, wide)

        buffer = jax.tree.map(lambda b, g: _lerp(b, g, scalar(1 - mu, g)), state.momentum_buffer, updates)
        if nesterov:
            direction = jax.tree.map(lambda g, b: _lerp(g, b, scalar(mu, g)), updates, buffer)
        else:
            direction = buffer

        def delta(d, p, perm):
            ortho = zeropower_via_newtonschulz(d, ns_coefficients, ns_steps, eps)  # bf16, p's shape
            torch_shape = p.shape if perm is None else (p.shape[1], p.shape[0])
            adjusted_lr = lr_wide * adjusted_lr_ratio(adjust_lr_fn, torch_shape)
            # torch: p.mul_(1 - lr * wd); p.add_(ortho, alpha=-adjusted_lr). Rounded in that order,
            # returned as the difference from p (apply_updates adds it back)
            decayed = p * scalar(1 - lr_wide * weight_decay, p)
            return (decayed + scalar(-adjusted_lr, p) * ortho.astype(p.dtype)) - p

        leaves, treedef = jax.tree.flatten(params)
        perms = layout_permutations(layout, params)
        new_updates = treedef.unflatten([
            delta(d, p, perm) for d, p, perm in zip(treedef.flatten_up_to(direction), leaves, perms, strict=True)
        ])
        return new_updates, MuonState(count=optax.safe_increment(state.count), momentum_buffer=buffer)

    return optax.GradientTransformation(init_fn, update_fn)


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a number but is: {value!r}")


def Muon(
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: str | None = None,
) -> optax.GradientTransformation:
    """Build :func:`muon` from ``torch.optim.Muon``'s constructor arguments and defaults.

    Validates as torch's constructor does, with its wording, and also makes the two checks
    torch makes only at the first ``step()`` (``ns_steps < 100``, three ``ns_coefficients``).
    Non-2-D parameters are refused by ``init`` (torch: at construction), naming the leaf.
    For parameters in another layout than torch's (Flax kernels), see :func:`build_with_layout`.
    """
    return build_with_layout(
        None, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
    )


def build_with_layout(layout: Layout | None, **torch_kwargs: Any) -> optax.GradientTransformation:
    """:func:`Muon` (``torch_kwargs`` are its arguments) for parameters stored in another layout
    than torch's (``layout`` as in :func:`~jax_impl.optim.adafactor.layout_permutations`)."""
    arguments = inspect.signature(Muon).bind(**torch_kwargs)
    arguments.apply_defaults()
    lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn = arguments.arguments.values()
    if not callable(lr):
        _check_number("Learning rate", lr)
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not callable(momentum):  # a callable: cycled by OneCycleLR or CyclicLR
        _check_number("momentum", momentum)
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
    _check_number("weight decay", weight_decay)
    if not 0.0 <= weight_decay:
        raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    ns_coefficients = tuple(ns_coefficients)
    _check_ns(ns_coefficients, ns_steps)
    return optax.inject_hyperparams(
        muon, static_args=("nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn", "layout"),
        hyperparam_dtype=widest_float(),
    )(
        lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        layout=layout,
    )
