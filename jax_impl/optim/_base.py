"""What every torch-exact optimizer here shares: the state convention and the update helpers.

State convention (the contract :mod:`parity.convert` relies on): each optimizer's state is a
``NamedTuple`` whose per-parameter fields carry **the key torch uses** in
``optimizer.state[param]`` (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ...) and mirror
the parameter pytree, plus a scalar ``count``: the number of updates applied so far, which is
torch's per-parameter ``step`` where torch keeps one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any

#: torch param-group keys whose value is a tuple, and the names of the scalar hyperparameters
#: the builders split it into (``optax.inject_hyperparams`` injects scalars).
TUPLE_HYPERPARAMS: dict[str, tuple[str, ...]] = {
    "betas": ("beta1", "beta2"),  # the Adam family
    "etas": ("etaminus", "etaplus"),  # Rprop
    "step_sizes": ("step_size_min", "step_size_max"),  # Rprop
}

def scalar(value: Any, like: jax.Array) -> jax.Array:
    """``value`` as a 0-d array of ``like``'s dtype.

    torch casts a Python scalar such as ``alpha=-lr`` to the tensor's dtype before it
    multiplies, so a float32 parameter sees a float32 learning rate; this does the same.
    """
    return jnp.asarray(value, dtype=jnp.result_type(like))


def widest_float() -> jnp.dtype:
    """float64 when x64 is enabled, else float32: the dtype for torch's Python-double scalars."""
    return jnp.result_type(float)


def one_minus_power(beta: Any, step: jax.Array) -> jax.Array:
    """``1 - beta ** step``, a bias correction, as torch computes it: in Python double.

    With x64 enabled it is computed so, in float64. Without x64, a Python float ``beta`` (a
    static hyperparameter) goes through ``-expm1(step * log(beta))`` with ``log(beta)`` taken
    in double, which keeps float32's error near one ulp; computing ``1 - beta ** step`` after
    rounding ``beta = 0.999`` to float32 is off by 1.3e-5 relative (the gap stock optax shows
    without x64). A traced ``beta`` (scheduled, e.g. OneCycleLR's beta1) is already rounded.
    """
    wide = widest_float()
    step = jnp.asarray(step).astype(wide)
    if wide == jnp.float64 or not isinstance(beta, (int, float)) or beta <= 0.0:
        return 1 - jnp.asarray(beta, wide) ** step
    return -jnp.expm1(step * math.log(beta))


def static_betas(beta1: Any, beta2: Any) -> tuple[str, ...]:
    """The betas to pass as static arguments of ``optax.inject_hyperparams``: those that are
    numbers. They then reach the transform as Python floats, so ``1 - beta`` and the bias
    corrections are computed in double as torch computes them, with or without x64; a
    scheduled beta1 (a callable: OneCycleLR, CyclicLR) is injected."""
    return tuple(name for name, value in (("beta1", beta1), ("beta2", beta2)) if not callable(value))


def _is_injected(node: Any) -> bool:
    """An ``optax.inject_hyperparams`` state (there are two such classes in optax)."""
    fields = getattr(node, "_fields", ())
    return "hyperparams" in fields and "inner_state" in fields


def torch_state_fields(opt_state: Any) -> dict[str, Any]:
    """Every named field of every ``NamedTuple`` inside ``opt_state``, by field name.

    Walks through ``optax.inject_hyperparams`` and ``optax.chain`` states. Fields holding
    ``None`` or an empty state are skipped. ``hyperparams`` is returned too (the param-group
    values in torch's terms). Raises if two states in a chain use the same field name.
    ``count`` is the inner optimizer's update count (torch's ``step``).
    """
    found: dict[str, Any] = {}

    def visit(node: Any) -> None:
        if _is_injected(node):
            found["hyperparams"] = node.hyperparams  # its count is the schedule's, not torch's
            visit(node.inner_state)
        elif isinstance(node, tuple) and hasattr(node, "_fields"):
            for name in node._fields:
                value = getattr(node, name)
                if value is None or isinstance(value, optax.EmptyState):
                    continue
                if name in found:
                    raise ValueError(f"optimizer state field {name!r} appears twice")
                found[name] = value
        elif isinstance(node, (tuple, list)):
            for child in node:
                visit(child)

    visit(opt_state)
    return found


def replace_torch_state_fields(opt_state: Any, values: Mapping[str, Any]) -> Any:
    """Return ``opt_state`` with the named fields replaced (the inverse of the above)."""
    remaining = dict(values)

    def rebuild(node: Any) -> Any:
        if _is_injected(node):
            hyperparams = remaining.pop("hyperparams", node.hyperparams)
            return node._replace(hyperparams=hyperparams, inner_state=rebuild(node.inner_state))
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            changes = {}
            for name in node._fields:
                if name in remaining:
                    changes[name] = remaining.pop(name)
            return node._replace(**changes)
        if isinstance(node, (tuple, list)):
            return type(node)(rebuild(child) for child in node)
        return node

    result = rebuild(opt_state)
    if remaining:
        raise KeyError(f"optimizer state has no field(s) {sorted(remaining)}")
    return result


def check_lr(lr: Any) -> None:
    """torch's check (plus: a number, and finite), skipped for a schedule (a callable of the
    update count)."""
    if callable(lr):
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"Invalid learning rate: {lr!r} (expected a number)")
    if not 0.0 <= lr < float("inf"):
        raise ValueError(f"Invalid learning rate: {lr}")


def set_update_count(opt_state: Any, count: int, schedule_count: int | None = None) -> Any:
    """Set every update counter in ``opt_state`` to ``count``: the optimizer's, and those of
    injected schedules (optax keeps one per scheduled hyperparameter), which get
    ``schedule_count`` instead when it is given (the steps a GradScaler skipped advanced the
    schedule but not the optimizer).

    Used to continue from a torch optimizer that has taken ``count`` steps.
    """

    def rebuild(node: Any, value: int) -> Any:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            injected = _is_injected(node)
            schedule = value if schedule_count is None or not injected else schedule_count
            # an injected state's own count and its schedules' states count the schedule's steps
            changes = {name: rebuild(getattr(node, name), value if name == "inner_state" else schedule)
                       for name in node._fields}
            if changes.get("count") is not None:
                changes["count"] = jnp.asarray(schedule, dtype=jnp.result_type(changes["count"]))
            return node._replace(**changes)
        if isinstance(node, (tuple, list)):
            return type(node)(rebuild(child, value) for child in node)
        if isinstance(node, dict):
            return {key: rebuild(child, value) for key, child in node.items()}
        return node

    return rebuild(opt_state, count)


def param_group_states(opt_state: Any) -> list[Any]:
    """The state of each parameter group, in torch's group order.

    A plain optimizer has one group (``[opt_state]``); :func:`jax_impl.optim.from_torch` with
    ``param_groups`` builds an ``optax.partition`` whose labels are the group indices, and each
    group's state is returned without optax's masking wrapper. Per-parameter fields of a group's
    state hold ``optax.MaskedNode`` for the parameters of other groups.
    """
    inner = getattr(opt_state, "inner_states", None)
    if not isinstance(inner, Mapping):
        return [opt_state]
    return [_unmasked(inner[label]) for label in sorted(inner)]


def replace_param_group_states(opt_state: Any, states: Sequence[Any]) -> Any:
    """``opt_state`` with each group's state replaced (the inverse of :func:`param_group_states`)."""
    inner = getattr(opt_state, "inner_states", None)
    if not isinstance(inner, Mapping):
        (state,) = states
        return state
    labels = sorted(inner)
    if len(states) != len(labels):
        raise ValueError(f"expected {len(labels)} parameter group states, got {len(states)}")
    replaced = {
        label: inner[label]._replace(inner_state=state) if isinstance(inner[label], optax.MaskedState) else state
        for label, state in zip(labels, states, strict=True)
    }
    return opt_state._replace(inner_states=replaced)


def _unmasked(state: Any) -> Any:
    return state.inner_state if isinstance(state, optax.MaskedState) else state


def set_hyperparam(opt_state: Any, name: str, values: Sequence[Any]) -> Any:
    """Write hyperparameter ``name`` (``"lr"``, ``"momentum"``, ...) of each parameter group:
    what torch's ``ReduceLROnPlateau`` does to ``param_group["lr"]``. ``values`` has one entry per
    group; the dtype of the stored value is kept."""
    states = param_group_states(opt_state)
    if len(values) != len(states):
        raise ValueError(f"expected one {name!r} per parameter group ({len(states)}), got {len(values)}")
    updated = []
    for state, value in zip(states, values, strict=True):
        hyperparams = dict(state.hyperparams)
        if name not in hyperparams:
            raise KeyError(f"the optimizer has no injectable hyperparameter {name!r} (it has {sorted(hyperparams)})")
        hyperparams[name] = jnp.asarray(value, dtype=jnp.result_type(hyperparams[name]))
        updated.append(state._replace(hyperparams=hyperparams))
    return replace_param_group_states(opt_state, updated)


# ------------------------------------------------------------------------------------------
# torch's float rounding where XLA would round differently (measured on CPU: with these, float32
# Adamax/NAdam/RAdam steps are bit-identical to torch's except where torch's float32 sqrt is not
# correctly rounded).


def _size(*arrays: Any) -> int:
    """The number of elements of the arrays' broadcast shape."""
    return math.prod(jnp.broadcast_shapes(*(jnp.shape(x) for x in arrays)))


def fma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """``a * b + c`` rounded once, to ``c``'s dtype, as torch's CPU kernels compute
    ``addcmul`` (``c + (value * t1) * t2``), ``lerp`` and ``add(alpha=)``.

    For float32 arrays of two or more elements it is ``a * b + c``: XLA on CPU contracts it
    into one FMA (measured: one rounding at every size tests/jax_impl/test_rounding_helpers.py
    draws, and the float32 optimizer steps match torch's at the tests' tolerances, 1e-7 for
    NAdam and RAdam over 60 steps). ``c`` must not be a bare product itself, or the compiler may
    contract that one instead: pass it through :func:`rounded_product`. A single element (the
    compiler folds scalar code differently) and other dtypes are computed in the widest float
    enabled: for float32 operands under x64 the product is exact and the sum is rounded to
    float64, then to float32, which differs from one rounding only in rare halfway cases. For
    float64 operands it is ``a * b + c`` as XLA fuses it: equal to torch's up to 1 ulp.
    """
    wide = widest_float()
    if all(jnp.result_type(x) == jnp.float32 for x in (a, b, c)) and _size(a, b, c) > 1:
        return a * b + c
    return (a.astype(wide) * b.astype(wide) + c.astype(wide)).astype(jnp.result_type(c))


def rounded_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` rounded to ``a``'s dtype on its own, as torch rounds a product it stores
    (``p.mul_(c)``, or a tensor it then adds to ``p``).

    Plain ``a * b + c`` would not do: XLA on CPU fuses a product into the addition that
    follows (an FMA, one rounding). LLVM contracts the two whatever stands between them in
    the HLO (an optimization_barrier or a bitcast round trip on the product: measured, no
    effect), and it sees through a float64 product of two float32 values cast back to float32.
    So the product gets an addend of its own, a zero the compiler cannot see: if contracted,
    ``fma(a, b, 0)`` is the product rounded once, as torch stores it. Measured exact (against
    numpy's float32 product, inside a larger sum) on arrays of 2 to 1001 elements and 8 x 129
    (tests/jax_impl/test_rounding_helpers.py).

    For a single element the compiler folds that zero away (a quarter of the products then
    fuse into the following sum), so there, and for dtypes below float32, the product is
    taken in the widest float enabled and rounded by ``lax.reduce_precision`` to ``a``'s
    precision, which the compiler keeps (subnormal results are zero, as everywhere in XLA on
    CPU). That route is slow on large arrays (with :func:`fma`'s float64 route, the float32 Adam
    update of 203k parameters took 0.48 ms where the float32 routes take 0.15), hence the
    split. Without x64 a single float32 element has no wider type to round in and may fuse. For
    float64 operands: ``a * b`` with the opaque zero, which LLVM may still fuse (1 ulp).
    """
    dtype, wide = jnp.result_type(a), widest_float()
    if dtype == wide or (dtype == jnp.float32 and _size(a, b) > 1):
        return a * b + jax.lax.optimization_barrier(jnp.zeros((), dtype))
    info = jnp.finfo(dtype)
    product = a.astype(wide) * b.astype(wide)  # exact for float32 operands
    return jax.lax.reduce_precision(product, info.nexp, info.nmant).astype(dtype)


def square_average(average: jax.Array, x: jax.Array, decay: Any, weight: Any) -> jax.Array:
    """torch's ``average.mul_(decay).addcmul_(x, x, value=weight)``, the running average of
    squares of Adam, NAdam, RAdam, RMSprop and Adadelta: ``average * decay`` rounded on its own,
    then ``(weight * x) * x`` added with one rounding (its CPU kernel's FMA). ``decay`` and
    ``weight`` are cast to the tensors' dtype first, as torch casts a Python scalar."""
    return fma(rounded_product(x, scalar(weight, x)), x, rounded_product(average, scalar(decay, average)))


def divide(x: jax.Array, divisor: jax.Array) -> jax.Array:
    """``x / divisor`` for a scalar ``divisor``, rounded once, as torch divides a tensor by a
    Python number (cast to the tensor's dtype first, as :func:`scalar` does).

    XLA rewrites a division by a broadcast scalar into a multiplication by its reciprocal (two
    roundings: about half of float32 quotients change by an ulp). Done in the widest float
    enabled, the reciprocal's rounding no longer shows in a float32 result; for float64
    operands this is XLA's division (1 ulp).
    """
    dtype, wide = jnp.result_type(x), widest_float()
    return (x.astype(wide) / divisor.astype(wide)).astype(dtype)
