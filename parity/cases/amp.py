"""Mixed precision: the forward pass and the loss under ``torch.autocast("cpu", dtype)`` with
float32 parameters, with and without a ``torch.amp.GradScaler``, against :mod:`jax_impl.amp`.

The layers with an autocast rule are SimpleNN's and the CNN's (convolutions under bfloat16
only). These cases run in float32 only (autocast casts float32; float64 parameters stay float64), with
the tolerances of their autocast dtype. ``init_scale=2**24`` in float16 overflows the scaled
gradients (float16's largest value is 65504): the first steps are skipped while the scale backs
off, and with ``growth_interval=2`` it grows back into overflow every few steps, so skipped and
applied steps alternate; a per-step scheduler keeps advancing through the skipped steps, as
torch's ``scheduler.step()`` does.
"""

from __future__ import annotations

import dataclasses

from parity.cases._base import LONG, Case

ADAM = "Adam(lr=1e-3)"
#: float16 overflows at this scale: the first steps are skipped
OVERFLOWING = dict(init_scale=2.0**24, growth_interval=2)


def _case(variant: str, amp: str, **changes) -> Case:
    spec = dataclasses.replace(LONG, amp=amp, **changes)
    return Case(f"autocast {amp}/{variant}", "amp", spec, float32=True)


CASES = (
    _case("no GradScaler", "bfloat16", grad_scaler=False),
    _case("GradScaler+Adam", "bfloat16", optimizer=ADAM),
    _case("GradScaler overflowing+SGD+ExponentialLR per step", "float16", **OVERFLOWING,
          scheduler="ExponentialLR(gamma=0.9)", scheduler_interval="step"),
    _case("GradScaler overflowing+Adam", "float16", optimizer=ADAM, **OVERFLOWING),
    # convolutions, BatchNorm (computed in float32 from the low-precision input), max-pooling and
    # dropout under autocast; float16 convolutions are refused (jax_impl.amp.check_supported)
    _case("CNN+GradScaler", "bfloat16", model="CNN"),
    _case("CNN+GradScaler+Adam+StepLR", "bfloat16", model="CNN", optimizer=ADAM,
          scheduler="StepLR(step_size=1, gamma=0.5)"),
    # every training feature at once: accumulation, clipping, a per-step scheduler, AMP
    _case("GradScaler overflowing+accumulate 3+clip_grad_norm+Adam+OneCycleLR", "float16", optimizer=ADAM,
          accumulate=3, clip_grad_norm=0.3, scheduler="OneCycleLR(max_lr=0.01, total_steps=20)",
          scheduler_interval="step", **OVERFLOWING),
)
