"""PyTorch-style spec strings: ``"SGD(lr=0.01, momentum=0.9)"`` -> name and keyword arguments.

A spec is parsed with :mod:`ast` and every argument value must be a Python literal
(numbers, strings, booleans, ``None``, tuples and lists of those) or a nested spec of a class (a capitalised name), parsed to a
:class:`CallSpec` (``SequentialLR(schedulers=[LinearLR(total_iters=5), ExponentialLR(gamma=0.9)],
milestones=[5])``). Nothing is ever evaluated,
so a spec string cannot run code. ``inf`` and ``nan`` are accepted as bare names because torch
users write ``float('inf')`` for them, which is a call and therefore not a literal.

This module imports neither JAX nor torch: ``jax_impl`` and ``parity`` share it.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SpecError", "CallSpec", "parse_call", "bind_call", "build_from_registry", "suggest"]


class SpecError(ValueError):
    """A spec string is malformed, names an unknown component, or passes a bad argument."""


_NAMED_CONSTANTS = {"inf": math.inf, "nan": math.nan}


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """A parsed ``Name(key=value, ...)``: what a PyTorch user writes to build a component."""

    name: str
    kwargs: Mapping[str, Any]

    def __str__(self) -> str:
        args = ", ".join(f"{key}={_format(value)}" for key, value in self.kwargs.items())
        return f"{self.name}({args})"


def _format(value: Any) -> str:
    """A spec argument as the user wrote it (nested specs in spec syntax, not as repr)."""
    if isinstance(value, CallSpec):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_format, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_format, value)) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _literal(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Name) and node.id in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[node.id]
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Name)
        and node.operand.id in _NAMED_CONSTANTS
    ):
        return -_NAMED_CONSTANTS[node.operand.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id[:1].isupper() and not node.args:
        return _call(node, text)  # a nested component: SequentialLR(schedulers=[LinearLR(...), ...])
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(element, text) for element in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):  # TypeError: an unhashable key such as {[1]} or {{}: 1}
        source = ast.get_source_segment(text, node) or ast.dump(node)
        raise SpecError(
            f"in {text!r}: argument value {source!r} is not a literal "
            "(use numbers, strings, True/False/None, tuples or lists)"
        ) from None


def parse_call(text: str) -> CallSpec:
    """Parse ``"Name"`` or ``"Name(key=value, ...)"`` into a :class:`CallSpec`.

    Raises :class:`SpecError` for anything else: positional arguments, non-literal values,
    duplicated keywords, or text that is not a single call.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"expected a spec such as 'SGD(lr=0.01)', got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise SpecError(f"malformed spec {text!r}: {error.msg}") from None
    node = tree.body
    if isinstance(node, ast.Name):
        return CallSpec(node.id, {})
    return _call(node, text)


def _call(node: ast.expr, text: str) -> CallSpec:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        raise SpecError(
            f"malformed spec {text!r}: write the class name alone, e.g. {node.func.attr}(...) "
            f"rather than {ast.unparse(node.func)}(...)"
        )
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise SpecError(f"malformed spec {text!r}: expected Name(key=value, ...)")
    if node.args:
        raise SpecError(
            f"in {text!r}: pass arguments by keyword, e.g. {node.func.id}(lr=0.01); "
            "positional arguments are ambiguous across frameworks"
        )
    kwargs: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise SpecError(f"in {text!r}: '**' expansion is not allowed")
        if keyword.arg in kwargs:
            raise SpecError(f"in {text!r}: argument {keyword.arg!r} is given twice")
        kwargs[keyword.arg] = _literal(keyword.value, text)
    return CallSpec(node.func.id, kwargs)


def suggest(name: str, options: list[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest option, case-insensitively; else ``''``."""
    lowered = {option.lower(): option for option in options}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _parameter_names(fn: Callable[..., Any], skip: tuple[str, ...]) -> list[str]:
    parameters = inspect.signature(fn).parameters.values()
    return [
        p.name
        for p in parameters
        if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def bind_call(
    spec: CallSpec, fn: Callable[..., Any], *, kind: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check ``spec.kwargs`` against ``fn``'s signature; return them, or raise naming the bad one.

    ``skip`` lists parameters the user may not set from a spec (for example ``params``).
    """
    valid = _parameter_names(fn, skip)
    for key in spec.kwargs:
        if key not in valid:
            raise SpecError(
                f"{kind} {spec.name} got an unknown argument {key!r}{suggest(key, valid)}; "
                f"valid arguments: {', '.join(valid) or '(none)'}"
            )
    return dict(spec.kwargs)


def build_from_registry(
    spec: str | CallSpec, registry: Mapping[str, Callable[..., Any]], *, kind: str
) -> tuple[Callable[..., Any], CallSpec]:
    """Look a spec's name up in ``registry``; raise listing the known names if it is not there."""
    call = spec if isinstance(spec, CallSpec) else parse_call(spec)
    if call.name not in registry:
        raise SpecError(
            f"unknown {kind} {call.name!r}{suggest(call.name, list(registry))}; "
            f"supported: {', '.join(sorted(registry))}"
        )
    return registry[call.name], call
