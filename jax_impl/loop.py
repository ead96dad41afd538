"""The seed's training loop in the functional style: epochs of jitted steps, validation, and
best-model checkpoints.

Mirrors ``torch_ref.loop.train_with_validation``: the running training loss per epoch, the
validation loss averaged over validation batches, the accuracy, and a checkpoint of the
parameters and other variables whenever the validation loss improves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import optax

from jax_impl import checkpoint
from jax_impl.step import Batch, LossFn, TrainState, make_eval_step, make_train_step

__all__ = ["EpochResult", "evaluate", "train_with_validation"]


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float  # mean of the per-batch training losses
    val_loss: float  # mean of the per-batch validation losses
    val_accuracy: float
    saved: bool  # whether this epoch wrote the best-model checkpoint


def evaluate(eval_step, state: TrainState, batches: Iterable[Batch]) -> tuple[float, float]:
    """Mean per-batch loss and accuracy over ``batches``, as the seed's validation computes them."""
    total_loss, correct, seen, count = 0.0, 0, 0, 0
    for inputs, targets in batches:
        metrics = eval_step(state, (inputs, targets))
        total_loss += float(metrics["loss"])
        correct += int(metrics["correct"])
        seen += len(targets)
        count += 1
    if count == 0:
        raise ValueError("no validation batches")
    return total_loss / count, correct / seen


def train_with_validation(
    graphdef,
    state: TrainState,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    train_batches: Callable[[int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]],
    epochs: int,
    checkpoint_path: str | os.PathLike | None = None,
) -> tuple[TrainState, list[EpochResult]]:
    """Train for ``epochs`` epochs; validate after each; keep the best model on disk.

    ``train_batches(epoch)`` yields that epoch's batches. The learning-rate schedule, if any,
    lives inside ``tx`` (see :func:`jax_impl.schedules.from_torch`).
    """
    train_step = make_train_step(graphdef, loss_fn, tx)
    eval_step = make_eval_step(graphdef, loss_fn)
    best = float("inf")
    history = []
    for epoch in range(epochs):
        losses = []
        for batch in train_batches(epoch):
            state, metrics = train_step(state, batch)
            losses.append(metrics["loss"])
        train_loss = float(np.mean([float(loss) for loss in losses])) if losses else float("nan")
        val_loss, val_accuracy = evaluate(eval_step, state, val_batches())
        saved = checkpoint_path is not None and val_loss < best
        if saved:
            best = val_loss
            arrays = checkpoint.flatten({"params": state.params, "rest": state.rest})
            checkpoint.save(checkpoint_path, arrays, {"epoch": epoch, "val_loss": val_loss})
        history.append(EpochResult(epoch, train_loss, val_loss, val_accuracy, saved))
    return state, history
