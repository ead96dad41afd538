"""The parity harness: both training loops on identical batches, compared after every step.

Two entry points:

- :func:`run` takes a :class:`~parity.spec.RunSpec` (what ``parity run`` does);
- :func:`check_port` takes *your* torch module and NNX module, the loss, optimizer and
  scheduler specs and your batches: the way to check a port of your own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import platform
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import jax_impl
import jax_impl.amp
import jax_impl.clip
import jax_impl.losses
import jax_impl.optim
import jax_impl.schedules
from jax_impl.checkpoint import leaves_by_path
from jax_impl.layers import DropoutMask
from jax_impl.loop import evaluate as jax_evaluate
from jax_impl.spec import SpecError, parse_call
from jax_impl.step import (TrainState, make_eval_step, make_objective, make_train_step, make_update_step,
                           zero_gradients)
from parity import checkpoints, convert, data
from parity import stats as debug_stats
from parity.dropout import HarnessDropout, hand_masks_to_jax
from parity.rounding import RoundingReference, rounding_errors
from parity.compare import StepComparison, Tolerance, compare_steps, compare_tensors, tolerance
from parity.spec import DTYPES, INTERVALS, MODES, RunSpec, build_models, parse_param_group, build_torch_loss, build_torch_optimizer, build_torch_scheduler
from parity.trace import SCALER_STATE, StepTrace
from torch_ref import loop as torch_loop

__all__ = ["EpochSummary", "ParityReport", "check_port", "run", "BUFFERS"]

Batch = tuple[np.ndarray, np.ndarray]
Progress = Callable[[StepComparison, int], None]  # (this step's comparison, total steps)
StepObserver = Callable[[StepComparison, StepTrace, StepTrace], None]  # (comparison, torch trace, JAX trace)

#: The variables of the JAX state's non-parameter part that hold torch's buffers (BatchNorm's
#: statistics): all but dropout's random streams and its masks, which have no torch name.
BUFFERS = nnx.Not(nnx.Any(nnx.RngState, DropoutMask))


@dataclasses.dataclass(frozen=True)
class EpochSummary:
    epoch: int
    torch_train_loss: float  # mean per-batch training loss, as the seed's loop prints it
    jax_train_loss: float
    torch_val_loss: float | None = None
    jax_val_loss: float | None = None
    torch_val_accuracy: float | None = None
    jax_val_accuracy: float | None = None
    val_ok: bool = True  # validation losses within the loss tolerance


@dataclasses.dataclass(frozen=True)
class ParityReport:
    config: dict[str, Any]
    dtype: str
    mode: str
    steps: list[StepComparison]
    epochs: list[EpochSummary]
    seconds: float
    versions: dict[str, str]
    tolerance_overrides: dict[tuple[str, str], Tolerance] = dataclasses.field(default_factory=dict)
    #: why the run stopped before its last step: in resync mode, torch's state after a diverging
    #: step that cannot be loaded into the JAX state (a buffer of another shape)
    halted: str | None = None
    #: layer-by-layer comparison (:func:`parity.localize.localize`) of the first step whose loss or
    #: gradients diverge (or of step 0 when asked for and nothing diverges); a string if it failed
    localization: Any = None
    localization_step: int | None = None
    #: the first NaN or Inf in either side's trace, named by step, tensor and stage
    nonfinite: str | None = None
    #: per-step gradient and activation statistics (``stats=True``)
    stats: list[Any] | None = None
    #: a run that forgets ``zero_grad``: how far each framework's forgetful loop is from its
    #: correct loop, per step (:mod:`parity.zero_grad`)
    departure: list[Any] | None = None

    @property
    def ok(self) -> bool:
        return self.halted is None and all(s.ok for s in self.steps) and all(e.val_ok for e in self.epochs)

    @property
    def first_divergence(self) -> tuple[StepComparison, str, Any] | None:
        """``(step, stage, tensor error)`` of the first diverging step, or None."""
        for step in self.steps:
            failure = step.first_failure
            if failure is not None:
                return step, failure[0], failure[1]
        return None


def versions() -> dict[str, str]:
    import flax

    return {"python": platform.python_version(), "torch": torch.__version__, "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "project": jax_impl.__version__}


def _dtype_name(model: torch.nn.Module) -> str:
    dtypes = {p.dtype for p in model.parameters()}
    for name, (torch_dtype, _, _) in DTYPES.items():
        if dtypes == {torch_dtype}:
            return name
    raise SpecError(f"the torch model's parameters must all be float32 or float64, got {sorted(map(str, dtypes))}")


def _check_jax_dtype(params: nnx.State, dtype: str) -> None:
    expected = DTYPES[dtype][1]
    wrong = [f"{path} is {leaf.dtype}" for path, leaf in leaves_by_path(params).items() if leaf.dtype != expected]
    if wrong:
        raise SpecError(f"the JAX model must be {dtype} like the torch model (pass param_dtype): {'; '.join(wrong)}")


def _epoch_lengths(epochs: Sequence[Sequence[Batch]], scheduler: str | None, interval: str) -> int | None:
    """Check the shape of ``epochs``; the per-epoch scheduler's epoch length, else None."""
    if not isinstance(epochs, Sequence) or len(epochs) == 0:
        raise SpecError("epochs must be a non-empty list of epochs, each a list of (inputs, targets) batches")
    for index, batches in enumerate(epochs):
        if isinstance(batches, (tuple, list)) and len(batches) == 2 and all(hasattr(a, "shape") for a in batches):
            raise SpecError(
                "epochs must be a list of epochs, each a list of (inputs, targets) batches; "
                "this looks like a flat list of batches: pass [batches] for one epoch"
            )
        if len(batches) == 0:
            raise SpecError(f"epoch {index} has no batches")
    lengths = {len(batches) for batches in epochs}
    if scheduler is None or interval == "step":
        return None
    if len(lengths) != 1:
        raise SpecError(
            f"a per-epoch scheduler needs the same number of batches in every epoch, got {sorted(lengths)}"
        )
    return lengths.pop()


def check_port(
    torch_model: torch.nn.Module,
    jax_model: nnx.Module,
    *,
    loss: str | tuple[Callable, Callable],
    optimizer: str,
    epochs: Sequence[Sequence[Batch]],
    scheduler: str | None = None,
    scheduler_interval: str = "epoch",
    scheduler_arguments: Mapping[str, Any] | None = None,
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    val_batches: Sequence[Batch] | None = None,
    converter: convert.Converter | None = None,
    mode: str = "resync",
    progress: Progress | None = None,
    config: dict[str, Any] | None = None,
    tolerances: Mapping[tuple[str, str], Tolerance] | None = None,
    seed: int = 0,
    localize: bool | None = None,
    rounding_reference: bool = True,
    clipping: torch_loop.Clipping | None = None,
    accumulate: int = 1,
    accumulate_reduction: str = "mean",
    checkpointing: checkpoints.Checkpointing | None = None,
    on_step: StepObserver | None = None,
    stats: bool = False,
    amp: jax_impl.amp.MixedPrecision | None = None,
    zero_grad: bool = True,
) -> ParityReport:
    """Train ``torch_model`` and ``jax_model`` side by side and compare every step.

    The JAX model's variables are first overwritten with the torch model's (through
    ``converter``, by default :meth:`Converter.from_torch_module`), so both start equal.

    Args:
      loss: a torch loss spec (``"CrossEntropyLoss()"``) or a ``(torch_fn, jax_fn)`` pair of
        functions of ``(outputs, targets)``.
      optimizer, scheduler: torch spec strings; each side builds its own from the same text.
      epochs: the batches of each epoch, numpy ``(inputs, targets)``: float inputs are cast to
        the models' dtype, integer inputs (a Transformer's tokens) stay integers (int64).
      scheduler_interval: ``"epoch"`` or ``"step"``: when ``scheduler.step()`` runs.
        ``ReduceLROnPlateau`` steps once per epoch on the validation loss (so it needs
        ``val_batches``), as the seed's loop calls ``scheduler.step(val_loss)``.
      scheduler_arguments: scheduler arguments a spec string cannot hold, given to both sides:
        a Python callable such as ``LambdaLR``'s ``lr_lambda``.
      param_groups: torch's parameter groups, e.g. ``[{"params": r"bias", "weight_decay": 0.0}]``:
        ``"params"`` is a regular expression searched in each torch parameter name; a
        parameter joins the first group that selects it, and those no group selects form
        group 0 with the optimizer spec's own options.
      val_batches: validated after every epoch on both sides (eval mode, no gradients).
      mode: ``"resync"`` resets the JAX state from torch after every step (localises a
        difference to one step); ``"free"`` lets both run on their own.
      tolerances: overrides of :data:`parity.compare.TOLERANCES` by (stage, dtype), each with
        its reason (a registered case's overrides).
      localize: compare the models layer by layer (module outputs, input gradients, buffers) on
        the first step whose loss or gradients diverge; None (default) does so when one does,
        True also localises step 0 when nothing diverges, False never.
      rounding_reference: in float32, also run each step's forward and backward pass in float64
        on a replica of the torch model (same weights, batch and masks) to measure torch's own
        rounding error of every gradient; a JAX gradient within
        :data:`~parity.compare.ROUNDING_FACTOR` times it passes (:mod:`parity.rounding`). Costs
        one float64 pass per step; has no effect in float64.
      clipping: gradient clipping between ``backward()`` and ``step()`` on both sides
        (:class:`torch_ref.loop.Clipping`: ``clip_grad_norm_`` and/or ``clip_grad_value_``;
        :mod:`jax_impl.clip`); the total norm ``clip_grad_norm_`` returns is compared at the
        gradient stage, after the clipped gradients.
      accumulate: gradient accumulation, ``K`` consecutive batches of an epoch per optimizer
        step (:func:`torch_ref.loop.accumulation_step`: each loss divided by K before
        ``backward()``, or undivided with ``accumulate_reduction="sum"``); every epoch's batch
        count must be a multiple of K, and a step's batches the same shape. The step's loss is
        the sum of the backpropagated losses; its dropout masks are shared by its micro-batches.
      seed: the stream of the dropout masks (:mod:`parity.dropout`): during each torch step
        every mask torch draws is replaced by the harness's mask for (seed, step, module), and
        the JAX model's dropout layers get the same masks before its step.
      checkpointing: full and best-model checkpoints, and the checkpoint to resume from
        (:mod:`parity.checkpoints`); the report then holds the steps from the resumed position.
      on_step: called after each step with its comparison and both sides' traces.
      stats: record gradient and activation statistics of both sides (:mod:`parity.stats`).
      amp: mixed precision (:class:`jax_impl.amp.MixedPrecision`): torch trains under
        ``torch.autocast("cpu", dtype)`` with a ``torch.amp.GradScaler`` built from the same
        arguments (:func:`torch_ref.loop.train_step`), JAX with :mod:`jax_impl.amp`. Whether the
        GradScaler found an inf or NaN is compared at the gradient stage, its scale and growth
        tracker with the optimizer state; the steps are compared with the tolerances of the
        autocast dtype (the report's dtype is then ``"bfloat16"`` or ``"float16"``). The rounding
        reference is off: the low-precision rounding is what those tolerances allow for.
      zero_grad: False runs both sides as a loop that forgets ``optimizer.zero_grad()``: torch's
        gradients add up in ``p.grad`` across steps, JAX's in ``TrainState.grad_buffer``
        (:func:`jax_impl.step.make_train_step`); the gradient stage compares the running sums.
    """
    if mode not in MODES:
        raise SpecError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if scheduler_interval not in INTERVALS:
        raise SpecError(f"scheduler_interval must be one of {', '.join(INTERVALS)}, got {scheduler_interval!r}")
    steps_per_epoch = _epoch_lengths(epochs, scheduler, scheduler_interval)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise SpecError(f"accumulate must be a positive integer, got {accumulate!r}")
    if accumulate_reduction not in ("mean", "sum"):
        raise SpecError(f"accumulate_reduction must be 'mean' or 'sum', got {accumulate_reduction!r}")
    if accumulate > 1:
        epochs = [_micro_batch_groups(index, batches, accumulate) for index, batches in enumerate(epochs)]
        steps_per_epoch = steps_per_epoch // accumulate if steps_per_epoch else None
    dtype = _dtype_name(torch_model)
    numpy_dtype = DTYPES[dtype][2]
    if amp is not None:
        _check_amp(amp, dtype, loss, jax_model, checkpointing)
    if not zero_grad:
        for flag, given in (("mixed precision", amp is not None), ("gradient accumulation", accumulate > 1),
                            ("checkpoints", checkpointing is not None)):
            if given:
                raise SpecError(f"a loop that forgets zero_grad is not combined with {flag}")
    scaler = amp.scaler if amp is not None else None
    with_loss = isinstance(loss, str) and jax_impl.losses.carries_parameters(loss)
    if with_loss:  # the loss's parameters train with the model's, as model.* and criterion.*
        torch_model, jax_model, converter = _with_loss(torch_model, jax_model, loss, dtype, seed, converter)
    converter = converter or convert.Converter.from_torch_module(torch_model)
    names = {parameter: name for name, parameter in torch_model.named_parameters()}

    # JAX side, built from the specs by jax_impl alone (first: its messages name our checks)
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)
    _check_jax_dtype(params, dtype)
    params = converter.to_jax(_torch_params(torch_model), params, what="parameters")
    rest = _load_buffers(converter, _torch_buffers(torch_model), rest)
    jax_loss = (None if with_loss  # WithLoss computes its own loss
                else jax_impl.losses.from_torch(loss) if isinstance(loss, str) else loss[1])
    groups = ParamGroups.assign(list(names.values()), param_groups or ())
    layout = convert.torch_layout(converter)  # Adafactor and Muon act on torch's axes
    jax_impl.optim.from_torch(optimizer, param_groups=groups.jax_groups(converter), layout=layout)  # checks values
    scheduler_arguments = dict(scheduler_arguments or {})
    plateaus = None
    schedules = [None] * groups.count
    if scheduler:
        schedules = [
            jax_impl.schedules.from_torch(scheduler, lr, steps_per_epoch, **scheduler_arguments)
            for lr in groups.base_lrs(jax_impl.optim.torch_arguments(optimizer)["lr"])
        ]
        if _is_plateau(schedules[0]):
            if val_batches is None:
                raise SpecError(f"scheduler {scheduler}: ReduceLROnPlateau steps on the validation loss; "
                                "pass val_batches")
            plateaus, schedules = schedules, [None] * groups.count
    tx = jax_impl.optim.from_torch(optimizer, lr=schedules[0], param_groups=groups.jax_groups(converter, schedules),
                                   layout=layout)
    closure = jax_impl.optim.needs_closure(optimizer)  # LBFGS: optimizer.step(closure)

    # torch side, exactly as a PyTorch user builds it
    torch_criterion = (torch_model.loss if with_loss
                       else build_torch_loss(loss, dtype) if isinstance(loss, str) else loss[0])
    torch_optimizer = build_torch_optimizer(optimizer, groups.torch_params(torch_model))
    torch_scheduler = (build_torch_scheduler(scheduler, torch_optimizer, scheduler_arguments)
                       if scheduler else None)
    group_names = convert.torch_param_groups(torch_optimizer, names)
    reference = (RoundingReference(torch_model, _reference_criterion(loss, with_loss), clipping)
                 if dtype == "float32" and rounding_reference and amp is None else None)
    torch_scaler = (torch.amp.GradScaler("cpu", init_scale=scaler.init_scale, growth_factor=scaler.growth_factor,
                                         backoff_factor=scaler.backoff_factor, growth_interval=scaler.growth_interval)
                    if scaler is not None else None)
    autocast_dtype = getattr(torch, jnp.dtype(amp.dtype).name) if amp is not None else None
    compared_dtype = jnp.dtype(amp.dtype).name if amp is not None else dtype  # the tolerances' key
    flat_order = convert.FlatOrder.build(converter, params, [n for g in group_names for n in g]) if closure else None
    plateau_states = [plateau.init() for plateau in plateaus] if plateaus else None
    state = TrainState(params, rest, tx.init(params), scaler.init() if scaler is not None else None,
                       None if zero_grad else zero_gradients(params))
    if accumulate > 1 and closure:
        raise SpecError(f"optimizer {optimizer}: LBFGS evaluates its closure several times per step; "
                        "it cannot accumulate micro-batches")
    if not zero_grad and closure:
        raise SpecError(f"optimizer {optimizer}: LBFGS zeroes the gradients inside its closure; a loop that "
                        "forgets zero_grad does not apply to it")
    if amp is not None and closure:
        raise SpecError(f"optimizer {optimizer}: LBFGS evaluates its closure several times per step; "
                        "mixed precision with a GradScaler does not apply to it")
    if clipping is not None and closure:
        raise SpecError(f"optimizer {optimizer}: LBFGS evaluates its closure several times per step; "
                        "gradient clipping between backward() and step() does not apply to it")
    clip = (jax_impl.clip.make_clip(clipping.max_norm, clipping.norm_type, clipping.clip_value)
            if clipping is not None else None)
    train_step = make_train_step(graphdef, jax_loss, tx, with_grads=True, closure=closure, clip=clip,
                                 accumulate=accumulate, accumulate_reduction=accumulate_reduction, amp=amp,
                                 zero_grad=zero_grad)
    update_step = make_update_step(tx, objective=make_objective(graphdef, jax_loss) if closure else None,
                                   skip_nonfinite=scaler is not None)
    eval_step = make_eval_step(graphdef, jax_loss)

    def numpy_inputs(inputs: Any) -> np.ndarray:
        inputs = np.asarray(inputs)
        return inputs.astype(np.int64) if np.issubdtype(inputs.dtype, np.integer) else inputs.astype(numpy_dtype)

    def to_torch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        return torch.from_numpy(numpy_inputs(inputs)), torch.from_numpy(np.asarray(targets))

    def to_jax(batch: Batch | list[Batch]) -> tuple[jax.Array, jax.Array]:
        if isinstance(batch, list):  # accumulation: the micro-batches stacked, (K, B, ...)
            return (jnp.asarray(np.stack([numpy_inputs(inputs) for inputs, _ in batch])),
                    jnp.asarray(np.stack([np.asarray(targets) for _, targets in batch])))
        inputs, targets = batch
        return jnp.asarray(numpy_inputs(inputs)), jnp.asarray(targets)

    def torch_batches(batch: Batch | list[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [to_torch(b) for b in batch] if isinstance(batch, list) else [to_torch(batch)]

    total_steps = sum(len(batches) for batches in epochs)
    started = time.perf_counter()
    comparisons: list[StepComparison] = []
    summaries: list[EpochSummary] = []
    step = 0
    applied = 0  # torch's optimizer updates: the steps less those a GradScaler skipped
    halted = None
    localization, localization_step, first_step = None, None, None  # first_step: to localise step 0
    masked: set[str] = set()  # the JAX dropout layers holding a mask
    model_name = type(torch_model.model if with_loss else torch_model).__name__
    config = {"model": model_name, "loss": loss if isinstance(loss, str) else "custom loss pair"} | dict(
        config or {}) | {"optimizer": optimizer, "scheduler": scheduler, "scheduler_interval": scheduler_interval,
                         "mode": mode, "dtype": dtype, "accumulate": accumulate}
    position, saving = checkpoints.Position(0, 0, 0), checkpointing is not None and checkpointing.directory is not None
    saved_objects = dict(torch_model=torch_model, torch_optimizer=torch_optimizer, torch_scheduler=torch_scheduler,
                         buffers_filter=BUFFERS)
    if checkpointing is not None and checkpointing.resume is not None:
        def from_torch(steps_taken: int) -> TrainState:  # cross-framework resume: JAX from torch's state
            return TrainState(
                converter.to_jax(_torch_params(torch_model), state.params, what="parameters"),
                _load_buffers(converter, _torch_buffers(torch_model), state.rest),
                convert.load_torch_optimizer_state(state.opt_state, torch_optimizer, names, converter, steps_taken,
                                                   include_hyperparams=True, flat_order=flat_order))

        resumed = checkpoints.restore(checkpointing.resume, config, jax_state=state, plateau_states=plateau_states,
                                      from_torch=from_torch, steps_per_epoch=steps_per_epoch, **saved_objects)
        position, state, plateau_states, step = resumed.position, resumed.jax_state, resumed.plateau_states, \
            resumed.position.step
        applied = step  # no GradScaler with checkpoints: every step taken was applied
        if position.epoch >= len(epochs):
            raise SpecError(f"checkpoint {checkpointing.resume} is at epoch {position.epoch}; this run has only "
                            f"{len(epochs)} epoch(s): give more epochs to continue it")
    best = {"torch": position.torch_best, "jax": position.jax_best}
    recorder = debug_stats.Recorder(loss, dtype) if stats else None
    nonfinite = None
    for epoch, batches in enumerate(epochs):
        if epoch < position.epoch:
            continue
        resuming = epoch == position.epoch
        torch_losses, jax_losses = (list(position.torch_losses), list(position.jax_losses)) if resuming else ([], [])
        for index, batch in enumerate(batches):
            if resuming and index < position.batch:
                continue
            # torch: the user's loop, with the gradients read just before optimizer.step()
            torch_lr = float(torch_optimizer.param_groups[0]["lr"])
            torch_hyperparams = _scheduled_hyperparams(torch_optimizer.param_groups, numpy_dtype, torch_scheduler)
            localizing = localize is not False and localization is None
            # the weights before this step, for localisation: in resync mode they are the JAX
            # state's (rebuilt only if needed); in free mode the sides differ, so keep torch's
            torch_before = copy.deepcopy(torch_model.state_dict()) if localizing and mode == "free" else None
            if recorder is not None:
                recorder.before_step(index == (position.batch if resuming else 0), torch_model,
                                     lambda: nnx.merge(graphdef, state.params, state.rest),
                                     batch[0] if isinstance(batch, list) else batch, {})
            torch_batch = torch_batches(batch)
            with _first_step_errors(step, "torch"):  # torch's float64 gradients at these weights
                reference_grads = (reference.gradients(torch_model, torch_batch, seed, step, accumulate_reduction)
                                   if reference else None)
            try:
                with _first_step_errors(step, "torch"), HarnessDropout(torch_model, seed, step) as dropout:
                    torch_loss, captured, torch_norm = _torch_step(
                        torch_model, torch_criterion, torch_optimizer, names, torch_batch, clipping,
                        accumulate_reduction, autocast_dtype, torch_scaler, zero_grad,
                    )
            except RuntimeError as error:
                if "cannot be clipped" not in str(error):  # clip_grad_norm_(error_if_nonfinite=True)
                    raise
                halted = f"step {step}: torch's clip_grad_norm_ raised: {str(error).splitlines()[0]}"
                break
            # scaler.step skipped the update if the gradients it unscaled hold an inf or NaN
            torch_found_inf = (not all(np.isfinite(g).all() for g in captured.values())
                               if torch_scaler is not None else None)
            applied += 0 if torch_found_inf else 1
            torch_trace = StepTrace(
                loss=float(torch_loss.item()),
                lr=float(numpy_dtype(torch_lr)),  # torch casts lr to the parameters' dtype
                grads=captured,
                optimizer_state=convert.torch_optimizer_state(torch_optimizer, names, applied),
                params=_torch_params(torch_model),
                buffers=_torch_buffers(torch_model),
                hyperparams=torch_hyperparams,
                grad_norm=torch_norm,
                found_inf=torch_found_inf,
                scaler=_scaler_state(_jax_loss_scale(torch_scaler)),
            )
            if torch_scheduler is not None and scheduler_interval == "step":
                with warnings.catch_warnings():
                    if torch_found_inf:  # torch warns of a scheduler step before any optimizer step
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    torch_scheduler.step()

            # JAX: the compiled functional step, with the dropout masks torch used
            if dropout.masks or masked:
                masks = {name: None for name in masked - set(dropout.masks)} | dropout.masks
                state = state._replace(rest=hand_masks_to_jax(graphdef, state.params, state.rest, masks))
                masked = set(dropout.masks)
            state_before = state
            with _first_step_errors(step, "JAX"):
                state, metrics = train_step(state, to_jax(batch))
            jax_lr = metrics["lr"]
            if mode == "resync":
                # The optimizer half once more, on torch's gradients: the optimizer stages are
                # then checked from identical inputs, and the rounding of the JAX gradients
                # (checked at the gradient stage) cannot be amplified by an update such as
                # Adam's g / (sqrt(v) + eps) into a false difference in the parameters.
                torch_grads = converter.to_jax(torch_trace.grads, state_before.params, what="gradients")
                # LBFGS: torch's first closure value too; later evaluations are the JAX model's
                closure_inputs = ((jnp.asarray(torch_trace.loss, numpy_dtype), state_before.rest, to_jax(batch))
                                  if closure else ())
                params, opt_state, jax_lr = update_step(state_before.params, state_before.opt_state, torch_grads,
                                                        *closure_inputs)
                state = state._replace(params=params, opt_state=opt_state)
            jax_optimizer_state = convert.jax_optimizer_state(state.opt_state, converter, group_names,
                                                              flat_order=flat_order)
            if applied == 0:  # every update skipped so far: torch has not created its buffers yet
                jax_optimizer_state = {key: value for key, value in jax_optimizer_state.items()
                                       if key in torch_trace.optimizer_state}
            jax_trace = StepTrace(
                loss=float(metrics["loss"]),
                lr=float(numpy_dtype(jax_lr)),  # the transforms cast lr to the params' dtype
                grads=converter.to_torch(metrics["grads"]),
                optimizer_state=jax_optimizer_state,
                params=converter.to_torch(state.params),
                buffers=converter.to_torch(nnx.filter_state(state.rest, BUFFERS)),
                hyperparams=_scheduled_hyperparams(_jax_param_groups(state.opt_state), numpy_dtype, torch_scheduler),
                grad_norm=float(metrics["grad_norm"]) if "grad_norm" in metrics else None,
                found_inf=bool(metrics["found_inf"]) if "found_inf" in metrics else None,
                scaler=_scaler_state(state.loss_scale),
            )
            rounding = rounding_errors(torch_trace.grads, reference_grads) if reference_grads else None
            comparison = compare_steps(step, epoch, torch_trace, jax_trace, compared_dtype, mode, tolerances, rounding)
            comparisons.append(comparison)
            if on_step is not None:
                on_step(comparison, torch_trace, jax_trace)
            if recorder is not None:
                recorder.after_step(step, epoch, torch_trace, jax_trace)
            nonfinite = nonfinite or debug_stats.first_nonfinite(step, torch_trace, jax_trace)
            failure = comparison.first_failure
            diverged = failure is not None and failure[0] in ("loss", "gradient")
            if localizing and (diverged or (localize and step == 0)):
                weights = torch_before if torch_before is not None else _torch_state_dict(converter, state_before)
                first_batch = batch[0] if isinstance(batch, list) else batch  # of the micro-batches
                where = (torch_model, weights, (graphdef, state_before.params, state_before.rest), first_batch,
                         dropout.masks)
                if diverged:
                    localization, localization_step = _localize(*where, loss=loss, dtype=dtype, step=step), step
                else:
                    first_step = where
            torch_losses.append(torch_trace.loss)
            jax_losses.append(jax_trace.loss)
            step += 1
            if progress is not None:
                progress(comparison, total_steps)
            if mode == "resync":
                try:
                    state = TrainState(
                        converter.to_jax(torch_trace.params, state.params, what="parameters"),
                        _load_buffers(converter, torch_trace.buffers, state.rest),
                        convert.load_torch_optimizer_state(
                            state.opt_state, torch_optimizer, names, converter, applied, include_hyperparams=False,
                            flat_order=flat_order, schedule_steps=step,
                        ),
                        _jax_loss_scale(torch_scaler),
                        None if zero_grad else converter.to_jax(torch_trace.grads, state.params, what="gradients"),
                    )
                except convert.ConversionError as error:
                    if comparison.ok:
                        raise
                    # the divergence this step found makes torch's state unloadable: report it
                    halted = f"resync stopped after step {step - 1}: torch's state does not fit the JAX state: {error}"
                    break
            if saving and checkpointing.due(step) and index + 1 < len(batches):
                checkpoints.save_full(checkpointing.directory, checkpoints.Position(
                    epoch, index + 1, step, tuple(torch_losses), tuple(jax_losses), best["torch"], best["jax"]),
                    config, jax_state=state, plateau_states=plateau_states, **saved_objects)
        if halted is not None:
            summaries.append(EpochSummary(epoch, float(np.mean(torch_losses)), float(np.mean(jax_losses))))
            break
        if torch_scheduler is not None and scheduler_interval == "epoch" and plateaus is None:
            torch_scheduler.step()
        summary = EpochSummary(epoch, float(np.mean(torch_losses)), float(np.mean(jax_losses)))
        if val_batches is not None:
            torch_val = torch_loop.evaluate(torch_model, torch_criterion, (to_torch(b) for b in val_batches))
            jax_val = jax_evaluate(eval_step, state, (to_jax(b) for b in val_batches))
            if plateaus is not None:  # the seed's loop: scheduler.step(val_loss), each side on its own
                torch_scheduler.step(torch_val[0])
                plateau_states = [p.step(s, jax_val[0]) for p, s in zip(plateaus, plateau_states, strict=True)]
                state = state._replace(opt_state=jax_impl.optim.set_hyperparam(
                    state.opt_state, "lr", [s.lr for s in plateau_states]))
            tol = tolerance("loss", dtype, step=step, mode=mode, overrides=tolerances)  # validation: no autocast
            val_ok = compare_tensors("val_loss", torch_val[0], jax_val[0], tol).ok
            summary = dataclasses.replace(
                summary, torch_val_loss=torch_val[0], jax_val_loss=jax_val[0],
                torch_val_accuracy=torch_val[1], jax_val_accuracy=jax_val[1], val_ok=val_ok,
            )
        summaries.append(summary)
        if saving:
            for side, value in (("torch", summary.torch_val_loss), ("jax", summary.jax_val_loss)):
                if value is not None and (best[side] is None or value < best[side]):
                    best[side] = value
                    checkpoints.save_best(checkpointing.directory, side, epoch, value, torch_model=torch_model,
                                          jax_state=state, buffers_filter=BUFFERS)
            checkpoints.save_full(checkpointing.directory, checkpoints.Position(
                epoch + 1, 0, step, (), (), best["torch"], best["jax"]),
                config, jax_state=state, plateau_states=plateau_states, **saved_objects)
    if localization is None and first_step is not None:
        localization, localization_step = _localize(*first_step, loss=loss, dtype=dtype, step=0), 0
    return ParityReport(config, compared_dtype, mode, comparisons, summaries, time.perf_counter() - started, versions(),
                        dict(tolerances or {}), halted, localization, localization_step, nonfinite,
                        recorder.steps if recorder is not None else None)


def _micro_batch_groups(epoch: int, batches: Sequence[Batch], accumulate: int) -> list[list[Batch]]:
    """An epoch's batches in groups of ``accumulate``, one group per optimizer step."""
    if len(batches) % accumulate:
        raise SpecError(f"accumulate={accumulate}: epoch {epoch} has {len(batches)} batches, not a multiple of "
                        f"{accumulate} (the seed's loop would leave the last gradients unapplied)")
    groups = [list(batches[i:i + accumulate]) for i in range(0, len(batches), accumulate)]
    for index, group in enumerate(groups):
        shapes = {(np.shape(inputs), np.shape(targets)) for inputs, targets in group}
        if len(shapes) != 1:
            raise SpecError(f"accumulate={accumulate}: the batches of epoch {epoch}, step {index} differ in shape "
                            f"({sorted(shapes)}); micro-batches of one step must be the same size")
    return groups


def _reference_criterion(loss: str | tuple[Callable, Callable], with_loss: bool) -> Callable:
    """``(float64 replica, outputs, targets) -> loss`` for :class:`parity.rounding.RoundingReference`."""
    if with_loss:
        return lambda replica, outputs, targets: replica.loss(outputs, targets)
    criterion = build_torch_loss(loss, "float64") if isinstance(loss, str) else loss[0]
    return lambda replica, outputs, targets: criterion(outputs, targets)


def _with_loss(torch_model: torch.nn.Module, jax_model: nnx.Module, loss: str, dtype: str, seed: int,
               converter: convert.Converter | None) -> tuple[torch.nn.Module, nnx.Module, convert.Converter | None]:
    """Both models joined with their loss, which carries parameters: ``WithLoss(model, criterion)``
    on each side, torch's criterion initialised from ``seed``; a user's converter for the models
    is extended to the joined ones (``model.*``; the criterion's by the built-in rules)."""
    from jax_impl.models import WithLoss as JaxWithLoss
    from torch_ref.models import WithLoss as TorchWithLoss

    torch_dtype, jax_dtype, _ = DTYPES[dtype]
    torch.manual_seed(seed)
    torch_criterion = build_torch_loss(loss, dtype).to(torch_dtype)
    try:
        jax_criterion = jax_impl.losses.from_torch(loss, dtype=jax_dtype, rngs=nnx.Rngs(seed))
    except SpecError as error:
        raise SpecError(f"{error} (the harness sets the loss's dtype to the run's)") from None
    torch_joined = TorchWithLoss(torch_model, torch_criterion)
    if converter is not None:
        criterion_rules = convert.Converter.from_torch_module(torch_criterion)
        mapping = ({f"model.{name}": (f"model/{path}", rule) for name, (path, rule) in converter.mapping.items()}
                   | {f"criterion.{name}": (f"criterion/{path}", rule)
                      for name, (path, rule) in criterion_rules.mapping.items()})
        integers = ({f"model.{name}": d for name, d in converter.integer_dtypes.items()}
                    | {f"criterion.{name}": d for name, d in criterion_rules.integer_dtypes.items()})
        converter = convert.Converter(mapping, integers)
    return torch_joined, JaxWithLoss(jax_model, jax_criterion), converter


def _torch_state_dict(converter: convert.Converter, state: TrainState) -> dict[str, torch.Tensor]:
    """torch's ``state_dict`` of the JAX ``state``'s parameters and buffers."""
    arrays = converter.to_torch(state.params) | converter.to_torch(nnx.filter_state(state.rest, BUFFERS))
    return {name: torch.from_numpy(np.array(array)) for name, array in arrays.items()}


def _localize(torch_model, torch_state, jax_model, batch, masks, *, loss, dtype: str, step: int) -> Any:
    """:func:`parity.localize.localize` on ``batch`` from the weights both sides had before
    ``step`` (torch's; in resync mode the JAX side's are the same), with that step's masks."""
    from parity.localize import localize  # imported on first use: it is only needed on a divergence

    from torch_ref.models import WithLoss

    model = copy.deepcopy(torch_model)
    model.load_state_dict(torch_state)
    if isinstance(model, WithLoss):  # the models layer by layer, each side's criterion as its loss
        joined = nnx.merge(*jax_model)
        graphdef, params, rest = nnx.split(joined.model, nnx.Param, ...)
        loss = (model.loss, joined.loss)
        model, jax_model = model.model, (graphdef, params, rest)
        masks = {name.removeprefix("model."): mask for name, mask in masks.items()}
    try:
        result = localize(model, jax_model, batch, loss=loss, dtype=dtype, train=True, dropout_masks=masks)
    except Exception as error:  # a report without the layer table beats no report
        return f"layer-by-layer localisation of step {step} failed: {type(error).__name__}: {error}"
    return result


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """Which torch parameter goes to which parameter group, and each group's option overrides.

    Group 0 holds the parameters no user group selects, with the optimizer spec's own options;
    group ``i + 1`` is the user's group ``i``.
    """

    group_of: dict[str, int]  # torch parameter name -> group index
    overrides: tuple[dict[str, Any], ...]  # the options of user groups 1, 2, ...

    @property
    def count(self) -> int:
        return 1 + len(self.overrides)

    @classmethod
    def assign(cls, parameter_names: Sequence[str], param_groups: Sequence[Mapping[str, Any]]) -> "ParamGroups":
        patterns = []
        for index, group in enumerate(param_groups, start=1):
            if not isinstance(group, Mapping) or not isinstance(group.get("params"), str):
                raise SpecError(f"param group {index}: expected a mapping whose 'params' is a regular expression "
                                f"over torch parameter names, got {group!r}")
            try:
                patterns.append(re.compile(group["params"]))
            except re.error as error:
                raise SpecError(f"param group {index}: 'params' {group['params']!r} is not a valid "
                                f"regular expression: {error}") from None
        group_of = {}
        for name in parameter_names:
            group_of[name] = next((i for i, pattern in enumerate(patterns, start=1) if pattern.search(name)), 0)
        empty = [i for i in range(1 + len(patterns)) if i not in group_of.values()]
        if patterns and empty:
            described = ", ".join("0 (the parameters no group selects)" if i == 0
                                  else f"{i} (params={param_groups[i - 1]['params']!r})" for i in empty)
            raise SpecError(f"param group(s) {described} select no parameter; "
                            f"the torch parameters are: {', '.join(parameter_names)}")
        overrides = tuple({k: v for k, v in group.items() if k != "params"} for group in param_groups)
        return cls(group_of, overrides)

    def base_lrs(self, lr: float) -> list[float]:
        return [lr] + [group.get("lr", lr) for group in self.overrides]

    def torch_params(self, model: torch.nn.Module) -> Any:
        """What the torch optimizer is built on: ``model.parameters()``, or torch's list of
        group dicts."""
        if not self.overrides:
            return model.parameters()
        named = list(model.named_parameters())
        return [{"params": [p for name, p in named if self.group_of[name] == index],
                 **(self.overrides[index - 1] if index else {})} for index in range(self.count)]

    def jax_groups(self, converter: convert.Converter, schedules: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """``jax_impl.optim.from_torch``'s ``param_groups``: the same assignment, by JAX path."""
        groups = []
        for index, overrides in enumerate(self.overrides, start=1):
            members = {converter.jax_path(name) for name, group in self.group_of.items() if group == index}
            group = {**overrides, "params": lambda path, leaf, members=members: path in members}
            if schedules is not None and schedules[index] is not None:
                group["lr"] = schedules[index]
            groups.append(group)
        return groups


def _is_plateau(schedule: Any) -> bool:
    return hasattr(schedule, "init") and hasattr(schedule, "step")  # ReduceLROnPlateau: driven by a metric


def _jax_param_groups(opt_state: Any) -> list[dict[str, Any]]:
    """Each parameter group's hyperparameters, as torch's ``param_groups`` would hold them."""
    groups = []
    for group_state in jax_impl.optim.param_group_states(opt_state):
        hyperparams = {k: float(v) for k, v in getattr(group_state, "hyperparams", {}).items()}
        if "beta1" in hyperparams:
            hyperparams["betas"] = (hyperparams["beta1"], hyperparams.get("beta2"))
        groups.append(hyperparams)
    return groups


def _scheduled_hyperparams(param_groups: Sequence[Mapping[str, Any]], numpy_dtype: Any,
                           scheduler: Any) -> dict[str, float]:
    """What the lr stage compares besides group 0's lr: the lr of every further group and the
    momentum or beta1 a cycling scheduler (OneCycleLR, CyclicLR) writes, rounded to the
    parameters' dtype as the kernels use them."""
    cycles = bool(getattr(scheduler, "cycle_momentum", False))
    values = {}
    for index, group in enumerate(param_groups):
        suffix = f" (group {index})" if index else ""
        if index:
            values[f"lr{suffix}"] = float(numpy_dtype(group["lr"]))
        if cycles and "momentum" in group:
            values[f"momentum{suffix}"] = float(numpy_dtype(group["momentum"]))
        elif cycles and "betas" in group:
            values[f"beta1{suffix}"] = float(numpy_dtype(group["betas"][0]))
    return values


@contextlib.contextmanager
def _first_step_errors(step: int, side: str):
    """An error in the very first step is a configuration the side cannot run (a class weight
    of the wrong length, a model that does not fit the data): report it as bad input."""
    try:
        yield
    except SpecError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        if step != 0:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError(f"the {side} side failed on the first batch: {message}") from None


def _check_amp(amp: jax_impl.amp.MixedPrecision, dtype: str, loss: Any, jax_model: nnx.Module,
               checkpointing: checkpoints.Checkpointing | None) -> None:
    """What mixed precision needs: float32 parameters, a loss torch's autocast computes in
    float32, layers with an autocast rule; checkpoints do not hold a GradScaler yet."""
    if dtype != "float32":
        raise SpecError(f"mixed precision trains float32 parameters under autocast; the models are {dtype}")
    if not isinstance(loss, str):
        raise SpecError("mixed precision needs a torch loss spec (its autocast rule), not a custom loss pair")
    try:
        jax_impl.amp.check_loss(parse_call(loss).name)
        jax_impl.amp.check_supported(jax_model, amp.dtype)
    except ValueError as error:
        raise SpecError(str(error)) from None
    if checkpointing is not None:
        raise SpecError("mixed precision with checkpoints: the checkpoints do not hold the GradScaler's state yet")


def _scaler_state(loss_scale: jax_impl.amp.LossScaleState | None) -> dict[str, float]:
    """A GradScaler's state as the trace records it (:data:`~parity.trace.SCALER_STATE`)."""
    if loss_scale is None:
        return {}
    return dict(zip(SCALER_STATE, (float(loss_scale.scale), float(loss_scale.growth_tracker)), strict=True))


def _jax_loss_scale(scaler: torch.amp.GradScaler | None) -> jax_impl.amp.LossScaleState | None:
    """torch's GradScaler state as a :class:`jax_impl.amp.LossScaleState` (traced, and loaded
    into the JAX state in resync mode)."""
    if scaler is None:
        return None
    return jax_impl.amp.LossScaleState(jnp.asarray(np.float32(scaler.get_scale())),
                                       jnp.asarray(scaler.state_dict()["_growth_tracker"], jnp.int32))


def _torch_step(model, criterion, optimizer, names, batches, clipping: torch_loop.Clipping | None = None,
                accumulate_reduction: str = "mean", autocast_dtype: torch.dtype | None = None,
                scaler: torch.amp.GradScaler | None = None,
                zero_grad: bool = True) -> tuple[torch.Tensor, dict[str, np.ndarray], float | None]:
    """``torch_ref.loop.train_step`` on the one batch of ``batches`` (``accumulation_step`` on
    several); also returns the gradients ``step()`` saw and what ``clip_grad_norm_`` returned
    (the harness clips, with the loop's own :func:`torch_ref.loop.clip_gradients`, where the
    loop would, to keep the total norm)."""
    grads: dict[str, np.ndarray] = {}
    total_norm: list[float] = []

    def read_grads() -> None:
        norm = torch_loop.clip_gradients(model.parameters(), clipping)
        if norm is not None:
            total_norm.append(float(norm))
        missing = [name for p, name in names.items() if p.grad is None]
        if missing:
            raise SpecError(
                f"torch parameter(s) {', '.join(missing)} received no gradient (frozen or unused); "
                "the harness compares models whose every parameter is trained"
            )
        grads.update({name: convert.to_numpy(p.grad) for p, name in names.items()})

    if len(batches) == 1:
        loss, _ = torch_loop.train_step(model, criterion, optimizer, *batches[0], before_step=read_grads,
                                        autocast_dtype=autocast_dtype, scaler=scaler, zero_grad=zero_grad)
    else:
        loss, _ = torch_loop.accumulation_step(model, criterion, optimizer, batches, before_step=read_grads,
                                               reduction=accumulate_reduction, autocast_dtype=autocast_dtype,
                                               scaler=scaler)
    return loss, grads, (total_norm[0] if total_norm else None)


def _torch_params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: convert.to_numpy(p) for name, p in model.named_parameters()}


def _torch_buffers(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: convert.to_numpy(b) for name, b in model.named_buffers()}


def _load_buffers(converter: convert.Converter, arrays: Mapping[str, np.ndarray], rest: nnx.State) -> nnx.State:
    """``rest`` with its :data:`BUFFERS` part set from torch's buffers; dropout's streams and
    masks are kept as they are."""
    buffers, others = nnx.split_state(rest, BUFFERS, ...)
    return nnx.merge_state(converter.to_jax(arrays, buffers, what="buffers"), others)


def run(
    spec: RunSpec,
    progress: Progress | None = None,
    tolerances: Mapping[tuple[str, str], Tolerance] | None = None,
    scheduler_arguments: Mapping[str, Any] | None = None,
    on_step: StepObserver | None = None,
) -> ParityReport:
    """Run the configuration ``spec`` describes (data, models, components) through :func:`check_port`.

    ``scheduler_arguments`` adds scheduler arguments a spec string cannot hold (``LambdaLR``'s
    ``lr_lambda``), given to both sides. A spec with ``zero_grad=False`` also runs the correct
    loop and reports the departure from it (:mod:`parity.zero_grad`).
    """
    arguments = dict(progress=progress, tolerances=tolerances, scheduler_arguments=scheduler_arguments)
    if not spec.zero_grad:
        from parity.zero_grad import run_with_departure

        return run_with_departure(spec, _run_once, on_step=on_step, **arguments)
    return _run_once(spec, on_step=on_step, **arguments)


def _run_once(spec: RunSpec, progress: Progress | None, tolerances: Mapping[tuple[str, str], Tolerance] | None,
              scheduler_arguments: Mapping[str, Any] | None, on_step: StepObserver | None) -> ParityReport:
    dataset = data.load(spec.data, spec.seed)
    torch_model, jax_model = build_models(
        spec.model, input_size=dataset.input_size, num_classes=_model_outputs(spec.loss, dataset.num_classes),
        seed=spec.seed, dtype=spec.dtype,
    )
    if getattr(torch_model, "takes_tokens", False):  # a Transformer: integer tokens, not features
        dataset = dataset.as_tokens(torch_model.vocab_size, model=f"--model {spec.model}")
    available = dataset.batches_per_epoch(spec.batch_size)
    micro_batches = None if spec.steps_per_epoch is None else spec.steps_per_epoch * spec.accumulate
    if spec.accumulate > 1:  # whole steps of equal micro-batches only
        full = len(dataset.x_train) // spec.batch_size
        available = full - full % spec.accumulate
        if micro_batches is None:
            micro_batches = available
        if available == 0:
            raise SpecError(f"accumulate={spec.accumulate}: the training split ({len(dataset.x_train)} samples of "
                            f"{dataset.name}) has {full} full batches of {spec.batch_size}, fewer than one step")
    if micro_batches is not None and micro_batches > available:
        per_step = f" x accumulate={spec.accumulate}" if spec.accumulate > 1 else ""
        raise SpecError(
            f"steps_per_epoch={spec.steps_per_epoch}{per_step} exceeds the {available} batches of size "
            f"{spec.batch_size} in the training split ({len(dataset.x_train)} samples of {dataset.name})"
        )
    numpy_dtype = DTYPES[spec.dtype][2]
    epochs = [
        list(dataset.train_batches(epoch, spec.batch_size, spec.seed, micro_batches, numpy_dtype))
        for epoch in range(spec.epochs)
    ]
    val_batches = list(dataset.val_batches(spec.batch_size, numpy_dtype))
    writer = None
    if spec.tensorboard is not None:
        from parity.tensorboard import TensorBoardWriter

        writer, user_on_step = TensorBoardWriter(spec.tensorboard), on_step

        def on_step(comparison: StepComparison, torch_trace: StepTrace, jax_trace: StepTrace) -> None:
            writer.on_step(comparison, torch_trace, jax_trace)
            if user_on_step is not None:
                user_on_step(comparison, torch_trace, jax_trace)
    try:
        report = _run_port(torch_model, jax_model, spec, epochs, val_batches, dataset, on_step, progress, tolerances,
                           scheduler_arguments)
        if writer is not None:
            writer.epochs(report.epochs, report.steps)
        return report
    finally:
        if writer is not None:
            writer.close()


def _run_port(torch_model, jax_model, spec, epochs, val_batches, dataset, on_step, progress, tolerances,
              scheduler_arguments) -> ParityReport:
    return check_port(
        torch_model, jax_model, loss=spec.loss, optimizer=spec.optimizer, epochs=epochs,
        scheduler=spec.scheduler, scheduler_interval=spec.scheduler_interval,
        scheduler_arguments=scheduler_arguments,
        param_groups=[parse_param_group(text) for text in spec.param_groups],
        checkpointing=checkpoints.Checkpointing(spec.checkpoint_dir, spec.checkpoint_every, spec.resume)
        if spec.checkpoint_dir or spec.resume else None, on_step=on_step, stats=spec.stats,
        val_batches=val_batches, mode=spec.mode, progress=progress, tolerances=tolerances, seed=spec.seed,
        localize=spec.localize, rounding_reference=spec.rounding_reference, clipping=spec.clipping,
        accumulate=spec.accumulate, accumulate_reduction=spec.accumulate_reduction, amp=spec.mixed_precision,
        zero_grad=spec.zero_grad,
        config=spec.to_dict() | {"data_name": dataset.name, "train_samples": len(dataset.x_train),
                                 "val_samples": len(dataset.x_val), "input_size": dataset.input_size,
                                 "num_classes": dataset.num_classes},
    )


def _model_outputs(loss: str, num_classes: int) -> int:
    """How many outputs the model needs: the classes, or for a loss that carries parameters
    its ``in_features`` (the loss must then have the data's number of classes)."""
    if not jax_impl.losses.carries_parameters(loss):
        return num_classes
    call = parse_call(loss)
    classes_key = "n_classes" if call.name == "AdaptiveLogSoftmaxWithLoss" else "num_classes"
    for key in ("in_features", classes_key):
        if not isinstance(call.kwargs.get(key), int):
            raise SpecError(f"loss {call}: give {key}= as a keyword (the model's outputs are its in_features)")
    if call.kwargs[classes_key] != num_classes:
        raise SpecError(f"loss {call}: {classes_key}={call.kwargs[classes_key]} but the data has {num_classes} classes")
    return call.kwargs["in_features"]
