"""Debugging statistics of a parity run, both sides side by side.

- Gradient statistics, every step, per parameter (torch name): ``norm = sqrt(sum g^2)``,
  ``mean = sum g / n``, ``max_abs = max |g|``: of the gradients each side's optimizer received.
- Activation statistics, on the first step of every epoch, per module call (torch module name;
  ``name#1`` for a module's second call): ``mean`` and ``std`` (population, ``ddof=0``) of the
  call's output, from one extra forward pass of each side on that step's batch with the weights
  it had before the step (the capture of :mod:`parity.localize`: torch forward hooks, wrapped
  NNX ``__call__`` s).
- The first non-finite value (NaN or +-Inf) anywhere in the traces, found with or without
  ``--stats``: stage by stage in the order a step computes them, named by tensor and step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flax import nnx

from parity.trace import STAGES, StepTrace

__all__ = ["GradientStats", "StepStats", "Recorder", "gradient_stats", "first_nonfinite", "activation_stats"]

_STAGE_WORDS = {"loss": "loss", "gradient": "gradient", "lr": "learning rate", "optimizer_state": "optimizer state",
                "parameters": "parameter", "buffers": "buffer"}


@dataclasses.dataclass(frozen=True)
class GradientStats:
    norm: float
    mean: float
    max_abs: float


def gradient_stats(grads: Mapping[str, np.ndarray]) -> dict[str, GradientStats]:
    """Per tensor: L2 norm, mean and largest absolute value (in float64)."""
    values = {}
    for name, grad in grads.items():
        grad = np.asarray(grad, dtype=np.float64)
        values[name] = GradientStats(float(np.sqrt(np.sum(grad * grad))), float(np.mean(grad)),
                                     float(np.max(np.abs(grad), initial=0.0)))
    return values


@dataclasses.dataclass(frozen=True)
class StepStats:
    step: int
    epoch: int
    torch_gradients: dict[str, GradientStats]
    jax_gradients: dict[str, GradientStats]
    #: module call -> (mean, std) of its output; only on the steps activations were captured
    torch_activations: dict[str, tuple[float, float]] | None = None
    jax_activations: dict[str, tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _count(array: np.ndarray) -> str:
    array = np.asarray(array)
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} Inf"] if inf else [])
    return " + ".join(parts) or "no non-finite value"


def first_nonfinite(step: int, torch_trace: StepTrace, jax_trace: StepTrace) -> str | None:
    """``"step 12: fc1.weight gradient has 3 NaN (torch) / 3 NaN (JAX)"`` for the first tensor,
    in stage order, holding a NaN or Inf on either side; None if every value is finite."""
    if not (np.isfinite(torch_trace.loss) and np.isfinite(jax_trace.loss)):
        return f"step {step}: the loss is {torch_trace.loss} (torch) / {jax_trace.loss} (JAX)"
    for stage in STAGES:
        torch_tensors, jax_tensors = torch_trace.stage(stage), jax_trace.stage(stage)
        for name in list(torch_tensors) + [n for n in jax_tensors if n not in torch_tensors]:
            found = [tensors.get(name) for tensors in (torch_tensors, jax_tensors)]
            if any(v is not None and not np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in found):
                counts = [("missing" if v is None else _count(v)) for v in found]
                skipped = (" (the GradScaler skips this step: torch "
                           f"{'skips' if torch_trace.found_inf else 'does not skip'}, JAX "
                           f"{'skips' if jax_trace.found_inf else 'does not skip'})"
                           if stage == "gradient" and torch_trace.found_inf is not None else "")
                return (f"step {step}: {name} {_STAGE_WORDS[stage]} has {counts[0]} (torch) / {counts[1]} (JAX)"
                        + skipped)
    return None


def _moments(outputs: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    values = {}
    for key, output in outputs.items():
        output = np.asarray(output)
        if output.size and np.issubdtype(output.dtype, np.floating):
            output = output.astype(np.float64)
            name, call = key.rsplit("#", 1)
            name = name or "(model)"
            values[name if call == "0" else f"{name}#{call}"] = (float(np.mean(output)), float(np.std(output)))
    return values


def activation_stats(torch_model: torch.nn.Module, jax_model: nnx.Module, batch: tuple[Any, Any], *, loss: Any,
                     dtype: str, dropout_masks: Mapping[str, np.ndarray] | None = None
                     ) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """Per module call, ``(mean, std)`` of its output on each side: one training-mode forward
    (and backward) pass of a copy of each model, with its own weights, on ``batch``."""
    from parity import localize as tap  # the same capture as the layer-by-layer localisation

    torch_criterion, jax_criterion = tap._losses(loss, dtype)
    inputs, targets = (np.asarray(x) for x in batch)
    if np.issubdtype(inputs.dtype, np.floating):
        inputs = inputs.astype(np.dtype(dtype))
    torch_side = tap._torch_pass(copy.deepcopy(torch_model), torch.from_numpy(inputs.copy()),
                                 torch.from_numpy(targets.copy()), torch_criterion, True, dict(dropout_masks or {}))
    jax_twin = nnx.clone(jax_model)
    tap.L.set_dropout_masks(jax_twin, torch_side["masks"])
    jax_twin.train()
    converter = tap.Converter.from_torch_module(torch_model)
    jax_side = tap._jax_pass(jax_twin, np.asarray(inputs), np.asarray(targets), jax_criterion, converter)
    return _moments(torch_side["outputs"]), _moments(jax_side["outputs"])


@dataclasses.dataclass
class Recorder:
    """Collects :class:`StepStats` during :func:`parity.runner.check_port` (``stats=True``)."""

    loss: Any
    dtype: str
    steps: list[StepStats] = dataclasses.field(default_factory=list)
    _activations: tuple[dict, dict] | None = None

    def before_step(self, first_of_epoch: bool, torch_model: torch.nn.Module, jax_model: Any, batch: Any,
                    masks: Mapping[str, np.ndarray]) -> None:
        """Capture activations (on an epoch's first step) from the weights before the step;
        ``jax_model`` is a callable returning the NNX model (built only when needed)."""
        self._activations = None
        if first_of_epoch:
            self._activations = activation_stats(torch_model, jax_model(), batch, loss=self.loss, dtype=self.dtype,
                                                 dropout_masks=masks)

    def after_step(self, step: int, epoch: int, torch_trace: StepTrace, jax_trace: StepTrace) -> None:
        torch_activations, jax_activations = self._activations or (None, None)
        self.steps.append(StepStats(step, epoch, gradient_stats(torch_trace.grads), gradient_stats(jax_trace.grads),
                                    torch_activations, jax_activations))
