"""torch.nn losses: every argument jax_impl.losses implements.

The digits labels are 0..9, so ``ignore_index=3`` drops every sample of class 3.
"""

from __future__ import annotations

import dataclasses

from parity.cases._base import BASE, Case

_WEIGHT = "weight=(0.5, 1.0, 1.5, 2.0, 0.25, 1.0, 3.0, 0.75, 1.25, 1.0)"


def _case(variant: str, loss: str, **changes) -> Case:
    return Case(f"CrossEntropyLoss/{variant}", "loss", dataclasses.replace(BASE, loss=loss, **changes))


CASES = (
    _case("default", "CrossEntropyLoss()"),
    _case("weight", f"CrossEntropyLoss({_WEIGHT})"),
    _case("label_smoothing", "CrossEntropyLoss(label_smoothing=0.1)"),
    _case("ignore_index", "CrossEntropyLoss(ignore_index=3)"),
    _case("weight+label_smoothing+ignore_index",
          f"CrossEntropyLoss({_WEIGHT}, label_smoothing=0.2, ignore_index=3)"),
    # the summed loss is batch_size times larger: a smaller lr keeps the run as tame
    _case("reduction=sum", "CrossEntropyLoss(reduction='sum')", optimizer="SGD(lr=0.0005, momentum=0.9)"),
)
