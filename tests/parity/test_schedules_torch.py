"""jax_impl.schedules against torch.optim.lr_scheduler, step by step.

Each schedule is evaluated on ``jnp.arange(STEPS)`` and compared with the lr torch's
``get_last_lr()`` reports before each of STEPS optimizer updates (the scheduler stepped after
every ``optimizer.step()``) and, for the schedulers that cycle it, with the momentum / beta1
torch writes into ``optimizer.param_groups[0]``. float64, relative error <= 1e-12; the measured
worst is 1.2e-13 (torch's own recursion drifting, CosineAnnealingLR in a SequentialLR with
eta_min at half its base_lr), most cases ~1e-15. Where torch raises mid-run (OneCycleLR past
``total_steps``), the lrs from there on are NaN on both sides.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_impl.schedules
from jax_impl.schedules import (
    PlateauState,
    ReduceLROnPlateau,
    TorchSchedule,
    from_torch,
)
from jax_impl.spec import CallSpec, SpecError, parse_call

STEPS = 1000
RTOL = 1e-12
BASE_LR = 0.1
SCHEDULERS = torch.optim.lr_scheduler


# ------------------------------------------------------------------------------------------
# torch side


def _torch_scheduler(spec: str | CallSpec, optimizer: torch.optim.Optimizer, arguments: dict | None = None):
    """The torch scheduler of a spec, nested members built first on the same optimizer."""
    call = spec if isinstance(spec, CallSpec) else parse_call(spec)
    kwargs = {**call.kwargs, **(arguments or {})}
    if "schedulers" in kwargs:
        kwargs["schedulers"] = [_torch_scheduler(member, optimizer) for member in kwargs["schedulers"]]
    if call.name == "ChainedScheduler":
        return SCHEDULERS.ChainedScheduler(kwargs["schedulers"], optimizer)
    return getattr(SCHEDULERS, call.name)(optimizer, **kwargs)


def _torch_optimizer(kind: str, lr: float = BASE_LR) -> torch.optim.Optimizer:
    parameter = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    parameter.grad = torch.ones_like(parameter)
    if kind == "SGD":
        return torch.optim.SGD([parameter], lr=lr, momentum=0.9)
    return torch.optim.Adam([parameter], lr=lr, betas=(0.9, 0.999))


def _group_momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["momentum"] if "momentum" in group else group["betas"][0]


def torch_trace(spec, *, steps: int = STEPS, optimizer: str = "SGD", lr: float = BASE_LR,
                arguments: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """torch's lr and momentum/beta1 for updates 0..steps-1; NaN from a step() that raised."""
    torch_optimizer = _torch_optimizer(optimizer, lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = _torch_scheduler(spec, torch_optimizer, arguments)
        lrs, momenta = np.full(steps, np.nan), np.full(steps, np.nan)
        for k in range(steps):
            lrs[k] = scheduler.get_last_lr()[0]
            momenta[k] = _group_momentum(torch_optimizer)
            torch_optimizer.step()
            try:
                scheduler.step()
            except (ValueError, ZeroDivisionError):  # OneCycleLR past total_steps, ConstantLR(factor=0)
                break
    return lrs, momenta


# ------------------------------------------------------------------------------------------
# JAX side and the comparison


def jax_trace(schedule, steps: int = STEPS, jit: bool = False) -> np.ndarray:
    """The schedule at counts 0..steps-1: vectorised op by op (the ops compile once for all the
    cases), or jitted and vmapped over a traced int32 count (optax's count dtype)."""
    if jit:
        values = jax.jit(jax.vmap(schedule))(jnp.arange(steps, dtype=jnp.int32))
    else:
        values = schedule(jnp.arange(steps))
    assert values.dtype == jnp.float64 and values.shape == (steps,)
    return np.asarray(values)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Largest |ours - theirs| / |theirs|; equal values (zeros, both NaN) count 0, a NaN on one
    side only counts inf."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.abs(ours - theirs) / np.abs(theirs)
    error = np.where(same, 0.0, np.where(np.isnan(error), np.inf, error))
    return float(error.max(initial=0.0))


def assert_matches(ours: np.ndarray, theirs: np.ndarray, what: str, rtol: float = RTOL) -> None:
    error = relative_error(ours, theirs)
    if error > rtol:
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        with np.errstate(divide="ignore", invalid="ignore"):
            index = int(np.nanargmax(np.where(ours == theirs, 0, np.abs(ours - theirs) / np.abs(theirs))))
        raise AssertionError(f"{what}: relative error {error:.3e} > {rtol:.0e}; worst at update {index}: "
                             f"ours {ours[index]!r}, torch {theirs[index]!r}")


def decay(epoch: int) -> float:
    return 0.97**epoch if epoch < 40 else 0.5 / (1 + epoch)


def alternate(epoch: int) -> float:
    return 0.99 if epoch % 3 else 1.01


def shrink_scale(x: int) -> float:
    return 1.0 / (1.0 + 0.1 * x)


def lambda_member(fn) -> CallSpec:
    return CallSpec("LambdaLR", {"lr_lambda": fn})


CYCLIC = "CyclicLR(base_lr=0.001, max_lr=0.02, step_size_up=30"
CASES = [
    # (id, spec, arguments)
    ("LambdaLR", "LambdaLR()", {"lr_lambda": decay}),
    ("LambdaLR/list", "LambdaLR()", {"lr_lambda": [decay]}),
    ("MultiplicativeLR", "MultiplicativeLR()", {"lr_lambda": alternate}),
    ("StepLR", "StepLR(step_size=7, gamma=0.5)", {}),
    ("StepLR/every step", "StepLR(step_size=1, gamma=0.99)", {}),
    ("StepLR/default gamma", "StepLR(step_size=300)", {}),
    ("MultiStepLR/repeated and 0", "MultiStepLR(milestones=[0, 3, 3, 50, 400], gamma=0.7)", {}),
    ("MultiStepLR", "MultiStepLR(milestones=[100, 300])", {}),
    ("ConstantLR/default", "ConstantLR()", {}),
    ("ConstantLR", "ConstantLR(factor=0.25, total_iters=7)", {}),
    ("ConstantLR/total_iters=0", "ConstantLR(factor=0.25, total_iters=0)", {}),
    ("ConstantLR/factor=0", "ConstantLR(factor=0.0, total_iters=10)", {}),  # torch raises at 10
    ("LinearLR/default", "LinearLR()", {}),
    ("LinearLR", "LinearLR(start_factor=0.1, end_factor=0.9, total_iters=120)", {}),
    ("LinearLR/to zero", "LinearLR(start_factor=0.5, end_factor=0.0, total_iters=30)", {}),
    ("LinearLR/total_iters=0", "LinearLR(total_iters=0)", {}),
    ("ExponentialLR", "ExponentialLR(gamma=0.99)", {}),
    ("ExponentialLR/negative", "ExponentialLR(gamma=-0.995)", {}),
    ("PolynomialLR/default", "PolynomialLR()", {}),
    ("PolynomialLR/square", "PolynomialLR(total_iters=150, power=2.0)", {}),
    ("PolynomialLR/sqrt", "PolynomialLR(total_iters=150, power=0.5)", {}),
    ("PolynomialLR/power=0", "PolynomialLR(total_iters=20, power=0.0)", {}),
    ("PolynomialLR/total_iters=0", "PolynomialLR(total_iters=0)", {}),
    ("CosineAnnealingLR/past T_max", "CosineAnnealingLR(T_max=100, eta_min=1e-4)", {}),
    ("CosineAnnealingLR/T_max=7", "CosineAnnealingLR(T_max=7)", {}),
    ("CosineAnnealingLR/T_max=1", "CosineAnnealingLR(T_max=1, eta_min=0.01)", {}),
    ("CosineAnnealingLR/negative T_max", "CosineAnnealingLR(T_max=-30, eta_min=0.01)", {}),
    ("CosineAnnealingLR/T_max=1000", "CosineAnnealingLR(T_max=1000, eta_min=0.001)", {}),
    ("WarmRestarts/T_mult=2", "CosineAnnealingWarmRestarts(T_0=10, T_mult=2, eta_min=1e-4)", {}),
    ("WarmRestarts/T_mult=3", "CosineAnnealingWarmRestarts(T_0=1, T_mult=3)", {}),
    ("WarmRestarts/T_mult=1", "CosineAnnealingWarmRestarts(T_0=50, eta_min=0.01)", {}),
    ("CyclicLR/triangular", CYCLIC + ")", {}),
    ("CyclicLR/triangular2", CYCLIC + ", step_size_down=37, mode='triangular2')", {}),
    ("CyclicLR/exp_range", CYCLIC + ", mode='exp_range', gamma=0.999)", {}),
    ("CyclicLR/step_size_down=0", CYCLIC + ", step_size_down=0)", {}),
    ("CyclicLR/momenta", CYCLIC + ", base_momentum=0.5, max_momentum=0.99)", {}),
    ("CyclicLR/no momentum", CYCLIC + ", cycle_momentum=False)", {}),
    ("CyclicLR/scale_fn cycle", CYCLIC + ")", {"scale_fn": shrink_scale}),
    ("CyclicLR/scale_fn iterations", CYCLIC + ", scale_mode='iterations')", {"scale_fn": shrink_scale}),
    ("CyclicLR/scale_fn ignores mode", CYCLIC + ", mode='custom')", {"scale_fn": shrink_scale}),
    ("OneCycleLR/cos", "OneCycleLR(max_lr=0.05, total_steps=1000)", {}),
    ("OneCycleLR/linear three_phase", "OneCycleLR(max_lr=0.05, total_steps=999, anneal_strategy='linear', "
                                      "three_phase=True, pct_start=0.25)", {}),
    ("OneCycleLR/cos three_phase", "OneCycleLR(max_lr=0.05, total_steps=1000, three_phase=True)", {}),
    ("OneCycleLR/epochs", "OneCycleLR(max_lr=0.3, epochs=10, steps_per_epoch=100, div_factor=10.0, "
                          "final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9)", {}),
    ("OneCycleLR/past total_steps", "OneCycleLR(max_lr=0.05, total_steps=500)", {}),
    ("OneCycleLR/no momentum", "OneCycleLR(max_lr=0.05, total_steps=1000, cycle_momentum=False)", {}),
    ("OneCycleLR/pct_start=1", "OneCycleLR(max_lr=0.05, total_steps=100, pct_start=1.0)", {}),
    ("OneCycleLR/empty last phase", "OneCycleLR(max_lr=0.05, total_steps=10, pct_start=0.55, three_phase=True)", {}),
    ("SequentialLR/warmup cosine", "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=50), "
                                   "CosineAnnealingLR(T_max=200)], milestones=[50])", {}),
    ("SequentialLR/three", "SequentialLR(schedulers=[ConstantLR(factor=0.5, total_iters=30), ExponentialLR(gamma=0.99), "
                           "StepLR(step_size=20, gamma=0.5)], milestones=[50, 120])", {}),
    ("SequentialLR/restart from closed form", "SequentialLR(schedulers=[ExponentialLR(gamma=0.99), "
                                              "LinearLR(start_factor=0.2, total_iters=10)], milestones=[300])", {}),
    ("SequentialLR/milestone 0", "SequentialLR(schedulers=[ExponentialLR(gamma=0.99), "
                                 "LinearLR(start_factor=0.2, total_iters=10)], milestones=[0])", {}),
    ("SequentialLR/repeated milestone", "SequentialLR(schedulers=[ExponentialLR(gamma=0.99), LinearLR(start_factor=0.2, "
                                        "total_iters=10), StepLR(step_size=5)], milestones=[40, 40])", {}),
    ("SequentialLR/two cosines", "SequentialLR(schedulers=[CosineAnnealingLR(T_max=20, eta_min=0.01), "
                                 "CosineAnnealingLR(T_max=33)], milestones=[57])", {}),
    ("SequentialLR/onecycle then cosine", "SequentialLR(schedulers=[OneCycleLR(max_lr=0.05, total_steps=300), "
                                          "CosineAnnealingLR(T_max=100, eta_min=1e-3)], milestones=[300])", {}),
    ("SequentialLR/momentum held", "SequentialLR(schedulers=[ExponentialLR(gamma=0.99), OneCycleLR(max_lr=0.3, "
                                   "total_steps=100), MultiStepLR(milestones=[3, 60])], milestones=[40, 140])", {}),
    ("SequentialLR/cyclic poly onecycle", "SequentialLR(schedulers=[" + CYCLIC + "), PolynomialLR(total_iters=40, "
                                          "power=1.5), OneCycleLR(max_lr=0.03, total_steps=200, anneal_strategy='linear')"
                                          "], milestones=[25, 300])", {}),
    ("SequentialLR/two onecycles", "SequentialLR(schedulers=[OneCycleLR(max_lr=0.03, total_steps=200), OneCycleLR("
                                   "max_lr=0.5, total_steps=1000, div_factor=5.0, base_momentum=0.5)], milestones=[150])",
     {}),
    ("SequentialLR/callables", CallSpec("SequentialLR", {
        "schedulers": [lambda_member(decay), CallSpec("MultiplicativeLR", {"lr_lambda": alternate}),
                       parse_call("CosineAnnealingWarmRestarts(T_0=17, T_mult=3)")],
        "milestones": [30, 300]}), {}),
    ("ChainedScheduler/constant exponential", "ChainedScheduler(schedulers=[ConstantLR(factor=0.5, total_iters=40), "
                                              "ExponentialLR(gamma=0.995)])", {}),
    ("ChainedScheduler/warmup cosine", "ChainedScheduler(schedulers=[LinearLR(start_factor=0.1, total_iters=50), "
                                       "CosineAnnealingLR(T_max=300)])", {}),
    ("ChainedScheduler/cosine restarts", "ChainedScheduler(schedulers=[ExponentialLR(gamma=0.999), CosineAnnealingLR("
                                         "T_max=45), LinearLR(start_factor=0.1, end_factor=0.5, total_iters=150), "
                                         "MultiStepLR(milestones=[100, 700])])", {}),
    ("ChainedScheduler/multiplicative cosine", CallSpec("ChainedScheduler", {"schedulers": [
        CallSpec("MultiplicativeLR", {"lr_lambda": alternate}), parse_call("CosineAnnealingLR(T_max=45)"),
        parse_call("PolynomialLR(total_iters=400, power=0.7)")]}), {}),
    ("ChainedScheduler/after cyclic", "ChainedScheduler(schedulers=[" + CYCLIC + "), ExponentialLR(gamma=0.999), "
                                      "CosineAnnealingLR(T_max=70, eta_min=0.0001)])", {}),
    ("ChainedScheduler/onecycle linear", "ChainedScheduler(schedulers=[OneCycleLR(max_lr=0.05, total_steps=1000), "
                                         "LinearLR(start_factor=0.1, total_iters=50)])", {}),
    ("ChainedScheduler/overwritten", "ChainedScheduler(schedulers=[ConstantLR(factor=0.5, total_iters=40), " + CYCLIC
     + ", cycle_momentum=False), CosineAnnealingWarmRestarts(T_0=30), ConstantLR(factor=0.3, total_iters=100)])", {}),
    ("ChainedScheduler/one", "ChainedScheduler(schedulers=[LinearLR(start_factor=0.1, total_iters=50)])", {}),
]
CYCLING = {case_id for case_id, spec, _ in CASES
           if any(name in str(spec) for name in ("CyclicLR", "OneCycleLR"))
           and "cycle_momentum=False" not in str(spec) and "overwritten" not in case_id}


@pytest.mark.parametrize("case_id, spec, arguments", CASES, ids=[case[0] for case in CASES])
def test_lr_and_momentum_match_torch_for_1000_updates(case_id, spec, arguments):
    schedule = from_torch(spec, BASE_LR, **arguments)
    assert isinstance(schedule, TorchSchedule)
    torch_lrs, torch_momenta = torch_trace(spec, arguments=arguments)
    assert_matches(jax_trace(schedule), torch_lrs, f"{case_id} lr")
    if case_id in CYCLING:
        assert schedule.momentum is not None
        assert_matches(jax_trace(schedule.momentum), torch_momenta, f"{case_id} momentum")
    else:  # torch leaves SGD's momentum alone
        assert schedule.momentum is None
        assert np.all(torch_momenta[~np.isnan(torch_momenta)] == 0.9)


#: one case of each scheduler, with its callables and composites: compiled with jit over vmap
JIT_CASES = sorted({(spec if isinstance(spec, CallSpec) else parse_call(spec)).name: case_id
                    for case_id, spec, _ in reversed(CASES)}.values())


@pytest.mark.parametrize("case_id", JIT_CASES + ["CyclicLR/scale_fn cycle", "SequentialLR/callables",
                                     "WarmRestarts/T_mult=3", "ChainedScheduler/cosine restarts"])
def test_jitted_and_vmapped_on_a_traced_count(case_id):
    spec, arguments = next((s, a) for i, s, a in CASES if i == case_id)
    schedule = from_torch(spec, BASE_LR, **arguments)
    torch_lrs, torch_momenta = torch_trace(spec, arguments=arguments)
    assert_matches(jax_trace(schedule, jit=True), torch_lrs, f"{case_id} lr, jit(vmap)")
    if schedule.momentum is not None:
        assert_matches(jax_trace(schedule.momentum, jit=True), torch_momenta, f"{case_id} momentum, jit(vmap)")


@pytest.mark.parametrize("case_id", sorted(CYCLING))
def test_cycled_beta1_matches_torch_adam(case_id):
    spec, arguments = next((s, a) for i, s, a in CASES if i == case_id)
    schedule = from_torch(spec, BASE_LR, **arguments)
    torch_lrs, torch_betas = torch_trace(spec, optimizer="Adam", steps=300, arguments=arguments)
    assert_matches(jax_trace(schedule, 300), torch_lrs, f"{case_id} lr (Adam)")
    assert_matches(jax_trace(schedule.momentum, 300), torch_betas, f"{case_id} beta1")


def test_every_torch_scheduler_is_covered():
    torch_names = {name for name in SCHEDULERS.__all__ if name not in ("LRScheduler",)}
    assert torch_names == set(jax_impl.schedules.SCHEDULERS)
    covered = {(case[1] if isinstance(case[1], CallSpec) else parse_call(case[1])).name for case in CASES}
    assert covered | {"ReduceLROnPlateau"} == set(jax_impl.schedules.SCHEDULERS)


# ------------------------------------------------------------------------------------------
# Per-epoch stepping


@pytest.mark.parametrize("spec, steps_per_epoch", [
    ("StepLR(step_size=2, gamma=0.5)", 7),
    ("CosineAnnealingLR(T_max=30, eta_min=1e-3)", 13),
    ("SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=5), ExponentialLR(gamma=0.9)], milestones=[5])", 10),
    ("OneCycleLR(max_lr=0.05, total_steps=200)", 5),
])
def test_per_epoch_stepping_holds_the_lr_for_an_epoch(spec, steps_per_epoch):
    schedule = from_torch(spec, BASE_LR, steps_per_epoch)
    epochs = STEPS // steps_per_epoch + 1
    torch_lrs, torch_momenta = torch_trace(spec, steps=epochs)
    epoch_of_update = np.arange(STEPS) // steps_per_epoch
    assert_matches(jax_trace(schedule), torch_lrs[epoch_of_update], f"{spec} per epoch")
    if schedule.momentum is not None:
        assert_matches(jax_trace(schedule.momentum), torch_momenta[epoch_of_update], f"{spec} momentum per epoch")


# ------------------------------------------------------------------------------------------
# CosineAnnealingLR past T_max; the stock optax schedules


def test_cosine_past_t_max_rises_again_as_torchs_recursion_does():
    T, eta = 100, 1e-4
    spec = f"CosineAnnealingLR(T_max={T}, eta_min={eta})"
    torch_lrs, _ = torch_trace(spec)
    ours = jax_trace(from_torch(spec, BASE_LR))
    assert torch_lrs[T] == eta and abs(torch_lrs[2 * T] - BASE_LR) < 1e-15  # back up at 2 T_max
    assert_matches(ours, torch_lrs, "cosine past T_max")
    stock = np.asarray(jax.vmap(optax.cosine_decay_schedule(BASE_LR, T, alpha=eta / BASE_LR))(jnp.arange(STEPS)))
    assert relative_error(stock[: T + 1], torch_lrs[: T + 1]) < 1e-6  # float32 inside optax
    assert relative_error(stock, torch_lrs) > 0.99  # optax holds at eta_min (1e-4) where torch is back at 0.1


def test_stock_optax_onecycle_is_not_torchs():
    spec = "OneCycleLR(max_lr=0.05, total_steps=1000)"
    torch_lrs, _ = torch_trace(spec)
    stock = np.asarray(jax.vmap(optax.cosine_onecycle_schedule(1000, 0.05))(jnp.arange(STEPS)))
    assert relative_error(stock, torch_lrs) > 1.0  # phase ends one step apart; torch's last lr is the minimum
    assert relative_error(jax_trace(from_torch(spec, BASE_LR)), torch_lrs) <= RTOL


# ------------------------------------------------------------------------------------------
# ReduceLROnPlateau


def _metrics(seed: int, epochs: int = 120) -> np.ndarray:
    """Improvements, exact plateaus (repeated values) and noise."""
    rng = np.random.default_rng(seed)
    trend = np.maximum(1.0 - 0.02 * np.arange(epochs), 0.3)
    noise = np.round(rng.normal(0, 0.02, epochs), 2) * (rng.random(epochs) < 0.6)
    return trend + noise


PLATEAU_SPECS = [
    "ReduceLROnPlateau()",
    "ReduceLROnPlateau(patience=0, threshold=0.05, factor=0.5)",
    "ReduceLROnPlateau(patience=2, threshold=0.02, threshold_mode='abs', factor=0.7)",
    "ReduceLROnPlateau(mode='max', patience=1, threshold=0.01, factor=0.5)",
    "ReduceLROnPlateau(mode='max', patience=1, threshold=0.03, threshold_mode='abs', cooldown=2, factor=0.5)",
    "ReduceLROnPlateau(patience=1, cooldown=3, factor=0.3, min_lr=0.002)",
    "ReduceLROnPlateau(patience=0, factor=0.9, eps=0.005)",  # eps: a reduction below 0.005 is skipped
    "ReduceLROnPlateau(patience=0, threshold=0.0, factor=0.5, min_lr=[0.01])",
]


@pytest.mark.parametrize("spec", PLATEAU_SPECS)
@pytest.mark.parametrize("seed", [0, 1])
def test_reduce_lr_on_plateau_matches_torch(spec, seed):
    metrics = _metrics(seed)
    if "mode='max'" in spec:
        metrics = 2.0 - metrics
    plateau = from_torch(spec, BASE_LR, steps_per_epoch=5)
    assert isinstance(plateau, ReduceLROnPlateau)
    torch_optimizer = _torch_optimizer("SGD")
    scheduler = _torch_scheduler(spec, torch_optimizer)
    step = jax.jit(plateau.step)
    state = plateau.init()
    assert isinstance(state, PlateauState) and float(state.lr) == BASE_LR
    reductions = 0
    for epoch, metric in enumerate(metrics):
        before = torch_optimizer.param_groups[0]["lr"]
        scheduler.step(float(metric))
        state = step(state, jnp.asarray(metric))
        reductions += torch_optimizer.param_groups[0]["lr"] != before
        assert float(state.lr) == torch_optimizer.param_groups[0]["lr"], (epoch, metric)
        assert float(state.best) == scheduler.best
        assert int(state.num_bad_epochs) == scheduler.num_bad_epochs
        assert int(state.cooldown_counter) == scheduler.cooldown_counter
        assert int(state.last_epoch) == scheduler.last_epoch
    assert reductions > 0  # the sequence exercises a reduction


def test_reduce_lr_on_plateau_steps_under_scan():
    plateau = from_torch("ReduceLROnPlateau(patience=1, factor=0.5)", BASE_LR)
    metrics = _metrics(3)
    def body(state, metric):
        state = plateau.step(state, metric)
        return state, state.lr

    _, lrs = jax.lax.scan(body, plateau.init(), jnp.asarray(metrics))
    torch_optimizer = _torch_optimizer("SGD")
    scheduler = _torch_scheduler("ReduceLROnPlateau(patience=1, factor=0.5)", torch_optimizer)
    expected = []
    for metric in metrics:
        scheduler.step(float(metric))
        expected.append(torch_optimizer.param_groups[0]["lr"])
    np.testing.assert_array_equal(np.asarray(lrs), expected)


def test_stock_optax_reduce_on_plateau_is_one_epoch_late():
    """optax.contrib.reduce_on_plateau reduces when the bad-epoch count *reaches* patience, torch
    when it *exceeds* it."""
    metrics = _metrics(0)
    patience, factor = 2, 0.5
    torch_optimizer = _torch_optimizer("SGD")
    scheduler = _torch_scheduler(f"ReduceLROnPlateau(patience={patience}, factor={factor})", torch_optimizer)
    stock = optax.contrib.reduce_on_plateau(factor=factor, patience=patience, rtol=1e-4, atol=0.0)
    state = stock.init(jnp.zeros((), jnp.float64))
    update = jax.jit(lambda state, value: stock.update(jnp.zeros((), jnp.float64), state, value=value)[1])
    torch_lrs, stock_lrs = [], []
    for metric in metrics:
        scheduler.step(float(metric))
        state = update(state, jnp.asarray(metric))
        torch_lrs.append(torch_optimizer.param_groups[0]["lr"])
        stock_lrs.append(BASE_LR * float(state.scale))
    assert relative_error(np.asarray(stock_lrs), np.asarray(torch_lrs)) >= 0.5  # half the lr at some epoch


# ------------------------------------------------------------------------------------------
# Properties over random valid arguments


@st.composite
def _random_specs(draw):
    """A spec and the optimizer's lr. eta_min stays below base_lr, as annealing means: with eta_min
    far above it, torch's recursion past T_max drifts from its own closed form by ~1e-12 (the
    rounding of lr - eta_min, amplified by the ratios near the bottom of the cosine)."""
    base_lr = draw(st.floats(1e-4, 1.0))
    eta = st.floats(0.0, 0.5).map(lambda fraction: fraction * base_lr)
    name = draw(st.sampled_from(["StepLR", "MultiStepLR", "LinearLR", "ExponentialLR", "PolynomialLR",
                                 "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR"]))
    # gamma >= 0.3: the lr stays a normal float (XLA flushes subnormals to zero, Python keeps them)
    ints, unit = st.integers, st.floats(0.3, 1.0)
    if name == "StepLR":
        args = f"step_size={draw(ints(1, 40))}, gamma={draw(unit)}"
    elif name == "MultiStepLR":
        args = f"milestones={sorted(draw(st.lists(ints(0, 250), max_size=5)))}, gamma={draw(unit)}"
    elif name == "LinearLR":
        args = f"start_factor={draw(unit)}, end_factor={draw(st.floats(0.0, 1.0))}, total_iters={draw(ints(0, 250))}"
    elif name == "ExponentialLR":
        args = f"gamma={draw(st.floats(0.9, 1.0))}"
    elif name == "PolynomialLR":
        args = f"total_iters={draw(ints(0, 250))}, power={draw(st.floats(0.0, 3.0))}"
    elif name == "CosineAnnealingLR":
        args = f"T_max={draw(ints(1, 120))}, eta_min={draw(eta)}"
    elif name == "CosineAnnealingWarmRestarts":
        args = f"T_0={draw(ints(1, 40))}, T_mult={draw(ints(1, 3))}, eta_min={draw(eta)}"
    elif name == "CyclicLR":
        mode = draw(st.sampled_from(["triangular", "triangular2", "exp_range"]))
        args = (f"base_lr={draw(st.floats(1e-4, 0.01))}, max_lr={draw(st.floats(0.01, 1.0))}, "
                f"step_size_up={draw(ints(1, 60))}, step_size_down={draw(st.one_of(st.none(), ints(0, 60)))}, "
                f"mode={mode!r}, gamma={draw(st.floats(0.99, 1.0))}")
    else:
        steps = draw(ints(20, 300))
        pct = draw(st.floats(0.05, 0.95).filter(lambda p: float(p * steps) != 1.0))
        args = (f"max_lr={draw(st.floats(1e-3, 1.0))}, total_steps={steps}, pct_start={pct}, "
                f"anneal_strategy={draw(st.sampled_from(['cos', 'linear']))!r}, "
                f"three_phase={draw(st.booleans())}, div_factor={draw(st.floats(2.0, 100.0))}")
    return f"{name}({args})", base_lr


@settings(max_examples=30, deadline=None)
@given(drawn=_random_specs())
def test_random_valid_arguments_match_torch(drawn):
    spec, base_lr = drawn
    steps = 300
    schedule = from_torch(spec, base_lr)
    torch_lrs, torch_momenta = torch_trace(spec, steps=steps, lr=base_lr)
    ours = np.asarray(schedule(jnp.arange(steps)))  # eager, vectorised: no compile per example
    assert_matches(ours, torch_lrs, spec)
    if schedule.momentum is not None:
        assert_matches(np.asarray(schedule.momentum(jnp.arange(steps))), torch_momenta, f"{spec} momentum")


# ------------------------------------------------------------------------------------------
# Validation


def _torch_raises(spec: str, arguments: dict | None = None, steps: int = 50) -> bool:
    optimizer = _torch_optimizer("SGD")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = _torch_scheduler(spec, optimizer, arguments)
            for _ in range(steps):
                optimizer.step()
                scheduler.step()
    except (ValueError, TypeError, ZeroDivisionError, KeyError):
        return True
    return False


@pytest.mark.parametrize("spec, arguments, message", [
    ("ConstantLR(factor=1.5)", {}, "between 0 and 1"),
    ("LinearLR(start_factor=0.0)", {}, "greater than 0"),
    ("LinearLR(end_factor=1.5)", {}, "between 0 and 1"),
    ("CosineAnnealingLR(T_max=0)", {}, "T_max"),
    ("CosineAnnealingWarmRestarts(T_0=0)", {}, "Expected positive integer T_0"),
    ("CosineAnnealingWarmRestarts(T_0=5, T_mult=0)", {}, "Expected integer T_mult >= 1"),
    ("CosineAnnealingWarmRestarts(T_0=5, eta_min='a')", {}, "Expected float or int eta_min"),
    ("CyclicLR(base_lr=0.01, max_lr=0.1, mode='sawtooth')", {}, "mode is invalid and scale_fn is None"),
    ("CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=0)", {}, "step_size_up"),
    ("CyclicLR(base_lr=[0.01, 0.02], max_lr=0.1)", {}, "same length as optimizer.param_groups"),
    ("OneCycleLR(max_lr=0.1)", {}, "total_steps OR (epochs AND steps_per_epoch)"),
    ("OneCycleLR(max_lr=0.1, total_steps=0)", {}, "Expected positive integer total_steps"),
    ("OneCycleLR(max_lr=0.1, epochs=0, steps_per_epoch=3)", {}, "Expected positive integer epochs"),
    ("OneCycleLR(max_lr=0.1, total_steps=10, pct_start=1)", {}, "Expected float between 0 and 1 pct_start"),
    ("OneCycleLR(max_lr=0.1, total_steps=10, pct_start=1.5)", {}, "Expected float between 0 and 1 pct_start"),
    ("OneCycleLR(max_lr=0.1, total_steps=10, anneal_strategy='cosine')", {}, "anneal_strategy must be one of"),
    ("OneCycleLR(max_lr=0.1, total_steps=10, pct_start=0.1)", {}, "zero length"),
    ("OneCycleLR(max_lr=0.1, total_steps=10, div_factor=0.0)", {}, "div_factor"),
    ("MultiplicativeLR()", {"lr_lambda": 0.5}, "lr_lambda should be a function"),
    ("LambdaLR()", {"lr_lambda": [decay, decay]}, "same length"),
    ("ReduceLROnPlateau(factor=1.0)", {}, "Factor should be < 1.0."),
    ("ReduceLROnPlateau(mode='lowest')", {}, "mode lowest is unknown!"),
    ("ReduceLROnPlateau(threshold_mode='relative')", {}, "threshold mode relative is unknown!"),
    ("SequentialLR(schedulers=[], milestones=[])", {}, "expects at least one scheduler"),
    ("SequentialLR(schedulers=[StepLR(step_size=2), StepLR(step_size=3)], milestones=[])", {},
     "one more than the number of milestone points"),
    ("SequentialLR(schedulers=[StepLR(step_size=2), LinearLR(total_iters=0)], milestones=[5])", {}, "divides by zero"),
    ("SequentialLR(schedulers=[StepLR(step_size=2), ReduceLROnPlateau()], milestones=[5])", {},
     "does not support `ReduceLROnPlateau`"),
    ("ChainedScheduler(schedulers=[])", {}, "expects at least one scheduler to be chained"),
])
def test_invalid_values_raise_like_torch(spec, arguments, message):
    with pytest.raises(SpecError, match=None) as raised:
        from_torch(spec, BASE_LR, **arguments)
    assert message in str(raised.value)
    assert _torch_raises(spec, arguments), f"torch accepts {spec}"


@pytest.mark.parametrize("spec, arguments, message", [
    ("StepLR(step_size=3, last_epoch=5)", {}, "resuming"),
    ("LambdaLR()", {}, "needs lr_lambda"),
    ("StepLR(step_size=3, gamma=0.5, bogus=1)", {}, "unknown argument 'bogus'"),
    ("CyclicLR(base_lr=0.01, max_lr=0.1)", {"nonsense": 1}, "unknown argument 'nonsense'"),
    ("SequentialLR(schedulers=[StepLR(step_size=2), StepLR(step_size=3), StepLR(step_size=4)], milestones=[9, 4])",
     {}, "sorted"),
    ("SequentialLR(schedulers=[StepLR(step_size=2), ChainedScheduler(schedulers=[StepLR(step_size=3)])], "
     "milestones=[4])", {}, "nested ChainedScheduler"),
    ("ChainedScheduler(schedulers=[ExponentialLR(gamma=0.9), CosineAnnealingLR(T_max=10, eta_min=0.01)])", {},
     "no exact closed form"),
    ("ChainedScheduler(schedulers=[CosineAnnealingLR(T_max=10), CosineAnnealingLR(T_max=7)])", {},
     "no exact closed form"),
    ("ChainedScheduler(schedulers=[StepLR(step_size=2, gamma=[0.5])])", {}, "gamma must be a number"),
])
def test_unsupported_arguments_are_clear_errors(spec, arguments, message):
    with pytest.raises(SpecError) as raised:
        from_torch(spec, BASE_LR, **arguments)
    assert message in str(raised.value)


def test_arguments_override_the_spec_and_reach_callables():
    schedule = from_torch("StepLR(step_size=3, gamma=0.5)", BASE_LR, gamma=0.25)
    assert float(schedule(3)) == BASE_LR * 0.25
    with pytest.raises(SpecError, match="steps_per_epoch"):
        from_torch("StepLR(step_size=3)", BASE_LR, steps_per_epoch=0)


@pytest.mark.parametrize("spec, stock", [
    ("LinearLR(start_factor=0.1, end_factor=0.9, total_iters=700)", optax.linear_schedule(0.01, 0.09, 700)),
    ("ExponentialLR(gamma=0.99)", optax.exponential_decay(BASE_LR, 1, 0.99)),
    ("PolynomialLR(total_iters=700, power=2.0)", optax.polynomial_schedule(BASE_LR, 0.0, 2.0, 700)),
])
def test_float64_on_optaxs_int32_count_where_stock_optax_computes_in_float32(spec, stock):
    counts = jnp.arange(STEPS, dtype=jnp.int32)  # the dtype of optax's update count
    torch_lrs, _ = torch_trace(spec)
    ours = from_torch(spec, BASE_LR)(counts)
    assert ours.dtype == jnp.float64
    assert relative_error(np.asarray(ours), torch_lrs) <= RTOL
    assert relative_error(np.asarray(jax.vmap(stock)(counts)), torch_lrs) > 1e-7  # int32 / Python int
