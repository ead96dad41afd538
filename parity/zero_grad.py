"""The seed's warning, demonstrated: a loop that forgets ``optimizer.zero_grad()``.

torch's ``backward()`` adds to ``p.grad``; without ``zero_grad()`` each step's optimizer sees the
sum of every gradient so far. A JAX port reproduces that only by carrying the gradients across
steps itself (:func:`jax_impl.step.make_train_step` with ``zero_grad=False``). A run with
``RunSpec(zero_grad=False)`` (``parity run --forget-zero-grad``) checks the two forgetful loops
against each other step by step, as any run, and also runs the correct loop of the same
configuration, so the report shows how far forgetting takes each framework from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from parity.trace import StepTrace

__all__ = ["Departure", "departures", "run_with_departure"]


@dataclasses.dataclass(frozen=True)
class Departure:
    """How far one step of the forgetful loops is from the correct loop, per framework."""

    step: int
    torch_loss: float  # the forgetful loop's loss
    torch_correct_loss: float
    jax_loss: float
    jax_correct_loss: float
    #: the largest parameter difference from the correct loop after the step, relative to the
    #: correct loop's largest parameter of that tensor (over every tensor)
    torch_parameters: float
    jax_parameters: float


def _parameter_departure(forgetful: Mapping[str, np.ndarray], correct: Mapping[str, np.ndarray]) -> float:
    worst = 0.0
    for name, value in correct.items():
        scale = float(np.max(np.abs(value))) or 1.0
        worst = max(worst, float(np.max(np.abs(np.asarray(forgetful[name], np.float64) - value))) / scale)
    return worst


def departures(forgetful: Sequence[tuple[StepTrace, StepTrace]],
               correct: Sequence[tuple[StepTrace, StepTrace]]) -> list[Departure]:
    """One :class:`Departure` per step from the (torch, JAX) traces of both runs."""
    return [
        Departure(step, bad_torch.loss, good_torch.loss, bad_jax.loss, good_jax.loss,
                  _parameter_departure(bad_torch.params, good_torch.params),
                  _parameter_departure(bad_jax.params, good_jax.params))
        for step, ((bad_torch, bad_jax), (good_torch, good_jax)) in enumerate(zip(forgetful, correct, strict=True))
    ]


def run_with_departure(spec: Any, run_once: Callable[..., Any], on_step: Callable[..., None] | None = None,
                       **arguments: Any) -> Any:
    """``run_once(spec)`` of a forgetful ``spec`` and of its correct twin; the first's report with
    ``departure`` and, should the correct loops themselves diverge, a ``halted`` note naming it."""
    traces: dict[bool, list[tuple[StepTrace, StepTrace]]] = {False: [], True: []}

    def recorder(correct: bool):
        def record(comparison, torch_trace: StepTrace, jax_trace: StepTrace) -> None:
            traces[correct].append((torch_trace, jax_trace))
            if on_step is not None and not correct:
                on_step(comparison, torch_trace, jax_trace)
        return record

    progress = arguments.pop("progress", None)  # one progress over both runs: twice the steps
    arguments["progress"] = None if progress is None else lambda comparison, total: progress(comparison, 2 * total)
    report = run_once(spec, on_step=recorder(False), **arguments)
    correct = run_once(dataclasses.replace(spec, zero_grad=True), on_step=recorder(True), **arguments)
    steps = min(len(traces[False]), len(traces[True]))
    report = dataclasses.replace(report, departure=departures(traces[False][:steps], traces[True][:steps]))
    if not correct.ok and report.halted is None:
        step, stage, error = correct.first_divergence or (None, None, None)
        where = f"step {step.step}, {stage}, {error.name}" if step is not None else "validation"
        report = dataclasses.replace(report, halted=f"the correct loops themselves diverge ({where})")
    return report
