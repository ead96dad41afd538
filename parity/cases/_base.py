"""What a case is (:class:`Case`) and the small run every case starts from (:data:`BASE`)."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from parity.compare import TOLERANCES, Tolerance
from parity.runner import ParityReport, run
from parity.spec import RunSpec, parse_call

__all__ = ["Case", "COMPONENTS", "BASE", "LONG", "float32_cases", "float64_cases"]

#: What a case can be about; each is also the RunSpec field (or property) that names it.
COMPONENTS = ("optimizer", "scheduler", "loss", "model", "clipping", "accumulation", "amp", "zero_grad")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # unique, "<component name>/<variant>", e.g. "SGD/nesterov"
    component: str  # a key of COMPONENTS: what this case is about
    spec: RunSpec  # dtype and mode are chosen by the suite
    tolerances: Mapping[tuple[str, str], Tolerance] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )  # (stage, dtype) -> override; each must carry its own reason
    #: scheduler arguments a spec string cannot hold (LambdaLR's lr_lambda), given to both sides
    scheduler_arguments: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    #: whether the suite also runs this case in float32 (see :func:`float32_cases`); None: decide
    #: by the rule there, True: always (a case about float32 rounding itself)
    float32: bool | None = None

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"case {self.name}: component must be one of {', '.join(COMPONENTS)}")
        if self.component == "accumulation":
            if self.spec.accumulate < 2:
                raise ValueError(f"case {self.name}: an accumulation case needs accumulate >= 2")
        elif self.component == "zero_grad":
            if self.spec.zero_grad:
                raise ValueError(f"case {self.name}: a zero_grad case is a loop that forgets it (zero_grad=False)")
        elif getattr(self.spec, self.component) is None:
            raise ValueError(f"case {self.name}: its spec has no {self.component}")
        for key, tolerance in self.tolerances.items():
            if key not in TOLERANCES:
                raise ValueError(f"case {self.name}: no tolerance {key} to override")
            if not tolerance.reason.strip() or tolerance.reason == TOLERANCES[key].reason:
                raise ValueError(f"case {self.name}: the tolerance override for {key} needs a reason of its own")

    @property
    def covers(self) -> str:
        """The registry name this case exercises, e.g. ``"SGD"``; for clipping the torch
        function (``"clip_grad_norm_"``, or ``"clip_grad_value_"`` when only values are clipped)."""
        if self.component == "clipping":
            return "clip_grad_norm_" if self.spec.clip_grad_norm is not None else "clip_grad_value_"
        if self.component == "accumulation":  # the seed's loss / K, or undivided losses
            return f"accumulate ({self.spec.accumulate_reduction})"
        if self.component == "amp":
            return f"autocast {self.spec.amp}"
        if self.component == "zero_grad":
            return "forgotten zero_grad"
        return parse_call(getattr(self.spec, self.component)).name

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes this case can run in: mixed precision trains float32 parameters only."""
        return ("float32",) if self.spec.amp is not None else ("float64", "float32")

    def run_spec(self, dtype: str, mode: str = "resync") -> RunSpec:
        return dataclasses.replace(self.spec, dtype=dtype, mode=mode)

    def run(self, dtype: str, mode: str = "resync") -> ParityReport:
        """Run this case through the harness with its own tolerances and arguments."""
        return run(self.run_spec(dtype, mode), tolerances=self.tolerances,
                   scheduler_arguments=self.scheduler_arguments)


#: A 32-unit SimpleNN on the digits data, 2 epochs of 5 batches of 32: a case takes a second or two.
BASE = RunSpec(
    model="SimpleNN(hidden_size=32)",
    loss="CrossEntropyLoss()",
    optimizer="SGD(lr=0.01, momentum=0.9)",
    scheduler=None,
    epochs=2,
    steps_per_epoch=5,
    batch_size=32,
    data="digits",
)

#: :data:`BASE` for 20 updates (2 epochs of 10): every optimizer case runs at least this long.
LONG = dataclasses.replace(BASE, steps_per_epoch=10)


def float64_cases(cases: tuple[Case, ...]) -> tuple[Case, ...]:
    """The cases the suite runs in float64: all but the mixed-precision ones."""
    return tuple(case for case in cases if "float64" in case.dtypes)


def float32_cases(cases: tuple[Case, ...]) -> tuple[Case, ...]:
    """The cases the suite also runs in float32.

    float64 is the semantic check, and every case runs in it. float32 checks that each
    component's arithmetic rounds as torch's does, which does not depend on which of its options
    is set: one case per component name (its first registered case) checks it, plus every case
    that carries a float32 tolerance override (its float32 behaviour is its own) or is marked
    ``float32=True``, minus those marked ``float32=False``.
    """
    chosen, seen = [], set()
    for case in cases:
        own_float32 = any(dtype == "float32" for _, dtype in case.tolerances)
        first = (case.component, case.covers) not in seen
        seen.add((case.component, case.covers))
        if case.float32 if case.float32 is not None else (first or own_float32):
            chosen.append(case)
    return tuple(chosen)
