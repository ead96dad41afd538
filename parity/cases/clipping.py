"""Gradient clipping between ``backward()`` and ``step()``: ``torch.nn.utils.clip_grad_norm_``
(every norm type, the total norm it returns compared at the gradient stage) and
``clip_grad_value_``, alone and together, with momentum SGD and with Adam.

SimpleNN(hidden_size=32) on the digits has a gradient norm of about 0.6 in its first updates,
so ``max_norm=0.25`` clips every step and ``max_norm=0.6`` only some (the coefficient is then 1,
``max_norm / (norm + 1e-6)`` clamped, and torch still multiplies by it).
"""

from __future__ import annotations

import dataclasses

from parity.cases._base import LONG, Case

ADAM = "Adam(lr=1e-3)"


def _case(variant: str, **changes) -> Case:
    spec = dataclasses.replace(LONG, **changes)
    name = "clip_grad_norm_" if spec.clip_grad_norm is not None else "clip_grad_value_"
    return Case(f"{name}/{variant}", "clipping", spec)


CASES = (
    _case("max_norm=0.25", clip_grad_norm=0.25),
    _case("max_norm=0.6 (some steps unclipped)+Adam", clip_grad_norm=0.6, optimizer=ADAM),
    _case("norm_type=inf", clip_grad_norm=0.05, norm_type=float("inf")),
    _case("norm_type=1", clip_grad_norm=2.0, norm_type=1.0),
    _case("norm_type=3+error_if_nonfinite", clip_grad_norm=0.2, norm_type=3.0, error_if_nonfinite=True),
    _case("clip_value=0.01", clip_grad_value=0.01),
    _case("clip_value=0.02+max_norm=0.3+Adam+OneCycleLR", clip_grad_value=0.02, clip_grad_norm=0.3,
          optimizer=ADAM, scheduler="OneCycleLR(max_lr=0.01, total_steps=20)", scheduler_interval="step"),
)
