"""Comparing two :class:`~parity.trace.StepTrace` s under one tolerance table.

The tolerance table is keyed by (stage, dtype). An element passes when

    |jax - torch| <= atol + rtol * |torch| + tensor_rtol * max|torch over the tensor|

which is torch.testing's rule (torch is the expected side; NaN equals NaN, infinities must
match) plus a term relative to the tensor's largest element: rounding errors scale with the
magnitudes that were summed, not with the element's own value, so a gradient element that
cancels to almost zero carries the absolute error of its large neighbours.

- float64 is the semantic check: the same formula computed twice agrees to about 1e-12
  relative, so anything larger is a real difference in what is computed.
- float32 in resync mode: each step starts from identical numbers, so only the rounding of
  one step separates the sides (matmul summation order, FMA vs two roundings): a few units in
  the last place of the tensor's scale. Measured over every registered case: at most 5 ulps
  (6e-7 of the tensor's largest element, gradients); the table allows about 10x that.
- free mode: both sides run on their own, rounding differences compound, and the budget grows
  linearly with the step count (``scale = 1 + step``); the learning rate, which carries no
  state, keeps its resync tolerance.
"""

from __future__ import annotations

from typing import Any

import dataclasses
from collections.abc import Mapping

import numpy as np

from parity.trace import STAGES, StepTrace

__all__ = ["Tolerance", "TOLERANCES", "ROUNDING_FACTOR", "tolerance", "TensorError", "StageResult",
           "StepComparison", "compare_tensors", "compare_steps"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float  # relative to the element's torch value
    atol: float
    reason: str
    tensor_rtol: float = 0.0  # relative to the largest |torch| element of the tensor

    def scaled(self, factor: float) -> "Tolerance":
        return dataclasses.replace(
            self, rtol=self.rtol * factor, atol=self.atol * factor, tensor_rtol=self.tensor_rtol * factor
        )


_F64 = "float64: equal formulas agree to ~1e-12 relative; more is a semantic difference"
_F32 = ("float32 resync: one step's rounding (matmul summation order, torch's fused p.add_ vs "
        "optax's two roundings), at most 5 ulps of the tensor's scale measured; 10x allowed")

#: A float32 gradient element also passes when within this many times torch's own rounding
#: error of the tensor, measured each step against a float64 replica (:mod:`parity.rounding`):
#: two independent roundings of similar size differ by up to about twice either.
ROUNDING_FACTOR = 4.0

#: (stage, dtype) -> Tolerance.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    **{(stage, "float64"): Tolerance(1e-12, 0.0, _F64, tensor_rtol=1e-12) for stage in STAGES},
    ("loss", "float32"): Tolerance(4e-6, 0.0, _F32),
    ("gradient", "float32"): Tolerance(0.0, 0.0, _F32, tensor_rtol=8e-6),
    ("lr", "float32"): Tolerance(2.4e-7, 0.0, "float32: both sides round the same lr to float32; 2 ulps"),
    ("optimizer_state", "float32"): Tolerance(0.0, 0.0, _F32, tensor_rtol=4e-6),
    ("parameters", "float32"): Tolerance(0.0, 0.0, _F32, tensor_rtol=2e-6),
    ("buffers", "float32"): Tolerance(0.0, 0.0, _F32, tensor_rtol=4e-6),
}


def _autocast_tolerances(name: str, ulp: float) -> dict[tuple[str, str], Tolerance]:
    """The rows of a mixed-precision step under autocast to ``name``, whose unit roundoff is
    ``ulp`` (2**-8 bfloat16, 2**-11 float16)."""
    low = (f"autocast {name}: every matmul output is rounded to {name}; XLA and oneDNN sum its float32 "
           f"products in different orders, which now and then moves an element across a rounding boundary: "
           f"it then differs by one {name} ulp (2 x {ulp:g} relative at most) and carries that downstream")
    rows = {
        ("loss", name): Tolerance(2 * ulp, 0.0, low + "; the mean loss moves by a fraction of it"),
        ("gradient", name): Tolerance(4 * ulp, 0.0, low + "; up to 2 ulps an element", tensor_rtol=2 * ulp),
    }
    for stage in ("lr", "optimizer_state", "parameters"):  # resync: from torch's gradients, in float32
        rows[(stage, name)] = dataclasses.replace(TOLERANCES[(stage, "float32")],
                                                  reason=f"autocast {name}: " + TOLERANCES[(stage, "float32")].reason)
    rows[("buffers", name)] = Tolerance(
        ulp / 64, 0.0, f"autocast {name}: BatchNorm's running statistics average the low-precision outputs of the "
        "layer before it, so an element one ulp off moves them by that ulp over the count (measured: 6.0e-6 "
        "relative with bfloat16 on the CNN, 10x allowed; a mean that cancels to nearly zero, 9.3e-10, is judged "
        "against the tensor's scale)", tensor_rtol=ulp / 64)
    return rows


TOLERANCES.update(_autocast_tolerances("bfloat16", 2.0**-8))
TOLERANCES.update(_autocast_tolerances("float16", 2.0**-11))
_AUTOCAST = ("bfloat16", "float16")


def tolerance(
    stage: str, dtype: str, *, step: int = 0, mode: str = "resync",
    overrides: Mapping[tuple[str, str], Tolerance] | None = None,
) -> Tolerance:
    """The tolerance for ``stage`` in ``dtype`` (a case's override first, if it has one); in
    free mode it grows with the step count. Under autocast in free mode the optimizer state
    and parameters are computed from the port's own low-precision gradients, so they take the
    gradient's row (resync computes them from torch's gradients, in float32)."""
    if mode == "free" and dtype in _AUTOCAST and stage in ("optimizer_state", "parameters"):
        stage_row = (overrides or {}).get((stage, dtype)) or dataclasses.replace(
            TOLERANCES[("gradient", dtype)], reason=f"free mode: from the port's own gradients; "
                                                     f"{TOLERANCES[('gradient', dtype)].reason}")
        return stage_row.scaled(1.0 + step)
    base = (overrides or {}).get((stage, dtype)) or TOLERANCES[(stage, dtype)]
    return base.scaled(1.0 + step) if mode == "free" and stage != "lr" else base


@dataclasses.dataclass(frozen=True)
class TensorError:
    """How one tensor differs between the sides."""

    name: str
    ok: bool
    max_abs: float  # largest |jax - torch|
    max_rel: float  # largest |jax - torch| / |torch|
    index: tuple[int, ...]  # the element with the largest error relative to its tolerance
    mismatched: int  # elements outside tolerance
    size: int
    ratio: float = 0.0  # largest |jax - torch| / (atol + rtol |torch|): above 1 fails
    torch_value: float = float("nan")  # the two values at ``index``
    jax_value: float = float("nan")
    problem: str = ""  # a structural problem: missing on one side, shape mismatch
    #: the allowance added for torch's own float32 rounding of this tensor (:mod:`parity.rounding`)
    rounding: float = 0.0

    def describe(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        where = f"[{', '.join(map(str, self.index))}]" if self.index else ""
        return (
            f"{self.name}{where}: torch {self.torch_value:.10g} vs jax {self.jax_value:.10g}; "
            f"max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g}; "
            f"{self.mismatched}/{self.size} elements outside tolerance"
        )


def compare_tensors(name: str, torch_value, jax_value, tol: Tolerance, scale_floor: float = 0.0,
                    rounding: float = 0.0) -> TensorError:
    """How ``jax_value`` differs from ``torch_value`` under ``tol``; ``tensor_rtol`` applies to
    the larger of the tensor's largest ``|torch|`` element and ``scale_floor``; ``rounding`` is
    added to every element's allowance (a multiple of torch's own rounding error, measured)."""
    expected = np.asarray(torch_value, dtype=np.float64)
    actual = np.asarray(jax_value, dtype=np.float64)
    if expected.shape != actual.shape:
        return TensorError(name, False, np.inf, np.inf, (), expected.size, expected.size, np.inf,
                           problem=f"shape differs: torch {expected.shape} vs jax {actual.shape}")
    both_nan = np.isnan(expected) & np.isnan(actual)
    same_inf = np.isinf(expected) & (expected == actual)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.where(both_nan | same_inf, 0.0, np.abs(actual - expected))
        difference = np.where(np.isnan(difference), np.inf, difference)
        scale = np.abs(expected)
        relative = np.where(difference == 0, 0.0,
                            np.divide(difference, scale, out=np.full_like(difference, np.inf), where=scale > 0))
    finite = np.where(np.isfinite(scale), scale, 0.0)
    largest = max(float(finite.max()) if finite.size else 0.0, scale_floor)
    allowed = tol.atol + tol.rtol * finite + tol.tensor_rtol * largest + rounding
    bad = difference > allowed
    if expected.size == 0:
        return TensorError(name, True, 0.0, 0.0, (), 0, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(difference == 0, 0.0, difference / allowed)
    flat = int(np.argmax(ratio))  # the element furthest outside (or least inside) its tolerance
    index = tuple(int(i) for i in np.unravel_index(flat, expected.shape))
    return TensorError(
        name, not bad.any(), float(difference.max()), float(relative.max()), index,
        int(bad.sum()), expected.size, float(ratio.max()), float(expected.flat[flat]),
        float(actual.flat[flat]), rounding=rounding,
    )


@dataclasses.dataclass(frozen=True)
class StageResult:
    stage: str
    tensors: tuple[TensorError, ...]  # in torch's order
    tolerance: Tolerance

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    @property
    def first_failure(self) -> TensorError | None:
        return next((t for t in self.tensors if not t.ok), None)

    @property
    def max_abs(self) -> float:
        return max((t.max_abs for t in self.tensors), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((t.max_rel for t in self.tensors), default=0.0)

    @property
    def ratio(self) -> float:
        """The largest error as a fraction of its tolerance (above 1 fails)."""
        return max((t.ratio for t in self.tensors), default=0.0)


def _module_scales(arrays: Mapping[str, Any]) -> dict[str, float]:
    """The largest ``|value|`` over each module's tensors (``conv1.weight`` and ``conv1.bias``
    share module ``conv1``)."""
    scales: dict[str, float] = {}
    for name, value in arrays.items():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        array = np.abs(np.asarray(value, dtype=np.float64))
        largest = float(array[np.isfinite(array)].max(initial=0.0))
        scales[module] = max(scales.get(module, 0.0), largest)
    return scales


def _compare_stage(stage: str, torch_side: Mapping, jax_side: Mapping, tol: Tolerance,
                   rounding: Mapping[str, float] | None = None) -> StageResult:
    # A gradient's rounding scales with the layer's, not the tensor's own, magnitudes: the
    # gradient of a conv bias that feeds BatchNorm is zero in exact arithmetic, and both sides
    # compute it as rounding noise of the size of the layer's weight gradient.
    scales = _module_scales(torch_side) if stage == "gradient" else {}
    results = []
    for name in list(torch_side) + [k for k in jax_side if k not in torch_side]:
        if name not in jax_side:
            results.append(TensorError(name, False, np.inf, np.inf, (), 1, 1, np.inf, problem="missing on the JAX side"))
        elif name not in torch_side:
            results.append(TensorError(name, False, np.inf, np.inf, (), 1, 1, np.inf, problem="missing on the torch side"))
        else:
            module = name.rsplit(".", 1)[0] if "." in name else ""
            allowance = ROUNDING_FACTOR * (rounding or {}).get(name, 0.0)
            results.append(compare_tensors(name, torch_side[name], jax_side[name], tol, scales.get(module, 0.0),
                                           allowance))
    return StageResult(stage, tuple(results), tol)


@dataclasses.dataclass(frozen=True)
class StepComparison:
    step: int  # 0-based optimizer step over the whole run
    epoch: int
    torch_loss: float
    jax_loss: float
    torch_lr: float
    jax_lr: float
    stages: dict[str, StageResult]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages.values())

    @property
    def first_failure(self) -> tuple[str, TensorError] | None:
        """The earliest diverging stage of this step and its first diverging tensor."""
        for stage in STAGES:
            failure = self.stages[stage].first_failure
            if failure is not None:
                return stage, failure
        return None


def compare_steps(step: int, epoch: int, torch_trace: StepTrace, jax_trace: StepTrace,
                  dtype: str, mode: str = "resync",
                  overrides: Mapping[tuple[str, str], Tolerance] | None = None,
                  gradient_rounding: Mapping[str, float] | None = None) -> StepComparison:
    """Compare one step's traces stage by stage. ``gradient_rounding`` is torch's own float32
    rounding error of each gradient this step (:mod:`parity.rounding`): a gradient element also
    passes within :data:`ROUNDING_FACTOR` times it."""
    stages = {
        stage: _compare_stage(stage, torch_trace.stage(stage), jax_trace.stage(stage),
                              tolerance(stage, dtype, step=step, mode=mode, overrides=overrides),
                              gradient_rounding if stage == "gradient" else None)
        for stage in STAGES
    }
    return StepComparison(step, epoch, float(torch_trace.loss), float(jax_trace.loss),
                          float(torch_trace.lr), float(jax_trace.lr), stages)
