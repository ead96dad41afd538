"""torch.optim optimizers: every option jax_impl.optim implements, one case each."""

from __future__ import annotations

import dataclasses

from parity.cases._base import BASE, Case


def _case(variant: str, optimizer: str) -> Case:
    name = optimizer.split("(", 1)[0]
    return Case(f"{name}/{variant}", "optimizer", dataclasses.replace(BASE, optimizer=optimizer))


CASES = (
    _case("plain", "SGD(lr=0.05)"),
    _case("momentum", "SGD(lr=0.01, momentum=0.9)"),
    _case("dampening", "SGD(lr=0.01, momentum=0.9, dampening=0.3)"),
    _case("nesterov", "SGD(lr=0.01, momentum=0.9, nesterov=True)"),
    _case("weight_decay", "SGD(lr=0.01, momentum=0.9, weight_decay=0.01)"),
    _case("maximize", "SGD(lr=0.01, momentum=0.5, weight_decay=0.01, maximize=True)"),
    _case("plain", "Adam(lr=1e-3)"),
    # 784 Gaussian inputs give many tiny gradient elements, where Adam's g / (sqrt(v) + eps)
    # amplifies float32 rounding of the gradient: resync must apply the JAX optimizer to
    # torch's gradients for this to hold (a false divergence before that was fixed)
    Case("Adam/tiny-gradients", "optimizer", dataclasses.replace(
        BASE, optimizer="Adam(lr=1e-3)", data="synthetic", model="SimpleNN(hidden_size=64)")),
    _case("weight_decay", "Adam(lr=1e-3, weight_decay=0.01)"),
    _case("amsgrad", "Adam(lr=1e-3, betas=(0.8, 0.99), amsgrad=True)"),
    _case("maximize", "Adam(lr=1e-3, maximize=True)"),
    _case("decoupled_weight_decay", "Adam(lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)"),
    _case("default", "AdamW(lr=1e-3)"),
    _case("amsgrad", "AdamW(lr=1e-3, weight_decay=0.1, amsgrad=True, eps=1e-6)"),
)
