"""Gradient accumulation: K batches per optimizer step, each loss divided by K before
``backward()`` as the seed's loop does (``reduction="mean"``) or undivided (``"sum"``), alone,
with BatchNorm (each micro-batch updates the running statistics in turn), with dropout (the
micro-batches of a step share its masks), and combined with clipping and a per-step scheduler.
K = 3 makes the division inexact in binary, so float32 checks its rounding too."""

from __future__ import annotations

import dataclasses

from parity.cases._base import LONG, Case
from parity.cases.models import CNN, CNN_TOLERANCES

ADAM = "Adam(lr=1e-3)"


def _case(variant: str, accumulate: int, reduction: str = "mean", tolerances=None, float32=None, **changes) -> Case:
    spec = dataclasses.replace(LONG, accumulate=accumulate, accumulate_reduction=reduction, **changes)
    return Case(f"accumulate ({reduction})/{variant}", "accumulation", spec, tolerances or {}, float32=float32)


CASES = (
    _case("K=2", 2),
    _case("K=3+Adam", 3, optimizer=ADAM, float32=True),
    _case("K=2", 2, "sum", optimizer="SGD(lr=0.005, momentum=0.9)"),
    _case("K=2+CNN (BatchNorm, dropout)", 2, model=CNN, steps_per_epoch=4, tolerances=CNN_TOLERANCES),
    _case("K=3+clip_grad_norm+Adam+OneCycleLR", 3, optimizer=ADAM, clip_grad_norm=0.3,
          scheduler="OneCycleLR(max_lr=0.01, total_steps=20)", scheduler_interval="step"),
)
