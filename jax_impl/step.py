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

from jax_impl import amp as amp_lib
from jax_impl.optim import param_group_states

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = tuple[jax.Array, jax.Array]

__all__ = ["TrainState", "init_train_state", "zero_gradients", "make_objective", "make_train_step", "make_update_step",
           "make_eval_step"]


class TrainState(NamedTuple):
    params: nnx.State  # the nnx.Param variables: what the optimizer updates
    rest: nnx.State  # every other variable (BatchNorm statistics, ...)
    opt_state: optax.OptState
    #: the dynamic loss scale of mixed precision with a GradScaler (jax_impl.amp), else None
    loss_scale: amp_lib.LossScaleState | None = None
    #: the gradients a loop that forgets ``zero_grad`` carries into the next step (torch's
    #: ``p.grad``, make_train_step(zero_grad=False)), else None
    grad_buffer: nnx.State | None = None


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                     amp: amp_lib.MixedPrecision | None = None,
                     zero_grad: bool = True) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into its graph definition and a :class:`TrainState` (with the loss
    scale's initial state when ``amp`` has a scaler, and zero gradient buffers for a loop that
    forgets ``zero_grad``)."""
    if amp is not None:
        amp_lib.check_supported(model, amp.dtype)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_scale = amp.scaler.init() if amp is not None and amp.scaler is not None else None
    grad_buffer = None if zero_grad else zero_gradients(params)
    return graphdef, TrainState(params, rest, tx.init(params), loss_scale, grad_buffer)


def zero_gradients(params: nnx.State) -> nnx.State:
    """Gradient buffers of zeros shaped as ``params``: ``TrainState.grad_buffer`` before a first
    step (``0 + g`` is ``g`` exactly, as torch's first ``backward()`` into an empty ``p.grad``)."""
    return jax.tree.map(jnp.zeros_like, params)


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
    amp: amp_lib.MixedPrecision | None = None,
    zero_grad: bool = True,
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

    ``amp`` (:class:`jax_impl.amp.MixedPrecision`) is torch's mixed precision recipe: the
    forward pass and the loss traced under :func:`jax_impl.amp.autocast` (the model outputs
    cast to float32 for the loss, as torch's autocast does for its losses); with a scaler, the
    loss multiplied by ``state.loss_scale`` before differentiation, the gradients unscaled
    before clipping, the update skipped when they hold an inf or NaN (the schedule still
    advancing) and the scale updated. ``metrics`` then also hold ``found_inf`` and
    ``loss_scale`` (the scale after the update); ``loss`` is the unscaled loss.

    ``zero_grad=False`` reproduces a torch loop that forgets ``optimizer.zero_grad()``: this
    step's gradients are added to ``state.grad_buffer`` (the gradients the previous update
    received, after clipping, as they stay in ``p.grad``), the optimizer steps on the sum, and
    the sum becomes the next step's buffer (:func:`init_train_state` with ``zero_grad=False``).
    """
    if not zero_grad and (amp is not None or accumulate != 1 or closure):
        raise ValueError("zero_grad=False (gradients summed across steps) is not combined with mixed precision, "
                         "accumulation or a closure optimizer")
    if amp is not None and closure:
        raise ValueError("an optimizer that re-evaluates the loss (LBFGS) cannot be combined with mixed precision")
    if amp is not None and loss_fn is None:
        raise ValueError("mixed precision: a loss that carries parameters (loss_fn=None) has no autocast rule yet")
    if clip is not None and closure:
        raise ValueError("an optimizer that re-evaluates the loss (LBFGS) cannot be combined with clipping")
    if accumulate != 1 and closure:
        raise ValueError("an optimizer that re-evaluates the loss (LBFGS) cannot accumulate micro-batches")
    if accumulate_reduction not in ("mean", "sum"):
        raise ValueError(f"accumulate_reduction must be 'mean' or 'sum', got {accumulate_reduction!r}")
    scaler = amp.scaler if amp is not None else None
    objective = make_objective(graphdef, loss_fn, autocast=amp.dtype if amp is not None else None)
    seeded = scaler is not None  # backpropagate from the loss scale, as scaler.scale(loss).backward()
    gradients = (_accumulated(objective, accumulate, accumulate_reduction, seeded) if accumulate != 1
                 else _value_and_grad(objective, seeded))

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
        _, targets = batch
        if scaler is not None and state.loss_scale is None:
            raise ValueError("mixed precision with a GradScaler needs state.loss_scale: "
                             "init_train_state(model, tx, amp=amp)")
        seed = state.loss_scale.scale if scaler is not None else None
        (loss, (logits, rest)), grads = gradients(state.params, state.rest, batch, seed)
        if not zero_grad:  # backward() adds to what p.grad still holds
            if state.grad_buffer is None:
                raise ValueError("zero_grad=False needs state.grad_buffer: init_train_state(model, tx, zero_grad=False)")
            grads = jax.tree.map(jnp.add, state.grad_buffer, grads)
        extra = _closure_args(objective, state.rest, batch, loss) if closure else {}
        last_targets = targets[-1] if accumulate != 1 else targets
        found_inf = None
        if scaler is not None:  # scaler.unscale_(optimizer), before clipping
            grads, found_inf = scaler.unscale(grads, state.loss_scale)
        metrics: dict[str, Any] = {"loss": loss, "correct": _correct(logits, last_targets)}
        if clip is not None:
            grads, total_norm = clip(grads)
            if total_norm is not None:
                metrics["grad_norm"] = total_norm
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        loss_scale = state.loss_scale
        if found_inf is not None:  # scaler.step(optimizer) skips; scheduler.step() does not
            params = amp_lib.skip_nonfinite_update(found_inf, params, state.params)
            opt_state = amp_lib.skip_nonfinite_update(found_inf, opt_state, state.opt_state)
            loss_scale = scaler.update(state.loss_scale, found_inf)
            metrics["found_inf"] = found_inf
            metrics["loss_scale"] = loss_scale.scale
        lr = _lr(opt_state)
        if lr is not None:
            metrics["lr"] = lr
        if with_grads:
            metrics["grads"] = grads
        return TrainState(params, rest, opt_state, loss_scale, None if zero_grad else grads), metrics

    return jax.jit(train_step) if jit else train_step


def make_objective(graphdef: nnx.GraphDef, loss_fn: LossFn, autocast: Any = None) -> Callable[..., Any]:
    """``objective(params, rest, batch) -> (loss, (logits, rest))``: the model in train mode on
    ``batch`` (``loss_fn=None``: the model's own ``loss``, :class:`jax_impl.models.WithLoss`);
    ``rest`` comes back with the updates the forward pass made (BatchNorm's statistics).
    Differentiate it with ``jax.value_and_grad(objective, has_aux=True)``. ``autocast`` (a low
    precision dtype) traces the forward pass under :func:`jax_impl.amp.autocast` and computes
    the loss on the outputs cast to float32, as torch's autocast computes its losses."""

    def objective(params: nnx.State, rest: nnx.State, batch: Batch):
        inputs, targets = batch
        # copy=True: fresh Variables at this trace level, so BatchNorm may update its stats
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train()
        if autocast is not None:
            with amp_lib.autocast(autocast):
                outputs = model(inputs)
            outputs = outputs.astype(jnp.float32)  # the loss is on torch's autocast float32 list
            loss, logits = loss_fn(outputs, targets), outputs
        else:
            loss, logits = _loss_and_scores(model, loss_fn, inputs, targets)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, (logits, rest)

    return objective


def _value_and_grad(objective: Callable[..., Any], seeded: bool) -> Callable[..., Any]:
    """``f(params, rest, batch, seed) -> ((loss, aux), grads)``: ``jax.value_and_grad`` of
    ``objective``, or, ``seeded``, its gradient backpropagated from ``seed`` instead of 1, as
    ``(loss * scale).backward()`` backpropagates ``scale`` (the product's forward value, which
    may overflow, takes no part); ``loss`` is the unscaled loss."""
    if not seeded:
        value_and_grad = jax.value_and_grad(objective, has_aux=True)
        return lambda params, rest, batch, seed=None: value_and_grad(params, rest, batch)

    def seeded_value_and_grad(params, rest, batch, seed):
        loss, backward, aux = jax.vjp(lambda p: objective(p, rest, batch), params, has_aux=True)
        (grads,) = backward(jnp.asarray(seed, loss.dtype))
        return (loss, aux), grads

    return seeded_value_and_grad


def _accumulated(objective: Callable[..., Any], accumulate: int, reduction: str,
                 seeded: bool = False) -> Callable[..., Any]:
    """``value_and_grad(objective)`` summed over ``accumulate`` stacked micro-batches, in order;
    the logits are the last micro-batch's. Unrolled: K is small, and each micro-batch is then
    computed exactly as a single step computes it. ``seeded``: see :func:`_value_and_grad`."""
    divisor = float(accumulate) if reduction == "mean" else None

    def scaled(params, rest, batch):
        loss, aux = objective(params, rest, batch)
        return (loss / divisor if divisor else loss), aux

    value_and_grad = _value_and_grad(scaled, seeded)

    def accumulated(params, rest, batch, seed=None):
        inputs, targets = batch
        if inputs.shape[0] != accumulate:
            raise ValueError(f"accumulate={accumulate} needs micro-batches stacked on a leading axis of "
                             f"{accumulate}, got inputs of shape {inputs.shape}")
        total, grads, logits = None, None, None
        for k in range(accumulate):
            (loss, (logits, rest)), micro = value_and_grad(params, rest, (inputs[k], targets[k]), seed)
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
    skip_nonfinite: bool = False,
    jit: bool = True,
) -> Callable[..., tuple[nnx.State, optax.OptState, Any]]:
    """``update_step(params, opt_state, grads) -> (params, opt_state, lr)``: the optimizer half
    of a train step, on gradients from elsewhere (``lr`` is None without an injected ``lr``).

    For an optimizer that re-evaluates the loss (LBFGS), pass ``objective``
    (:func:`make_objective`): the step is then ``update_step(params, opt_state, grads, loss,
    rest, batch)``, ``loss`` and ``grads`` being the first evaluation's, and any further
    evaluation computed on ``batch`` by ``objective``.

    ``skip_nonfinite`` skips the update when the gradients hold an inf or NaN, as a GradScaler's
    ``scaler.step(optimizer)`` does (the schedule still advances: :func:`jax_impl.amp.skip_nonfinite_update`).
    """

    def update_step(params: nnx.State, opt_state: optax.OptState, grads: nnx.State, *closure_inputs):
        extra = {}
        if objective is not None:
            loss, rest, batch = closure_inputs
            extra = _closure_args(objective, rest, batch, loss)
        updates, new_opt_state = tx.update(grads, opt_state, params, **extra)
        new_params = optax.apply_updates(params, updates)
        if skip_nonfinite:
            skip = jnp.logical_not(amp_lib.all_finite(grads))
            new_params = amp_lib.skip_nonfinite_update(skip, new_params, params)
            new_opt_state = amp_lib.skip_nonfinite_update(skip, new_opt_state, opt_state)
        return new_params, new_opt_state, _lr(new_opt_state)

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
