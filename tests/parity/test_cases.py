"""Every registered matched pair (parity/cases) trains identically in torch and JAX.

float64 is the semantic check (equal formulas agree to ~1e-12); float32 checks that the port
stays within rounding of torch. Both in resync mode, so a failure names its step.
"""

from __future__ import annotations

import dataclasses

import pytest

import jax_impl.amp
import jax_impl.losses
import jax_impl.models
import jax_impl.optim
import jax_impl.schedules
import parity
import torch_ref.models
from parity.cases import CASES, Case
from parity.cases._base import float32_cases, float64_cases
from parity.cases.loss_inputs import LOSS_CASES
from parity.cases.optimizers import UNIT_TESTED_ONLY
from parity.compare import TOLERANCES, Tolerance

def _failure_message(case: Case, report: parity.ParityReport) -> str:
    step, stage, error = report.first_divergence or (None, None, None)
    if step is None:  # every step agrees, so a validation loss differs
        bad = [e for e in report.epochs if not e.val_ok]
        return f"case {case.name}: validation loss differs: {bad}"
    return (f"case {case.name} ({report.dtype}): first divergence at step {step.step} "
            f"(epoch {step.epoch}), stage {stage}: {error.describe()}")


@pytest.mark.parametrize("case", float64_cases(CASES), ids=lambda case: case.name)
def test_case_holds_in_float64_resync_mode(case: Case):
    report = case.run("float64", "resync")
    assert len(report.steps) == case.spec.epochs * case.spec.steps_per_epoch
    assert report.ok, _failure_message(case, report)


@pytest.mark.parametrize("case", float32_cases(CASES), ids=lambda case: case.name)
def test_case_holds_in_float32_resync_mode(case: Case):
    report = case.run("float32", "resync")
    assert len(report.steps) == case.spec.epochs * case.spec.steps_per_epoch
    assert report.ok, _failure_message(case, report)


def test_float32_runs_every_component_and_every_float32_override():
    chosen = {case.name for case in float32_cases(CASES)}
    names = {(case.component, case.covers) for case in CASES}
    assert names == {(case.component, case.covers) for case in float32_cases(CASES)}
    overridden = {case.name for case in CASES if any(dtype == "float32" for _, dtype in case.tolerances)}
    assert overridden <= chosen
    assert {case.name for case in CASES if case.float32} <= chosen


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("component, registry", [
    ("optimizer", jax_impl.optim.OPTIMIZERS),
    ("scheduler", jax_impl.schedules.SCHEDULERS),
    ("loss", jax_impl.losses.LOSSES),
    ("model", jax_impl.models.MODELS),
    ("model", torch_ref.models.MODELS),
    ("clipping", {"clip_grad_norm_", "clip_grad_value_"}),
    ("accumulation", {"accumulate (mean)", "accumulate (sum)"}),
    ("amp", {f"autocast {name}" for name in jax_impl.amp.AUTOCAST_DTYPES}),
    ("zero_grad", {"forgotten zero_grad"}),
])
def test_every_supported_name_has_a_case(component, registry):
    covered = {case.covers for case in CASES if case.component == component}
    if component == "optimizer":  # each with its reason, and its own test file against torch
        covered |= set(UNIT_TESTED_ONLY)
    if component == "loss":  # value and gradient against torch for every option
        covered |= {case.spec.split("(", 1)[0] for case in LOSS_CASES}
    missing = sorted(set(registry) - covered)
    assert not missing, f"no case in parity/cases declares the {component}(s) {missing}"


def test_every_case_names_a_registered_component():
    registries = {"optimizer": jax_impl.optim.OPTIMIZERS, "scheduler": jax_impl.schedules.SCHEDULERS,
                  "loss": jax_impl.losses.LOSSES, "model": jax_impl.models.MODELS,
                  "clipping": {"clip_grad_norm_", "clip_grad_value_"},
                  "accumulation": {"accumulate (mean)", "accumulate (sum)"},
                  "amp": {f"autocast {name}" for name in jax_impl.amp.AUTOCAST_DTYPES},
                  "zero_grad": {"forgotten zero_grad"}}
    unknown = [case.name for case in CASES if case.covers not in registries[case.component]]
    assert not unknown


def test_every_tolerance_override_carries_a_reason():
    for case in CASES:
        for key, tolerance in case.tolerances.items():
            assert key in TOLERANCES, (case.name, key)
            assert tolerance.reason.strip(), f"case {case.name}: override {key} has no reason"
            assert tolerance.reason != TOLERANCES[key].reason, f"case {case.name}: override {key} reuses the table's reason"


@pytest.mark.parametrize("reason", ["", "   ", TOLERANCES[("loss", "float32")].reason])
def test_a_case_cannot_declare_an_override_without_a_reason_of_its_own(reason):
    case = CASES[0]
    with pytest.raises(ValueError, match="reason"):
        dataclasses.replace(case, tolerances={("loss", "float32"): Tolerance(1e-3, 1e-4, reason)})
    # the same override with a reason is accepted
    dataclasses.replace(case, tolerances={("loss", "float32"): Tolerance(1e-3, 1e-4, "a reason")})


def test_a_case_override_reaches_the_comparison():
    override = Tolerance(1e-6, 1e-8, "a test of the plumbing")
    case = dataclasses.replace(CASES[0], spec=dataclasses.replace(CASES[0].spec, epochs=1, steps_per_epoch=1),
                               tolerances={("parameters", "float64"): override})
    report = case.run("float64")
    assert report.steps[0].stages["parameters"].tolerance == override
    assert report.steps[0].stages["loss"].tolerance == TOLERANCES[("loss", "float64")]


def test_every_optimizer_case_runs_at_least_20_updates():
    short = [case.name for case in CASES if case.component == "optimizer"
             and case.spec.epochs * case.spec.steps_per_epoch < 20]
    assert not short, f"optimizer cases shorter than 20 updates: {short}"
