"""Inputs for every torch.nn loss and option: the table both sides of a loss check read.

Each :class:`LossCase` names a spec string, a function drawing the forward's arguments in
torch's order (numpy arrays, or a Python float where torch takes one), which of those
arguments are differentiable, and the constructor arguments a spec string cannot hold
(written so that the same object works with torch tensors and JAX arrays: a distance such as
``lambda x1, x2: ((x1 - x2) ** 2).sum(-1)``).

This module imports numpy only, so a torch-free JAX check and the torch side can share it.
``make_inputs(rng, dtype)`` draws every number in float64 and casts it, so the float32 and
float64 inputs of a case agree up to rounding. Integer arguments (class indices, lengths)
are int64, as torch wants them.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["LossCase", "LOSS_CASES", "DISTANCES"]

N, C = 5, 4  # batch and classes of most cases


@dataclasses.dataclass(frozen=True)
class LossCase:
    name: str  # unique, "<torch class>/<variant>", e.g. "CTCLoss/zero_infinity"
    spec: str  # e.g. "CTCLoss(zero_infinity=True)"
    make_inputs: Callable[[np.random.Generator, Any], tuple]  # forward's arguments, torch's order
    differentiable: tuple[int, ...] = (0,)  # positions in make_inputs' tuple to differentiate
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    note: str = ""  # what the case checks, where it is an edge case

    @property
    def loss(self) -> str:
        """The torch class name, e.g. ``"CTCLoss"``."""
        return self.spec.split("(")[0].strip()


# ------------------------------------------------------------------------------------------
# Drawing helpers


def _normal(rng: np.random.Generator, dtype, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _uniform(rng: np.random.Generator, dtype, *shape: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(dtype)


def _labels(rng: np.random.Generator, high: int, *shape: int) -> np.ndarray:
    return rng.integers(0, high, shape).astype(np.int64)


def _probabilities(rng: np.random.Generator, dtype, *shape: int, axis: int = 1) -> np.ndarray:
    logits = rng.standard_normal(shape)
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(dtype)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _signs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], shape)


_WEIGHT = "(0.5, 2.0, 1.0, 0.25)"  # one per class, C = 4


# ------------------------------------------------------------------------------------------
# CrossEntropyLoss and NLLLoss


def _ce(shape=(N, C), ignore=None, scale=2.0):
    """Logits of ``shape`` (classes on axis 1) and class indices; ``ignore`` marks a few."""
    def make(rng, dtype):
        logits = _normal(rng, dtype, *shape, scale=scale)
        target = _labels(rng, shape[1], *((shape[0],) + shape[2:]))
        target.flat[0], target.flat[-1] = 2, 1  # one of the class ignore_index=2 drops, one kept
        if ignore is not None:
            target.flat[1] = ignore
        return logits, target
    return make


def _ce_probabilities(shape=(N, C)):
    def make(rng, dtype):
        return _normal(rng, dtype, *shape, scale=2.0), _probabilities(rng, dtype, *shape, axis=min(1, len(shape) - 1))
    return make


def _ce_fixed(logits, target):
    def make(rng, dtype):
        return np.asarray(logits, dtype), np.asarray(target, np.int64)
    return make


def _ce_unbatched(rng, dtype):
    return _normal(rng, dtype, C, scale=2.0), np.asarray(3, np.int64)


def _ce_unbatched_probabilities(rng, dtype):
    return _normal(rng, dtype, C, scale=2.0), _probabilities(rng, dtype, C, axis=0)


_EXTREME = [[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, 1e4, -1e4], [0.5, -0.5, 1e4, 2.0]]


def _nll(shape=(N, C), ignore=None):
    make_logits = _ce(shape, ignore)

    def make(rng, dtype):
        logits, target = make_logits(rng, dtype)
        return _log_softmax(logits.astype(np.float64), 1).astype(dtype), target
    return make


_CROSS_ENTROPY = [
    LossCase("CrossEntropyLoss/default", "CrossEntropyLoss()", _ce()),
    LossCase("CrossEntropyLoss/weight", f"CrossEntropyLoss(weight={_WEIGHT})", _ce()),
    LossCase("CrossEntropyLoss/ignore_index", "CrossEntropyLoss(ignore_index=2)", _ce()),
    LossCase("CrossEntropyLoss/ignore_index=-100", "CrossEntropyLoss()", _ce(ignore=-100),
             note="the default ignore_index, out of the class range"),
    LossCase("CrossEntropyLoss/label_smoothing", "CrossEntropyLoss(label_smoothing=0.2)", _ce()),
    LossCase("CrossEntropyLoss/weight+ignore_index+label_smoothing",
             f"CrossEntropyLoss(weight={_WEIGHT}, ignore_index=2, label_smoothing=0.3)", _ce()),
    LossCase("CrossEntropyLoss/sum", f"CrossEntropyLoss(weight={_WEIGHT}, reduction='sum', label_smoothing=0.1)", _ce()),
    LossCase("CrossEntropyLoss/none", f"CrossEntropyLoss(weight={_WEIGHT}, ignore_index=2, reduction='none', "
             "label_smoothing=0.1)", _ce()),
    LossCase("CrossEntropyLoss/k_dim", f"CrossEntropyLoss(weight={_WEIGHT}, ignore_index=2, label_smoothing=0.2)",
             _ce((3, C, 2, 3))),
    LossCase("CrossEntropyLoss/k_dim+none", "CrossEntropyLoss(reduction='none', ignore_index=2)", _ce((2, C, 3))),
    LossCase("CrossEntropyLoss/probabilities", "CrossEntropyLoss()", _ce_probabilities(), (0, 1)),
    LossCase("CrossEntropyLoss/probabilities+weight+label_smoothing",
             f"CrossEntropyLoss(weight={_WEIGHT}, label_smoothing=0.2)", _ce_probabilities(), (0, 1),
             note="'mean' divides by the row count, not by the weights"),
    LossCase("CrossEntropyLoss/probabilities+k_dim", f"CrossEntropyLoss(weight={_WEIGHT}, reduction='none')",
             _ce_probabilities((2, C, 3)), (0, 1)),
    LossCase("CrossEntropyLoss/probabilities+k_dim+mean", "CrossEntropyLoss(label_smoothing=0.1)",
             _ce_probabilities((2, C, 3, 2)), (0, 1)),
    LossCase("CrossEntropyLoss/unbatched", f"CrossEntropyLoss(weight={_WEIGHT}, reduction='none')", _ce_unbatched),
    LossCase("CrossEntropyLoss/unbatched_probabilities", "CrossEntropyLoss()", _ce_unbatched_probabilities, (0, 1)),
    LossCase("CrossEntropyLoss/all_ignored", "CrossEntropyLoss(ignore_index=1)",
             _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 1, 1]), note="nan loss, zero gradient"),
    LossCase("CrossEntropyLoss/all_ignored+label_smoothing", "CrossEntropyLoss(ignore_index=1, label_smoothing=0.2)",
             _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 1, 1]), note="nan loss, zero gradient"),
    LossCase("CrossEntropyLoss/all_ignored+sum", "CrossEntropyLoss(ignore_index=1, reduction='sum')",
             _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 1, 1])),
    LossCase("CrossEntropyLoss/zero_weights", "CrossEntropyLoss(weight=(1.0, 0.0, 1.0, 1.0))",
             _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 1, 1]), note="nan loss and nan gradient"),
    LossCase("CrossEntropyLoss/some_zero_weights", "CrossEntropyLoss(weight=(1.0, 0.0, 1.0, 0.0), label_smoothing=0.2)",
             _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 0, 3])),
    LossCase("CrossEntropyLoss/extreme_logits", "CrossEntropyLoss(label_smoothing=0.1)", _ce_fixed(_EXTREME, [1, 0, 3]),
             note="+-1e4 logits: finite loss and gradient"),
    LossCase("CrossEntropyLoss/extreme_logits+weight+none", f"CrossEntropyLoss(weight={_WEIGHT}, reduction='none')",
             _ce_fixed(_EXTREME, [1, 1, 2])),
]

_NLL = [
    LossCase("NLLLoss/default", "NLLLoss()", _nll()),
    LossCase("NLLLoss/weight", f"NLLLoss(weight={_WEIGHT})", _nll()),
    LossCase("NLLLoss/ignore_index", f"NLLLoss(weight={_WEIGHT}, ignore_index=2)", _nll()),
    LossCase("NLLLoss/ignore_index=-100", "NLLLoss(reduction='sum')", _nll(ignore=-100)),
    LossCase("NLLLoss/none", f"NLLLoss(weight={_WEIGHT}, ignore_index=2, reduction='none')", _nll()),
    LossCase("NLLLoss/k_dim", f"NLLLoss(weight={_WEIGHT}, ignore_index=2)", _nll((3, C, 2, 2))),
    LossCase("NLLLoss/unbatched", "NLLLoss(reduction='none')", _ce_unbatched),
    LossCase("NLLLoss/raw_scores", "NLLLoss()", _ce(), note="inputs need not be log-probabilities"),
    LossCase("NLLLoss/all_ignored", "NLLLoss(ignore_index=1)", _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 1, 1]),
             note="nan loss, zero gradient"),
    LossCase("NLLLoss/zero_weights", "NLLLoss(weight=(1.0, 0.0, 1.0, 1.0))",
             _ce_fixed(np.arange(12.0).reshape(3, C) / 7, [1, 1, 1]), note="nan loss; nan gradient on the target column"),
]


# ------------------------------------------------------------------------------------------
# Regression


def _pair(shape=(N, C), target_shape=None, equal=(), scale=1.0):
    """Input and target; positions in ``equal`` (flat) get target == input."""
    def make(rng, dtype):
        input = _normal(rng, dtype, *shape, scale=scale)
        target = _normal(rng, dtype, *(target_shape or shape), scale=scale)
        for i in equal:
            target.flat[i] = input.flat[i]
        return input, target
    return make


def _pair_at_distance(distance):
    """Differences of exactly +-distance and 0 (a kink of the loss) among random ones."""
    def make(rng, dtype):
        input = _normal(rng, dtype, N, C)
        target = input + np.asarray(rng.standard_normal((N, C)), dtype)
        input[0, :3] = 0.5  # 0.5 +- distance is exact in binary, so the difference is exactly distance
        target[0, :3] = np.asarray([0.5 + distance, 0.5 - distance, 0.5], dtype)
        return input, target
    return make


_REGRESSION = [
    LossCase("MSELoss/default", "MSELoss()", _pair(), (0, 1)),
    LossCase("MSELoss/sum", "MSELoss(reduction='sum')", _pair((3, 2, 4)), (0, 1)),
    LossCase("MSELoss/none", "MSELoss(reduction='none')", _pair(), (0, 1)),
    LossCase("MSELoss/broadcast", "MSELoss()", _pair((N, C), (1, C)), (0, 1), note="torch warns and broadcasts"),
    LossCase("L1Loss/default", "L1Loss()", _pair(equal=(0, 5)), (0, 1), note="gradient sign(0) = 0 where equal"),
    LossCase("L1Loss/sum", "L1Loss(reduction='sum')", _pair((3, 2, 4)), (0, 1)),
    LossCase("L1Loss/none", "L1Loss(reduction='none')", _pair(equal=(3,)), (0, 1)),
    LossCase("SmoothL1Loss/default", "SmoothL1Loss()", _pair(scale=1.5), (0, 1)),
    LossCase("SmoothL1Loss/beta", "SmoothL1Loss(beta=0.5)", _pair(scale=1.5), (0, 1)),
    LossCase("SmoothL1Loss/beta=0", "SmoothL1Loss(beta=0.0)", _pair(equal=(0, 7)), (0, 1), note="L1, sign(0) = 0"),
    LossCase("SmoothL1Loss/boundary", "SmoothL1Loss(beta=0.25, reduction='none')", _pair_at_distance(0.25), (0, 1),
             note="|x - y| == beta and == 0"),
    LossCase("SmoothL1Loss/sum", "SmoothL1Loss(beta=2.0, reduction='sum')", _pair(scale=2.0), (0, 1)),
    LossCase("HuberLoss/default", "HuberLoss()", _pair(scale=1.5), (0, 1)),
    LossCase("HuberLoss/delta", "HuberLoss(delta=0.5, reduction='sum')", _pair(scale=1.5), (0, 1)),
    LossCase("HuberLoss/boundary", "HuberLoss(delta=0.25, reduction='none')", _pair_at_distance(0.25), (0, 1)),
    LossCase("HuberLoss/large_delta", "HuberLoss(delta=3.0, reduction='none')", _pair(scale=2.0), (0, 1)),
]


# ------------------------------------------------------------------------------------------
# Binary and distribution losses


def _bce(edges=False, shape=(N, C)):
    def make(rng, dtype):
        input = _uniform(rng, dtype, *shape, low=0.02, high=0.98)
        target = _uniform(rng, dtype, *shape)
        if edges:  # torch clamps each log at -100, and its gradient divides by max(x(1-x), 1e-12)
            input[0, :4] = np.asarray([0.0, 1.0, 1e-20, 1.0 - 1e-7], dtype)
            target[0, :4] = np.asarray([0.3, 0.6, 1.0, 0.0], dtype)
        return input, target
    return make


def _logits_and_targets(extreme=False, shape=(N, C)):
    def make(rng, dtype):
        input = _normal(rng, dtype, *shape, scale=2.0)
        if extreme:
            input[0, :4] = np.asarray([1e4, -1e4, 1e4, -1e4], dtype)
        target = _uniform(rng, dtype, *shape)
        return input, target
    return make


def _kl(zero_targets=False, log_target=False, shape=(N, C)):
    def make(rng, dtype):
        input = _log_softmax(rng.standard_normal(shape), 1).astype(dtype)
        target = _probabilities(rng, dtype, *shape)
        if zero_targets:
            target[0, 0] = 0.0
        return input, (np.log(target.astype(np.float64)).astype(dtype) if log_target else target)
    return make


def _poisson(log_input=True):
    def make(rng, dtype):
        input = _normal(rng, dtype, N, C, scale=0.7) if log_input else _uniform(rng, dtype, N, C, low=0.1, high=4.0)
        target = rng.poisson(2.0, (N, C)).astype(dtype)
        target[0, :4] = np.asarray([0.0, 0.5, 1.0, 1.5], dtype)  # around the Stirling term's y > 1 cut
        return input, target
    return make


def _gaussian(var_shape=None, clamp=False, shape=(N, C)):
    def make(rng, dtype):
        input, target = _normal(rng, dtype, *shape), _normal(rng, dtype, *shape)
        var = _uniform(rng, dtype, *(var_shape or shape), low=0.2, high=2.0)
        if clamp:  # below eps: clamped in the forward, the gradient passes as if not
            var.flat[0], var.flat[1] = 1e-9, 0.0
        return input, target, var
    return make


def _gaussian_float_var(rng, dtype):
    return _normal(rng, dtype, N, C), _normal(rng, dtype, N, C), 0.7


_BINARY_AND_DISTRIBUTIONS = [
    LossCase("BCELoss/default", "BCELoss()", _bce(), (0, 1)),
    LossCase("BCELoss/weight", "BCELoss(weight=(0.5, 2.0, 1.0, 0.0))", _bce(), (0, 1), note="(C,) broadcast over rows"),
    LossCase("BCELoss/sum", "BCELoss(reduction='sum')", _bce(shape=(3, 2, 4)), (0, 1)),
    LossCase("BCELoss/none", "BCELoss(reduction='none')", _bce(), (0, 1)),
    LossCase("BCELoss/clamped_logs", "BCELoss(reduction='none')", _bce(edges=True), (0, 1),
             note="input 0 and 1: the log clamps at -100; torch's input gradient stays finite, its target "
                  "gradient is +-inf"),
    LossCase("BCEWithLogitsLoss/default", "BCEWithLogitsLoss()", _logits_and_targets(), (0, 1)),
    LossCase("BCEWithLogitsLoss/weight", "BCEWithLogitsLoss(weight=(0.5, 2.0, 1.0, 0.0))", _logits_and_targets(), (0, 1)),
    LossCase("BCEWithLogitsLoss/pos_weight", "BCEWithLogitsLoss(pos_weight=(3.0, 0.5, 1.0, 2.0))",
             _logits_and_targets(), (0, 1)),
    LossCase("BCEWithLogitsLoss/weight+pos_weight+none",
             "BCEWithLogitsLoss(weight=(0.5, 2.0, 1.0, 0.25), pos_weight=(3.0, 0.5, 1.0, 2.0), reduction='none')",
             _logits_and_targets(), (0, 1)),
    LossCase("BCEWithLogitsLoss/extreme_logits", "BCEWithLogitsLoss(pos_weight=(3.0, 0.5, 1.0, 2.0), reduction='sum')",
             _logits_and_targets(extreme=True), (0, 1), note="+-1e4 logits stay finite"),
    LossCase("BCEWithLogitsLoss/k_dim", "BCEWithLogitsLoss(pos_weight=(3.0, 0.5, 1.0, 2.0))",
             _logits_and_targets(shape=(2, 3, C)), (0, 1), note="pos_weight broadcast along the last axis"),
    LossCase("KLDivLoss/default", "KLDivLoss()", _kl(), (0, 1), note="'mean' averages over every element"),
    LossCase("KLDivLoss/batchmean", "KLDivLoss(reduction='batchmean')", _kl(), (0, 1)),
    LossCase("KLDivLoss/sum", "KLDivLoss(reduction='sum')", _kl(shape=(2, C, 3)), (0, 1)),
    LossCase("KLDivLoss/none", "KLDivLoss(reduction='none')", _kl(), (0, 1)),
    LossCase("KLDivLoss/log_target", "KLDivLoss(log_target=True)", _kl(log_target=True), (0, 1)),
    LossCase("KLDivLoss/log_target+batchmean", "KLDivLoss(reduction='batchmean', log_target=True)",
             _kl(log_target=True), (0, 1)),
    LossCase("KLDivLoss/zero_target", "KLDivLoss(reduction='batchmean')", _kl(zero_targets=True), (0, 1),
             note="0 log 0 = 0; the target's gradient there is nan in torch"),
    LossCase("PoissonNLLLoss/default", "PoissonNLLLoss()", _poisson(), (0, 1)),
    LossCase("PoissonNLLLoss/not_log_input", "PoissonNLLLoss(log_input=False)", _poisson(False), (0, 1)),
    LossCase("PoissonNLLLoss/eps", "PoissonNLLLoss(log_input=False, eps=0.5, reduction='none')", _poisson(False), (0, 1)),
    LossCase("PoissonNLLLoss/full", "PoissonNLLLoss(full=True, reduction='none')", _poisson(), (0, 1),
             note="Stirling term only where target > 1; the target's gradient at target 0 is nan in torch"),
    LossCase("PoissonNLLLoss/full+not_log_input", "PoissonNLLLoss(log_input=False, full=True, reduction='sum')",
             _poisson(False), (0,)),
    LossCase("GaussianNLLLoss/default", "GaussianNLLLoss()", _gaussian(), (0, 1, 2)),
    LossCase("GaussianNLLLoss/full", "GaussianNLLLoss(full=True, reduction='sum')", _gaussian(), (0, 1, 2)),
    LossCase("GaussianNLLLoss/eps_clamp", "GaussianNLLLoss(eps=1e-3, reduction='none')", _gaussian(clamp=True), (0, 1, 2),
             note="var below eps: clamped, gradient passed through as torch's no_grad clamp does"),
    LossCase("GaussianNLLLoss/homoscedastic", "GaussianNLLLoss()", _gaussian((N,)), (0, 1, 2),
             note="var one axis short of the input"),
    LossCase("GaussianNLLLoss/var_size_1_axis", "GaussianNLLLoss(reduction='none')", _gaussian((N, 1)), (0, 1, 2)),
    LossCase("GaussianNLLLoss/var_middle_axis", "GaussianNLLLoss()", _gaussian((2, 1, C), shape=(2, 3, C)), (0, 1, 2)),
    LossCase("GaussianNLLLoss/float_var", "GaussianNLLLoss(full=True)", _gaussian_float_var, (0, 1)),
]


# ------------------------------------------------------------------------------------------
# CTCLoss: log_probs (T, N, C), targets, input_lengths, target_lengths

_T, _CTC_CLASSES = 8, 5


def _ctc(targets, input_lengths, raw=False, concatenated=False, classes=_CTC_CLASSES):
    """Random (T, N, C) log-probabilities (or raw scores) for the given padded targets."""
    targets = np.asarray(targets, np.int64)
    lengths = np.asarray([int(np.sum(row >= 0)) for row in targets], np.int64)

    def make(rng, dtype):
        scores = rng.standard_normal((_T, len(targets), classes)) * 1.5
        log_probs = (scores if raw else _log_softmax(scores, 2)).astype(dtype)
        if concatenated:
            labels = np.concatenate([row[:n] for row, n in zip(targets, lengths)])
        else:
            labels = np.where(targets >= 0, targets, 0)  # padding: any value
        return log_probs, labels, np.asarray(input_lengths, np.int64), lengths
    return make


def _ctc_unbatched(rng, dtype):
    log_probs = _log_softmax(rng.standard_normal((_T, _CTC_CLASSES)), 1).astype(dtype)
    return log_probs, np.asarray([1, 2, 2], np.int64), np.asarray(_T, np.int64), np.asarray(3, np.int64)


_CTC_TARGETS = [[1, 2, 2, -1], [3, 1, 4, 2], [4, -1, -1, -1], [2, 2, 3, -1]]
_CTC_LENGTHS = [8, 7, 5, 6]
_IMPOSSIBLE = [[1, 2, -1], [1, 1, 1], [3, -1, -1]]  # 1,1,1 needs 5 frames: it gets 3

_CTC = [
    LossCase("CTCLoss/default", "CTCLoss()", _ctc(_CTC_TARGETS, _CTC_LENGTHS),
             note="'mean' divides by target lengths, then averages"),
    LossCase("CTCLoss/sum", "CTCLoss(reduction='sum')", _ctc(_CTC_TARGETS, _CTC_LENGTHS)),
    LossCase("CTCLoss/none", "CTCLoss(reduction='none')", _ctc(_CTC_TARGETS, _CTC_LENGTHS)),
    LossCase("CTCLoss/blank", "CTCLoss(blank=4, reduction='none')", _ctc([[0, 1, 1], [3, -1, -1], [2, 0, 3]], [8, 6, 7])),
    LossCase("CTCLoss/concatenated_targets", "CTCLoss()", _ctc(_CTC_TARGETS, _CTC_LENGTHS, concatenated=True)),
    LossCase("CTCLoss/raw_scores", "CTCLoss(reduction='sum')", _ctc(_CTC_TARGETS, _CTC_LENGTHS, raw=True),
             note="not log-probabilities: torch's gradient adds exp(log_probs) to the derivative"),
    LossCase("CTCLoss/empty_target", "CTCLoss()", _ctc([[1, 2], [-1, -1]], [8, 5]), note="target length 0"),
    LossCase("CTCLoss/infinite", "CTCLoss(reduction='none')", _ctc(_IMPOSSIBLE, [8, 3, 6]),
             note="an impossible alignment: inf loss, nan gradient on that sample's frames"),
    LossCase("CTCLoss/zero_infinity", "CTCLoss(zero_infinity=True)", _ctc(_IMPOSSIBLE, [8, 3, 6])),
    LossCase("CTCLoss/zero_infinity+sum", "CTCLoss(zero_infinity=True, reduction='sum')",
             _ctc(_IMPOSSIBLE, [8, 3, 6], concatenated=True)),
    LossCase("CTCLoss/unbatched", "CTCLoss(reduction='none')", _ctc_unbatched),
]


# ------------------------------------------------------------------------------------------
# Margin and embedding losses


def _cosine(unbatched=False, zero=False, targets=(1.0, -1.0, 1.0, -1.0, 0.0)):
    def make(rng, dtype):
        shape = (C,) if unbatched else (len(targets), C)
        x1, x2 = _normal(rng, dtype, *shape), _normal(rng, dtype, *shape)
        if zero:
            x1[0] = 0.0
        target = np.asarray(-1.0 if unbatched else targets, dtype)
        return x1, x2, target
    return make


def _hinge(rng, dtype):
    input = _uniform(rng, dtype, N, C, low=-0.5, high=2.5)
    target = rng.choice([-1.0, 1.0], (N, C)).astype(dtype)
    input[0, :3], target[0, :3] = np.asarray([1.0, 2.0, 0.5], dtype), np.asarray([-1.0, 0.0, 3.0], dtype)
    return input, target


def _ranking(boundary=False):
    def make(rng, dtype):
        x1, x2 = _normal(rng, dtype, 2 * N), _normal(rng, dtype, 2 * N)
        y = _signs(rng, 2 * N).astype(dtype)
        if boundary:  # -y (x1 - x2) + margin == 0 with margin 0
            x1[0], x2[0] = 0.5, 0.5
        return x1, x2, y
    return make


def _multilabel(unbatched=False):
    def make(rng, dtype):
        input = _normal(rng, dtype, N, C)
        target = np.asarray([[3, 0, -1, 1], [0, 0, 2, -1], [-1, 1, 2, 3], [1, 2, 3, 0], [2, -1, 0, 0]], np.int64)
        input[4] = np.asarray([0.0, 0.0, 1.0, 0.0], dtype)  # 1 - (x[2] - x[k]) == 0: no gradient
        return (input[1], np.asarray(target[1])) if unbatched else (input, target)
    return make


def _multilabel_soft(rng, dtype):
    return _normal(rng, dtype, N, C, scale=2.0), rng.integers(0, 2, (N, C)).astype(dtype)


def _multi_margin(unbatched=False):
    def make(rng, dtype):
        input = _normal(rng, dtype, N, C)
        target = _labels(rng, C, N)
        input[0], target[0] = np.asarray([1.0, 0.0, 0.5, -2.0], dtype), 0  # margin - 1 + 0 == 0: a kink
        return (input[1], np.asarray(target[1])) if unbatched else (input, target)
    return make


def _soft_margin(extreme=False):
    def make(rng, dtype):
        input, target = _normal(rng, dtype, N, C, scale=2.0), _signs(rng, N, C).astype(dtype)
        if extreme:  # -y x large: log1p(exp(.)) overflows to inf in torch, and its gradient is nan
            input[0, :4], target[0, :4] = np.asarray([-1e4, 1e4, 800.0, 50.0], dtype), np.asarray([1, 1, -1, -1], dtype)
        return input, target
    return make


def _triplet(shape=(N, C), equal_positive=False):
    def make(rng, dtype):
        anchor, positive, negative = (_normal(rng, dtype, *shape) for _ in range(3))
        if equal_positive:
            positive[..., 0, :] = anchor[..., 0, :] if len(shape) > 1 else anchor
        return anchor, positive, negative
    return make


#: Distances written with operators both torch tensors and JAX arrays support.
DISTANCES: Mapping[str, Callable] = types.MappingProxyType({
    "squared_euclidean": lambda x1, x2: ((x1 - x2) ** 2).sum(-1),
    "cosine": lambda x1, x2: 1 - (x1 * x2).sum(-1) / ((x1 * x1).sum(-1) * (x2 * x2).sum(-1)) ** 0.5,
})

_MARGIN = [
    LossCase("CosineEmbeddingLoss/default", "CosineEmbeddingLoss()", _cosine(), (0, 1),
             note="targets 1, -1 and 0 (0 contributes nothing)"),
    LossCase("CosineEmbeddingLoss/margin", "CosineEmbeddingLoss(margin=0.3, reduction='sum')", _cosine(), (0, 1)),
    LossCase("CosineEmbeddingLoss/negative_margin", "CosineEmbeddingLoss(margin=-0.5, reduction='none')", _cosine(), (0, 1)),
    LossCase("CosineEmbeddingLoss/zero_vector", "CosineEmbeddingLoss(reduction='none')", _cosine(zero=True), (0, 1),
             note="a zero input: torch's 1e-12 keeps the cosine finite"),
    LossCase("CosineEmbeddingLoss/unbatched", "CosineEmbeddingLoss(reduction='none')", _cosine(unbatched=True), (0, 1)),
    LossCase("HingeEmbeddingLoss/default", "HingeEmbeddingLoss()", _hinge,
             note="margin - x == 0 at a kink; targets other than +-1 get both terms"),
    LossCase("HingeEmbeddingLoss/margin", "HingeEmbeddingLoss(margin=2.0, reduction='none')", _hinge),
    LossCase("HingeEmbeddingLoss/sum", "HingeEmbeddingLoss(reduction='sum')", _hinge),
    LossCase("MarginRankingLoss/default", "MarginRankingLoss()", _ranking(boundary=True), (0, 1, 2)),
    LossCase("MarginRankingLoss/margin", "MarginRankingLoss(margin=0.5, reduction='sum')", _ranking(), (0, 1, 2)),
    LossCase("MarginRankingLoss/none", "MarginRankingLoss(margin=0.2, reduction='none')", _ranking(), (0, 1, 2)),
    LossCase("MultiLabelMarginLoss/default", "MultiLabelMarginLoss()", _multilabel(),
             note="targets end at the first -1; a repeated class counts twice; a margin of exactly 0"),
    LossCase("MultiLabelMarginLoss/none", "MultiLabelMarginLoss(reduction='none')", _multilabel()),
    LossCase("MultiLabelMarginLoss/unbatched", "MultiLabelMarginLoss(reduction='sum')", _multilabel(unbatched=True)),
    LossCase("MultiLabelSoftMarginLoss/default", "MultiLabelSoftMarginLoss()", _multilabel_soft, (0, 1)),
    LossCase("MultiLabelSoftMarginLoss/weight", "MultiLabelSoftMarginLoss(weight=(0.5, 2.0, 1.0, 0.0), reduction='none')",
             _multilabel_soft, (0, 1)),
    LossCase("MultiLabelSoftMarginLoss/sum", "MultiLabelSoftMarginLoss(reduction='sum')", _multilabel_soft, (0, 1)),
    LossCase("MultiMarginLoss/default", "MultiMarginLoss()", _multi_margin()),
    LossCase("MultiMarginLoss/p=2", "MultiMarginLoss(p=2)", _multi_margin()),
    LossCase("MultiMarginLoss/margin", "MultiMarginLoss(margin=0.5, reduction='sum')", _multi_margin()),
    LossCase("MultiMarginLoss/weight", f"MultiMarginLoss(weight={_WEIGHT}, reduction='none')", _multi_margin()),
    LossCase("MultiMarginLoss/p=2+weight+margin", f"MultiMarginLoss(p=2, margin=2.0, weight={_WEIGHT})", _multi_margin()),
    LossCase("MultiMarginLoss/unbatched", "MultiMarginLoss(reduction='none')", _multi_margin(unbatched=True)),
    LossCase("SoftMarginLoss/default", "SoftMarginLoss()", _soft_margin()),
    LossCase("SoftMarginLoss/none", "SoftMarginLoss(reduction='none')", _soft_margin()),
    LossCase("SoftMarginLoss/sum", "SoftMarginLoss(reduction='sum')", _soft_margin()),
    LossCase("SoftMarginLoss/overflow", "SoftMarginLoss(reduction='none')", _soft_margin(extreme=True),
             note="torch's log1p(exp(-y x)) overflows to inf with a nan gradient; so does ours"),
    LossCase("TripletMarginLoss/default", "TripletMarginLoss()", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/margin+p=1", "TripletMarginLoss(margin=2.0, p=1.0, reduction='none')", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/p=3", "TripletMarginLoss(p=3.0, margin=1.5)", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/p=1.5", "TripletMarginLoss(p=1.5, margin=1.5, reduction='sum')", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/p=inf", "TripletMarginLoss(p=inf, margin=2.0, reduction='none')", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/swap", "TripletMarginLoss(swap=True, margin=3.0, reduction='none')", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/eps=0", "TripletMarginLoss(eps=0.0, margin=3.0, reduction='none')",
             _triplet(equal_positive=True), (0, 1, 2), note="a zero distance: torch's norm gradient is 0 there"),
    LossCase("TripletMarginLoss/eps", "TripletMarginLoss(eps=0.1, margin=2.0)", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginLoss/unbatched", "TripletMarginLoss(margin=3.0, reduction='none')", _triplet((C,)), (0, 1, 2)),
    LossCase("TripletMarginWithDistanceLoss/default", "TripletMarginWithDistanceLoss()", _triplet(), (0, 1, 2),
             note="the default distance is pairwise_distance"),
    LossCase("TripletMarginWithDistanceLoss/margin+swap", "TripletMarginWithDistanceLoss(margin=3.0, swap=True, "
             "reduction='none')", _triplet(), (0, 1, 2)),
    LossCase("TripletMarginWithDistanceLoss/squared_euclidean", "TripletMarginWithDistanceLoss(margin=4.0, reduction='sum')",
             _triplet(), (0, 1, 2), {"distance_function": DISTANCES["squared_euclidean"]}),
    LossCase("TripletMarginWithDistanceLoss/cosine+swap", "TripletMarginWithDistanceLoss(margin=0.5, swap=True)",
             _triplet(), (0, 1, 2), {"distance_function": DISTANCES["cosine"]}),
]


# ------------------------------------------------------------------------------------------
# Losses with parameters: (input, target), parameters from the torch module


def _asm(unbatched=False, in_features=6, n_classes=10):
    def make(rng, dtype):
        input = _normal(rng, dtype, 7, in_features)
        target = np.asarray([0, 3, 4, 7, 8, 9, 5], np.int64)  # the shortlist and both clusters
        return (input[2], np.asarray(target[2])) if unbatched else (input, target)
    return make


def _linear_ce(out_features=(), probabilities=False, ignore=None, in_features=6, classes=C):
    def make(rng, dtype):
        input = _normal(rng, dtype, N, in_features, scale=2.0)
        if probabilities:
            return input, _probabilities(rng, dtype, N, classes, *out_features)
        target = _labels(rng, classes, N, *out_features)
        if ignore is not None:
            target.flat[0] = ignore
        return input, target
    return make


_PARAMETERISED = [
    LossCase("AdaptiveLogSoftmaxWithLoss/default", "AdaptiveLogSoftmaxWithLoss(in_features=6, n_classes=10, cutoffs=[4, 8])",
             _asm()),
    LossCase("AdaptiveLogSoftmaxWithLoss/head_bias+div_value", "AdaptiveLogSoftmaxWithLoss(in_features=6, n_classes=10, "
             "cutoffs=[4, 7, 9], div_value=2.0, head_bias=True)", _asm()),
    LossCase("AdaptiveLogSoftmaxWithLoss/unbatched", "AdaptiveLogSoftmaxWithLoss(in_features=6, n_classes=10, cutoffs=[5])",
             _asm(unbatched=True)),
    LossCase("LinearCrossEntropyLoss/default", "LinearCrossEntropyLoss(in_features=6, num_classes=4)", _linear_ce()),
    LossCase("LinearCrossEntropyLoss/bias+weight+ignore_index",
             f"LinearCrossEntropyLoss(in_features=6, num_classes=4, bias=True, weight={_WEIGHT}, ignore_index=1)",
             _linear_ce(ignore=1)),
    LossCase("LinearCrossEntropyLoss/label_smoothing+sum", "LinearCrossEntropyLoss(in_features=6, num_classes=4, "
             "label_smoothing=0.2, reduction='sum')", _linear_ce(ignore=-100)),
    LossCase("LinearCrossEntropyLoss/out_features+none", "LinearCrossEntropyLoss(in_features=6, num_classes=4, "
             "out_features=(3,), bias=True, reduction='none')", _linear_ce((3,))),
    LossCase("LinearCrossEntropyLoss/probabilities", "LinearCrossEntropyLoss(in_features=6, num_classes=4, bias=True, "
             "label_smoothing=0.1)", _linear_ce(probabilities=True)),
]


LOSS_CASES: tuple[LossCase, ...] = tuple(
    _CROSS_ENTROPY + _NLL + _REGRESSION + _BINARY_AND_DISTRIBUTIONS + _CTC + _MARGIN + _PARAMETERISED
)
