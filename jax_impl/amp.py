"""Mixed precision as PyTorch does it on CPU: ``torch.autocast("cpu", dtype)`` and
``torch.amp.GradScaler``.

>>> from jax_impl.amp import MixedPrecision, GradScaler
>>> amp = MixedPrecision(jnp.bfloat16, GradScaler(init_scale=2.0**16))
>>> train_step = make_train_step(graphdef, loss_fn, tx, amp=amp)   # jax_impl.step
>>> graphdef, state = init_train_state(model, tx, amp=amp)          # holds the loss scale

**Autocast.** torch's CPU autocast runs each op in the dtype its op lists give it; the
parameters stay float32 ("master weights"). Measured on torch 2.13 (``tests/parity/test_amp.py``
checks each rule against torch):

* ``linear`` and ``conv2d`` (torch's lower-precision list) cast input, weight and bias to the
  autocast dtype and compute ``round(x @ W^T + b)``: products of the rounded operands summed in
  float32 with the bias, then **one** rounding to the autocast dtype (oneDNN's fused bias;
  adding the bias after rounding the product differs in about a quarter of the elements). The
  backward takes the output's gradient in the autocast dtype and computes each operand's
  gradient the same way (float32 sums, one rounding), then casts it exactly to the operand's
  dtype (the backward of autocast's cast). :func:`lower_precision` makes such an op, as a
  ``jax.custom_vjp`` whose backward is written out, so it does not depend on how XLA accumulates
  a low-precision dot; :func:`linear` and :func:`conv` are the two in use. torch's float16
  convolution does not round its weight gradient so (:func:`check_supported` refuses it).
* ``batch_norm`` is on neither list: on a low-precision input torch computes it in float32 with
  the float32 parameters and statistics and rounds the output once (``jax_impl.layers.BatchNorm``).
* ReLU, max-pooling and dropout run in their input's dtype (exact, dropout's scale rounded to it).
* The losses are on torch's float32 list: the low-precision model outputs are cast to float32
  and the loss is computed there (:data:`FLOAT32_LOSSES`); their gradient is rounded back to
  the autocast dtype by the cast's backward.

:func:`autocast` is a context entered while a function is traced (inside the function you
``jit``): the layers of :mod:`jax_impl.layers` that have a rule consult it. A model with a
layer that has no rule yet is refused by :func:`check_supported`, naming the layer, rather than
run in float32 silently.

**Loss scaling.** :class:`GradScaler` is ``torch.amp.GradScaler`` as pure functions of a
:class:`LossScaleState` (``scale`` float32, ``growth_tracker`` int32):

* ``scale(loss)`` is ``loss * scale`` in float32;
* ``unscale(grads)`` multiplies by ``float32(1 / float64(scale))`` as torch does (with x64
  enabled; without it the reciprocal is a float32 division, the same for power-of-two scales, and
  XLA flushes the subnormal inverse of a scale above 2**126 to zero) and reports ``found_inf``:
  any non-finite element among the gradients *before* unscaling;
* the optimizer step is skipped when ``found_inf`` (:func:`skip_nonfinite_update`): parameters
  and the optimizer's own state (moments, its step count) are kept, while injected schedules
  still advance, as torch's ``scheduler.step()`` still runs after a skipped
  ``scaler.step(optimizer)`` (``optax.apply_if_finite`` differs: it freezes the schedule too);
* ``update(found_inf)``: on ``found_inf`` the scale is multiplied by ``backoff_factor`` and the
  tracker reset; otherwise the tracker counts up and at ``growth_interval`` the scale is
  multiplied by ``growth_factor`` (kept only if finite) and the tracker reset. The products
  are taken in double and rounded to float32, as torch's kernel does (here in the widest float
  enabled).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.optim._base import _is_injected, widest_float

__all__ = ["AUTOCAST_DTYPES", "FLOAT32_LOSSES", "autocast", "autocast_dtype", "lower_precision", "linear", "conv",
           "check_supported",
           "GradScaler", "LossScaleState", "MixedPrecision", "all_finite", "skip_nonfinite_update"]

#: the dtypes torch's CPU autocast takes, by torch's name
AUTOCAST_DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}

#: torch.nn losses whose functional op is on torch's autocast float32 list (checked against
#: torch: under ``torch.autocast("cpu", torch.bfloat16)`` each returns float32 from
#: low-precision inputs): the port casts the model outputs to float32 before them.
FLOAT32_LOSSES = frozenset({
    "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "KLDivLoss",
    "BCEWithLogitsLoss", "MultiMarginLoss", "SoftMarginLoss", "HingeEmbeddingLoss", "PoissonNLLLoss",
})

_state = threading.local()


def autocast_dtype() -> Any:
    """The dtype of the innermost active :func:`autocast`, or None outside one."""
    return getattr(_state, "dtype", None)


@contextlib.contextmanager
def autocast(dtype: Any) -> Iterator[None]:
    """``torch.autocast("cpu", dtype=dtype)`` for the layers traced inside it (``None``: off)."""
    if dtype is not None and jnp.dtype(dtype) not in {jnp.dtype(d) for d in AUTOCAST_DTYPES.values()}:
        raise ValueError(f"autocast dtype must be one of {', '.join(AUTOCAST_DTYPES)}, got {dtype}")
    previous = autocast_dtype()
    _state.dtype = None if dtype is None else jnp.dtype(dtype)
    try:
        yield
    finally:
        _state.dtype = previous


# ------------------------------------------------------------------------------------------
# linear under autocast


def _low(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` rounded to the autocast dtype, held in float32 (exactly) for a float32 sum."""
    return x.astype(dtype).astype(jnp.float32)


def lower_precision(fn: Any, dtype: Any) -> Any:
    """``fn`` (a function of arrays computing in float32) as an op on torch's autocast
    lower-precision list: its operands rounded to ``dtype``, the result computed from them in
    float32 and rounded once to ``dtype``. Its gradient is a ``jax.custom_vjp`` written out the
    same way: the output's gradient (in ``dtype``) taken to float32, ``fn``'s float32 backward
    on the rounded operands, each operand's gradient rounded once to ``dtype`` and then taken to
    the operand's own dtype exactly (the backward of autocast's cast), as torch's low-precision
    kernels do. XLA's accumulation of a low-precision dot or convolution plays no part."""

    def rounded(operands):
        return tuple(_low(operand, dtype) for operand in operands)

    @jax.custom_vjp
    def op(*operands):
        return fn(*rounded(operands)).astype(dtype)

    def forward(*operands):
        return op(*operands), operands

    def backward(operands, dy):
        _, vjp = jax.vjp(fn, *rounded(operands))
        grads = vjp(dy.astype(jnp.float32))
        return tuple(g.astype(dtype).astype(o.dtype) for g, o in zip(grads, operands, strict=True))

    op.defvjp(forward, backward)
    return op


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Any) -> jax.Array:
    """``torch.nn.functional.linear`` under CPU autocast to ``dtype``: ``kernel`` is (in, out)
    (Flax's layout, torch's weight transposed); the bias joins the float32 sum before the one
    rounding (oneDNN's fused bias). The result is in ``dtype``."""
    if bias is None:
        return lower_precision(jnp.matmul, dtype)(x, kernel)
    return lower_precision(lambda x, k, b: jnp.matmul(x, k) + b, dtype)(x, kernel, bias)


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Any, convolve: Any) -> jax.Array:
    """A convolution under CPU autocast to ``dtype``: ``convolve(x, kernel)`` (float32, on the
    rounded operands) plus the bias, rounded once."""
    if bias is None:
        return lower_precision(convolve, dtype)(x, kernel)
    return lower_precision(lambda x, k, b: convolve(x, k) + b, dtype)(x, kernel, bias)


# ------------------------------------------------------------------------------------------
# which models autocast supports


def check_supported(model: nnx.Module, dtype: Any = None) -> None:
    """Raise ``ValueError`` naming the first layer of ``model`` that has no autocast rule here
    (for autocast to ``dtype``): running it in float32 would silently differ from torch's
    autocast. Convolutions have a bfloat16 rule only: torch's CPU float16 convolution does not
    round a float32 sum once in its weight gradient (measured: 115 of conv1's 144 elements off
    that, by up to 0.3% of the largest), and that is not reproduced here."""
    from jax_impl import layers, models  # the modules that consult autocast

    # the layers with a rule, those that compute in their input's dtype exactly (max-pooling,
    # dropout's mask product as torch computes it in that dtype) or that have a rule of their
    # own (BatchNorm), and the models made of them
    supported = (layers.AutocastLinear, layers.TorchConv2d, layers.BatchNorm, layers.MaxPool2d, layers.Dropout,
                 models.SimpleNN, models.CNN)
    for path, module in nnx.iter_modules(model):
        if isinstance(module, layers.TorchConv2d) and dtype is not None and jnp.dtype(dtype) == jnp.float16:
            where = ".".join(str(p) for p in path)
            raise ValueError(f"mixed precision: {where} (Conv2d) under float16 autocast: torch's CPU float16 "
                             "convolution gradient is not reproduced here (its float32 sums are not rounded once); "
                             "use bfloat16")
        if type(module) in supported:
            continue
        where = ".".join(str(p) for p in path) or "the model"
        raise ValueError(f"mixed precision: {where} ({type(module).__name__}) has no autocast rule in jax_impl.amp "
                         "yet (supported: Linear, Conv2d, BatchNorm, MaxPool2d, Dropout and ReLU, as in SimpleNN "
                         "and CNN)")


def check_loss(name: str) -> None:
    """Raise ``ValueError`` unless the torch loss ``name`` runs in float32 under autocast."""
    if name not in FLOAT32_LOSSES:
        raise ValueError(f"mixed precision: loss {name} is not one of the losses torch's autocast computes in float32 "
                         f"({', '.join(sorted(FLOAT32_LOSSES))})")


# ------------------------------------------------------------------------------------------
# loss scaling


class LossScaleState(NamedTuple):
    """``torch.amp.GradScaler``'s state: ``_scale`` and ``_growth_tracker``."""

    scale: jax.Array  # float32
    growth_tracker: jax.Array  # int32: consecutive steps without inf/NaN


@dataclasses.dataclass(frozen=True)
class GradScaler:
    """``torch.amp.GradScaler("cpu", init_scale, growth_factor, backoff_factor, growth_interval)``
    as pure functions of a :class:`LossScaleState` (see the module's docstring)."""

    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise ValueError(f"GradScaler: init_scale must be a positive finite number, got {self.init_scale}")
        if not self.growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1.0, got {self.growth_factor}")
        if not 0.0 < self.backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {self.backoff_factor}")
        if isinstance(self.growth_interval, bool) or not isinstance(self.growth_interval, int) \
                or self.growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval must be a positive integer, got {self.growth_interval}")

    def init(self) -> LossScaleState:
        return LossScaleState(jnp.asarray(np.float32(self.init_scale)), jnp.zeros((), jnp.int32))

    def scale(self, loss: jax.Array, state: LossScaleState) -> jax.Array:
        """``scaler.scale(loss)``: ``loss * scale``."""
        return loss * state.scale.astype(loss.dtype)

    def unscale(self, grads: Any, state: LossScaleState) -> tuple[Any, jax.Array]:
        """``scaler.unscale_(optimizer)``: ``(grads * (1 / scale), found_inf)``."""
        found_inf = jnp.logical_not(all_finite(grads))
        wide = widest_float()
        if wide == jnp.float32:
            inverse = 1.0 / state.scale  # a subnormal inverse (scale > 2**126) is flushed to zero by XLA
            return jax.tree.map(lambda g: g * inverse.astype(g.dtype), grads), found_inf
        # torch: inverse = float32(1 / float64(scale)), then a float32 product. XLA flushes float32
        # subnormals to zero, and the inverse of a scale above 2**126 is one, so both are taken
        # in float64: the inverse rounded to float32's precision (subnormal spacing included), and
        # the product, exact in float64, rounded once to float32.
        inverse = 1.0 / state.scale.astype(wide)
        tiny = np.finfo(np.float32).tiny  # 2**-126
        subnormal_step = float(np.finfo(np.float32).smallest_subnormal)  # 2**-149
        inverse = jnp.where(inverse < tiny, jnp.round(inverse / subnormal_step) * subnormal_step,
                            inverse.astype(jnp.float32).astype(wide))
        return jax.tree.map(lambda g: (g.astype(wide) * inverse).astype(g.dtype), grads), found_inf

    def update(self, state: LossScaleState, found_inf: jax.Array) -> LossScaleState:
        """``scaler.update()`` after a step that did (``found_inf``) or did not overflow."""
        scale = state.scale.astype(widest_float())
        backed_off = (scale * self.backoff_factor).astype(jnp.float32)
        grown = (scale * self.growth_factor).astype(jnp.float32)
        successful = state.growth_tracker + 1
        grow = jnp.logical_and(jnp.logical_not(found_inf), successful == self.growth_interval)
        new_scale = jnp.where(found_inf, backed_off,
                              jnp.where(jnp.logical_and(grow, jnp.isfinite(grown)), grown, state.scale))
        tracker = jnp.where(jnp.logical_or(found_inf, grow), jnp.zeros_like(successful), successful)
        return LossScaleState(new_scale, tracker)


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """What ``with torch.autocast("cpu", dtype): ...`` plus an optional ``GradScaler`` make of a
    train step: ``dtype`` is ``jnp.bfloat16`` or ``jnp.float16``; ``scaler`` None trains without
    loss scaling (the usual bfloat16 setup)."""

    dtype: Any
    scaler: GradScaler | None = None

    def __post_init__(self) -> None:
        if jnp.dtype(self.dtype) not in {jnp.dtype(d) for d in AUTOCAST_DTYPES.values()}:
            raise ValueError(f"MixedPrecision: dtype must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.dtype}")


def all_finite(tree: Any) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (a boolean scalar)."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves else jnp.asarray(True)


def skip_nonfinite_update(skip: jax.Array, new: Any, old: Any) -> Any:
    """``old`` where ``skip`` else ``new``, leaf by leaf, except that every
    ``optax.inject_hyperparams`` state takes all but its ``inner_state`` from ``new`` (its update
    counter, hyperparameters and schedule states): a skipped ``scaler.step(optimizer)`` leaves the
    optimizer's state as it was, while the schedule (torch's ``scheduler.step()``) moves on. For
    parameters, pass the parameter pytrees."""

    def select(new_node: Any, old_node: Any) -> Any:
        if _is_injected(new_node):
            return new_node._replace(inner_state=select(new_node.inner_state, old_node.inner_state))
        if isinstance(new_node, tuple) and hasattr(new_node, "_fields"):
            return type(new_node)(*(select(n, o) for n, o in zip(new_node, old_node, strict=True)))
        if isinstance(new_node, (tuple, list)):
            return type(new_node)(select(n, o) for n, o in zip(new_node, old_node, strict=True))
        if isinstance(new_node, dict):
            return {key: select(new_node[key], old_node[key]) for key in new_node}
        return jax.tree.map(lambda n, o: jnp.where(skip, o, n), new_node, old_node)

    return select(new, old)
