"""The stateful training style in Flax NNX: ``nnx.Optimizer`` and ``nnx.jit``, mutating in place.

>>> model.train()                                   # as torch's model.train(), once
>>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
>>> train_step = make_nnx_train_step(loss_fn)
>>> metrics = train_step(model, optimizer, (x, y))  # model and optimizer updated in place

This is the NNX counterpart of torch's ``zero_grad(); loss.backward(); optimizer.step()``
(``torch_ref.loop.train_step``): the user holds a model and an optimizer object, and the step
returns only its metrics. With ``tx = jax_impl.optim.from_torch(...)`` (and a schedule from
``jax_impl.schedules.from_torch`` as its ``lr``) it trains with torch's exact semantics.

Each call of an ``nnx.jit`` function walks the model's object graph in Python to split it into
arrays and merge the result back. Flax's performance guide offers two ways to take that walk
out of the loop, at a cost in code:

- :func:`make_cached_nnx_train_step`: ``nnx.cached_partial`` walks the graph once when the step
  is built; ``step(batch) -> metrics`` still updates the model in place. Cost: one more line,
  and the model's structure must not change between calls (``cached_partial`` checks it).
  Each call still matches the cached Variables to arrays in Python.
- :func:`make_split_nnx_train_step`: split ``(model, optimizer)`` once into a graph definition
  and a state, and ``jax.jit`` a step that merges, steps and splits inside the compiled
  function: ``state, metrics = step(state, batch)``. Cost: the loop holds ``state`` as the
  functional style does, and the model is only current after ``nnx.update((model, optimizer),
  state)`` (before reading or saving it). The step body is still the stateful one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["make_nnx_train_step", "make_cached_nnx_train_step", "make_split_nnx_train_step"]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = tuple[jax.Array, jax.Array]


def make_nnx_train_step(loss_fn: LossFn, *, jit: bool = True) -> Callable[[nnx.Module, nnx.Optimizer, Batch], dict]:
    """``train_step(model, optimizer, (inputs, targets)) -> metrics``, updating both in place.

    One step: ``loss = loss_fn(model(inputs), targets)``, its gradients with respect to the
    ``nnx.Param`` variables, then ``optimizer.update(model, grads)`` (``tx.update`` followed by
    ``params + updates``). Variables the forward pass writes (BatchNorm's statistics) are
    updated in place too. ``metrics`` holds ``loss`` and ``correct`` (argmax hits).
    The PyTorch counterpart is ``torch_ref.loop.train_step``. The model's mode is the caller's:
    call ``model.train()`` once before the loop, as in torch.
    """

    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Batch) -> dict[str, Any]:
        inputs, targets = batch

        def objective(model: nnx.Module):
            logits = model(inputs)  # (B, classes)
            return loss_fn(logits, targets), logits

        (loss, logits), grads = nnx.value_and_grad(objective, has_aux=True)(model)
        optimizer.update(model, grads)
        return {"loss": loss, "correct": (jnp.argmax(logits, axis=-1) == targets).sum()}

    return nnx.jit(train_step) if jit else train_step


def make_cached_nnx_train_step(
    loss_fn: LossFn, model: nnx.Module, optimizer: nnx.Optimizer
) -> Callable[[Batch], dict[str, Any]]:
    """``train_step((inputs, targets)) -> metrics`` for this ``model`` and ``optimizer``: the
    step of :func:`make_nnx_train_step` with its graph traversal cached (``nnx.cached_partial``,
    Flax's performance guide), so each call only moves arrays. ``model`` and ``optimizer`` are
    still updated in place; their structure must stay as it is while the step is used."""
    with nnx.set_graph_mode(True), nnx.set_graph_updates(True):
        return nnx.cached_partial(make_nnx_train_step(loss_fn), model, optimizer)


def make_split_nnx_train_step(
    loss_fn: LossFn, graphdef: nnx.GraphDef
) -> Callable[[nnx.State, Batch], tuple[nnx.State, dict[str, Any]]]:
    """``train_step(state, (inputs, targets)) -> (state, metrics)`` over the state of
    ``graphdef, state = nnx.split((model, optimizer))``, compiled with ``jax.jit``.

    Inside, ``nnx.merge`` rebuilds the model and the optimizer, the stateful step of
    :func:`make_nnx_train_step` updates them, and ``nnx.state`` takes their new state out, all
    in the compiled function, so no Python object graph is walked per call. Write the state
    back with ``nnx.update((model, optimizer), state)`` before using the model.
    """
    stateful_step = make_nnx_train_step(loss_fn, jit=False)

    def train_step(state: nnx.State, batch: Batch) -> tuple[nnx.State, dict[str, Any]]:
        model, optimizer = nnx.merge(graphdef, state)
        metrics = stateful_step(model, optimizer, batch)
        return nnx.state((model, optimizer)), metrics

    return jax.jit(train_step)
