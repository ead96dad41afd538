"""Every ``torch.nn`` loss with PyTorch's exact semantics, in torch's argument order.

>>> from jax_impl.losses import from_torch
>>> loss_fn = from_torch("CrossEntropyLoss(label_smoothing=0.1)")
>>> loss = loss_fn(logits, labels)          # logits (N, C), labels (N,) int
>>> rank = from_torch("MarginRankingLoss(margin=0.5)")
>>> loss = rank(x1, x2, y)                  # torch's forward(input1, input2, target)

``from_torch(spec, **arguments)`` builds a loss from the spec string a PyTorch user writes;
``arguments`` carries what a spec cannot hold (a ``distance_function`` callable, ``rngs``).

* A loss without parameters is a pure function ``loss_fn(input, target, *extra)`` taking what
  torch's ``forward`` takes, in the same order: ``CTCLoss`` takes ``(log_probs, targets,
  input_lengths, target_lengths)``, ``GaussianNLLLoss`` ``(input, target, var)``,
  ``TripletMarginLoss`` ``(anchor, positive, negative)``. It is jittable, differentiable in
  every floating-point argument, and follows its input's dtype (float32 stays float32).
* The two losses that carry parameters, :class:`AdaptiveLogSoftmaxWithLoss` and
  :class:`LinearCrossEntropyLoss`, are ``nnx.Module`` s; ``from_torch`` returns the module
  (initialised from ``rngs``, default ``nnx.Rngs(0)``, in ``dtype``, default float32). Their
  variables mirror torch's ``state_dict`` names (``head.weight`` <-> ``head/kernel``,
  ``tail.0.1.weight`` <-> ``tail/0/1/kernel``, ``linear.weight`` <-> ``linear/kernel``, the
  class-weight buffer ``weight`` <-> ``weight``), so ``parity.convert.Converter`` maps them
  without rules; the loss itself is the pure function :func:`adaptive_log_softmax_with_loss`
  or :func:`linear_cross_entropy` of those parameters.

Each loss also has a functional form named as in ``torch.nn.functional`` (:func:`nll_loss`,
:func:`ctc_loss`, ...). Where torch's gradient is not the derivative of its own forward formula
the gradient follows torch (BCELoss, CTCLoss: see their docstrings), and where torch's
subgradient at a kink is a convention (L1 at 0, ``clamp_min`` at the boundary) it follows torch's.

Arguments and errors:

* Builders raise :class:`~jax_impl.spec.SpecError` for an invalid argument, with torch's wording
  where torch has one (``"only p == 1 and p == 2 supported"``).
* torch's deprecated ``size_average`` / ``reduce`` are rejected with an error that names the
  ``reduction`` torch would map them to (torch maps them and warns; a port should say what it
  means). ``reduction='elementwise_mean'`` (deprecated alias of ``'mean'``) is rejected likewise.
* A forward call raises ``ValueError`` (torch's wording) for shapes torch rejects. Checks that
  need values (a class index out of range, a negative variance, CTC lengths) run only when the
  values are concrete, i.e. outside ``jit``; inside ``jit`` such input gives undefined numbers.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.layers import Linear
from jax_impl.spec import CallSpec, SpecError, bind_call, build_from_registry

LossFn = Callable[..., jax.Array]

__all__ = [
    "from_torch", "LOSSES", "LossFn",
    # builders, one per torch.nn loss class (torch's constructor signature)
    "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss",
    "BCEWithLogitsLoss", "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss", "CTCLoss",
    "CosineEmbeddingLoss", "HingeEmbeddingLoss", "MarginRankingLoss", "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss", "MultiMarginLoss", "SoftMarginLoss", "TripletMarginLoss",
    "TripletMarginWithDistanceLoss", "AdaptiveLogSoftmaxWithLoss", "LinearCrossEntropyLoss",
    "ASMOutput",
    # functional forms (torch.nn.functional's names)
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "poisson_nll_loss",
    "gaussian_nll_loss", "ctc_loss", "cosine_embedding_loss", "hinge_embedding_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss",
    "multi_margin_loss", "soft_margin_loss", "pairwise_distance", "triplet_margin_loss",
    "triplet_margin_with_distance_loss", "linear_cross_entropy", "adaptive_log_softmax_with_loss",
]

_REDUCTIONS = ("none", "mean", "sum")
#: torch's EPSILON of BCELoss's gradient and CosineEmbeddingLoss is the C++ float 1e-12, i.e.
#: 9.99999996e-13: using the double 1e-12 is off by 4e-9 relative wherever it dominates.
_EPSILON = float(np.float32(1e-12))


# ------------------------------------------------------------------------------------------
# Shared pieces: reductions, argument checks, torch's subgradient conventions


def _reduce(losses: jax.Array, reduction: str) -> jax.Array:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _legacy_reduction(size_average: bool | None, reduce: bool | None) -> str:
    """torch's ``_Reduction.legacy_get_string``: what the deprecated pair means."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "mean" if size_average and reduce else "sum" if reduce else "none"


def _check_reduction(
    reduction: str, size_average: bool | None = None, reduce: bool | None = None, *,
    allowed: tuple[str, ...] = _REDUCTIONS, invalid: str = "{} is not a valid value for reduction",
) -> None:
    if size_average is not None or reduce is not None:
        meant = _legacy_reduction(size_average, reduce)
        raise SpecError(
            f"size_average and reduce are deprecated in torch; write reduction={meant!r} "
            f"(what torch maps size_average={size_average}, reduce={reduce} to)"
        )
    if reduction == "elementwise_mean":
        raise SpecError("reduction='elementwise_mean' is deprecated in torch; write reduction='mean'")
    if reduction not in allowed:
        raise SpecError(invalid.format(reduction))


def _tensor_argument(value: Any, name: str, ndim: int | None = 1) -> jax.Array | None:
    """A weight-like constructor argument (a tuple in a spec, or an array) as an array."""
    if value is None:
        return None
    try:
        array = jnp.asarray(value)
    except TypeError as error:
        raise SpecError(f"{name} must be a sequence of numbers or an array, got {value!r}") from error
    if not jnp.issubdtype(array.dtype, jnp.number):
        raise SpecError(f"{name} must hold numbers, got {value!r}")
    if ndim is not None and array.ndim != ndim:
        raise SpecError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as numpy when its values are known here (outside jit and grad tracing), else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _abs(x: jax.Array) -> jax.Array:
    """``|x|`` whose derivative at 0 is ``sign(0) = 0``, torch's (``jnp.abs``'s is 1)."""
    return x * jnp.sign(x)


def _clamp_min(x: jax.Array, low: float) -> jax.Array:
    """torch's ``clamp_min``: the gradient passes where ``x >= low`` (at the boundary too,
    where ``jnp.maximum`` passes half), and NaN stays NaN."""
    return jnp.where(x < low, jnp.asarray(low, x.dtype), x)


def _class_weight(weight: jax.Array | None, num_classes: int, dtype) -> jax.Array:
    if weight is None:
        return jnp.ones((num_classes,), dtype)
    if jnp.shape(weight) != (num_classes,):
        raise ValueError(
            f"weight tensor should be defined either for all {num_classes} classes or no classes "
            f"but got weight tensor of shape: {list(jnp.shape(weight))}"
        )
    return jnp.asarray(weight, dtype)


def _check_class_targets(target: jax.Array, num_classes: int, ignore_index: int | None = None) -> None:
    values = _concrete(target)
    if values is None:
        return
    bad = (values < 0) | (values >= num_classes)
    if ignore_index is not None:
        bad &= values != ignore_index
    if bad.any():
        raise ValueError(f"Target {values[bad].flat[0]} is out of bounds.")


def _same_ndim(anchor: jax.Array, positive: jax.Array, negative: jax.Array) -> None:
    a_dim, p_dim, n_dim = jnp.ndim(anchor), jnp.ndim(positive), jnp.ndim(negative)
    if not a_dim == p_dim == n_dim:
        raise ValueError(
            "The anchor, positive, and negative tensors are expected to have the same number of dimensions, "
            f"but got: anchor {a_dim}D, positive {p_dim}D, and negative {n_dim}D inputs"
        )


# ------------------------------------------------------------------------------------------
# Classification: CrossEntropyLoss, NLLLoss


def _nll_rows(log_probs: jax.Array, target: jax.Array, class_weight: jax.Array, ignore_index: int):
    """Per-row ``-w[y] log p[y]`` of (M, C) log-probabilities; ignored rows are 0 through a
    ``where``, so they get a zero gradient even when the mean's denominator is 0 (torch's)."""
    keep = target != ignore_index  # (M,)
    safe_target = jnp.where(keep, target, 0)
    picked = jnp.take_along_axis(log_probs, safe_target[:, None], axis=-1)[:, 0]  # (M,)
    row_weight = class_weight[safe_target]  # (M,)
    losses = jnp.where(keep, -(row_weight * picked), 0.0)
    return losses, jnp.where(keep, row_weight, 0.0), keep


def _to_rows(input: jax.Array, target: jax.Array):
    """(N, C, d1, ...) and (N, d1, ...) -> (M, C) and (M,), as torch treats K-dim inputs."""
    classes = input.shape[1]
    return jnp.moveaxis(input, 1, -1).reshape(-1, classes), target.reshape(-1)


def nll_loss(
    input: jax.Array, target: jax.Array, *, weight: jax.Array | None = None,
    ignore_index: int = -100, reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.nll_loss``: :math:`\ell_i = -w_{y_i}\, x_{i, y_i}`, classes on axis 1.

    Input (N, C), (N, C, d1, ...) or unbatched (C,); target (N,), (N, d1, ...) or () of class
    indices. ``'mean'`` divides by :math:`\sum_i w_{y_i}` over the targets that are not
    ``ignore_index``: NaN when every target is ignored or every kept weight is 0, as in torch.
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    unbatched = input.ndim == 1
    if unbatched:
        input, target = input[None], target[None]
    out_shape = target.shape
    class_weight = _class_weight(weight, input.shape[1], input.dtype)
    _check_class_targets(target, input.shape[1], ignore_index)
    losses, row_weight, _ = _nll_rows(*_to_rows(input, target), class_weight, ignore_index)
    if reduction == "none":
        return losses.reshape(out_shape[1:] if unbatched else out_shape)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / row_weight.sum()
    raise ValueError(f"{reduction} is not a valid value for reduction")


def cross_entropy(
    logits: jax.Array,
    target: jax.Array,
    *,
    weight: jax.Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""``torch.nn.functional.cross_entropy``, classes on axis 1.

    Logits (N, C), (N, C, d1, ...) or unbatched (C,). The target holds class indices (shape
    of the logits without axis 1) or class probabilities (the logits' shape).

    Class indices, with class weights :math:`w` and smoothing :math:`\varepsilon` over
    :math:`C` classes:

    .. math::
        \ell_i = (1-\varepsilon)\, w_{y_i} (-\log p_{i,y_i})
                 + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{i,c})

    and ``reduction='mean'`` divides the sum by :math:`\sum_i w_{y_i}` over the samples whose
    target is not ``ignore_index`` (not by the batch size, as a naive weighted mean would).
    Ignored samples contribute 0 and get a zero gradient; a batch with every target ignored
    gives NaN, as in torch (and zero weights give NaN, with NaN gradients, as in torch).

    Class probabilities :math:`t` (smoothed to :math:`(1-\varepsilon) t + \varepsilon / C`):
    :math:`\ell_i = -\sum_c w_c t_{i,c} \log p_{i,c}`, and ``'mean'`` divides by the number of
    rows :math:`N d_1 \cdots`, not by the weights. ``ignore_index`` must then be negative.
    """
    logits, target = jnp.asarray(logits), jnp.asarray(target)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    unbatched = logits.ndim == 1
    if unbatched:
        logits, target = logits[None], target[None]
    num_classes = logits.shape[1]
    class_weight = _class_weight(weight, num_classes, logits.dtype)
    log_probs = jax.nn.log_softmax(logits, axis=1)  # (N, C, d1, ...)
    if target.shape == logits.shape:  # class probabilities
        if not jnp.issubdtype(target.dtype, jnp.floating):
            raise ValueError(f"Expected floating point type for target with class probabilities, got {target.dtype}")
        if ignore_index >= 0:
            raise ValueError("ignore_index is not supported for floating point target")
        if label_smoothing > 0.0:
            target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
        class_axis_weight = class_weight.reshape((1, num_classes) + (1,) * (logits.ndim - 2))
        losses = -(log_probs * target * class_axis_weight).sum(axis=1)  # (N, d1, ...)
        if unbatched:
            losses = losses[0]
        return _reduce(losses, reduction)
    out_shape = target.shape  # (N,) or (N, d1, ...)
    _check_class_targets(target, num_classes, ignore_index)
    rows, row_target = _to_rows(log_probs, target)  # (M, C), (M,)
    losses, row_weight, keep = _nll_rows(rows, row_target, class_weight, ignore_index)
    if label_smoothing > 0.0:
        smooth = jnp.where(keep, -(rows * class_weight).sum(axis=-1), 0.0)  # (M,)
        losses = (1.0 - label_smoothing) * losses + (label_smoothing / num_classes) * smooth
    if reduction == "none":
        return losses.reshape(out_shape[1:] if unbatched else out_shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / row_weight.sum()


def CrossEntropyLoss(
    weight: Sequence[float] | None = None,
    size_average: None = None,
    ignore_index: int = -100,
    reduce: None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> LossFn:
    """``torch.nn.CrossEntropyLoss``: :func:`cross_entropy` with these arguments bound."""
    _check_reduction(reduction, size_average, reduce)
    if not 0.0 <= label_smoothing <= 1.0:
        raise SpecError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    return functools.partial(
        cross_entropy, weight=_tensor_argument(weight, "weight"), ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing,
    )


def NLLLoss(
    weight: Sequence[float] | None = None, size_average: None = None, ignore_index: int = -100,
    reduce: None = None, reduction: str = "mean",
) -> LossFn:
    """``torch.nn.NLLLoss``: :func:`nll_loss` with these arguments bound."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(nll_loss, weight=_tensor_argument(weight, "weight"), ignore_index=ignore_index,
                             reduction=reduction)


# ------------------------------------------------------------------------------------------
# Regression: MSELoss, L1Loss, SmoothL1Loss, HuberLoss


def mse_loss(input: jax.Array, target: jax.Array, *, reduction: str = "mean") -> jax.Array:
    r"""``torch.nn.functional.mse_loss``: :math:`(x - y)^2`, broadcasting as torch does.

    optax's ``l2_loss`` is half of this; ``squared_error`` is this.
    """
    return _reduce((input - target) ** 2, reduction)


def l1_loss(input: jax.Array, target: jax.Array, *, reduction: str = "mean") -> jax.Array:
    r"""``torch.nn.functional.l1_loss``: :math:`|x - y|`, with torch's gradient ``sign(x - y)``
    (0 where ``x == y``; ``jnp.abs`` would give 1 there)."""
    return _reduce(_abs(input - target), reduction)


def smooth_l1_loss(input: jax.Array, target: jax.Array, *, reduction: str = "mean", beta: float = 1.0) -> jax.Array:
    r"""``torch.nn.functional.smooth_l1_loss``: with :math:`z = |x - y|`,
    :math:`0.5 z^2 / \beta` if :math:`z < \beta`, else :math:`z - 0.5 \beta`; ``beta=0`` is L1.

    optax's ``huber_loss(delta=beta)`` is :math:`\beta` times this.
    """
    if beta == 0.0:
        return l1_loss(input, target, reduction=reduction)
    z = _abs(input - target)
    return _reduce(jnp.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta), reduction)


def huber_loss(input: jax.Array, target: jax.Array, *, reduction: str = "mean", delta: float = 1.0) -> jax.Array:
    r"""``torch.nn.functional.huber_loss``: with :math:`z = |x - y|`, :math:`0.5 z^2` if
    :math:`z < \delta`, else :math:`\delta (z - 0.5 \delta)` (optax's ``huber_loss``)."""
    z = _abs(input - target)
    return _reduce(jnp.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta)), reduction)


def MSELoss(size_average: None = None, reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.MSELoss``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(mse_loss, reduction=reduction)


def L1Loss(size_average: None = None, reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.L1Loss``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(l1_loss, reduction=reduction)


def SmoothL1Loss(size_average: None = None, reduce: None = None, reduction: str = "mean", beta: float = 1.0) -> LossFn:
    """``torch.nn.SmoothL1Loss``."""
    _check_reduction(reduction, size_average, reduce)
    if beta < 0:
        raise SpecError("smooth_l1_loss does not support negative values for beta.")
    return functools.partial(smooth_l1_loss, reduction=reduction, beta=beta)


def HuberLoss(reduction: str = "mean", delta: float = 1.0) -> LossFn:
    """``torch.nn.HuberLoss``."""
    _check_reduction(reduction)
    if not isinstance(delta, (float, int)) or isinstance(delta, bool):
        raise SpecError(f"delta must be a float or int, got: {type(delta)}")
    if delta <= 0:
        raise SpecError("huber_loss does not support non-positive values for delta.")
    return functools.partial(huber_loss, reduction=reduction, delta=delta)


# ------------------------------------------------------------------------------------------
# Binary and distribution losses: BCELoss, BCEWithLogitsLoss, KLDivLoss, PoissonNLLLoss,
# GaussianNLLLoss


@jax.custom_vjp
def _bce_elements(input: jax.Array, target: jax.Array) -> jax.Array:
    # torch clamps each log at -100, so input 0 or 1 gives a finite loss
    return (target - 1) * jnp.maximum(jnp.log1p(-input), -100.0) - target * jnp.maximum(jnp.log(input), -100.0)


def _bce_forward(input, target):
    return _bce_elements(input, target), (input, target)


def _bce_backward(residuals, g):
    input, target = residuals
    # torch's binary_cross_entropy_backward and ..._target_backward, not the derivative of the
    # clamped forward: the input gradient divides by max(x (1 - x), eps), the target's is
    # log(1 - x) - log(x) without the clamp (so +-inf at x = 0 or 1)
    grad_input = g * (input - target) / jnp.maximum((1 - input) * input, _EPSILON)
    grad_target = g * (jnp.log(1 - input) - jnp.log(input))
    return grad_input, grad_target


_bce_elements.defvjp(_bce_forward, _bce_backward)


def binary_cross_entropy(
    input: jax.Array, target: jax.Array, *, weight: jax.Array | None = None, reduction: str = "mean"
) -> jax.Array:
    r"""``torch.nn.functional.binary_cross_entropy``:
    :math:`-w\,[y \max(\log x, -100) + (1 - y) \max(\log(1 - x), -100)]`.

    The gradient is torch's, not the derivative of this formula: ``(x - y) / max(x (1-x), 1e-12)``
    for the input (finite at 0 and 1) and ``log(1-x) - log(x)`` for the target. ``'mean'`` is a
    plain mean: weights do not normalise it. Input and target must have the same shape.
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    if target.shape != input.shape:
        raise ValueError(
            f"Using a target size ({target.shape}) that is different to the input size ({input.shape}) is "
            "deprecated. Please ensure they have the same size."
        )
    values = _concrete(input)
    if values is not None and ((values < 0) | (values > 1)).any():
        raise ValueError("all elements of input should be between 0 and 1")
    losses = _bce_elements(input, target.astype(input.dtype))
    if weight is not None:
        losses = losses * jnp.asarray(weight, input.dtype)
    return _reduce(losses, reduction)


def binary_cross_entropy_with_logits(
    input: jax.Array, target: jax.Array, *, weight: jax.Array | None = None, reduction: str = "mean",
    pos_weight: jax.Array | None = None,
) -> jax.Array:
    r"""``torch.nn.functional.binary_cross_entropy_with_logits``, stable for any logit:

    .. math:: \ell = w\,[(1 - y)\, x - (1 + (p - 1)\, y) \log\sigma(x)]

    with ``pos_weight`` :math:`p` broadcast along the last (class) axis. optax's
    ``sigmoid_binary_cross_entropy`` has no ``pos_weight``.
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    log_sigmoid = jax.nn.log_sigmoid(input)
    if pos_weight is not None:
        log_sigmoid = log_sigmoid * ((jnp.asarray(pos_weight, input.dtype) - 1) * target + 1)
    losses = (1 - target) * input - log_sigmoid
    if weight is not None:
        losses = losses * jnp.asarray(weight, input.dtype)
    return _reduce(losses, reduction)


def kl_div(
    input: jax.Array, target: jax.Array, *, reduction: str = "mean", log_target: bool = False
) -> jax.Array:
    r"""``torch.nn.functional.kl_div`` of log-probabilities ``input`` from ``target``:
    :math:`y (\log y - x)` (``xlogy``, so :math:`y = 0` gives 0), or :math:`e^{y} (y - x)` with
    ``log_target``.

    ``'mean'`` averages over every element (torch's, which differs from the KL divergence);
    ``'batchmean'`` divides the sum by the batch size, like optax's ``kl_divergence(...).mean()``
    over rows. As in torch, the target's gradient is NaN where a target is exactly 0.
    """
    if log_target:
        losses = jnp.exp(target) * (target - input)
    else:
        losses = jax.scipy.special.xlogy(target, target) - target * input
    if reduction == "batchmean":
        return losses.sum() / input.shape[0] if jnp.ndim(input) else losses.sum()
    return _reduce(losses, reduction)


def poisson_nll_loss(
    input: jax.Array, target: jax.Array, *, log_input: bool = True, full: bool = False,
    eps: float = 1e-8, reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.poisson_nll_loss``: :math:`e^x - y x` (``log_input``) or
    :math:`x - y \log(x + \varepsilon)`, plus with ``full`` the Stirling term
    :math:`y \log y - y + \tfrac12 \log(2 \pi y)` where :math:`y > 1`.

    As in torch, with ``full`` the target's gradient is NaN where a target is exactly 0.
    """
    if log_input:
        losses = jnp.exp(input) - target * input
    else:
        losses = input - target * jnp.log(input + eps)
    if full:
        stirling = target * jnp.log(target) - target + 0.5 * jnp.log(2 * math.pi * target)
        losses = losses + jnp.where(target <= 1, 0.0, stirling)
    return _reduce(losses, reduction)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _clamp_min_keep_gradient(x: jax.Array, low: float) -> jax.Array:
    return jnp.maximum(x, low)


@_clamp_min_keep_gradient.defjvp
def _clamp_min_keep_gradient_jvp(low, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return jnp.maximum(x, low), x_dot


def gaussian_nll_loss(
    input: jax.Array, target: jax.Array, var: jax.Array | float, *, full: bool = False,
    eps: float = 1e-6, reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.gaussian_nll_loss``:
    :math:`\tfrac12 (\log \max(v, \varepsilon) + (x - y)^2 / \max(v, \varepsilon))`
    (+ :math:`\tfrac12 \log 2\pi` with ``full``).

    As in torch, the clamp at ``eps`` passes the gradient through unchanged (torch clamps under
    ``no_grad``). ``var`` may be a float, the input's shape, that shape without its last axis,
    or a shape that differs from the input's in exactly one axis of size 1.
    """
    input = jnp.asarray(input)
    if isinstance(var, float):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        var = var * jnp.ones_like(input)
    var = jnp.asarray(var)
    values = _concrete(var)
    if values is not None and (values < 0).any():
        raise ValueError("var has negative entry/entries")
    if var.shape != input.shape:
        if input.shape[:-1] == var.shape:
            var = var[..., None]  # homoscedastic: one variance per row
        elif not (input.ndim == var.ndim and sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1):
            raise ValueError("var is of incorrect size")
    var = _clamp_min_keep_gradient(var, eps)
    losses = 0.5 * (jnp.log(var) + (input - target) ** 2 / var)
    if full:
        losses = losses + 0.5 * math.log(2 * math.pi)
    return _reduce(losses, reduction)


def BCELoss(weight: Sequence[float] | None = None, size_average: None = None, reduce: None = None,
            reduction: str = "mean") -> LossFn:
    """``torch.nn.BCELoss``: :func:`binary_cross_entropy` (``weight`` broadcasts over the input)."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(binary_cross_entropy, weight=_tensor_argument(weight, "weight", None), reduction=reduction)


def BCEWithLogitsLoss(weight: Sequence[float] | None = None, size_average: None = None, reduce: None = None,
                      reduction: str = "mean", pos_weight: Sequence[float] | None = None) -> LossFn:
    """``torch.nn.BCEWithLogitsLoss``: :func:`binary_cross_entropy_with_logits`."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(
        binary_cross_entropy_with_logits, weight=_tensor_argument(weight, "weight", None),
        pos_weight=_tensor_argument(pos_weight, "pos_weight", None), reduction=reduction,
    )


def KLDivLoss(size_average: None = None, reduce: None = None, reduction: str = "mean",
              log_target: bool = False) -> LossFn:
    """``torch.nn.KLDivLoss``: :func:`kl_div`; ``reduction`` may also be ``'batchmean'``."""
    _check_reduction(reduction, size_average, reduce, allowed=_REDUCTIONS + ("batchmean",))
    return functools.partial(kl_div, reduction=reduction, log_target=log_target)


def PoissonNLLLoss(log_input: bool = True, full: bool = False, size_average: None = None, eps: float = 1e-8,
                   reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.PoissonNLLLoss``: :func:`poisson_nll_loss`."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(poisson_nll_loss, log_input=log_input, full=full, eps=eps, reduction=reduction)


def GaussianNLLLoss(*, full: bool = False, eps: float = 1e-6, reduction: str = "mean") -> LossFn:
    """``torch.nn.GaussianNLLLoss``: :func:`gaussian_nll_loss`, called ``(input, target, var)``."""
    _check_reduction(reduction, invalid="{} is not valid")
    return functools.partial(gaussian_nll_loss, full=full, eps=eps, reduction=reduction)


# ------------------------------------------------------------------------------------------
# CTCLoss: the forward algorithm in log space, with torch's gradient


def _logsumexp(*terms: jax.Array) -> jax.Array:
    """Elementwise ``log(sum(exp(terms)))``: -inf (with zero gradients, not NaN) where every
    term is -inf; torch's CTC kernels shift by the maximum in the same way."""
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, terms))
    shift = jnp.where(jnp.isfinite(top), top, 0.0)
    total = sum(jnp.exp(term - shift) for term in terms)
    positive = total > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, total, 1.0)) + shift, -jnp.inf)


def _shift_right(x: jax.Array, steps: int, fill) -> jax.Array:
    """``x[:, s - steps]`` at column s, ``fill`` where that is before column 0. (N, L) -> (N, L)."""
    kept = max(x.shape[1] - steps, 0)
    filler = jnp.full((x.shape[0], x.shape[1] - kept), fill, x.dtype)
    return jnp.concatenate([filler, x[:, :kept]], axis=1)


def _ctc_alpha_nll(log_probs, labels, input_lengths, target_lengths, blank):
    """Per-sample CTC negative log-likelihood by the forward (alpha) recursion.

    log_probs (T, N, C); labels (N, S) padded; lengths (N,). The extended label sequence
    interleaves blanks: (N, 2S+1). Frames at or past a sample's input length leave its alphas.
    """
    num_frames, batch, _ = log_probs.shape
    width = 2 * labels.shape[1] + 1
    extended = jnp.full((batch, width), blank, labels.dtype).at[:, 1::2].set(labels)  # (N, L)
    position = jnp.arange(width)
    can_skip = (extended != blank) & (extended != _shift_right(extended, 2, blank)) & (position >= 2)  # (N, L)
    emit = jnp.take_along_axis(log_probs, jnp.broadcast_to(extended, (num_frames, batch, width)), axis=2)  # (T, N, L)
    neg_inf = jnp.asarray(-jnp.inf, log_probs.dtype)
    has_frames = (input_lengths > 0)[:, None]
    start = (position == 0) | ((position == 1) & (target_lengths > 0)[:, None])
    alpha = jnp.where(start & has_frames, emit[0], neg_inf)  # (N, L)
    # no frames at all: the empty alignment (likelihood 1) when the target is empty too
    alpha = jnp.where(has_frames, alpha, jnp.where(position == 0, 0.0, neg_inf).astype(log_probs.dtype))

    def step(alpha, frame):
        t, emit_t = frame  # (), (N, L)
        skip = jnp.where(can_skip, _shift_right(alpha, 2, neg_inf), neg_inf)
        advanced = _logsumexp(alpha, _shift_right(alpha, 1, neg_inf), skip) + emit_t
        return jnp.where((t < input_lengths)[:, None], advanced, alpha), None

    alpha, _ = jax.lax.scan(step, alpha, (jnp.arange(1, num_frames), emit[1:]))
    last = jnp.take_along_axis(alpha, (2 * target_lengths)[:, None], axis=1)[:, 0]
    before_last = jnp.take_along_axis(alpha, jnp.maximum(2 * target_lengths - 1, 0)[:, None], axis=1)[:, 0]
    before_last = jnp.where(target_lengths > 0, before_last, neg_inf)
    return -_logsumexp(last, before_last)  # (N,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ctc_nll(log_probs, labels, input_lengths, target_lengths, blank, zero_infinity):
    nll = _ctc_alpha_nll(log_probs, labels, input_lengths, target_lengths, blank)
    return jnp.where(jnp.isinf(nll), 0.0, nll) if zero_infinity else nll


def _ctc_nll_forward(log_probs, labels, input_lengths, target_lengths, blank, zero_infinity):
    nll, pullback = jax.vjp(lambda lp: _ctc_alpha_nll(lp, labels, input_lengths, target_lengths, blank), log_probs)
    out = jnp.where(jnp.isinf(nll), 0.0, nll) if zero_infinity else nll
    return out, (pullback, nll, log_probs, input_lengths)


def _ctc_nll_backward(blank, zero_infinity, residuals, g):
    pullback, nll, log_probs, input_lengths = residuals
    infinite = jnp.isinf(nll)  # (N,)
    g = jnp.where(infinite, 0.0, g)
    (grad,) = pullback(g)  # (T, N, C): the derivative of the forward recursion
    # torch's ctc_loss_backward returns exp(log_probs) * g more than that derivative: the two
    # agree after a log_softmax (whose backward removes any per-frame constant), not on raw
    # log-probabilities, where torch's gradient is what torch trains with
    in_range = (jnp.arange(log_probs.shape[0])[:, None] < input_lengths[None, :])[:, :, None]  # (T, N, 1)
    grad = jnp.where(in_range, grad + jnp.exp(log_probs) * g[None, :, None], 0.0)
    if not zero_infinity:  # torch's gradient of an infinite loss is NaN on the sample's frames
        grad = jnp.where(infinite[None, :, None] & in_range, jnp.nan, grad)
    return grad, None, None, None


_ctc_nll.defvjp(_ctc_nll_forward, _ctc_nll_backward)


def ctc_loss(
    log_probs: jax.Array, targets: jax.Array, input_lengths: jax.Array | Sequence[int],
    target_lengths: jax.Array | Sequence[int], *, blank: int = 0, reduction: str = "mean",
    zero_infinity: bool = False,
) -> jax.Array:
    r"""``torch.nn.functional.ctc_loss``: :math:`-\log \sum_{\pi \to y} \prod_t p_t(\pi_t)` over
    every alignment :math:`\pi` of the target :math:`y` (blanks and repeats collapsed).

    Shapes: ``log_probs`` (T, N, C) log-probabilities (or unbatched (T, C)); ``targets`` padded
    (N, S) or concatenated 1-D (sum of ``target_lengths``); lengths (N,) integers or sequences.
    ``'mean'`` divides each sample's loss by its target length (at least 1), then averages over
    the batch. An impossible alignment gives ``inf`` and a NaN gradient on that sample's frames,
    as in torch; ``zero_infinity`` makes both 0.

    The gradient is torch's: the derivative of the loss plus ``exp(log_probs)`` times the
    incoming gradient on each sample's first ``input_length`` frames (frames past it get 0).
    It equals the true derivative once ``log_probs`` come from a ``log_softmax``, as they
    should. The recursion is a ``lax.scan`` over T of (N, 2S+1) alphas; concatenated targets
    are padded to S = their total length.
    """
    log_probs, targets = jnp.asarray(log_probs), jnp.asarray(targets)
    unbatched = log_probs.ndim == 2
    if unbatched:
        log_probs, targets = log_probs[:, None], targets[None]
    num_frames, batch, num_classes = log_probs.shape
    if not 0 <= blank < num_classes:
        raise ValueError("blank must be in label range")
    input_lengths = jnp.asarray(input_lengths).astype(jnp.int32).reshape(batch)
    target_lengths = jnp.asarray(target_lengths).astype(jnp.int32).reshape(batch)
    if targets.ndim == 1:  # concatenated: sample n's labels start at the sum of the lengths before it
        total = targets.shape[0]
        starts = jnp.cumsum(target_lengths) - target_lengths
        index = jnp.clip(starts[:, None] + jnp.arange(total)[None, :], 0, max(total - 1, 0))
        labels = targets[index] if total else jnp.zeros((batch, 0), targets.dtype)  # (N, total)
    else:
        labels = targets  # (N, S)
    _check_ctc_lengths(num_frames, targets, labels.shape[1], input_lengths, target_lengths)
    labels = jnp.clip(labels, 0, num_classes - 1).astype(jnp.int32)  # padding may hold anything
    nll = _ctc_nll(log_probs, labels, input_lengths, target_lengths, blank, zero_infinity)  # (N,)
    if reduction == "mean":
        return (nll / jnp.maximum(target_lengths, 1).astype(nll.dtype)).mean()
    return _reduce(nll[0] if unbatched else nll, reduction)


def _check_ctc_lengths(num_frames, targets, width, input_lengths, target_lengths) -> None:
    inputs, labels = _concrete(input_lengths), _concrete(target_lengths)
    if inputs is not None and (inputs > num_frames).any():
        raise ValueError(f"Expected input_lengths to have value at most {num_frames}, but got value {inputs.max()}")
    if labels is None:
        return
    if targets.ndim == 1 and labels.sum() > targets.shape[0]:
        raise ValueError(f"the concatenated targets hold {targets.shape[0]} labels but target_lengths sum to {labels.sum()}")
    if targets.ndim != 1 and (labels > width).any():
        raise ValueError(f"Expected tensor to have size at least {labels.max()} at dimension 1, but got size {width} "
                         "for argument #2 'targets'")


def CTCLoss(blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> LossFn:
    """``torch.nn.CTCLoss``: :func:`ctc_loss`, called ``(log_probs, targets, input_lengths, target_lengths)``."""
    _check_reduction(reduction)
    if blank < 0:
        raise SpecError("blank must be in label range")
    return functools.partial(ctc_loss, blank=blank, reduction=reduction, zero_infinity=zero_infinity)


# ------------------------------------------------------------------------------------------
# Margin and embedding losses


def cosine_embedding_loss(
    input1: jax.Array, input2: jax.Array, target: jax.Array, *, margin: float = 0.0, reduction: str = "mean"
) -> jax.Array:
    r"""``torch.nn.functional.cosine_embedding_loss``: :math:`1 - \cos(x_1, x_2)` where
    :math:`y = 1`, :math:`\max(0, \cos(x_1, x_2) - m)` where :math:`y = -1`, 0 for other targets.

    torch's cosine: :math:`\sum x_1 x_2 / \sqrt{(\sum x_1^2 + \epsilon)(\sum x_2^2 + \epsilon)}` with
    the float32 :math:`\epsilon = 10^{-12}`.
    Inputs (N, D) with target (N,), or (D,) with target ().
    """
    input1, input2, target = jnp.asarray(input1), jnp.asarray(input2), jnp.asarray(target)
    if target.ndim > 1:
        raise ValueError("0D or 1D target tensor expected, multi-target not supported")
    expected = target.ndim + 1
    if input1.ndim != expected or input2.ndim != expected:
        raise ValueError(
            f"{target.ndim}D target tensor expects {expected}D input tensors, but found inputs with sizes "
            f"{list(input1.shape)} and {list(input2.shape)}."
        )
    axis = target.ndim
    product = (input1 * input2).sum(axis)
    squares1 = (input1 * input1).sum(axis) + _EPSILON
    squares2 = (input2 * input2).sum(axis) + _EPSILON
    cosine = product / jnp.sqrt(squares1 * squares2)
    losses = jnp.where(target == 1, 1 - cosine, 0.0) + jnp.where(target == -1, _clamp_min(cosine - margin, 0.0), 0.0)
    return _reduce(losses, reduction)


def hinge_embedding_loss(
    input: jax.Array, target: jax.Array, *, margin: float = 1.0, reduction: str = "mean"
) -> jax.Array:
    r"""``torch.nn.functional.hinge_embedding_loss``: :math:`x` where :math:`y = 1`,
    :math:`\max(0, m - x)` where :math:`y = -1`; other targets get both terms, as in torch."""
    losses = (jnp.where(target != 1, _clamp_min(margin - input, 0.0), 0.0)
              + jnp.where(target != -1, input, 0.0))
    return _reduce(losses, reduction)


def margin_ranking_loss(
    input1: jax.Array, input2: jax.Array, target: jax.Array, *, margin: float = 0.0, reduction: str = "mean"
) -> jax.Array:
    r"""``torch.nn.functional.margin_ranking_loss``: :math:`\max(0, -y (x_1 - x_2) + m)`."""
    if not jnp.ndim(input1) == jnp.ndim(input2) == jnp.ndim(target):
        raise ValueError(
            "margin_ranking_loss : All input tensors should have same dimension but got sizes: "
            f"input1: {jnp.shape(input1)}, input2: {jnp.shape(input2)}, target: {jnp.shape(target)} "
        )
    return _reduce(_clamp_min(-target * (input1 - input2) + margin, 0.0), reduction)


def multilabel_margin_loss(input: jax.Array, target: jax.Array, *, reduction: str = "mean") -> jax.Array:
    r"""``torch.nn.functional.multilabel_margin_loss``:
    :math:`\frac1C \sum_{j} \sum_{k \notin Y} \max(0, 1 - (x_{y_j} - x_k))`.

    ``target`` (the input's shape, (N, C) or (C,)) lists the target classes :math:`y_j` and ends
    at its first -1; :math:`Y` is that set. A class listed twice counts twice, as in torch.
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    unbatched = input.ndim == 1
    if unbatched:
        input, target = input[None], target[None]
    if target.shape != input.shape:
        raise ValueError(f"inconsistent target size: {list(target.shape)} for input of size: {list(input.shape)}")
    num_classes = input.shape[1]
    listed = jnp.cumprod(target != -1, axis=1).astype(bool)  # (N, C): before the first -1
    safe = jnp.where(listed, target, 0)
    is_target = (jax.nn.one_hot(safe, num_classes, dtype=jnp.int32) * listed[:, :, None]).max(axis=1) > 0  # (N, C)
    target_scores = jnp.take_along_axis(input, safe, axis=1)  # (N, C): x[y_j]
    margins = 1 - target_scores[:, :, None] + input[:, None, :]  # (N, j, k)
    counted = listed[:, :, None] & ~is_target[:, None, :] & (margins > 0)
    losses = jnp.where(counted, margins, 0.0).sum(axis=(1, 2)) / num_classes  # (N,)
    return _reduce(losses[0] if unbatched else losses, reduction)


def multilabel_soft_margin_loss(
    input: jax.Array, target: jax.Array, *, weight: jax.Array | None = None, reduction: str = "mean"
) -> jax.Array:
    r"""``torch.nn.functional.multilabel_soft_margin_loss``: the class-mean of
    :math:`-w_c [y_c \log\sigma(x_c) + (1 - y_c) \log\sigma(-x_c)]` over the last axis."""
    losses = -(target * jax.nn.log_sigmoid(input) + (1 - target) * jax.nn.log_sigmoid(-input))
    if weight is not None:
        losses = losses * jnp.asarray(weight, losses.dtype)
    losses = losses.sum(axis=-1) / input.shape[-1]
    return _reduce(losses, reduction)


def multi_margin_loss(
    input: jax.Array, target: jax.Array, *, p: int = 1, margin: float = 1.0,
    weight: jax.Array | None = None, reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.multi_margin_loss``:
    :math:`\frac1C \sum_{i \ne y} w_y \max(0, m - x_y + x_i)^p`, input (N, C) or (C,)."""
    if p not in (1, 2):
        raise ValueError("only p == 1 and p == 2 supported")
    input, target = jnp.asarray(input), jnp.asarray(target)
    unbatched = input.ndim == 1
    if unbatched:
        input, target = input[None], target.reshape(1)
    num_classes = input.shape[1]
    _check_class_targets(target, num_classes)
    target_score = jnp.take_along_axis(input, target[:, None], axis=1)  # (N, 1)
    z = margin - target_score + input  # (N, C)
    counted = (z > 0) & (jnp.arange(num_classes)[None, :] != target[:, None])
    terms = jnp.where(counted, z if p == 1 else z * z, 0.0)
    if weight is not None:
        terms = terms * jnp.asarray(weight, input.dtype)[target][:, None]
    losses = terms.sum(axis=1) / num_classes  # (N,)
    return _reduce(losses[0] if unbatched else losses, reduction)


def soft_margin_loss(input: jax.Array, target: jax.Array, *, reduction: str = "mean") -> jax.Array:
    r"""``torch.nn.functional.soft_margin_loss``: :math:`\log(1 + e^{-y x})`, computed as torch
    does, so it overflows the same way: ``inf`` (with a NaN gradient) once :math:`-y x` passes
    about 89 in float32 or 710 in float64."""
    return _reduce(jnp.log1p(jnp.exp(-target * input)), reduction)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _p_norm(v: jax.Array, p: float) -> jax.Array:
    return (jnp.abs(v) ** p).sum(axis=-1) ** (1.0 / p)


@_p_norm.defjvp
def _p_norm_jvp(p, primals, tangents):
    (v,), (v_dot,) = primals, tangents
    norm = _p_norm(v, p)
    # torch's norm backward: sign(v) |v|^(p-1) / norm^(p-1), and 0 where the norm is 0
    safe_norm = jnp.where(norm > 0, norm, 1.0)
    slope = jnp.sign(v) * jnp.abs(v) ** (p - 1) / (safe_norm ** (p - 1))[..., None]
    return norm, jnp.where(norm > 0, (slope * v_dot).sum(axis=-1), 0.0)


def _vector_norm(v: jax.Array, p: float) -> jax.Array:
    """``torch.norm(v, p, dim=-1)`` with torch's gradients: 0 where the norm is 0, ``sign``
    convention at 0 entries, ties of the inf-norm sharing the gradient equally."""
    if p == 2:
        squares = (v * v).sum(axis=-1)
        positive = squares > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
    if p == 1:
        return _abs(v).sum(axis=-1)
    if p == math.inf:
        return _abs(v).max(axis=-1)
    if p == -math.inf:
        return _abs(v).min(axis=-1)
    if p == 0:
        return jax.lax.stop_gradient((v != 0).sum(axis=-1).astype(v.dtype))
    return _p_norm(v, p)


def pairwise_distance(
    x1: jax.Array, x2: jax.Array, *, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False
) -> jax.Array:
    r"""``torch.nn.functional.pairwise_distance``: :math:`\lVert x_1 - x_2 + \varepsilon \rVert_p`
    over the last axis (``eps`` is added to the difference, not to the norm)."""
    distance = _vector_norm(x1 - x2 + eps, p)
    return distance[..., None] if keepdim else distance


def triplet_margin_loss(
    anchor: jax.Array, positive: jax.Array, negative: jax.Array, *, margin: float = 1.0, p: float = 2.0,
    eps: float = 1e-6, swap: bool = False, reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.triplet_margin_loss``:
    :math:`\max(0, m + d(a, p) - d(a, n))` with :func:`pairwise_distance` :math:`d`; ``swap``
    uses :math:`\min(d(a, n), d(p, n))` for the negative distance."""
    _same_ndim(anchor=anchor, positive=positive, negative=negative)
    distance = functools.partial(pairwise_distance, p=p, eps=eps)
    return _triplet(distance, anchor, positive, negative, margin, swap, reduction)


def _triplet(distance, anchor, positive, negative, margin, swap, reduction):
    positive_distance = distance(anchor, positive)
    negative_distance = distance(anchor, negative)
    if swap:
        negative_distance = jnp.minimum(negative_distance, distance(positive, negative))
    return _reduce(_clamp_min(margin + positive_distance - negative_distance, 0.0), reduction)


def triplet_margin_with_distance_loss(
    anchor: jax.Array, positive: jax.Array, negative: jax.Array, *,
    distance_function: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    margin: float = 1.0, swap: bool = False, reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.triplet_margin_with_distance_loss``: :func:`triplet_margin_loss`
    with any distance ``distance_function(x1, x2)`` (default :func:`pairwise_distance`)."""
    _same_ndim(anchor=anchor, positive=positive, negative=negative)
    distance = distance_function if distance_function is not None else pairwise_distance
    return _triplet(distance, anchor, positive, negative, margin, swap, reduction)


def CosineEmbeddingLoss(margin: float = 0.0, size_average: None = None, reduce: None = None,
                        reduction: str = "mean") -> LossFn:
    """``torch.nn.CosineEmbeddingLoss``, called ``(input1, input2, target)``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(cosine_embedding_loss, margin=margin, reduction=reduction)


def HingeEmbeddingLoss(margin: float = 1.0, size_average: None = None, reduce: None = None,
                       reduction: str = "mean") -> LossFn:
    """``torch.nn.HingeEmbeddingLoss``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(hinge_embedding_loss, margin=margin, reduction=reduction)


def MarginRankingLoss(margin: float = 0.0, size_average: None = None, reduce: None = None,
                      reduction: str = "mean") -> LossFn:
    """``torch.nn.MarginRankingLoss``, called ``(input1, input2, target)``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(margin_ranking_loss, margin=margin, reduction=reduction)


def MultiLabelMarginLoss(size_average: None = None, reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.MultiLabelMarginLoss``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(multilabel_margin_loss, reduction=reduction)


def MultiLabelSoftMarginLoss(weight: Sequence[float] | None = None, size_average: None = None,
                             reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.MultiLabelSoftMarginLoss``."""
    _check_reduction(reduction, size_average, reduce, invalid="{} is not valid")
    return functools.partial(multilabel_soft_margin_loss, weight=_tensor_argument(weight, "weight", None),
                             reduction=reduction)


def MultiMarginLoss(p: int = 1, margin: float = 1.0, weight: Sequence[float] | None = None,
                    size_average: None = None, reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.MultiMarginLoss``."""
    _check_reduction(reduction, size_average, reduce)
    if p not in (1, 2):
        raise SpecError("only p == 1 and p == 2 supported")
    weight = _tensor_argument(weight, "weight", None)
    if weight is not None and weight.ndim != 1:
        raise SpecError(f"MultiMarginLoss: expected weight to be None or 1D tensor, got {weight.ndim}D instead")
    return functools.partial(multi_margin_loss, p=p, margin=margin, weight=weight, reduction=reduction)


def SoftMarginLoss(size_average: None = None, reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.SoftMarginLoss``."""
    _check_reduction(reduction, size_average, reduce)
    return functools.partial(soft_margin_loss, reduction=reduction)


def TripletMarginLoss(margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                      size_average: None = None, reduce: None = None, reduction: str = "mean") -> LossFn:
    """``torch.nn.TripletMarginLoss``, called ``(anchor, positive, negative)``."""
    _check_reduction(reduction, size_average, reduce)
    if margin <= 0:
        raise SpecError(f"TripletMarginLoss: expected margin to be greater than 0, got {margin} instead")
    return functools.partial(triplet_margin_loss, margin=margin, p=p, eps=eps, swap=swap, reduction=reduction)


def TripletMarginWithDistanceLoss(
    *, distance_function: Callable[[jax.Array, jax.Array], jax.Array] | None = None, margin: float = 1.0,
    swap: bool = False, reduction: str = "mean",
) -> LossFn:
    """``torch.nn.TripletMarginWithDistanceLoss``; ``distance_function`` is a JAX callable,
    passed to :func:`from_torch` as a keyword (a spec string cannot hold it)."""
    if margin <= 0:
        raise SpecError(f"TripletMarginWithDistanceLoss: expected margin to be greater than 0, got {margin} instead")
    _check_reduction(reduction)
    if distance_function is not None and not callable(distance_function):
        raise SpecError(f"distance_function must be callable, got {distance_function!r}")
    return functools.partial(triplet_margin_with_distance_loss, distance_function=distance_function,
                             margin=margin, swap=swap, reduction=reduction)


# ------------------------------------------------------------------------------------------
# Losses that carry parameters: nnx Modules mirroring torch's state_dict names


def _param_dtype(dtype: Any) -> Any:
    return jnp.float32 if dtype is None else jnp.dtype(dtype)


def _rngs(rngs: nnx.Rngs | int) -> nnx.Rngs:
    return rngs if isinstance(rngs, nnx.Rngs) else nnx.Rngs(rngs)


def _linear(in_features: int, out_features: int, bias: bool, rngs: nnx.Rngs, param_dtype) -> nnx.Linear:
    """``torch.nn.Linear`` with torch's init; a layer with no inputs or outputs (torch allows
    them: ``AdaptiveLogSoftmaxWithLoss`` makes one when ``in_features // div_value**i`` is 0)
    has an empty kernel, so it skips the init, whose bound divides by the fan-in."""
    if in_features and out_features:
        return Linear(in_features, out_features, bias=bias, rngs=rngs, param_dtype=param_dtype)
    return nnx.Linear(in_features, out_features, use_bias=bias, param_dtype=param_dtype, rngs=rngs,
                      kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros)


class ASMOutput(NamedTuple):
    """torch's ``_ASMoutput``: each sample's target log-probability, and the mean loss."""

    output: jax.Array  # (N,) or ()
    loss: jax.Array  # ()


def adaptive_log_softmax_with_loss(
    input: jax.Array, target: jax.Array, *, head_weight: jax.Array, head_bias: jax.Array | None,
    tail_weights: Sequence[tuple[jax.Array, jax.Array]], cutoffs: Sequence[int],
) -> ASMOutput:
    r"""``torch.nn.AdaptiveLogSoftmaxWithLoss.forward`` from its parameters, in torch layouts.

    ``head_weight`` (shortlist + clusters, D); ``tail_weights[i]`` = (projection (h_i, D),
    output (size_i, h_i)); ``cutoffs`` torch's list with ``n_classes`` appended. A target in
    the shortlist scores :math:`\log p_{\mathrm{head}}(y)`; one in cluster :math:`i`
    :math:`\log p_{\mathrm{head}}(\mathrm{cluster}_i) + \log p_i(y - \mathrm{cutoff}_i)`.
    Every cluster is evaluated on every row (jittable; torch evaluates only the rows that need
    it, which gives the same numbers). The loss is the mean of :math:`-\text{output}`.
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    if target.ndim > 1:
        raise ValueError("0D or 1D target tensor expected, multi-target not supported")
    if target.ndim == 1 and input.ndim != 2:
        raise ValueError(f"1D target tensor expects 2D input tensors, but found inputs with size {list(input.shape)}")
    if target.ndim == 1 and input.shape[0] != target.shape[0]:
        raise ValueError("Input and target should have the same size in the batch dimension.")
    if target.ndim == 0 and input.ndim != 1:
        raise ValueError(f"0D target tensor expects 1D input tensors, but found inputs with size {list(input.shape)}")
    unbatched = target.ndim == 0
    if unbatched:
        input, target = input[None], target[None]
    values = _concrete(target)
    if values is not None and ((values < 0) | (values >= cutoffs[-1])).any():
        raise ValueError(
            f"Target values should be in [0, {cutoffs[-1] - 1}], but values in range "
            f"[{values.min()}, {values.max()}] were found. "
        )
    shortlist = cutoffs[0]
    head_index = target  # (N,): the head class each row scores
    output = jnp.zeros(target.shape, input.dtype)
    for i, (projection, out) in enumerate(tail_weights):
        low, high = cutoffs[i], cutoffs[i + 1]
        inside = (target >= low) & (target < high)  # (N,)
        cluster_log_probs = jax.nn.log_softmax((input @ projection.T) @ out.T, axis=1)  # (N, size_i)
        relative = jnp.clip(target - low, 0, high - low - 1)
        local = jnp.take_along_axis(cluster_log_probs, relative[:, None], axis=1)[:, 0]
        output = jnp.where(inside, local, output)
        head_index = jnp.where(inside, shortlist + i, head_index)
    head_logits = input @ head_weight.T + (0.0 if head_bias is None else head_bias)
    head_log_probs = jax.nn.log_softmax(head_logits, axis=1)  # (N, shortlist + clusters)
    output = output + jnp.take_along_axis(head_log_probs, head_index[:, None], axis=1)[:, 0]
    loss = (-output).mean()
    return ASMOutput(output[0] if unbatched else output, loss)


class AdaptiveLogSoftmaxWithLoss(nnx.Module):
    """``torch.nn.AdaptiveLogSoftmaxWithLoss`` (Grave et al., efficient softmax approximation).

    Variables mirror torch's ``state_dict``: ``head.weight``/``head.bias`` <-> ``head/kernel``
    /``head/bias``, ``tail.{i}.0.weight``/``tail.{i}.1.weight`` <-> ``tail/{i}/0/kernel``/
    ``tail/{i}/1/kernel`` (kernels are (in, out), torch's weight transposed). Calling it
    returns :class:`ASMOutput` ``(output, loss)`` as torch does; :meth:`log_prob` and
    :meth:`predict` are torch's. ``device`` is accepted and has no effect; ``dtype`` is the
    parameter dtype (default float32); ``rngs`` (JAX only) seeds the initialisation.
    """

    def __init__(self, in_features: int, n_classes: int, cutoffs: Sequence[int], div_value: float = 4.0,
                 head_bias: bool = False, device: Any = None, dtype: Any = None, *, rngs: nnx.Rngs | int = 0):
        cutoffs = list(cutoffs)
        if len(cutoffs) == 0:
            raise SpecError("cutoffs should be a sequence of length larger than 0")
        if (cutoffs != sorted(cutoffs) or min(cutoffs) <= 0 or max(cutoffs) > n_classes - 1
                or len(set(cutoffs)) != len(cutoffs) or any(int(c) != c for c in cutoffs)):
            raise SpecError(
                "cutoffs should be a sequence of unique, positive integers sorted in an increasing order, "
                "where each value is between 1 and n_classes-1"
            )
        rngs, param_dtype = _rngs(rngs), _param_dtype(dtype)
        self.in_features, self.n_classes, self.div_value = in_features, n_classes, div_value
        self.cutoffs = tuple(int(c) for c in cutoffs) + (n_classes,)
        self.shortlist_size, self.n_clusters = self.cutoffs[0], len(cutoffs)
        self.head_size = self.shortlist_size + self.n_clusters
        self.head = _linear(in_features, self.head_size, head_bias, rngs, param_dtype)
        tail = []
        for i in range(self.n_clusters):
            hidden = int(in_features // (div_value ** (i + 1)))  # torch's sizes, float division included
            size = self.cutoffs[i + 1] - self.cutoffs[i]
            tail.append(nnx.List([
                _linear(in_features, hidden, False, rngs, param_dtype),
                _linear(hidden, size, False, rngs, param_dtype),
            ]))
        self.tail = nnx.List(tail)

    def _weights(self):
        head_bias = self.head.bias[...] if self.head.bias is not None else None
        tails = [(projection.kernel[...].T, out.kernel[...].T) for projection, out in self.tail]
        return {"head_weight": self.head.kernel[...].T, "head_bias": head_bias, "tail_weights": tails,
                "cutoffs": self.cutoffs}

    def __call__(self, input: jax.Array, target: jax.Array) -> ASMOutput:
        return adaptive_log_softmax_with_loss(input, target, **self._weights())

    def log_prob(self, input: jax.Array) -> jax.Array:
        """Log-probabilities of every class: (N, n_classes) from (N, in_features)."""
        weights = self._weights()
        head_logits = input @ weights["head_weight"].T
        if weights["head_bias"] is not None:
            head_logits = head_logits + weights["head_bias"]
        head = jax.nn.log_softmax(head_logits, axis=1)  # (N, shortlist + clusters)
        parts = [head[:, : self.shortlist_size]]
        for i, (projection, out) in enumerate(weights["tail_weights"]):
            cluster = jax.nn.log_softmax((input @ projection.T) @ out.T, axis=1)
            parts.append(cluster + head[:, self.shortlist_size + i, None])
        return jnp.concatenate(parts, axis=1)

    def predict(self, input: jax.Array) -> jax.Array:
        """The most likely class of each row: ``log_prob(input).argmax(1)``."""
        return self.log_prob(input).argmax(axis=1)


def linear_cross_entropy(
    input: jax.Array, linear_weight: jax.Array, target: jax.Array, *, linear_bias: jax.Array | None = None,
    weight: jax.Array | None = None, reduction: str = "mean", ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""``torch.nn.functional.linear_cross_entropy``: :func:`cross_entropy` of
    ``input @ linear_weight.T + linear_bias``, reshaped to (N, C, d1, ...).

    ``input`` (N, F) or (F,); ``linear_weight`` (C, d1, ..., F) in torch's layout. The default
    ``ignore_index=None`` means -100 for class-index targets; it must stay None for class
    probabilities (torch's rule). torch's chunked ``options`` path is a memory optimisation of
    the same formula and has no counterpart here.
    """
    input, linear_weight = jnp.asarray(input), jnp.asarray(linear_weight)
    if not 1 <= input.ndim <= 2:
        raise ValueError(f"expected input with dimensionality 1 or 2, got {input.ndim}")
    num_classes, out_features, in_features = linear_weight.shape[0], linear_weight.shape[1:-1], linear_weight.shape[-1]
    if input.shape[-1] != in_features:
        raise ValueError("expected equal input and linear_weight last dimensions (in_features), "
                         f"got {input.shape[-1]} and {in_features}, respectively")
    if out_features and input.ndim == 1:
        raise ValueError(f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} requires "
                         f"batched input, (N, {in_features}), got unbatched input with shape {tuple(input.shape)}")
    logits = input @ linear_weight.reshape(-1, in_features).T  # (N, C * d1 * ...)
    if linear_bias is not None:
        logits = logits + jnp.asarray(linear_bias).reshape(-1)
    logits = logits.reshape(input.shape[:-1] + (num_classes,) + tuple(out_features))
    if jnp.shape(target) == logits.shape and ignore_index is not None:
        raise ValueError("ignore_index cannot be specified when target contains probabilities")
    return cross_entropy(logits, target, weight=weight, ignore_index=-100 if ignore_index is None else ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)


class LinearCrossEntropyLoss(nnx.Module):
    """``torch.nn.LinearCrossEntropyLoss``: a ``Linear(in_features, num_classes * prod(out_features))``
    fused with :func:`cross_entropy` (:func:`linear_cross_entropy`).

    Variables mirror torch's ``state_dict``: ``linear.weight``/``linear.bias`` <->
    ``linear/kernel``/``linear/bias`` (kernel (in, out)); the class-weight buffer ``weight``
    <-> ``weight`` (an ``nnx.Variable``, not an ``nnx.Param``: it is not trained). ``options``
    (torch's chunking strategy) and ``device`` are accepted and have no effect; ``dtype`` is
    the parameter dtype (default float32); ``rngs`` (JAX only) seeds the initialisation.
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (), bias: bool = False,
                 device: Any = None, dtype: Any = None, reduction: str = "mean",
                 weight: Sequence[float] | None = None, ignore_index: int | None = None,
                 label_smoothing: float = 0.0, options: Any = None, rngs: nnx.Rngs | int = 0):
        weight = _tensor_argument(weight, "weight", None)
        if weight is not None and weight.shape != (num_classes,):
            raise SpecError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise SpecError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        _check_reduction(reduction)
        param_dtype = _param_dtype(dtype)
        self.num_classes, self.out_features = num_classes, tuple(out_features)
        self.reduction, self.ignore_index, self.label_smoothing = reduction, ignore_index, label_smoothing
        self.linear = Linear(in_features, math.prod(self.out_features, start=num_classes), bias=bias,
                             rngs=_rngs(rngs), param_dtype=param_dtype)
        self.weight = None if weight is None else nnx.Variable(weight.astype(param_dtype))

    def logits(self, input: jax.Array) -> jax.Array:
        """The linear layer's output reshaped to (N, C, d1, ...): the class scores."""
        return self.linear(input).reshape(input.shape[:-1] + (self.num_classes, *self.out_features))

    def __call__(self, input: jax.Array, target: jax.Array) -> jax.Array:
        kernel = self.linear.kernel[...]  # (F, C * d1 * ...)
        linear_weight = kernel.T.reshape((self.num_classes, *self.out_features, kernel.shape[0]))
        bias = None if self.linear.bias is None else self.linear.bias[...].reshape((self.num_classes, *self.out_features))
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=bias,
            weight=None if self.weight is None else self.weight[...], reduction=self.reduction,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
        )


# ------------------------------------------------------------------------------------------
# The registry and the spec-string builder

#: torch.nn loss class name -> builder with that class's constructor signature: a function
#: returning a loss function, or (for the losses that carry parameters) the nnx.Module class.
LOSSES: dict[str, Callable[..., LossFn | nnx.Module]] = {
    "AdaptiveLogSoftmaxWithLoss": AdaptiveLogSoftmaxWithLoss,
    "BCELoss": BCELoss,
    "BCEWithLogitsLoss": BCEWithLogitsLoss,
    "CTCLoss": CTCLoss,
    "CosineEmbeddingLoss": CosineEmbeddingLoss,
    "CrossEntropyLoss": CrossEntropyLoss,
    "GaussianNLLLoss": GaussianNLLLoss,
    "HingeEmbeddingLoss": HingeEmbeddingLoss,
    "HuberLoss": HuberLoss,
    "KLDivLoss": KLDivLoss,
    "L1Loss": L1Loss,
    "LinearCrossEntropyLoss": LinearCrossEntropyLoss,
    "MSELoss": MSELoss,
    "MarginRankingLoss": MarginRankingLoss,
    "MultiLabelMarginLoss": MultiLabelMarginLoss,
    "MultiLabelSoftMarginLoss": MultiLabelSoftMarginLoss,
    "MultiMarginLoss": MultiMarginLoss,
    "NLLLoss": NLLLoss,
    "PoissonNLLLoss": PoissonNLLLoss,
    "SmoothL1Loss": SmoothL1Loss,
    "SoftMarginLoss": SoftMarginLoss,
    "TripletMarginLoss": TripletMarginLoss,
    "TripletMarginWithDistanceLoss": TripletMarginWithDistanceLoss,
}


def carries_parameters(spec: str | CallSpec) -> bool:
    """Whether the loss of ``spec`` has parameters of its own (``AdaptiveLogSoftmaxWithLoss``,
    ``LinearCrossEntropyLoss``): :func:`from_torch` then returns an ``nnx.Module`` to train
    with the model (:class:`jax_impl.models.WithLoss`)."""
    builder, _ = build_from_registry(spec, LOSSES, kind="loss")
    return isinstance(builder, type)


def from_torch(spec: str | CallSpec, **arguments: Any) -> LossFn | nnx.Module:
    """The loss of a torch.nn loss spec such as ``"CrossEntropyLoss()"``.

    ``arguments`` adds constructor arguments a spec string cannot hold (a ``distance_function``,
    an ``nnx.Rngs``, a weight array); naming one in both places is an error. Returns a pure
    ``loss_fn(input, target, *extra)`` in torch's argument order, or for
    ``AdaptiveLogSoftmaxWithLoss`` and ``LinearCrossEntropyLoss`` the ``nnx.Module``.
    """
    builder, call = build_from_registry(spec, LOSSES, kind="loss")
    both = sorted(set(call.kwargs) & set(arguments))
    if both:
        raise SpecError(f"loss {call}: {', '.join(both)} given both in the spec and as a keyword")
    merged = CallSpec(call.name, {**call.kwargs, **arguments})
    signature = builder.__init__ if isinstance(builder, type) else builder
    kwargs = bind_call(merged, signature, kind="loss", skip=("self",))
    missing = [
        name for name, parameter in inspect.signature(signature).parameters.items()
        if parameter.default is inspect.Parameter.empty and name != "self"
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) and name not in kwargs
    ]
    if missing:
        raise SpecError(f"loss {call} needs the argument(s) {', '.join(missing)}")
    try:
        return builder(**kwargs)
    except Exception as error:  # any failure to build from the spec's arguments is bad input
        raise SpecError(f"loss {call}: {error}") from None
