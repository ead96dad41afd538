"""How each torch module's variables map to its NNX counterpart's: names and layouts.

:data:`LAYOUT_RULES` is keyed by the torch module's class name; a variable a class does not list
keeps its name and layout. :class:`parity.convert.Converter` applies these rules (and any a user
passes for layers of their own) while it walks the torch module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

__all__ = ["Rule", "LAYOUT_RULES"]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _transpose(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.T)


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one torch variable maps to its NNX counterpart."""

    jax_name: str
    to_jax: Callable[[np.ndarray], np.ndarray] = _same
    to_torch: Callable[[np.ndarray], np.ndarray] = _same


#: torch module class name -> {torch variable name: Rule}. Unlisted variables keep their name
#: and layout.
LAYOUT_RULES: dict[str, dict[str, Rule]] = {
    "Linear": {"weight": Rule("kernel", _transpose, _transpose), "bias": Rule("bias")},
}
