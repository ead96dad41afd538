"""torch.nn losses through the whole harness: every CrossEntropyLoss argument, the other losses
that take the digits' (N, 10) scores and class-index targets, and the two losses that carry
parameters, trained with the model (``model.*`` and ``criterion.*``; the model's outputs are
their ``in_features``).

Every loss and option is also checked on its own against torch, value and gradient, in
:mod:`parity.cases.loss_inputs` (losses whose targets are not class indices cannot train on
the digits). The digits labels are 0..9, so ``ignore_index=3`` drops every sample of class 3.
"""

from __future__ import annotations

import dataclasses

from parity.cases._base import BASE, Case
from parity.compare import TOLERANCES

_WEIGHT = "weight=(0.5, 1.0, 1.5, 2.0, 0.25, 1.0, 3.0, 0.75, 1.25, 1.0)"


#: NLLLoss takes log-probabilities; SimpleNN gives raw scores, so the loss is a weighted mean of
#: scores of either sign, which cancels as training pushes it through zero (0.00043 at step 6,
#: from terms of order 1): relative to the loss itself the float32 rounding of those terms is
#: large. Measured 6.5e-9 absolute there (1.5e-5 relative); atol 1e-7 is order-1 terms' rounding.
_RAW_SCORES = ("NLLLoss on raw scores: a weighted mean of terms of order 1 and either sign that cancels near zero "
               "(0.00043 at step 6); float32 error measured 6.5e-9 absolute, allowed 1e-7")


def _case(variant: str, loss: str, tolerances=None, **changes) -> Case:
    name = loss.split("(")[0]
    return Case(f"{name}/{variant}", "loss", dataclasses.replace(BASE, loss=loss, **changes), tolerances or {})


CASES = (
    _case("default", "CrossEntropyLoss()"),
    _case("weight", f"CrossEntropyLoss({_WEIGHT})"),
    _case("label_smoothing", "CrossEntropyLoss(label_smoothing=0.1)"),
    _case("ignore_index", "CrossEntropyLoss(ignore_index=3)"),
    _case("weight+label_smoothing+ignore_index",
          f"CrossEntropyLoss({_WEIGHT}, label_smoothing=0.2, ignore_index=3)"),
    # the summed loss is batch_size times larger: a smaller lr keeps the run as tame
    _case("reduction=sum", "CrossEntropyLoss(reduction='sum')", optimizer="SGD(lr=0.0005, momentum=0.9)"),
    _case("weight+ignore_index", f"NLLLoss({_WEIGHT}, ignore_index=3)", tolerances={
        ("loss", "float32"): dataclasses.replace(TOLERANCES["loss", "float32"], atol=1e-7, reason=_RAW_SCORES)}),
    _case("p=2+margin+weight", f"MultiMarginLoss(p=2, margin=0.5, {_WEIGHT})"),
    _case("head_bias+div_value", "AdaptiveLogSoftmaxWithLoss(in_features=16, n_classes=10, cutoffs=[4, 8], "
                                 "div_value=2.0, head_bias=True)"),
    _case("bias+weight+label_smoothing", f"LinearCrossEntropyLoss(in_features=16, num_classes=10, bias=True, "
                                         f"{_WEIGHT}, label_smoothing=0.1)"),
)
