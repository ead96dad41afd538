"""What one training step leaves behind, per framework, in torch's names and layouts."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["StepTrace", "STAGES", "GRAD_NORM", "FOUND_INF", "SCALER_STATE"]

#: the gradient stage's name for the total norm ``clip_grad_norm_`` returns
GRAD_NORM = "total_norm (clip_grad_norm_)"
#: the gradient stage's name for whether a GradScaler found an inf or NaN (1: the step is skipped)
FOUND_INF = "found_inf (GradScaler)"
#: the optimizer-state stage's names for the GradScaler's state after ``scaler.update()``
SCALER_STATE = ("GradScaler:scale", "GradScaler:growth_tracker")

#: The stages of one step, in the order a step computes them. A divergence is reported at the
#: earliest stage that differs, since later stages inherit the difference.
STAGES = ("loss", "gradient", "lr", "optimizer_state", "parameters", "buffers")


@dataclasses.dataclass(frozen=True)
class StepTrace:
    """One side's record of one optimizer step.

    ``grads`` are the gradients as the optimizer receives them; ``lr`` is the learning rate
    this update used (``optimizer.param_groups[0]['lr']`` before ``step()``, rounded to the
    parameters' dtype as torch's kernels round it); the optimizer
    state, parameters and buffers are read after the step. In resync mode the JAX side's
    optimizer state and parameters come from applying its optimizer to *torch's* gradients
    (its own gradients are compared at the gradient stage), so each stage is checked from
    identical inputs. Keys are torch names
    (``fc1.weight``; optimizer state ``fc1.weight:momentum_buffer``).
    """

    loss: float
    lr: float
    grads: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    #: the other scheduled values of this update, compared with ``lr``: each further parameter
    #: group's lr ("lr (group 1)"), and the momentum or beta1 a cycling scheduler sets
    hyperparams: dict[str, float] = dataclasses.field(default_factory=dict)
    #: what ``clip_grad_norm_`` returned (the total norm before clipping), compared at the
    #: gradient stage after the gradients; None without norm clipping
    grad_norm: float | None = None
    #: mixed precision with a GradScaler: whether the (unscaled) gradients held an inf or NaN,
    #: so that ``scaler.step`` skipped the update, compared at the gradient stage; None without
    found_inf: bool | None = None
    #: the GradScaler's scale and growth tracker after ``scaler.update()``, compared with the
    #: optimizer state (:data:`SCALER_STATE`); empty without a GradScaler
    scaler: dict[str, float] = dataclasses.field(default_factory=dict)

    def stage(self, name: str) -> dict[str, np.ndarray]:
        """The tensors of one stage, by torch name."""
        if name == "loss":
            return {"loss": np.asarray(self.loss)}
        if name == "lr":
            return {"lr": np.asarray(self.lr)} | {key: np.asarray(value) for key, value in self.hyperparams.items()}
        if name == "gradient":
            extra = {GRAD_NORM: self.grad_norm, FOUND_INF: None if self.found_inf is None else float(self.found_inf)}
            return self.grads | {key: np.asarray(value) for key, value in extra.items() if value is not None}
        if name == "optimizer_state" and self.scaler:
            return self.optimizer_state | {key: np.asarray(value) for key, value in self.scaler.items()}
        fields = {"gradient": "grads", "optimizer_state": "optimizer_state", "parameters": "params",
                  "buffers": "buffers"}
        return getattr(self, fields[name])
