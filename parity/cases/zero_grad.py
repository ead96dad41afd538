"""The seed's warning: a loop that forgets ``optimizer.zero_grad()`` (gradients add up across
steps), in torch and in JAX, each checked against the other while the report measures how far
both depart from the correct loop (:mod:`parity.zero_grad`). With clipping, what stays in
``p.grad`` for the next step is the clipped gradient."""

from __future__ import annotations

import dataclasses

from parity.cases._base import LONG, Case


def _case(variant: str, **changes) -> Case:
    return Case(f"forgotten zero_grad/{variant}", "zero_grad", dataclasses.replace(LONG, zero_grad=False, **changes))


CASES = (
    _case("SGD momentum"),
    _case("clip_grad_norm+Adam+StepLR", optimizer="Adam(lr=1e-3)", clip_grad_norm=0.5,
          scheduler="StepLR(step_size=1, gamma=0.5)"),
)
