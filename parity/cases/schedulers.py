"""torch.optim.lr_scheduler schedulers, stepped once per epoch and once per update."""

from __future__ import annotations

import dataclasses

from parity.cases._base import BASE, Case

CASES = (
    # 3 epochs of 5 updates: the lr halves at the start of epochs 1 and 2
    Case("StepLR/epoch", "scheduler", dataclasses.replace(
        BASE, scheduler="StepLR(step_size=1, gamma=0.5)", scheduler_interval="epoch", epochs=3)),
    # 2 epochs of 5 updates: updates 3, 6 and 9 (0-based) are the first at a lower lr, none
    # of them at an epoch boundary; Adam's step size reads the scheduled lr
    Case("StepLR/step", "scheduler", dataclasses.replace(
        BASE, optimizer="Adam(lr=1e-3)", scheduler="StepLR(step_size=3, gamma=0.1)",
        scheduler_interval="step")),
)
