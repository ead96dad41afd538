"""The functional training style: explicit pytrees and a pure, jit-compiled train step.

>>> graphdef, state = init_train_state(model, tx)
>>> train_step = make_train_step(graphdef, loss_fn, tx)
>>> state, metrics = train_step(state, (x, y))        # compiled once, reused every step

The model is split once into a static graph definition and explicit state: trainable
parameters, the other variables (batch statistics and the like), and the optimizer state.
Each step merges them inside the compiled function, so no Python object is mutated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_impl.optim import param_group_states

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = tuple[jax.Array, jax.Array]

__all__ = ["TrainState", "init_train_state", "make_objective", "make_train_step", "make_update_step", "make_eval_step"]


class TrainState(NamedTuple):
    params: nnx.State  # the nnx.Param variables: what the optimizer updates
    rest: nnx.State  # every other variable (BatchNorm statistics, ...)
    opt_state: optax.OptState


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its graph definition and a :class:`TrainState`."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, TrainState(params, rest, tx.init(params))


def _correct(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=-1) == targets).sum()


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    with_grads: bool = False,
    closure: bool = False,
    clip: Callable[[Any], tuple[Any, Any]] | None = None,
    accumulate: int = 1,
    accumulate_reduction: str = "mean",
    jit: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Any]]]:
    """A pure ``train_step(state, (inputs, targets)) -> (state, metrics)``.

    It does what torch's ``zero_grad(); loss.backward(); optimizer.step()`` does, in one
    function of explicit state. ``metrics`` holds ``loss``, ``correct`` (argmax hits) and
    ``lr`` (the learning rate this update used, parameter group 0's, when the optimizer
    injects one); with
    ``with_grads`` also ``grads``, the gradients the optimizer received.

    ``closure=True`` is for an optimizer that evaluates the loss again within its step, as
    torch's ``optimizer.step(closure)`` (:func:`jax_impl.optim.needs_closure`: LBFGS): the
    update also gets ``value=loss`` and ``value_fn``, the loss and gradients on this batch at
    other parameters. ``loss`` and ``grads`` in ``metrics`` are those of the first evaluation,
    as torch's closure returns them first.

    ``clip(grads) -> (grads, total_norm)`` (:func:`jax_impl.clip.make_clip`) clips between
    differentiation and the optimizer, as ``clip_grad_norm_`` between ``backward()`` and
    ``step()``; ``grads`` in ``metrics`` are then the clipped ones and ``grad_norm`` the total
    norm before clipping.

    ``accumulate=K`` is gradient accumulation, torch's ``(loss / K).backward()`` over K
    micro-batches before one ``step()``: ``batch`` holds them stacked, inputs (K, B, ...) and
    targets (K, B); their gradients are summed in order in the parameters' dtype (as ``p.grad``
    accumulates), each micro-batch's forward pass sees the variables the previous one left
    (BatchNorm's statistics), and ``loss`` is the sum of the backpropagated losses.
    ``accumulate_reduction="sum"`` backpropagates each loss undivided. ``optax.MultiSteps``
    differs: it spreads the K micro-batches over K calls, averages, and keeps its accumulator
    in float32 by default.
    """
    if clip is not None and closure:
        raise ValueError("an optimizer that re-evaluates the loss (LBFGS) cannot be combined with clipping")
    if accumulate != 1 and closure:
        raise ValueError("an optimizer that re-evaluates the loss (LBFGS) cannot accumulate micro-batches")
    if accumulate_reduction not in ("mean", "sum"):
        raise ValueError(f"accumulate_reduction must be 'mean' or 'sum', got {accumulate_reduction!r}")
    objective = make_objective(graphdef, loss_fn)
    gradients = (_accumulated(objective, accumulate, accumulate_reduction) if accumulate != 1
                 else jax.value_and_grad(objective, has_aux=True))

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
        _, targets = batch
        (loss, (logits, rest)), grads = gradients(state.params, state.rest, batch)
        extra = _closure_args(objective, state.rest, batch, loss) if closure else {}
        last_targets = targets[-1] if accumulate != 1 else targets
        metrics: dict[str, Any] = {"loss": loss, "correct": _correct(logits, last_targets)}
        if clip is not None:
            grads, total_norm = clip(grads)
            if total_norm is not None:
                metrics["grad_norm"] = total_norm
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        lr = _lr(opt_state)
        if lr is not None:
            metrics["lr"] = lr
        if with_grads:
            metrics["grads"] = grads
        return TrainState(params, rest, opt_state), metrics

    return jax.jit(train_step) if jit else train_step


def make_objective(graphdef: nnx.GraphDef, loss_fn: LossFn) -> Callable[..., Any]:
    """``objective(params, rest, batch) -> (loss, (logits, rest))``: the model in train mode on
    ``batch`` (``loss_fn=None``: the model's own ``loss``, :class:`jax_impl.models.WithLoss`); ``rest`` comes back with the updates the forward pass made (BatchNorm's
    statistics). Differentiate it with ``jax.value_and_grad(objective, has_aux=True)``."""

    def objective(params: nnx.State, rest: nnx.State, batch: Batch):
        inputs, targets = batch
        # copy=True: fresh Variables at this trace level, so BatchNorm may update its stats
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train()
        loss, logits = _loss_and_scores(model, loss_fn, inputs, targets)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, (logits, rest)

    return objective


def _accumulated(objective: Callable[..., Any], accumulate: int, reduction: str) -> Callable[..., Any]:
    """``value_and_grad(objective)`` summed over ``accumulate`` stacked micro-batches, in order;
    the logits are the last micro-batch's. Unrolled: K is small, and each micro-batch is then
    computed exactly as a single step computes it."""
    divisor = float(accumulate) if reduction == "mean" else None

    def scaled(params, rest, batch):
        loss, aux = objective(params, rest, batch)
        return (loss / divisor if divisor else loss), aux

    value_and_grad = jax.value_and_grad(scaled, has_aux=True)

    def accumulated(params, rest, batch):
        inputs, targets = batch
        if inputs.shape[0] != accumulate:
            raise ValueError(f"accumulate={accumulate} needs micro-batches stacked on a leading axis of "
                             f"{accumulate}, got inputs of shape {inputs.shape}")
        total, grads, logits = None, None, None
        for k in range(accumulate):
            (loss, (logits, rest)), micro = value_and_grad(params, rest, (inputs[k], targets[k]))
            total = loss if total is None else total + loss
            grads = micro if grads is None else jax.tree.map(jnp.add, grads, micro)
        return (total, (logits, rest)), grads

    return accumulated


def _loss_and_scores(model: nnx.Module, loss_fn: LossFn | None, inputs: jax.Array, targets: jax.Array):
    """``(loss, class scores)`` of ``model`` on a batch; with ``loss_fn=None`` the model computes
    its own loss (:class:`jax_impl.models.WithLoss`, a loss that carries parameters)."""
    outputs = model(inputs)
    if loss_fn is None:
        return model.loss(outputs, targets), model.scores(outputs)
    return loss_fn(outputs, targets), outputs


def _closure_args(objective: Callable[..., Any], rest: nnx.State, batch: Batch, loss: jax.Array) -> dict[str, Any]:
    """The extra ``update`` arguments of an optimizer that re-evaluates the loss (LBFGS)."""

    def value_fn(params: nnx.State) -> tuple[jax.Array, nnx.State]:
        (value, _), grads = jax.value_and_grad(objective, has_aux=True)(params, rest, batch)
        return value, grads

    return {"value": loss, "value_fn": value_fn}


def _lr(opt_state: optax.OptState) -> Any:
    """The learning rate of the update just made (parameter group 0's), or None if not injected."""
    hyperparams = getattr(param_group_states(opt_state)[0], "hyperparams", None) or {}
    return hyperparams.get("lr")


def make_update_step(
    tx: optax.GradientTransformation,
    *,
    objective: Callable[..., Any] | None = None,
    jit: bool = True,
) -> Callable[..., tuple[nnx.State, optax.OptState, Any]]:
    """``update_step(params, opt_state, grads) -> (params, opt_state, lr)``: the optimizer half
    of a train step, on gradients from elsewhere (``lr`` is None without an injected ``lr``).

    For an optimizer that re-evaluates the loss (LBFGS), pass ``objective``
    (:func:`make_objective`): the step is then ``update_step(params, opt_state, grads, loss,
    rest, batch)``, ``loss`` and ``grads`` being the first evaluation's, and any further
    evaluation computed on ``batch`` by ``objective``.
    """

    def update_step(params: nnx.State, opt_state: optax.OptState, grads: nnx.State, *closure_inputs):
        extra = {}
        if objective is not None:
            loss, rest, batch = closure_inputs
            extra = _closure_args(objective, rest, batch, loss)
        updates, opt_state = tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state, _lr(opt_state)

    return jax.jit(update_step) if jit else update_step


def make_eval_step(
    graphdef: nnx.GraphDef, loss_fn: LossFn, *, jit: bool = True
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """``eval_step(state, batch) -> {'loss', 'correct'}`` in eval mode, with no gradients."""

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        inputs, targets = batch
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()
        loss, logits = _loss_and_scores(model, loss_fn, inputs, targets)
        return {"loss": loss, "correct": _correct(logits, targets)}

    return jax.jit(eval_step) if jit else eval_step
