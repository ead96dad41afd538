"""torch.nn losses with PyTorch's exact semantics, in torch's argument order ``(input, target)``.

>>> from jax_impl.losses import from_torch
>>> loss_fn = from_torch("CrossEntropyLoss(label_smoothing=0.1)")
>>> loss = loss_fn(logits, labels)          # logits (N, C), labels (N,) int
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jax_impl.spec import CallSpec, SpecError, bind_call, build_from_registry

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = ["from_torch", "LOSSES", "CrossEntropyLoss", "cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")


def cross_entropy(
    logits: jax.Array,
    target: jax.Array,
    *,
    weight: jax.Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""``torch.nn.functional.cross_entropy`` for class-index targets, classes on axis 1.

    With class weights :math:`w` and smoothing :math:`\varepsilon` over :math:`C` classes the
    per-sample loss is

    .. math::
        \ell_i = (1-\varepsilon)\, w_{y_i} (-\log p_{i,y_i})
                 + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{i,c})

    and ``reduction='mean'`` divides the sum by :math:`\sum_i w_{y_i}` over the samples whose
    target is not ``ignore_index`` (not by the batch size, as a naive weighted mean would).
    Ignored samples contribute 0; a batch with every target ignored gives NaN, as in torch.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    per_sample_shape = target.shape  # (N,) or (N, d1, ...)
    if logits.ndim > 2:  # (N, C, d1, ...) -> (N * d1 * ..., C), as torch treats K-dim inputs
        classes = logits.shape[1]
        logits = jnp.moveaxis(logits, 1, -1).reshape(-1, classes)
        target = target.reshape(-1)
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # (N, C)
    keep = target != ignore_index
    safe_target = jnp.where(keep, target, 0)
    nll = -jnp.take_along_axis(log_probs, safe_target[:, None], axis=-1)[:, 0]  # (N,)
    if weight is not None and jnp.shape(weight) != (num_classes,):
        raise ValueError(f"weight must have one entry per class, shape ({num_classes},); got {jnp.shape(weight)}")
    class_weight = (
        jnp.ones((num_classes,), logits.dtype) if weight is None else jnp.asarray(weight, logits.dtype)
    )
    sample_weight = jnp.where(keep, class_weight[safe_target], 0.0)  # (N,)
    losses = sample_weight * nll
    if label_smoothing > 0.0:
        smooth = -(log_probs * class_weight).sum(axis=-1)  # (N,)
        smooth = jnp.where(keep, smooth, 0.0)
        losses = (1.0 - label_smoothing) * losses + (label_smoothing / num_classes) * smooth
    if reduction == "none":
        return losses.reshape(per_sample_shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / sample_weight.sum()


def CrossEntropyLoss(
    weight: Sequence[float] | None = None,
    size_average: None = None,
    ignore_index: int = -100,
    reduce: None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> LossFn:
    """Build :func:`cross_entropy` from ``torch.nn.CrossEntropyLoss``'s arguments."""
    if size_average is not None or reduce is not None:
        raise ValueError("size_average and reduce are deprecated in torch; use reduction=")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    class_weight = None if weight is None else jnp.asarray(weight)

    def loss_fn(input: jax.Array, target: jax.Array) -> jax.Array:
        return cross_entropy(
            input, target, weight=class_weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing,
        )

    return loss_fn


#: torch.nn loss class name -> builder with that class's constructor signature.
LOSSES: dict[str, Callable[..., LossFn]] = {"CrossEntropyLoss": CrossEntropyLoss}


def from_torch(spec: str | CallSpec) -> LossFn:
    """The loss function of a torch.nn loss spec such as ``"CrossEntropyLoss()"``."""
    builder, call = build_from_registry(spec, LOSSES, kind="loss")
    kwargs = bind_call(call, builder, kind="loss")
    try:
        return builder(**kwargs)
    except Exception as error:  # any failure to build from the spec's arguments is bad input
        raise SpecError(f"loss {call}: {error}") from None
