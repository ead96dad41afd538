"""The registry of matched pairs: every torch component the JAX side supports, declared once.

A :class:`Case` names one configuration (a :class:`~parity.spec.RunSpec`) that exercises one
component: an optimizer, a scheduler, a loss, a model or a training feature (clipping, gradient accumulation, mixed precision, a forgotten zero_grad). Both sides are built from the spec's
strings, so the torch factory is ``torch.optim`` / ``torch.nn`` and the JAX factory is
``jax_impl``'s ``from_torch``. The parity suite (``tests/parity/test_cases.py``) runs every case
in float64 and float32 (mixed precision: float32 only), so a new pair enters the suite by being declared in the module of its
component; a coverage test fails when a name ``from_torch`` accepts has no case.

A case may relax the tolerance table for one (stage, dtype) with a
:class:`~parity.compare.Tolerance` whose ``reason`` says why that case needs it; run a case with
``parity.run(case.run_spec(dtype), tolerances=case.tolerances)``.
"""

from __future__ import annotations

from parity.cases import accumulation, amp, clipping, losses, models, optimizers, schedulers, zero_grad
from parity.cases._base import BASE, COMPONENTS, Case

__all__ = ["Case", "COMPONENTS", "BASE", "CASES"]


CASES: tuple[Case, ...] = (optimizers.CASES + schedulers.CASES + losses.CASES + models.CASES
                          + clipping.CASES + accumulation.CASES + amp.CASES + zero_grad.CASES)

