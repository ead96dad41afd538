"""torch's own float32 rounding, measured: the scale below which a float32 gradient difference
between the frameworks is rounding, not semantics.

A float32 gradient is a sum of many terms, and when those terms cancel (the gradient of a conv
bias that feeds BatchNorm is exactly zero, computed as the sum of thousands of terms of either
sign) its rounding error is far larger than any fixed fraction of the result, or even of the
layer's largest gradient. A fixed table cannot say how large it may be; torch can: the same
step computed in float64 from the same float32 weights, inputs and dropout masks gives the
gradient torch's float32 arithmetic was approximating, and ``|torch32 - torch64|`` is torch's
own rounding error in this step.

The harness then accepts a JAX float32 gradient element whose difference from torch's is within
the tolerance table plus :data:`parity.compare.ROUNDING_FACTOR` times torch's own largest
rounding error over the tensor: both sides round independently, so their difference is at most
the sum of their errors, and a semantic difference (a wrong formula) is orders of magnitude
larger than both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from parity.convert import to_numpy
from parity.dropout import HarnessDropout
from torch_ref.loop import Clipping, clip_gradients

__all__ = ["RoundingReference", "rounding_errors"]


class RoundingReference:
    """A float64 replica of a float32 torch model, run on each step's batch from the float32
    model's current weights and buffers, with the step's dropout masks.

    Args:
      model: the float32 torch model (copied; the copy is cast to float64).
      criterion: ``(replica, outputs, targets) -> loss`` in float64.
      clipping: the run's gradient clipping, applied to the float64 gradients too, so they are
        what torch's clipped float32 gradients approximate.
    """

    def __init__(self, model: torch.nn.Module, criterion: Callable[[torch.nn.Module, Any, Any], torch.Tensor],
                 clipping: Clipping | None = None):
        self.replica = copy.deepcopy(model).double()
        self.criterion, self.clipping = criterion, clipping

    def gradients(self, model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], seed: int,
                  step: int, reduction: str = "mean") -> dict[str, np.ndarray]:
        """The float64 gradients of this step from ``model``'s current (float32) weights and
        buffers: call it before the float32 step. Several ``batches`` are one step's
        micro-batches, accumulated as :func:`torch_ref.loop.accumulation_step` does."""
        self.replica.load_state_dict(model.state_dict())  # copy_ casts float32 -> float64
        self.replica.train()
        self.replica.zero_grad(set_to_none=True)
        with HarnessDropout(self.replica, seed, step):
            for inputs, targets in batches:
                inputs = inputs.double() if inputs.is_floating_point() else inputs
                loss = self.criterion(self.replica, self.replica(inputs), targets)
                if len(batches) > 1 and reduction == "mean":
                    loss = loss / len(batches)
                loss.backward()
        clip_gradients(self.replica.parameters(), self.clipping)  # the gradients step() sees
        return {name: to_numpy(p.grad) for name, p in self.replica.named_parameters() if p.grad is not None}


def rounding_errors(torch_grads: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``{name: max |torch float32 gradient - float64 gradient|}``: torch's own rounding error."""
    return {name: float(np.abs(np.asarray(grad, np.float64) - reference[name]).max(initial=0.0))
            for name, grad in torch_grads.items() if name in reference and np.shape(grad) == reference[name].shape}
