"""torch.optim.lr_scheduler schedulers, stepped once per epoch and once per update.

The parity suite runs each through the whole harness (the lr of every update, and the momentum
or beta1 a cycling scheduler writes, are compared with torch's); ``tests/parity/
test_schedules_torch.py`` checks every schedule against ``get_last_lr()`` for 1,000 steps.
"""

from __future__ import annotations

import dataclasses

from parity.cases._base import BASE, LONG, Case


def _per_step(variant: str, scheduler: str, **changes) -> Case:
    """20 updates with scheduler.step() after each, so a schedule's shape shows within the run."""
    name = scheduler.split("(", 1)[0]
    extra = _extra(changes)
    return Case(f"{name}/{variant}", "scheduler",
                dataclasses.replace(LONG, scheduler=scheduler, scheduler_interval="step", **changes), **extra)


def _per_epoch(variant: str, scheduler: str, **changes) -> Case:
    """4 epochs of 3 updates with scheduler.step() after each epoch."""
    name = scheduler.split("(", 1)[0]
    extra = _extra(changes)
    spec = dataclasses.replace(BASE, scheduler=scheduler, scheduler_interval="epoch", epochs=4, steps_per_epoch=3)
    return Case(f"{name}/{variant}", "scheduler", dataclasses.replace(spec, **changes), **extra)


def _extra(changes: dict) -> dict:
    arguments = changes.pop("scheduler_arguments", None)
    return {"scheduler_arguments": arguments} if arguments else {}


def decay_by_epoch(epoch: int) -> float:
    """LambdaLR's multiplier: a Python function of the epoch, as torch users write them."""
    return 0.8**epoch if epoch < 3 else 0.5


def shrink(epoch: int) -> float:
    """MultiplicativeLR's factor for each step after the first."""
    return 0.9 if epoch % 2 else 0.7


CASES = (
    # 3 epochs of 5 updates: the lr halves at the start of epochs 1 and 2
    Case("StepLR/epoch", "scheduler", dataclasses.replace(
        BASE, scheduler="StepLR(step_size=1, gamma=0.5)", scheduler_interval="epoch", epochs=3)),
    # 2 epochs of 5 updates: updates 3, 6 and 9 (0-based) are the first at a lower lr, none
    # of them at an epoch boundary; Adam's step size reads the scheduled lr
    Case("StepLR/step", "scheduler", dataclasses.replace(
        BASE, optimizer="Adam(lr=1e-3)", scheduler="StepLR(step_size=3, gamma=0.1)",
        scheduler_interval="step")),
    _per_step("step", "MultiStepLR(milestones=[2, 5, 11], gamma=0.5)"),
    _per_epoch("epoch", "MultiStepLR(milestones=[1, 3], gamma=0.1)"),
    _per_step("step", "ConstantLR(factor=0.25, total_iters=7)"),
    _per_step("step", "LinearLR(start_factor=0.1, end_factor=0.9, total_iters=12)"),
    _per_epoch("epoch", "LinearLR(start_factor=0.5, total_iters=2)"),
    _per_step("step", "ExponentialLR(gamma=0.9)"),
    _per_step("step", "PolynomialLR(total_iters=15, power=2.0)"),
    # T_max=6 over 20 updates: past T_max torch's lr rises again (and falls, and rises)
    _per_step("past T_max", "CosineAnnealingLR(T_max=6, eta_min=1e-4)"),
    _per_epoch("epoch", "CosineAnnealingLR(T_max=3)"),
    _per_step("T_mult", "CosineAnnealingWarmRestarts(T_0=2, T_mult=2, eta_min=1e-4)"),
    _per_step("T_mult=1", "CosineAnnealingWarmRestarts(T_0=3)"),
    # CyclicLR and OneCycleLR also cycle SGD's momentum (or Adam's beta1), which is compared too
    _per_step("triangular", "CyclicLR(base_lr=0.001, max_lr=0.02, step_size_up=3)"),
    _per_step("triangular2", "CyclicLR(base_lr=0.001, max_lr=0.02, step_size_up=2, step_size_down=3, "
                             "mode='triangular2')"),
    _per_step("exp_range", "CyclicLR(base_lr=0.001, max_lr=0.02, step_size_up=3, mode='exp_range', gamma=0.9, "
                           "cycle_momentum=False)"),
    _per_step("adam", "CyclicLR(base_lr=1e-4, max_lr=1e-3, step_size_up=4, base_momentum=0.8, max_momentum=0.95)",
              optimizer="Adam(lr=1e-3)"),
    _per_step("cos", "OneCycleLR(max_lr=0.05, total_steps=20)"),
    _per_step("linear three_phase", "OneCycleLR(max_lr=0.05, total_steps=20, anneal_strategy='linear', "
                                    "three_phase=True, pct_start=0.25)"),
    _per_step("adam", "OneCycleLR(max_lr=3e-3, epochs=2, steps_per_epoch=10, div_factor=10.0, "
                      "final_div_factor=100.0)", optimizer="Adam(lr=1e-3)"),
    _per_step("no momentum cycling", "OneCycleLR(max_lr=0.05, total_steps=20, cycle_momentum=False)",
              optimizer="SGD(lr=0.01)"),
    _per_step("warmup then cosine", "SequentialLR(schedulers=[LinearLR(start_factor=0.1, total_iters=4), "
                                    "CosineAnnealingLR(T_max=16)], milestones=[4])"),
    _per_step("three stages", "SequentialLR(schedulers=[ConstantLR(factor=0.5, total_iters=3), "
                              "ExponentialLR(gamma=0.9), StepLR(step_size=2, gamma=0.5)], milestones=[5, 12])"),
    _per_step("step", "ChainedScheduler(schedulers=[ConstantLR(factor=0.5, total_iters=4), "
                      "ExponentialLR(gamma=0.9)])"),
    _per_epoch("epoch", "LambdaLR()", scheduler_arguments={"lr_lambda": decay_by_epoch}),
    _per_step("step", "MultiplicativeLR()", scheduler_arguments={"lr_lambda": shrink}),
    # threshold=0.2: an epoch must improve the validation loss by 20% to count, so plateaus
    # (and reductions) come within 5 epochs
    _per_epoch("min", "ReduceLROnPlateau(patience=0, threshold=0.2, factor=0.5)", epochs=5),
    _per_epoch("abs cooldown min_lr", "ReduceLROnPlateau(patience=1, threshold=0.3, threshold_mode='abs', "
                                      "cooldown=1, factor=0.3, min_lr=0.002)", epochs=6),
)
