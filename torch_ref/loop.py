"""The stateful PyTorch training loop, as the seed writes it.

``train_step`` is one iteration (``zero_grad``, forward, loss, ``backward``, ``step``);
``train`` and ``train_with_validation`` are the epoch loops around it, with the scheduler
stepped per epoch or per iteration and the best model saved whenever validation loss improves.
The parity harness calls ``train_step`` and ``evaluate`` for every step and every validation
(stepping the scheduler itself as ``train_one_epoch`` does), so each step it checks is
computed by this code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from torch_ref.models import WithLoss

__all__ = ["Clipping", "clip_gradients", "train_step", "accumulation_step", "train_one_epoch", "evaluate", "train",
           "train_with_validation", "save_state_dict"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Clipping:
    """Gradient clipping as the seed's loop does it between ``backward()`` and ``step()``:
    ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite)`` when
    ``max_norm`` is set, then ``clip_grad_value_(params, clip_value)`` when ``clip_value`` is."""

    max_norm: float | None = None
    norm_type: float = 2.0
    error_if_nonfinite: bool = False
    clip_value: float | None = None


def clip_gradients(parameters: Iterable[torch.Tensor], clipping: Clipping | None) -> torch.Tensor | None:
    """Clip the gradients of ``parameters`` in place; returns ``clip_grad_norm_``'s total norm
    (of the gradients before clipping), or None when only values are clipped or nothing is."""
    if clipping is None:
        return None
    parameters = list(parameters)
    total_norm = None
    if clipping.max_norm is not None:
        total_norm = nn.utils.clip_grad_norm_(parameters, clipping.max_norm, clipping.norm_type,
                                              error_if_nonfinite=clipping.error_if_nonfinite)
    if clipping.clip_value is not None:
        nn.utils.clip_grad_value_(parameters, clipping.clip_value)
    return total_norm


def train_step(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    before_step: Callable[[], None] | None = None,
    clipping: Clipping | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    zero_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns ``(loss, outputs)``.

    ``zero_grad=False`` is the mistake the seed warns about: ``optimizer.zero_grad()`` left
    out, so ``backward()`` adds this step's gradients to those still in ``p.grad`` (the previous
    step's, as clipped), and the optimizer steps on the running sum.

    ``clipping`` clips the gradients after ``backward()`` (:func:`clip_gradients`).
    ``before_step`` runs after that and before ``optimizer.step()``: the point where gradients
    are exactly what the optimizer will see.

    Mixed precision as torch's AMP recipe writes it: ``autocast_dtype`` runs the forward pass
    and the loss under ``torch.autocast("cpu", dtype=autocast_dtype)``; with a ``scaler``
    (``torch.amp.GradScaler``) the loss is scaled before ``backward()``, the gradients are
    unscaled (``scaler.unscale_``) before clipping, and ``scaler.step(optimizer)`` skips the
    step when they hold an inf or NaN; ``scaler.update()`` then adjusts the scale.

    An optimizer that re-evaluates the loss (``torch.optim.LBFGS``) is stepped with a closure,
    as its documentation shows; ``before_step`` then sees the gradients of the first
    evaluation, and the loss and outputs returned are those of the first evaluation too.
    """
    model.train()
    if isinstance(optimizer, torch.optim.LBFGS):
        if clipping is not None or autocast_dtype is not None or scaler is not None:
            raise ValueError("LBFGS evaluates its closure several times per step; clip and autocast inside the closure")
        return _closure_step(model, criterion, optimizer, inputs, targets, before_step)
    if zero_grad:
        optimizer.zero_grad()
    with _autocast(autocast_dtype):
        outputs = model(inputs)
        loss = criterion(outputs, targets)
    _backward(loss, scaler)
    _step(model, optimizer, clipping, before_step, scaler)
    return loss, outputs


def accumulation_step(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    before_step: Callable[[], None] | None = None,
    clipping: Clipping | None = None,
    reduction: str = "mean",
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``K = len(micro_batches)`` micro-batches, the seed's gradient
    accumulation: ``(criterion(model(x), y) / K).backward()`` for each (``reduction="mean"``;
    ``"sum"`` backpropagates each loss undivided), so the gradients add up in ``p.grad``; then
    clipping, ``before_step`` and ``optimizer.step()``. Returns the sum of the backpropagated
    losses (the mean micro-batch loss for ``"mean"``) and the last micro-batch's outputs.
    ``autocast_dtype`` and ``scaler`` as in :func:`train_step`: each micro-batch's scaled loss
    is backpropagated, and the summed gradients are unscaled once, before clipping."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("LBFGS evaluates its closure several times per step; it cannot accumulate micro-batches")
    model.train()
    optimizer.zero_grad()
    total, outputs = None, None
    for inputs, targets in micro_batches:
        with _autocast(autocast_dtype):
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            if reduction == "mean":
                loss = loss / len(micro_batches)
        _backward(loss, scaler)  # adds to p.grad
        total = loss.detach() if total is None else total + loss.detach()
    _step(model, optimizer, clipping, before_step, scaler)
    return total, outputs


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _step(model, optimizer, clipping, before_step, scaler) -> None:
    """Clip, ``before_step``, step: the part after the backward pass, with a scaler's unscale,
    skipped step and update around it."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # before clipping, so max_norm applies to the true gradients
    clip_gradients(model.parameters(), clipping)
    if before_step is not None:
        before_step()
    if scaler is not None:
        scaler.step(optimizer)  # skipped if the gradients hold an inf or NaN
        scaler.update()
    else:
        optimizer.step()


def _closure_step(model, criterion, optimizer, inputs, targets, before_step):
    first: list[tuple[torch.Tensor, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        if not first:
            first.append((loss, outputs))
            if before_step is not None:
                before_step()
        return loss

    optimizer.step(closure)
    return first[0]


def evaluate(model: nn.Module, criterion, batches: Batches) -> tuple[float, float]:
    """Validation as the seed writes it: eval mode, no gradients, mean batch loss and accuracy."""
    model.eval()
    val_loss, correct, total, count = 0.0, 0, 0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            outputs = model(inputs)
            val_loss += criterion(outputs, targets).item()
            scores = model.scores(outputs) if isinstance(model, WithLoss) else outputs  # (B, classes)
            correct += (scores.argmax(dim=1) == targets).sum().item()
            total += targets.size(0)
            count += 1
    if count == 0:
        raise ValueError("no validation batches")
    return val_loss / count, correct / total


def save_state_dict(model: nn.Module, path: str | os.PathLike) -> None:
    """``torch.save(model.state_dict(), path)``, atomically (temporary file, then rename)."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(model.state_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    criterion,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    scheduler_interval: str = "epoch",
) -> float:
    """One pass over ``batches``; a per-iteration scheduler steps after every optimizer step.
    Returns the running loss (mean per-batch loss), as the seed prints it."""
    running_loss, count = 0.0, 0
    for inputs, targets in batches:
        loss, _ = train_step(model, criterion, optimizer, inputs, targets)
        if scheduler is not None and scheduler_interval == "step":
            scheduler.step()
        running_loss += loss.item()
        count += 1
    return running_loss / max(count, 1)


def train(
    model: nn.Module,
    batches_for_epoch: Callable[[int], Batches],
    criterion,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    scheduler=None,
    scheduler_interval: str = "epoch",
) -> list[float]:
    """The seed's ``train``: returns the running loss of each epoch."""
    history = []
    for epoch in range(epochs):
        history.append(
            train_one_epoch(model, batches_for_epoch(epoch), criterion, optimizer, scheduler, scheduler_interval)
        )
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
    return history


def train_with_validation(
    model: nn.Module,
    batches_for_epoch: Callable[[int], Batches],
    val_batches: Callable[[], Batches],
    criterion,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    scheduler=None,
    scheduler_interval: str = "epoch",
    checkpoint_path: str | os.PathLike | None = None,
) -> list[dict[str, float]]:
    """Train, validate every epoch, and save the best ``state_dict`` on validation loss."""
    best_val_loss = float("inf")
    history = []
    for epoch in range(epochs):
        train_loss = train_one_epoch(
            model, batches_for_epoch(epoch), criterion, optimizer, scheduler, scheduler_interval
        )
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        val_loss, val_accuracy = evaluate(model, criterion, val_batches())
        saved = checkpoint_path is not None and val_loss < best_val_loss
        if saved:
            best_val_loss = val_loss
            save_state_dict(model, checkpoint_path)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
             "val_accuracy": val_accuracy, "saved": saved}
        )
    return history
