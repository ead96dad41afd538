"""torch.optim.lr_scheduler schedules as functions of the optimizer-update count.

>>> from jax_impl.schedules import from_torch
>>> schedule = from_torch("StepLR(step_size=2, gamma=0.1)", base_lr=0.01, steps_per_epoch=50)
>>> float(schedule(100))   # update 100 falls in epoch 2: one decay
0.001

A schedule ``f`` gives the learning rate of the k-th update (0-based): torch calls
``scheduler.step()`` after ``optimizer.step()``, so the k-th update runs at ``f(k)``, which is
what ``optax.inject_hyperparams`` and ``optax.scale_by_schedule`` read. With
``steps_per_epoch`` the scheduler is stepped once per epoch (``f(k // steps_per_epoch)``);
without it, once per update. Schedules compute in the widest float enabled (float64 under
x64). They use closed forms (``base_lr * gamma ** n``) where torch multiplies step by step;
the two agree to an ulp or so in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jax_impl.spec import CallSpec, SpecError, bind_call, build_from_registry

Schedule = Callable[[Any], jax.Array]

__all__ = ["from_torch", "SCHEDULERS", "Schedule", "StepLR"]


def _float(x: Any) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


def StepLR(base_lr: float, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> Schedule:
    """``lr = base_lr * gamma ** (epoch // step_size)``."""
    if last_epoch != -1:
        raise ValueError("last_epoch other than -1 (resuming) is not supported in a spec")
    if not (isinstance(step_size, int) and step_size > 0):
        raise ValueError(f"step_size must be a positive integer, got {step_size!r}")

    def schedule(epoch):
        return _float(base_lr) * _float(gamma) ** (jnp.asarray(epoch) // step_size)

    return schedule


#: torch.optim.lr_scheduler class name -> builder(base_lr, **torch arguments) -> f(epoch)
SCHEDULERS: dict[str, Callable[..., Schedule]] = {"StepLR": StepLR}


def from_torch(
    spec: str | CallSpec, base_lr: float, steps_per_epoch: int | None = None
) -> Schedule:
    """The learning-rate schedule of a torch scheduler spec, on the optimizer-update count.

    ``steps_per_epoch=None`` means the scheduler is stepped after every update; an integer
    means once per epoch of that many updates.
    """
    builder, call = build_from_registry(spec, SCHEDULERS, kind="scheduler")
    kwargs = bind_call(call, builder, kind="scheduler", skip=("base_lr", "optimizer"))
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or not 0 <= base_lr < float("inf"):
        raise SpecError(f"scheduler {call}: base_lr must be a finite non-negative number, got {base_lr!r}")
    try:
        per_epoch = builder(base_lr, **kwargs)
    except Exception as error:  # any failure to build from the spec's arguments is bad input
        raise SpecError(f"scheduler {call}: {error}") from None
    if steps_per_epoch is None:
        return per_epoch
    if not (isinstance(steps_per_epoch, int) and steps_per_epoch > 0):
        raise SpecError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    return lambda count: per_epoch(jnp.asarray(count) // steps_per_epoch)
