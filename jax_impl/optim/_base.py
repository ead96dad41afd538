"""What every torch-exact optimizer here shares: the state convention and the update helpers.

State convention (the contract :mod:`parity.convert` relies on): each optimizer's state is a
``NamedTuple`` whose per-parameter fields carry **the key torch uses** in
``optimizer.state[param]`` (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ...) and mirror
the parameter pytree, plus a scalar ``count``: the number of updates applied so far, which is
torch's per-parameter ``step`` where torch keeps one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any

def scalar(value: Any, like: jax.Array) -> jax.Array:
    """``value`` as a 0-d array of ``like``'s dtype.

    torch casts a Python scalar such as ``alpha=-lr`` to the tensor's dtype before it
    multiplies, so a float32 parameter sees a float32 learning rate; this does the same.
    """
    return jnp.asarray(value, dtype=jnp.result_type(like))


def widest_float() -> jnp.dtype:
    """float64 when x64 is enabled, else float32: the dtype for torch's Python-double scalars."""
    return jnp.result_type(float)


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


def set_update_count(opt_state: Any, count: int) -> Any:
    """Set every update counter in ``opt_state`` to ``count``: the optimizer's, and those of
    injected schedules (optax keeps one per scheduled hyperparameter).

    Used to continue from a torch optimizer that has taken ``count`` steps.
    """

    def rebuild(node: Any) -> Any:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            changes = {name: rebuild(getattr(node, name)) for name in node._fields}
            if changes.get("count") is not None:
                changes["count"] = jnp.asarray(count, dtype=jnp.result_type(changes["count"]))
            return node._replace(**changes)
        if isinstance(node, (tuple, list)):
            return type(node)(rebuild(child) for child in node)
        if isinstance(node, dict):
            return {key: rebuild(value) for key, value in node.items()}
        return node

    return rebuild(opt_state)
