"""How each torch module's variables map to its NNX counterpart's: names and layouts.

:data:`LAYOUT_RULES` is keyed by the torch module's class name; a variable a class does not list
keeps its name and layout. :class:`parity.convert.Converter` applies these rules (and any a user
passes for layers of their own) while it walks the torch module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

__all__ = ["Rule", "LAYOUT_RULES"]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _transpose(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.T)


def _oihw_to_hwio(array: np.ndarray) -> np.ndarray:
    """Conv2d weight (out, in/groups, kh, kw) -> Flax kernel (kh, kw, in/groups, out)."""
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))


def _hwio_to_oihw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1))


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one torch variable maps to its NNX counterpart."""

    jax_name: str
    to_jax: Callable[[np.ndarray], np.ndarray] = _same
    to_torch: Callable[[np.ndarray], np.ndarray] = _same

    def torch_shape(self, jax_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The torch shape that corresponds to a JAX variable of ``jax_shape`` (for error
        messages: "the shape in current model is ..."), found by applying ``to_torch`` to a
        placeholder; ``None`` when the rule does not apply to that shape, or the placeholder
        would be too large to make (one byte per element)."""
        if math.prod(jax_shape) > _PLACEHOLDER_LIMIT:
            return None
        try:
            return tuple(np.shape(self.to_torch(np.empty(jax_shape, np.bool_))))
        except (ValueError, IndexError, TypeError):
            return None


#: the largest placeholder :meth:`Rule.torch_shape` makes, in elements (bytes)
_PLACEHOLDER_LIMIT = 1 << 26


_LINEAR = {"weight": Rule("kernel", _transpose, _transpose), "bias": Rule("bias")}

#: BatchNorm: Flax's names (nnx.BatchNorm's scale, mean, var); the counter keeps torch's name.
#: ``num_batches_tracked`` is torch's int64; JAX holds it as its default integer (int64 with
#: ``jax_enable_x64``, else int32): the Converter casts both ways and refuses a count too large.
_BATCH_NORM = {
    "weight": Rule("scale"),
    "bias": Rule("bias"),
    "running_mean": Rule("mean"),
    "running_var": Rule("var"),
    "num_batches_tracked": Rule("num_batches_tracked"),
}

#: nn.LSTM keeps every layer's weights on the module itself: weight_ih_l0, weight_hh_l0, ...
#: (listed here for up to this many layers; bidirectional "_reverse" variables are not supported).
_LSTM_LAYERS = 8
_LSTM = {
    f"{kind}_{gate}_l{layer}": (Rule(f"kernel_{gate}_l{layer}", _transpose, _transpose) if kind == "weight"
                                else Rule(f"bias_{gate}_l{layer}"))
    for layer in range(_LSTM_LAYERS) for gate in ("ih", "hh") for kind in ("weight", "bias")
}

#: torch module class name -> {torch variable name: Rule}. Unlisted variables keep their name
#: and layout. A rule's jax_name may name a variable of a sub-module ("in_proj/kernel").
LAYOUT_RULES: dict[str, dict[str, Rule]] = {
    "Linear": _LINEAR,
    # nn.MultiheadAttention's out_proj is this Linear subclass
    "NonDynamicallyQuantizableLinear": _LINEAR,
    "Conv2d": {"weight": Rule("kernel", _oihw_to_hwio, _hwio_to_oihw), "bias": Rule("bias")},
    "BatchNorm1d": _BATCH_NORM,
    "BatchNorm2d": _BATCH_NORM,
    "LayerNorm": {"weight": Rule("scale"), "bias": Rule("bias")},
    "Embedding": {"weight": Rule("embedding")},
    # packed, as torch stores it: q, k, v stacked along the output axis of one (E, 3E) kernel
    "MultiheadAttention": {
        "in_proj_weight": Rule("in_proj/kernel", _transpose, _transpose),
        "in_proj_bias": Rule("in_proj/bias"),
    },
    "LSTM": _LSTM,
}
