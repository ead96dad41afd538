"""torch.optim.lr_scheduler as JAX schedules of the optimizer-update count, with torch's semantics.

>>> from jax_impl.schedules import from_torch
>>> schedule = from_torch("StepLR(step_size=2, gamma=0.1)", base_lr=0.01, steps_per_epoch=50)
>>> float(schedule(100))   # update 100 falls in epoch 2: one decay (float64 under x64)
0.001

A schedule ``f`` gives the learning rate of the k-th update (0-based). torch calls
``scheduler.step()`` after ``optimizer.step()``, so update k runs at the lr ``get_last_lr()``
reports after k scheduler steps; ``optax.inject_hyperparams`` and ``optax.scale_by_schedule`` read
``f(count)`` before incrementing ``count``, so they line up. With ``steps_per_epoch=k`` the
scheduler is stepped once per epoch of k updates and update ``count`` runs at ``f(count // k)``.

Every schedule is a pure function of a (traced) integer count, computed in the widest float
enabled (float64 under x64; optax's own schedules divide an int32 count by Python ints and so
compute in float32 even under x64). Python-level constants (``1 - cos(pi / T_max)``,
``max_lr / div_factor``, ...) are computed in Python double exactly as torch computes them.

**Closed forms of torch's recursions.** Most torch schedulers are *chainable*: each ``step()``
multiplies the optimizer's current lr by a factor (StepLR by ``gamma`` at multiples of
``step_size``, LinearLR by ``1 + (end - start) / (T start + (e - 1)(end - start))``, ...). Here
the product of those factors is written in closed form (it telescopes), so a schedule costs the
same at update 10 and at update 10**6. The two agree to rounding: measured against torch over
1,000 steps the relative difference is at most ~1e-13 (float64). CosineAnnealingLR's recursion
is reproduced with its anchors (see :func:`CosineAnnealingLR`), so its lr past ``T_max`` rises
again exactly as torch's does. Where torch raises in the middle of a run (OneCycleLR stepped past
``total_steps``, ConstantLR(factor=0) dividing by zero at ``total_iters``) the schedule gives NaN
from that update on; where torch raises while it constructs the scheduler, :func:`from_torch`
raises :class:`~jax_impl.spec.SpecError`.

**Precision.** Under x64 the schedules agree with torch to <= 1.3e-13 relative over 1,000 steps
in every configuration tested (most to ~1e-15). Three XLA behaviours matter and are handled or
bounded: XLA rewrites ``x / c`` as ``x * (1 / c)`` (fixed: :func:`_div` divides element by
element, which is what makes PolynomialLR reach exactly 0 at ``total_iters`` and the cosine
exactly ``eta_min`` at ``T_max``); under ``jit`` XLA on CPU contracts ``a * b + c`` into a fused
multiply-add (one rounding where Python has two: ~1e-16, up to ~5e-14 relative where the terms
cancel, e.g. OneCycleLR's linear anneal extrapolated at ``total_steps``); XLA flushes subnormals
to zero, so an lr that Python carries below 2.2e-308 is 0 here. Without x64 everything is float32
(relative error up to ~2e-4 measured where ``1 + cos`` cancels near a cosine minimum).

**What ``base_lr`` means.** It is the optimizer's lr (``param_group["lr"]``) when the scheduler
is constructed; torch copies it into ``param_group["initial_lr"]`` and uses it as ``base_lrs``.

==========================================  ===================================================
LambdaLR, MultiplicativeLR, StepLR,         ``base_lr`` is the lr the schedule starts from
MultiStepLR, ConstantLR, LinearLR,
ExponentialLR, PolynomialLR,
CosineAnnealingLR,
CosineAnnealingWarmRestarts
CyclicLR                                    ignored: the spec's own ``base_lr`` argument
                                            overwrites the optimizer's lr at construction
OneCycleLR                                  ignored: the lr starts at ``max_lr / div_factor``
ReduceLROnPlateau                           the starting ``state.lr``
SequentialLR, ChainedScheduler              the optimizer's lr; members see it (or what an
                                            earlier member wrote, see below) as torch's do
==========================================  ===================================================

**Momentum / beta1.** OneCycleLR and CyclicLR with ``cycle_momentum=True`` (the default for
both) overwrite the optimizer's ``param_group["momentum"]`` (SGD, RMSprop, ...) or
``param_group["betas"][0]`` (Adam family) at construction and at every step. The returned
schedule's ``momentum`` attribute is that value as a function of the update count (else
``None``); pass it to the optimizer as its momentum / beta1 hyperparameter
(``jax_impl.optim.from_torch(spec, lr=schedule)`` does). torch raises ``ValueError`` at
construction when ``cycle_momentum`` is on and the optimizer has neither ``momentum`` nor
``betas`` in its defaults (Adagrad, Adadelta, ASGD, Rprop, LBFGS, ...): a caller that knows the
optimizer must do the same. SGD(momentum=0) *does* have the key, so torch turns momentum on.

**Callables.** ``lr_lambda`` (LambdaLR, MultiplicativeLR) and ``scale_fn`` (CyclicLR) are any
Python callables of an int, as torch calls them; they run on the host through
``jax.pure_callback`` (so they work under ``jit`` and ``vmap``) in Python double. MultiplicativeLR
caches its running product. A spec string cannot hold them: pass them to :func:`from_torch` as
keyword arguments, or, for a member of SequentialLR / ChainedScheduler, put them in that member's
:class:`~jax_impl.spec.CallSpec` (``CallSpec("LambdaLR", {"lr_lambda": fn})``).

**SequentialLR and ChainedScheduler** are reproduced with torch's construction effects: members
are constructed in list order on one param group, each constructor runs its first ``step()`` on
the group's lr; the first member (or OneCycleLR, which overwrites it) sets ``initial_lr``, the
``base_lr`` of every later member; CyclicLR first sets the group's lr to its own ``base_lr``.

* SequentialLR then resets the lr to ``initial_lr`` and re-runs the first step of the member
  active at step 0. At each milestone torch calls the next member's ``_update_lr(0)``: its
  *closed form* at epoch 0 from its ``base_lr`` where it has one (so LinearLR restarts at
  ``start_factor * base_lr`` whatever the previous member ended at), MultiplicativeLR multiplies
  the previous member's last lr by ``lr_lambda(0)``, LambdaLR/CyclicLR/OneCycleLR/WarmRestarts
  restart at their epoch-0 value. Milestones must be sorted (torch bisects them).
* ChainedScheduler steps every member in order, each reading the lr the previous one wrote.
  Exact forms: (a) members after the last non-chainable one (LambdaLR, CyclicLR, OneCycleLR,
  CosineAnnealingWarmRestarts, which set the lr from their own ``base_lr``) are one-step maps
  of its value; (b) chainable members alone compose as the product of their closed forms;
  (c) one CosineAnnealingLR with ``eta_min=0`` among chainable members is a product too, reset
  at each of its restarts past ``T_max`` (where the lr it adds to is exactly 0). Everything
  else (CosineAnnealingLR with ``eta_min != 0`` or two of them among chainable members: an affine
  recurrence ``lr_e = r_e (lr_{e-1} - eta_min) + eta_min``, a sum over all past steps) raises
  :class:`~jax_impl.spec.SpecError`.
* Members must be plain schedulers: nested SequentialLR/ChainedScheduler raise SpecError (torch
  itself raises ``NotImplementedError`` when a ChainedScheduler reaches a SequentialLR milestone),
  and ReduceLROnPlateau raises as in torch.

**ReduceLROnPlateau** depends on validation metrics, not on the count: :func:`from_torch`
returns a :class:`ReduceLROnPlateau` with pure, jittable ``init()`` and ``step(state, metric)``.

Not supported (SpecError): ``last_epoch`` other than -1 (resuming), per-group lists with more
than one entry (build one schedule per param group), non-integer step counts.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.spec import (
    CallSpec,
    SpecError,
    bind_call,
    build_from_registry,
    parse_call,
)

Schedule = Callable[[Any], jax.Array]

__all__ = [
    "from_torch", "SCHEDULERS", "Schedule", "TorchSchedule", "ReduceLROnPlateau", "PlateauState",
    "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
    "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR",
    "SequentialLR", "ChainedScheduler",
]

#: Builder parameters the caller supplies rather than the spec (the optimizer's lr, the optimizer).
_SUPPLIED = ("initial_lr", "optimizer")


# ------------------------------------------------------------------------------------------
# Numeric helpers


def _wide() -> jnp.dtype:
    """float64 under x64, else float32: the dtype of torch's Python-double arithmetic here."""
    return jnp.result_type(float)


def _epochs(count: Any) -> jax.Array:
    """The scheduler-step count as an integer array."""
    e = jnp.asarray(count)
    return e if jnp.issubdtype(e.dtype, jnp.integer) else e.astype(int)


def _fl(e: Any) -> jax.Array:
    return jnp.asarray(e).astype(_wide())


def _div(numerator: Any, denominator: Any) -> jax.Array:
    """``numerator / denominator`` correctly rounded, as Python divides.

    XLA rewrites a division by a constant or by a broadcast scalar into a multiplication by its
    reciprocal (two roundings: ``150 * (1 / 150) != 1``), under jit and in eager op-by-op
    execution alike. The denominator is therefore made an array of the numerator's shape (and
    vmap batching) behind an optimization barrier, so XLA divides element by element.
    """
    numerator = jnp.asarray(numerator).astype(_wide())
    numerator, denominator = jnp.broadcast_arrays(numerator, jnp.asarray(denominator, _wide()))
    denominator = jax.lax.optimization_barrier(numerator * 0.0 + denominator)
    return numerator / denominator


def _ipow(base: float, n: jax.Array) -> jax.Array:
    """``base ** n`` for a Python float and an integer array, as Python's float power gives it
    (a negative base keeps its sign for odd n; ``0.0 ** 0 == 1``)."""
    magnitude = jnp.power(jnp.asarray(abs(base), _wide()), _fl(n))
    if base < 0:
        return jnp.where(jnp.asarray(n) % 2 == 1, -magnitude, magnitude)
    return magnitude


def _host(fn: Callable[..., float], *args: Any) -> jax.Array:
    """``fn`` of Python ints, element by element, on the host (``jax.pure_callback``): any Python
    callable works under jit and vmap and computes in Python double."""
    wide = _wide()
    args = jnp.broadcast_arrays(*[jnp.asarray(a) for a in args])

    def callback(*values):
        values = np.broadcast_arrays(*[np.asarray(v) for v in values])
        flat = [fn(*(int(x) for x in items)) for items in zip(*(v.ravel() for v in values))]
        return np.asarray(flat, dtype=np.float64).reshape(values[0].shape).astype(wide)

    return jax.pure_callback(callback, jax.ShapeDtypeStruct(args[0].shape, wide), *args,
                             vmap_method="broadcast_all")


def _nan_past(e: jax.Array, limits: Sequence[int], value: jax.Array) -> jax.Array:
    """NaN where torch raises: past a OneCycleLR's ``total_steps``."""
    for limit in limits:
        value = jnp.where(e > limit, jnp.nan, value)
    return value


# ------------------------------------------------------------------------------------------
# Laws: how one scheduler moves the lr, in the three shapes torch's schedulers come in


@dataclasses.dataclass(frozen=True)
class _Law:
    """How one torch scheduler moves a param group's lr (internal; composes inside
    SequentialLR / ChainedScheduler).

    kind "factor" (chainable, multiplicative): the constructor's step multiplies the lr by
    ``first``; steps a+1..b multiply it by ``ratio(a, b)`` (a >= 0). kind "cosine":
    CosineAnnealingLR (``T``, ``eta_min``, ``base``). kind "absolute": the lr after t steps is
    ``value(t)`` whatever the lr was.
    """

    kind: str
    name: str
    first: float = 1.0
    ratio: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    run_from: Callable[[float], Schedule] | None = None  # exact running product from a float
    T: int = 0
    eta_min: float = 0.0
    base: float = 0.0
    value: Schedule | None = None
    momentum: Schedule | None = None
    total_steps: int | None = None  # OneCycleLR: torch raises when stepped past it
    # SequentialLR milestone (torch's ``_update_lr(0)``): the new lr, a Python float (a closed
    # form at epoch 0), a function of a thunk giving the lr before it, or why torch raises there
    restart: float | Callable[[Callable[[], Any]], Any] | str | None = None
    sets_lr: float | None = None  # CyclicLR: param_group["lr"] = its base_lr at construction
    writes: Mapping[str, float] = dataclasses.field(default_factory=dict)  # group keys it sets
    regroup: Callable[[Mapping[str, float]], _Law] | None = None  # OneCycleLR: reads group keys


def _limits(laws: Sequence[_Law]) -> list[int]:
    return [law.total_steps for law in laws if law.total_steps is not None]


def _cos1p(e: Any, T: int) -> jax.Array:
    """``1 + cos(pi * e / T)`` in torch's order of operations."""
    return 1.0 + jnp.cos(_div(jnp.pi * _fl(e), T))


def _cosine_added(law: _Law) -> float:
    """What CosineAnnealingLR adds at a restart past T_max, in Python double as torch does."""
    return (law.base - law.eta_min) * (1 - math.cos(math.pi / law.T)) / 2


def _cosine_step(law: _Law, e: jax.Array, lr: jax.Array) -> jax.Array:
    """One CosineAnnealingLR.step() to epoch e from the group's ``lr`` (torch's ``get_lr``)."""
    restart = (e >= 1) & (jnp.mod(e - 1 - law.T, 2 * law.T) == 0)
    ratio = _div(_cos1p(e, law.T), _cos1p(e - 1, law.T)) * (lr - law.eta_min) + law.eta_min
    return jnp.where(e == 0, lr, jnp.where(restart, lr + _cosine_added(law), ratio))


def _cosine_run(law: _Law, e: jax.Array, lr0: Any, before: Sequence[_Law] = (),
                after: Sequence[_Law] = ()) -> jax.Array:
    """CosineAnnealingLR stepped e times from ``lr0`` (its lr at epoch 0), with chainable
    ``before``/``after`` members stepped around it in the same chain (only if eta_min == 0).

    torch's recursion ``lr_e = (1 + c_e) / (1 + c_{e-1}) (lr_{e-1} - eta) + eta`` telescopes to
    ``eta + (lr0 - eta)(1 + c_e) / 2`` until epoch |T| (where ``1 + c`` is exactly 0 and the lr is
    exactly eta). At each restart ``a = |T| + 1 (mod 2|T|)`` torch *adds* ``D = (base - eta)
    (1 - cos(pi / T)) / 2`` to it, and the ratios telescope again: ``eta + D (1 + c_e) /
    (1 + c_a)``. Anchoring at ``a`` as torch does (rather than using the period-2T closed form
    ``eta + (base - eta)(1 + c_e) / 2``, equal in exact arithmetic) keeps the agreement with
    torch at ~1e-15 instead of ~1e-12: ``1 - cos(pi / T)`` and ``1 + cos(pi (T + 1) / T)`` round
    differently.
    """
    T, eta = abs(law.T), law.eta_min
    others = [*before, *after]
    c_e = _cos1p(e, law.T)

    def product(a, b):
        out = jnp.ones((), _wide())
        for other in others:
            out = out * other.ratio(a, b)
        return out

    first_half = eta + (lr0 - eta) * product(0, e) * (c_e / 2)
    anchor = T + 1 + 2 * T * ((jnp.maximum(e, T + 1) - T - 1) // (2 * T))
    at_anchor = jnp.asarray(_cosine_added(law), _wide())
    for other in after:  # the members after it in the chain step at the anchor too
        at_anchor = at_anchor * other.ratio(anchor - 1, anchor)
    later = eta + at_anchor * product(anchor, e) * _div(c_e, _cos1p(anchor, law.T))
    return jnp.where(e > T, later, first_half)


def _one_step(law: _Law, e: jax.Array, lr: jax.Array) -> jax.Array:
    """The lr after this scheduler's step to epoch e, from the lr before it."""
    if law.kind == "factor":
        return lr * jnp.where(e == 0, law.first, law.ratio(jnp.maximum(e - 1, 0), e))
    if law.kind == "cosine":
        return _cosine_step(law, e, lr)
    return law.value(e)


def _run(law: _Law, t: jax.Array, lr0: Any) -> jax.Array:
    """The lr after t steps of this scheduler alone, from ``lr0``, its lr at epoch 0."""
    if law.kind == "factor":
        if law.run_from is not None and isinstance(lr0, float):
            return law.run_from(lr0)(t)
        return lr0 * law.ratio(jnp.zeros_like(t), t)
    if law.kind == "cosine":
        return _cosine_run(law, t, lr0)
    return law.value(t)


def _chain_lr(laws: Sequence[_Law], lr: float) -> Schedule:
    """ChainedScheduler (and a plain scheduler, a chain of one) on the optimizer's ``lr``."""
    absolute = [i for i, law in enumerate(laws) if law.kind == "absolute"]
    limits = _limits(laws)
    if absolute:
        last = absolute[-1]

        def schedule(count):
            e = _epochs(count)
            value = laws[last].value(e)
            for law in laws[last + 1:]:
                value = _one_step(law, e, value)
            return _nan_past(e, limits, value)

        return schedule

    lr0 = lr
    for law in laws:  # each constructor's first step, in order, in Python double
        lr0 = lr0 * law.first if law.kind == "factor" else lr0
    cosines = [i for i, law in enumerate(laws) if law.kind == "cosine"]
    if not cosines:
        def schedule(count):
            e = _epochs(count)
            if len(laws) == 1 and laws[0].run_from is not None:
                return laws[0].run_from(lr0)(e)
            value = jnp.asarray(lr0, _wide())
            for law in laws:
                value = value * law.ratio(jnp.zeros_like(e), e)
            return value

        return schedule
    if len(cosines) > 1 or (len(laws) > 1 and laws[cosines[0]].eta_min != 0):
        raise ValueError(
            "this chain has no exact closed form: CosineAnnealingLR with eta_min != 0 (or two "
            "CosineAnnealingLR) stepped with chainable schedulers follows the affine recurrence "
            "lr_e = r_e * (lr_{e-1} - eta_min) + eta_min, whose solution is a sum over every past "
            "step, not a product of closed forms. Use eta_min=0, one CosineAnnealingLR, or a "
            "SequentialLR")
    c = cosines[0]

    def schedule(count):
        e = _epochs(count)
        return _cosine_run(laws[c], e, lr0, before=laws[:c], after=laws[c + 1:])

    return schedule


def _chain_momentum(laws: Sequence[_Law]) -> Schedule | None:
    """The last member that cycles momentum writes it last, at construction and every step."""
    writers = [law for law in laws if law.momentum is not None]
    if not writers:
        return None
    limits = _limits(laws)
    return lambda count: _nan_past(_epochs(count), limits, writers[-1].momentum(_epochs(count)))


# ------------------------------------------------------------------------------------------
# The schedule object


@dataclasses.dataclass(frozen=True)
class TorchSchedule:
    """A torch lr scheduler as functions of the optimizer-update count.

    ``schedule(count)`` is the lr of the count-th update (0-based), jittable on a traced integer
    count, in the widest float enabled. ``momentum`` is the value torch writes into the
    optimizer's ``momentum`` / ``betas[0]`` when the scheduler cycles it (OneCycleLR, CyclicLR
    with ``cycle_momentum=True``), else None: give it to the optimizer as its momentum / beta1
    hyperparameter. ``law`` is internal (how it composes in SequentialLR/ChainedScheduler).
    """

    lr: Schedule
    momentum: Schedule | None = None
    law: _Law | None = dataclasses.field(default=None, repr=False, compare=False)

    def __call__(self, count: Any) -> jax.Array:
        return self.lr(count)


def _schedule(law: _Law, initial_lr: float) -> TorchSchedule:
    """One scheduler on its own: a chain of one."""
    return TorchSchedule(_chain_lr([law], float(initial_lr)), _chain_momentum([law]), law)


# ------------------------------------------------------------------------------------------
# Argument checks (ValueError; from_torch turns them into SpecError naming the spec)


def _no_resume(last_epoch: Any) -> None:
    if last_epoch != -1:
        raise ValueError(f"last_epoch={last_epoch!r}: resuming a scheduler (last_epoch other than -1) "
                         "is not supported")


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _one_group(name: str, value: Any) -> Any:
    """torch's per-param-group list: one schedule serves one group, so a list holds one value."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{name} must have the same length as optimizer.param_groups. {name} has "
                             f"{len(value)} values, param_groups has 1 (build one schedule per group)")
        return value[0]
    return value


def _callable(name: str, value: Any, scheduler: str) -> Callable:
    value = _one_group(name, value)
    if value is None:
        raise ValueError(f"{scheduler} needs {name}, a Python callable a spec string cannot hold: pass "
                         f"from_torch(spec, base_lr, {name}=fn), or put it in the member's CallSpec")
    if not callable(value):
        raise ValueError(f"{name} should be a function, but got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------------
# Chainable (multiplicative) schedulers


def LambdaLR(initial_lr: float, /, lr_lambda: Callable[[int], float] | None = None,
             last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * lr_lambda(epoch)`` (torch.optim.lr_scheduler.LambdaLR), ``lr_lambda`` run
    on the host in Python double. Not chainable: it sets the lr from ``base_lr``."""
    _no_resume(last_epoch)
    fn = _callable("lr_lambda", lr_lambda, "LambdaLR")
    base = float(initial_lr)
    value = lambda t: _host(lambda k: base * fn(k), t)
    return _schedule(_Law("absolute", "LambdaLR", value=value, restart=lambda previous: value(jnp.asarray(0))), base)


class _RunningProduct:
    """MultiplicativeLR's products of ``lr_lambda(1) * lr_lambda(2) * ...``, cached on the host."""

    def __init__(self, fn: Callable[[int], float]):
        self.fn = fn
        self.factors = [1.0]  # factors[j] = lr_lambda(j) for j >= 1
        self.products: dict[float, list[float]] = {}

    def factor(self, j: int) -> float:
        while len(self.factors) <= j:
            self.factors.append(self.fn(len(self.factors)))
        return self.factors[j]

    def from_start(self, start: float, t: int) -> float:
        """torch's lr after t steps from ``start``: ((start * f(1)) * f(2)) * ... (its rounding)."""
        if t < 0:
            return math.nan
        values = self.products.setdefault(start, [start])
        while len(values) <= t:
            values.append(values[-1] * self.factor(len(values)))
        return values[t]

    def ratio(self, a: int, b: int) -> float:
        if a < 0 or b < a:
            return math.nan
        if a == 0:
            return self.from_start(1.0, b)
        out = 1.0
        for j in range(a + 1, b + 1):
            out *= self.factor(j)
        return out


def MultiplicativeLR(initial_lr: float, /, lr_lambda: Callable[[int], float] | None = None,
                     last_epoch: int = -1) -> TorchSchedule:
    """``lr_e = lr_{e-1} * lr_lambda(e)`` for e >= 1 (torch.optim.lr_scheduler.MultiplicativeLR):
    the running product, cached on the host, so the lr is bit-for-bit torch's."""
    _no_resume(last_epoch)
    products = _RunningProduct(_callable("lr_lambda", lr_lambda, "MultiplicativeLR"))
    run_from = lambda start: (lambda t: _host(lambda k: products.from_start(start, k), t))

    def restart(previous):  # torch: get_lr() at epoch 0 outside the constructor: lr * lr_lambda(0)
        return previous() * products.fn(0)

    law = _Law("factor", "MultiplicativeLR", first=1.0, ratio=lambda a, b: _host(products.ratio, a, b),
               run_from=run_from, restart=restart)
    return _schedule(law, initial_lr)


def StepLR(initial_lr: float, /, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * gamma ** (epoch // step_size)`` (torch.optim.lr_scheduler.StepLR)."""
    _no_resume(last_epoch)
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size <= 0:
        raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
    gamma = _number("gamma", gamma)
    base = float(initial_lr)
    law = _Law("factor", "StepLR", ratio=lambda a, b: _ipow(gamma, b // step_size - a // step_size),
               restart=base * gamma ** (0 // step_size))
    return _schedule(law, base)


def MultiStepLR(initial_lr: float, /, milestones: Sequence[int], gamma: float = 0.1,
                last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * gamma ** (number of milestones <= epoch)`` (repeated milestones count
    repeatedly), torch.optim.lr_scheduler.MultiStepLR. A milestone at 0 decays in the constructor."""
    _no_resume(last_epoch)
    if not isinstance(milestones, (list, tuple)):
        raise ValueError(f"milestones must be a list of integers, got {milestones!r}")
    marks = sorted(_int("milestones entry", m) for m in milestones)
    gamma = _number("gamma", gamma)
    base = float(initial_lr)

    def ratio(a, b):
        if not marks:
            return jnp.ones(jnp.shape(b), _wide())
        points = jnp.asarray(marks)
        a, b = jnp.asarray(a)[..., None], jnp.asarray(b)[..., None]
        return _ipow(gamma, jnp.sum((points > a) & (points <= b), axis=-1))

    law = _Law("factor", "MultiStepLR", first=gamma ** marks.count(0), ratio=ratio,
               restart=base * gamma ** bisect.bisect_right(marks, 0))
    return _schedule(law, base)


def ConstantLR(initial_lr: float, /, factor: float = 1.0 / 3, total_iters: int = 5,
               last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * factor`` for epochs < total_iters, then ``base_lr``
    (torch.optim.lr_scheduler.ConstantLR: times ``factor`` in the constructor, times ``1 / factor``
    at epoch ``total_iters``; with ``total_iters=0`` it stays at ``factor * base_lr``)."""
    _no_resume(last_epoch)
    factor = _number("factor", factor)
    if factor > 1.0 or factor < 0:
        raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
    T = _int("total_iters", total_iters)
    inverse = math.inf if factor == 0 else 1.0 / factor  # torch raises ZeroDivisionError: NaN here
    base = float(initial_lr)

    def ratio(a, b):
        crosses = (jnp.asarray(a) < T) & (jnp.asarray(b) >= T) & (T >= 1)
        return jnp.where(crosses, inverse, 1.0).astype(_wide())

    law = _Law("factor", "ConstantLR", first=factor, ratio=ratio,
               restart=base * (factor + (0 >= T) * (1 - factor)))
    return _schedule(law, base)


def LinearLR(initial_lr: float, /, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
             total_iters: int = 5, last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * (start + (end - start) * min(epoch, total_iters) / total_iters)``
    (torch.optim.lr_scheduler.LinearLR; the telescoped product of its per-step factors). With
    ``total_iters <= 0`` torch stays at ``start_factor * base_lr``."""
    _no_resume(last_epoch)
    start, end = _number("start_factor", start_factor), _number("end_factor", end_factor)
    if start > 1.0 or start <= 0:
        raise ValueError("Starting multiplicative factor expected to be greater than 0 and less or equal to 1.")
    if end > 1.0 or end < 0:
        raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
    T = _int("total_iters", total_iters)
    base = float(initial_lr)

    def ratio(a, b):
        if T <= 0:
            return jnp.ones(jnp.shape(b), _wide())
        # prod_{j=a+1..b'} (T s + j d) / (T s + (j - 1) d) = (T s + (b' - 1) d) / (T s + a' d) times
        # torch's own last factor 1 + d / (T s + (b' - 1) d): with end_factor=0 that factor leaves
        # torch's lr at ~1e-17 * base_lr rather than 0, and this keeps that residue
        a_, b_ = _fl(jnp.minimum(a, T)), _fl(jnp.minimum(b, T))
        before_last = T * start + (b_ - 1) * (end - start)
        value = _div(before_last, T * start + a_ * (end - start)) * (1.0 + _div(end - start, before_last))
        return jnp.where(jnp.asarray(a) >= jnp.minimum(b, T), 1.0, value)

    try:
        restart: Any = base * (start + (end - start) * min(T, 0) / T)
    except ZeroDivisionError:
        restart = "LinearLR(total_iters=0) divides by zero in its closed form (torch raises ZeroDivisionError)"
    return _schedule(_Law("factor", "LinearLR", first=start, ratio=ratio, restart=restart), base)


def ExponentialLR(initial_lr: float, /, gamma: float, last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * gamma ** epoch`` (torch.optim.lr_scheduler.ExponentialLR)."""
    _no_resume(last_epoch)
    gamma = _number("gamma", gamma)
    base = float(initial_lr)
    law = _Law("factor", "ExponentialLR", ratio=lambda a, b: _ipow(gamma, jnp.asarray(b) - a),
               restart=base * gamma ** 0)
    return _schedule(law, base)


def PolynomialLR(initial_lr: float, /, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1) -> TorchSchedule:
    """``lr = base_lr * (1 - min(epoch, total_iters) / total_iters) ** power``
    (torch.optim.lr_scheduler.PolynomialLR). With ``total_iters <= 0`` torch keeps ``base_lr``."""
    _no_resume(last_epoch)
    T = _int("total_iters", total_iters)
    power = _number("power", power)
    if power < 0 and T >= 1:
        raise ValueError(f"power={power} < 0: torch raises ZeroDivisionError (0.0 ** power) at epoch "
                         "total_iters; not supported")
    base = float(initial_lr)

    def ratio(a, b):
        if T <= 0:
            return jnp.ones(jnp.shape(b), _wide())
        a_, b_ = _fl(jnp.minimum(a, T)), _fl(jnp.minimum(b, T))
        value = jnp.power(_div(1.0 - _div(b_, T), 1.0 - _div(a_, T)), power)
        return jnp.where(jnp.asarray(a) >= T, 1.0, value)

    try:
        restart: Any = base * (1.0 - min(T, 0) / T) ** power
    except ZeroDivisionError:
        restart = "PolynomialLR(total_iters=0) divides by zero in its closed form (torch raises ZeroDivisionError)"
    return _schedule(_Law("factor", "PolynomialLR", ratio=ratio, restart=restart), base)


def CosineAnnealingLR(initial_lr: float, /, T_max: int, eta_min: float = 0.0,
                      last_epoch: int = -1) -> TorchSchedule:
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2`` for epoch <= T_max
    (torch.optim.lr_scheduler.CosineAnnealingLR).

    Past ``T_max`` torch does not hold at ``eta_min`` (as ``optax.cosine_decay_schedule`` does):
    its recursive form goes on round the cosine with period ``2 T_max``, so the lr rises back to
    ``base_lr`` at ``2 T_max``, falls to ``eta_min`` at ``3 T_max``, and so on. This reproduces the
    recursion, anchored where torch's is (see :func:`_cosine_run`). A negative ``T_max`` behaves
    as ``|T_max|`` in torch and here; ``T_max=0`` makes torch divide by zero (SpecError here).
    """
    _no_resume(last_epoch)
    T = _int("T_max", T_max)
    if T == 0:
        raise ValueError("T_max=0: torch divides by zero (ZeroDivisionError) at the first step")
    eta = _number("eta_min", eta_min)
    base = float(initial_lr)
    restart = eta + (base - eta) * (1 + math.cos(math.pi * 0 / T)) / 2
    return _schedule(_Law("cosine", "CosineAnnealingLR", T=T, eta_min=eta, base=base, restart=restart), base)


# ------------------------------------------------------------------------------------------
# Schedulers that set the lr from their own values (not chainable)


def CosineAnnealingWarmRestarts(initial_lr: float, /, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                                last_epoch: int = -1) -> TorchSchedule:
    """SGDR: ``lr = eta_min + (base_lr - eta_min) (1 + cos(pi T_cur / T_i)) / 2``, restarting at
    ``T_cur = 0`` after each cycle, cycle i lasting ``T_i = T_0 * T_mult ** i`` epochs
    (torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)."""
    _no_resume(last_epoch)
    if isinstance(T_0, bool) or not isinstance(T_0, int) or T_0 <= 0:
        raise ValueError(f"Expected positive integer T_0, but got {T_0}")
    if isinstance(T_mult, bool) or not isinstance(T_mult, int) or T_mult < 1:
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
    if isinstance(eta_min, bool) or not isinstance(eta_min, (float, int)):
        raise ValueError(f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}")
    base, eta = float(initial_lr), float(eta_min)
    starts, lengths = [0], [T_0]  # cycle i covers epochs starts[i] .. starts[i] + lengths[i] - 1
    while T_mult > 1 and starts[-1] + lengths[-1] < 2**62:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * T_mult)

    def value(t):
        t = _epochs(t)
        if T_mult == 1:
            t_cur, t_i = t % T_0, T_0
        else:
            top = jnp.iinfo(t.dtype).max  # cycles that start within the count's dtype (int32 in optax)
            begin = jnp.asarray([s for s in starts if s <= top], t.dtype)
            size = jnp.asarray([float(n) for s, n in zip(starts, lengths) if s <= top], _wide())
            cycle = jnp.sum(begin <= t[..., None], axis=-1) - 1
            t_cur, t_i = t - begin[cycle], size[cycle]
        return eta + (base - eta) * (1 + jnp.cos(_div(jnp.pi * _fl(t_cur), t_i))) / 2

    law = _Law("absolute", "CosineAnnealingWarmRestarts", value=value, restart=lambda previous: value(jnp.asarray(0)))
    return _schedule(law, base)


def CyclicLR(initial_lr: float, /, base_lr: float, max_lr: float, step_size_up: int = 2000,
             step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
             scale_fn: Callable[[int], float] | None = None, scale_mode: str = "cycle",
             cycle_momentum: bool = True, base_momentum: float = 0.8, max_momentum: float = 0.9,
             last_epoch: int = -1) -> TorchSchedule:
    """Cyclical lr (torch.optim.lr_scheduler.CyclicLR): with ``cycle = floor(1 + e / total)``,
    ``x = 1 + e / total - cycle`` and ``h = x / ratio`` rising (``(x - 1) / (ratio - 1)``
    falling), ``lr = base_lr + (max_lr - base_lr) h s`` and, with ``cycle_momentum``,
    ``momentum = max_momentum - (max_momentum - base_momentum) h s``, where ``s`` is
    ``scale_fn(cycle)`` (or ``scale_fn(e)`` with ``scale_mode='iterations'``); the built-in modes
    are triangular (1), triangular2 (``1 / 2 ** (cycle - 1)``) and exp_range (``gamma ** e``).

    ``initial_lr`` (the optimizer's lr) is ignored: torch overwrites it with ``base_lr``.
    A custom ``scale_fn`` (a callable, from_torch's keyword) runs on the host; then ``mode`` is
    ignored and any ``scale_mode`` other than 'cycle' means iterations, as in torch.
    """
    _no_resume(last_epoch)
    del initial_lr
    low, high = _number("base_lr", _one_group("base_lr", base_lr)), _number("max_lr", _one_group("max_lr", max_lr))
    up = _number("step_size_up", step_size_up)
    down = up if step_size_down is None else _number("step_size_down", step_size_down)
    if up < 0 or down < 0:
        raise ValueError(f"step sizes must be non-negative, got step_size_up={step_size_up}, "
                         f"step_size_down={step_size_down}")
    if up == 0:
        raise ValueError("step_size_up=0: torch divides by zero (ZeroDivisionError) at construction")
    total = up + down
    step_ratio = up / total
    if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
        raise ValueError("mode is invalid and scale_fn is None")
    gamma = _number("gamma", gamma)
    if scale_fn is not None:
        fn = _callable("scale_fn", scale_fn, "CyclicLR")
        by_cycle = scale_mode == "cycle"
        scale = lambda cycle, e: _host(lambda k: float(fn(k)), cycle if by_cycle else e)
    elif mode == "triangular":
        scale = lambda cycle, e: jnp.ones(jnp.shape(e), _wide())
    elif mode == "triangular2":
        scale = lambda cycle, e: 1 / jnp.ldexp(jnp.ones((), _wide()), cycle - 1)
    else:
        scale = lambda cycle, e: _ipow(gamma, e)

    def shape(e):
        e = _epochs(e)
        cycle = jnp.floor(1 + _div(e, total)).astype(e.dtype)
        x = 1.0 + _div(e, total) - _fl(cycle)
        height = jnp.where(x <= step_ratio, _div(x, step_ratio), _div(x - 1, step_ratio - 1))
        return height, scale(cycle, e)

    def value(e):
        height, s = shape(e)
        return low + (high - low) * height * s

    momentum = writes = None
    if cycle_momentum:
        m_low = _number("base_momentum", _one_group("base_momentum", base_momentum))
        m_high = _number("max_momentum", _one_group("max_momentum", max_momentum))
        writes = {"max_momentum": m_high, "base_momentum": m_low}

        def momentum(e):
            height, s = shape(e)
            return m_high - (m_high - m_low) * height * s

    law = _Law("absolute", "CyclicLR", value=value, momentum=momentum, restart=lambda previous: value(jnp.asarray(0)),
               sets_lr=low, writes=writes or {})
    return _schedule(law, low)


def _onecycle_law(total_steps: int, phases: list[tuple[float, str, str, str, str]], anneal: str,
                  cycle_momentum: bool, group: Mapping[str, float], writes: Mapping[str, float]) -> _Law:
    """OneCycleLR reading the param group's keys (initial_lr, max_lr, min_lr, max_momentum,
    base_momentum) as torch's ``get_lr`` does at every step."""

    def anneal_fn(start, end, pct):
        if anneal == "cos":
            return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)
        return (end - start) * pct + start

    def curve(t, keys):
        t = _epochs(t)
        out = None
        start_step = 0.0
        pieces = []
        for end_step, *names in phases:
            width = end_step - start_step
            pct = _div(_fl(t) - start_step, width) if width != 0 else jnp.full(jnp.shape(t), jnp.nan, _wide())
            start_key, end_key = (names[0], names[1]) if keys == "lr" else (names[2], names[3])
            pieces.append((end_step, anneal_fn(group[start_key], group[end_key], pct)))
            start_step = end_step
        out = pieces[-1][1]
        for end_step, piece in reversed(pieces[:-1]):  # the first phase whose end_step >= t
            out = jnp.where(t <= end_step, piece, out)
        return _nan_past(t, [total_steps], out)

    return _Law(
        "absolute", "OneCycleLR", value=lambda t: curve(t, "lr"),
        momentum=(lambda t: curve(t, "momentum")) if cycle_momentum else None,
        total_steps=total_steps, restart=lambda previous: curve(jnp.asarray(0), "lr"), writes=writes,
        regroup=lambda final: _onecycle_law(total_steps, phases, anneal, cycle_momentum, {**group, **final}, writes),
    )


def OneCycleLR(initial_lr: float, /, max_lr: float, total_steps: int | None = None, epochs: int | None = None,
               steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
               cycle_momentum: bool = True, base_momentum: float = 0.85, max_momentum: float = 0.95,
               div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
               last_epoch: int = -1) -> TorchSchedule:
    """The 1cycle policy (torch.optim.lr_scheduler.OneCycleLR): the lr anneals (cos or linear)
    from ``max_lr / div_factor`` up to ``max_lr`` over phase 1, then down to
    ``max_lr / div_factor / final_div_factor`` (``three_phase``: back to the initial lr, then
    down). Phase boundaries are torch's: ``pct_start * total_steps - 1`` (and
    ``2 pct_start total_steps - 2``) and ``total_steps - 1``, so the peak is one step earlier
    than optax's ``cosine_onecycle_schedule`` and the last lr is the minimum. With
    ``cycle_momentum`` the momentum / beta1 anneals inversely, max -> base -> max.

    ``initial_lr`` is ignored (torch uses ``max_lr / div_factor``). ``total_steps`` or
    ``epochs * steps_per_epoch`` (this scheduler's own arguments, given in the spec) bound the
    run: torch raises when stepped past ``total_steps``, so from update ``total_steps + 1`` on
    the schedule is NaN.
    """
    _no_resume(last_epoch)
    del initial_lr
    if total_steps is not None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
        steps = total_steps
    elif epochs is not None and steps_per_epoch is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"Expected positive integer epochs, but got {epochs}")
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
        steps = epochs * steps_per_epoch
    else:
        raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
    if isinstance(pct_start, bool) or not isinstance(pct_start, float) or pct_start < 0 or pct_start > 1:
        raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
    if three_phase:
        phases = [(float(pct_start * steps) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                  (float(2 * pct_start * steps) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                  (steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
    else:
        phases = [(float(pct_start * steps) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                  (steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
    # the constructor's step (epoch 0) must not fall in a phase of zero width: torch's 0 / 0
    start = 0.0
    for index, (end, *_) in enumerate(phases):
        if 0 <= end or index == len(phases) - 1:
            if end - start == 0:
                raise ValueError(f"pct_start * total_steps = {pct_start * steps}: the first phase has zero "
                                 "length and torch divides by zero (ZeroDivisionError) at construction")
            break
        start = end
    peak = _number("max_lr", _one_group("max_lr", max_lr))
    try:
        group = {"initial_lr": peak / div_factor, "max_lr": peak}
        group["min_lr"] = group["initial_lr"] / final_div_factor
    except ZeroDivisionError:
        raise ValueError("div_factor and final_div_factor must be non-zero (torch: ZeroDivisionError)") from None
    writes = dict(group)
    if cycle_momentum:
        group["max_momentum"] = _number("max_momentum", _one_group("max_momentum", max_momentum))
        group["base_momentum"] = _number("base_momentum", _one_group("base_momentum", base_momentum))
        writes.update(max_momentum=group["max_momentum"], base_momentum=group["base_momentum"])
    return _schedule(_onecycle_law(steps, phases, anneal_strategy, bool(cycle_momentum), group, writes),
                     group["initial_lr"])


# ------------------------------------------------------------------------------------------
# Composites: construction on one param group, then SequentialLR / ChainedScheduler


def _members(kind: str, schedulers: Any, initial_lr: float) -> tuple[list[_Law], float]:
    """Build the members in list order on one param group, as torch's constructors run.

    Returns each member's law and the group's ``initial_lr`` after every constructor ran.
    """
    if not isinstance(schedulers, (list, tuple)):
        raise ValueError(f"schedulers must be a list of scheduler specs, got {schedulers!r}")
    if len(schedulers) < 1:
        message = "at least one scheduler to be chained" if kind == "ChainedScheduler" else "at least one scheduler"
        raise ValueError(f"{kind} expects {message}, but got no scheduler.")
    group_lr, group_initial, group = float(initial_lr), None, {}
    laws: list[_Law] = []
    for index, member in enumerate(schedulers):
        call = member if isinstance(member, CallSpec) else parse_call(member)
        if call.name == "ReduceLROnPlateau":
            raise ValueError(f"{kind} does not support `ReduceLROnPlateau` scheduler as it requires additional "
                             "kwargs to be specified when calling `step`, but got one at index "
                             f"{index} in the given schedulers sequence.")
        builder, call = build_from_registry(call, SCHEDULERS, kind="scheduler")
        if call.name in ("SequentialLR", "ChainedScheduler"):
            raise ValueError(f"{kind}: nested {call.name} at index {index} is not supported (in torch a "
                             "ChainedScheduler reaching a SequentialLR milestone raises NotImplementedError)")
        kwargs = bind_call(call, builder, kind="scheduler", skip=_SUPPLIED)

        def build(base, call=call, builder=builder, kwargs=kwargs, index=index):
            try:
                law = builder(base, **kwargs).law
            except SpecError:
                raise
            except Exception as error:
                raise ValueError(f"schedulers[{index}] {call}: {error}") from None
            if law is None:
                raise ValueError(f"schedulers[{index}] {call}: this builder cannot be composed")
            return law

        probe = build(group_initial if group_initial is not None else group_lr)
        if probe.sets_lr is not None:
            group_lr = probe.sets_lr
        if "initial_lr" in probe.writes:
            group_initial = probe.writes["initial_lr"]
        if group_initial is None:  # torch: param_group.setdefault("initial_lr", param_group["lr"])
            group_initial = group_lr
        law = build(group_initial)
        group.update(law.writes)
        if law.kind == "factor":
            group_lr *= law.first
        laws.append(law)
    # OneCycleLR reads the group's keys at every step: a later member may have overwritten them
    laws = [law.regroup(group) if law.regroup is not None else law for law in laws]
    return laws, group_initial


def ChainedScheduler(initial_lr: float, /, schedulers: Sequence[str | CallSpec],
                     optimizer: None = None) -> TorchSchedule:
    """Every member's ``step()`` in list order at each step (torch.optim.lr_scheduler.
    ChainedScheduler). See the module docstring for which chains have exact forms."""
    del optimizer
    laws, _ = _members("ChainedScheduler", schedulers, float(initial_lr))
    return TorchSchedule(_chain_lr(laws, float(initial_lr)), _chain_momentum(laws))


def SequentialLR(initial_lr: float, /, schedulers: Sequence[str | CallSpec], milestones: Sequence[int],
                 last_epoch: int = -1) -> TorchSchedule:
    """Member i runs for epochs in ``[milestones[i-1], milestones[i])``
    (torch.optim.lr_scheduler.SequentialLR), with torch's quirks: the first member starts from the
    group's ``initial_lr``; at a milestone the next member restarts from its closed form at epoch 0
    (computed from its own ``base_lr``), not from where the previous one ended. Momentum written
    by a cycling member holds after its segment ends, as in the optimizer's param group.
    """
    _no_resume(last_epoch)
    laws, group_initial = _members("SequentialLR", schedulers, float(initial_lr))
    if not isinstance(milestones, (list, tuple)):
        raise ValueError(f"milestones must be a list of integers, got {milestones!r}")
    marks = [_int("milestones entry", m) for m in milestones]
    if len(marks) != len(laws) - 1:
        raise ValueError("Sequential Schedulers expects number of schedulers provided to be one more than the "
                         f"number of milestone points, but got number of schedulers {len(laws)} and the number "
                         f"of milestones to be equal to {len(marks)}")
    if marks != sorted(marks):
        raise ValueError(f"milestones must be sorted (torch bisects them), got {marks}")
    at_zero = bisect.bisect_right(marks, 0)  # the member torch starts (1 when a milestone is 0)
    bounds = [-math.inf, *marks, math.inf]
    segments = [(i, 0 if i == at_zero else marks[i - 1]) for i in range(at_zero, len(laws))
                if i == at_zero or bounds[i] < bounds[i + 1]]  # (member, first epoch); empty ones dropped
    for i, start in segments[1:]:
        if isinstance(laws[i].restart, str):
            raise ValueError(f"schedulers[{i}]: {laws[i].restart} at milestone {start}")

    def segment_lr(j: int, e: jax.Array) -> jax.Array:
        i, start = segments[j]
        law = laws[i]
        if j == 0:  # torch: lr reset to initial_lr, then this member's constructor step again
            lr0: Any = group_initial * law.first if law.kind == "factor" else group_initial
        elif callable(law.restart):  # torch: _update_lr(0) at the milestone
            lr0 = law.restart(lambda: segment_lr(j - 1, jnp.asarray(start - 1)))
        else:  # its closed form at epoch 0, a Python float
            lr0 = law.restart
        t = jnp.maximum(e - start, 0)  # epochs before the segment are masked out by the caller
        return _nan_past(t, _limits([law]), _run(law, t, lr0))

    def active(e: jax.Array) -> jax.Array:
        return jnp.searchsorted(jnp.asarray(marks, e.dtype), e, side="right") if marks else jnp.zeros_like(e)

    def schedule(count):
        e = _epochs(count)
        index = active(e)
        out = segment_lr(0, e)
        for j in range(1, len(segments)):
            out = jnp.where(index == segments[j][0], segment_lr(j, e), out)
        return out

    momentum = None
    writers = [law for law in laws if law.momentum is not None]
    if writers:
        def segment_momentum(j: int, e: jax.Array) -> jax.Array:
            i, start = segments[j]
            if laws[i].momentum is not None:
                t = jnp.maximum(e - start, 0)
                return _nan_past(t, _limits([laws[i]]), laws[i].momentum(t))
            if j == 0:  # before any segment wrote: what the last cycling constructor wrote
                return jnp.broadcast_to(writers[-1].momentum(jnp.asarray(0)), jnp.shape(e))
            last = segments[j][1] - 1  # held: the previous segment's value at its last epoch
            return jnp.broadcast_to(segment_momentum(j - 1, jnp.asarray(last)), jnp.shape(e))

        def momentum(count):
            e = _epochs(count)
            index = active(e)
            out = segment_momentum(0, e)
            for j in range(1, len(segments)):
                out = jnp.where(index == segments[j][0], segment_momentum(j, e), out)
            return out

    return TorchSchedule(schedule, momentum)


# ------------------------------------------------------------------------------------------
# ReduceLROnPlateau: driven by a metric


class PlateauState(NamedTuple):
    """torch ReduceLROnPlateau's fields: the group's lr and the plateau bookkeeping."""

    lr: jax.Array  # the lr of the updates after this state (written into the optimizer)
    best: jax.Array
    num_bad_epochs: jax.Array  # int32
    cooldown_counter: jax.Array  # int32
    last_epoch: jax.Array  # int32: the number of step() calls


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau as a pure, jittable state machine.

    ``step(state, metric)``: the metric is better when ``metric < best * (1 - threshold)``
    (mode 'min', rel), ``< best - threshold`` (min, abs), ``> best * (1 + threshold)`` (max, rel)
    or ``> best + threshold`` (max, abs); then ``best = metric`` and ``num_bad_epochs = 0``, else
    ``num_bad_epochs += 1``. During cooldown bad epochs are not counted. When
    ``num_bad_epochs > patience`` the lr becomes ``max(lr * factor, min_lr)`` *if* that lowers it
    by more than ``eps``, and cooldown starts. The new lr applies from the next update: write
    ``state.lr`` into the optimizer's lr hyperparameter after each ``step``.

    ``initial_lr`` is the optimizer's lr. Differences from ``optax.contrib.reduce_on_plateau``:
    optax reduces when the count of bad epochs reaches ``patience`` (torch: exceeds it), scales
    the updates in the same call that sees the value, has a relative ``min_scale`` instead of an
    absolute ``min_lr``, no ``eps`` and no relative threshold in mode 'max'.
    """

    initial_lr: float
    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if _number("factor", self.factor) >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode {self.mode} is unknown!")
        if self.threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {self.threshold_mode} is unknown!")
        _int("patience", self.patience)
        _int("cooldown", self.cooldown)
        for name in ("threshold", "eps", "initial_lr"):
            _number(name, getattr(self, name))
        object.__setattr__(self, "min_lr", _number("min_lr", _one_group("min_lr", self.min_lr)))

    def init(self) -> PlateauState:
        zero = jnp.zeros((), jnp.int32)
        worse = math.inf if self.mode == "min" else -math.inf
        return PlateauState(jnp.asarray(self.initial_lr, _wide()), jnp.asarray(worse, _wide()), zero, zero, zero)

    def _is_better(self, current: jax.Array, best: jax.Array) -> jax.Array:
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < best - self.threshold
        if self.threshold_mode == "rel":
            return current > best * (self.threshold + 1.0)
        return current > best + self.threshold

    def step(self, state: PlateauState, metric: Any) -> PlateauState:
        current = jnp.asarray(metric).astype(_wide())  # torch: float(metrics)
        better = self._is_better(current, state.best)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        new_lr = jnp.maximum(state.lr * self.factor, self.min_lr)
        lr = jnp.where(reduce & (state.lr - new_lr > self.eps), new_lr, state.lr)
        return PlateauState(
            lr.astype(state.lr.dtype), best.astype(state.best.dtype),
            jnp.where(reduce, 0, bad).astype(jnp.int32),
            jnp.where(reduce, self.cooldown, cooldown).astype(jnp.int32),
            (state.last_epoch + 1).astype(jnp.int32),
        )


# ------------------------------------------------------------------------------------------
# Registry and the spec entry point

#: torch.optim.lr_scheduler class name -> builder(initial_lr, **torch arguments): a
#: :class:`TorchSchedule` of the scheduler-step count (a :class:`ReduceLROnPlateau` for that one).
SCHEDULERS: dict[str, Callable[..., Any]] = {
    "LambdaLR": LambdaLR,
    "MultiplicativeLR": MultiplicativeLR,
    "StepLR": StepLR,
    "MultiStepLR": MultiStepLR,
    "ConstantLR": ConstantLR,
    "LinearLR": LinearLR,
    "ExponentialLR": ExponentialLR,
    "PolynomialLR": PolynomialLR,
    "CosineAnnealingLR": CosineAnnealingLR,
    "CosineAnnealingWarmRestarts": CosineAnnealingWarmRestarts,
    "CyclicLR": CyclicLR,
    "OneCycleLR": OneCycleLR,
    "SequentialLR": SequentialLR,
    "ChainedScheduler": ChainedScheduler,
    "ReduceLROnPlateau": ReduceLROnPlateau,
}


def from_torch(spec: str | CallSpec, base_lr: float, steps_per_epoch: int | None = None,
               **arguments: Any) -> TorchSchedule | ReduceLROnPlateau:
    """The schedule of a torch scheduler spec such as ``"OneCycleLR(max_lr=0.1, total_steps=1000)"``.

    Args:
      spec: the torch class and its arguments (``optimizer`` omitted); nested specs for
        SequentialLR / ChainedScheduler (``schedulers=[LinearLR(...), ...]``).
      base_lr: the optimizer's lr when the scheduler is constructed (see the module docstring
        for what each scheduler does with it).
      steps_per_epoch: None when ``scheduler.step()`` follows every optimizer update; k when it
        follows every epoch of k updates (update ``count`` then runs at ``f(count // k)``).
        Unused by ReduceLROnPlateau, which steps on a metric. (OneCycleLR's own
        ``steps_per_epoch`` argument goes in the spec.)
      **arguments: values a spec string cannot hold (``lr_lambda``, ``scale_fn``), or overrides
        of the spec's.

    Returns a :class:`TorchSchedule` (``schedule(count)`` is the lr; ``schedule.momentum`` the
    momentum/beta1 torch writes, or None), or a :class:`ReduceLROnPlateau`.

    Raises :class:`~jax_impl.spec.SpecError` for an unknown name or argument, or a value torch
    rejects (or that has no exact form here).
    """
    builder, call = build_from_registry(spec, SCHEDULERS, kind="scheduler")
    call = CallSpec(call.name, {**call.kwargs, **arguments})
    kwargs = bind_call(call, builder, kind="scheduler", skip=_SUPPLIED)
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or not 0 <= base_lr < math.inf:
        raise SpecError(f"scheduler {call}: base_lr must be a finite non-negative number, got {base_lr!r}")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                        or steps_per_epoch <= 0):
        raise SpecError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    try:
        built = builder(float(base_lr), **kwargs)
    except SpecError as error:
        raise SpecError(f"scheduler {call}: {error}") from None
    except Exception as error:  # any failure to build from the spec's arguments is bad input
        raise SpecError(f"scheduler {call}: {error}") from None
    if isinstance(built, ReduceLROnPlateau):
        return built
    schedule = built if isinstance(built, TorchSchedule) else TorchSchedule(built)
    if steps_per_epoch is None:
        return schedule
    k = steps_per_epoch
    per_epoch = schedule.momentum
    return TorchSchedule(lambda count: schedule.lr(_epochs(count) // k),
                         None if per_epoch is None else (lambda count: per_epoch(_epochs(count) // k)))
