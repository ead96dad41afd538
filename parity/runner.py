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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import jax_impl
import jax_impl.losses
import jax_impl.optim
import jax_impl.schedules
from jax_impl.checkpoint import leaves_by_path
from jax_impl.layers import DropoutMask
from jax_impl.loop import evaluate as jax_evaluate
from jax_impl.spec import SpecError
from jax_impl.step import TrainState, make_eval_step, make_objective, make_train_step, make_update_step
from parity import checkpoints, convert, data
from parity import stats as debug_stats
from parity.dropout import HarnessDropout, hand_masks_to_jax
from parity.compare import StepComparison, Tolerance, compare_steps, compare_tensors, tolerance
from parity.spec import DTYPES, INTERVALS, MODES, RunSpec, build_models, parse_param_group, build_torch_loss, build_torch_optimizer, build_torch_scheduler
from parity.trace import StepTrace
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
    checkpointing: checkpoints.Checkpointing | None = None,
    on_step: StepObserver | None = None,
    stats: bool = False,
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
      seed: the stream of the dropout masks (:mod:`parity.dropout`): during each torch step
        every mask torch draws is replaced by the harness's mask for (seed, step, module), and
        the JAX model's dropout layers get the same masks before its step.
      checkpointing: full and best-model checkpoints, and the checkpoint to resume from
        (:mod:`parity.checkpoints`); the report then holds the steps from the resumed position.
      on_step: called after each step with its comparison and both sides' traces.
      stats: record gradient and activation statistics of both sides (:mod:`parity.stats`).
    """
    if mode not in MODES:
        raise SpecError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if scheduler_interval not in INTERVALS:
        raise SpecError(f"scheduler_interval must be one of {', '.join(INTERVALS)}, got {scheduler_interval!r}")
    steps_per_epoch = _epoch_lengths(epochs, scheduler, scheduler_interval)
    dtype = _dtype_name(torch_model)
    numpy_dtype = DTYPES[dtype][2]
    converter = converter or convert.Converter.from_torch_module(torch_model)
    names = {parameter: name for name, parameter in torch_model.named_parameters()}

    # JAX side, built from the specs by jax_impl alone (first: its messages name our checks)
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)
    _check_jax_dtype(params, dtype)
    params = converter.to_jax(_torch_params(torch_model), params, what="parameters")
    rest = _load_buffers(converter, _torch_buffers(torch_model), rest)
    jax_loss = jax_impl.losses.from_torch(loss) if isinstance(loss, str) else loss[1]
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
    torch_criterion = build_torch_loss(loss, dtype) if isinstance(loss, str) else loss[0]
    torch_optimizer = build_torch_optimizer(optimizer, groups.torch_params(torch_model))
    torch_scheduler = (build_torch_scheduler(scheduler, torch_optimizer, scheduler_arguments)
                       if scheduler else None)
    group_names = convert.torch_param_groups(torch_optimizer, names)
    flat_order = convert.FlatOrder.build(converter, params, [n for g in group_names for n in g]) if closure else None
    plateau_states = [plateau.init() for plateau in plateaus] if plateaus else None
    state = TrainState(params, rest, tx.init(params))
    train_step = make_train_step(graphdef, jax_loss, tx, with_grads=True, closure=closure)
    update_step = make_update_step(tx, objective=make_objective(graphdef, jax_loss) if closure else None)
    eval_step = make_eval_step(graphdef, jax_loss)

    def numpy_inputs(inputs: Any) -> np.ndarray:
        inputs = np.asarray(inputs)
        return inputs.astype(np.int64) if np.issubdtype(inputs.dtype, np.integer) else inputs.astype(numpy_dtype)

    def to_torch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        return torch.from_numpy(numpy_inputs(inputs)), torch.from_numpy(np.asarray(targets))

    def to_jax(batch: Batch) -> tuple[jax.Array, jax.Array]:
        inputs, targets = batch
        return jnp.asarray(numpy_inputs(inputs)), jnp.asarray(targets)

    total_steps = sum(len(batches) for batches in epochs)
    started = time.perf_counter()
    comparisons: list[StepComparison] = []
    summaries: list[EpochSummary] = []
    step = 0
    halted = None
    localization, localization_step, first_step = None, None, None  # first_step: to localise step 0
    masked: set[str] = set()  # the JAX dropout layers holding a mask
    config = {"model": type(torch_model).__name__, "loss": loss if isinstance(loss, str) else "custom loss pair"} | dict(
        config or {}) | {"optimizer": optimizer, "scheduler": scheduler, "scheduler_interval": scheduler_interval,
                         "mode": mode, "dtype": dtype}
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
                                     lambda: nnx.merge(graphdef, state.params, state.rest), batch, {})
            with _first_step_errors(step, "torch"), HarnessDropout(torch_model, seed, step) as dropout:
                torch_loss, captured = _torch_step(
                    torch_model, torch_criterion, torch_optimizer, names, to_torch(batch)
                )
            torch_trace = StepTrace(
                loss=float(torch_loss.item()),
                lr=float(numpy_dtype(torch_lr)),  # torch casts lr to the parameters' dtype
                grads=captured,
                optimizer_state=convert.torch_optimizer_state(torch_optimizer, names, step + 1),
                params=_torch_params(torch_model),
                buffers=_torch_buffers(torch_model),
                hyperparams=torch_hyperparams,
            )
            if torch_scheduler is not None and scheduler_interval == "step":
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
                state = TrainState(params, state.rest, opt_state)
            jax_trace = StepTrace(
                loss=float(metrics["loss"]),
                lr=float(numpy_dtype(jax_lr)),  # the transforms cast lr to the params' dtype
                grads=converter.to_torch(metrics["grads"]),
                optimizer_state=convert.jax_optimizer_state(state.opt_state, converter, group_names,
                                                            flat_order=flat_order),
                params=converter.to_torch(state.params),
                buffers=converter.to_torch(nnx.filter_state(state.rest, BUFFERS)),
                hyperparams=_scheduled_hyperparams(_jax_param_groups(state.opt_state), numpy_dtype, torch_scheduler),
            )
            comparison = compare_steps(step, epoch, torch_trace, jax_trace, dtype, mode, tolerances)
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
                where = (torch_model, weights, (graphdef, state_before.params, state_before.rest), batch,
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
                            state.opt_state, torch_optimizer, names, converter, step, include_hyperparams=False,
                            flat_order=flat_order,
                        ),
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
            tol = tolerance("loss", dtype, step=step, mode=mode, overrides=tolerances)
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
    return ParityReport(config, dtype, mode, comparisons, summaries, time.perf_counter() - started, versions(),
                        dict(tolerances or {}), halted, localization, localization_step, nonfinite,
                        recorder.steps if recorder is not None else None)


def _torch_state_dict(converter: convert.Converter, state: TrainState) -> dict[str, torch.Tensor]:
    """torch's ``state_dict`` of the JAX ``state``'s parameters and buffers."""
    arrays = converter.to_torch(state.params) | converter.to_torch(nnx.filter_state(state.rest, BUFFERS))
    return {name: torch.from_numpy(np.array(array)) for name, array in arrays.items()}


def _localize(torch_model, torch_state, jax_model, batch, masks, *, loss, dtype: str, step: int) -> Any:
    """:func:`parity.localize.localize` on ``batch`` from the weights both sides had before
    ``step`` (torch's; in resync mode the JAX side's are the same), with that step's masks."""
    from parity.localize import localize  # imported on first use: it is only needed on a divergence

    model = copy.deepcopy(torch_model)
    model.load_state_dict(torch_state)
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


def _torch_step(model, criterion, optimizer, names, batch) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """``torch_ref.loop.train_step`` on ``batch``; also returns the gradients ``step()`` saw."""
    grads: dict[str, np.ndarray] = {}

    def read_grads() -> None:
        missing = [name for p, name in names.items() if p.grad is None]
        if missing:
            raise SpecError(
                f"torch parameter(s) {', '.join(missing)} received no gradient (frozen or unused); "
                "the harness compares models whose every parameter is trained"
            )
        grads.update({name: convert.to_numpy(p.grad) for p, name in names.items()})

    loss, _ = torch_loop.train_step(model, criterion, optimizer, *batch, before_step=read_grads)
    return loss, grads


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
    ``lr_lambda``), given to both sides.
    """
    dataset = data.load(spec.data, spec.seed)
    torch_model, jax_model = build_models(
        spec.model, input_size=dataset.input_size, num_classes=dataset.num_classes,
        seed=spec.seed, dtype=spec.dtype,
    )
    if getattr(torch_model, "takes_tokens", False):  # a Transformer: integer tokens, not features
        dataset = dataset.as_tokens(torch_model.vocab_size, model=f"--model {spec.model}")
    available = dataset.batches_per_epoch(spec.batch_size)
    if spec.steps_per_epoch is not None and spec.steps_per_epoch > available:
        raise SpecError(
            f"steps_per_epoch={spec.steps_per_epoch} exceeds the {available} batches of size "
            f"{spec.batch_size} in the training split ({len(dataset.x_train)} samples of {dataset.name})"
        )
    numpy_dtype = DTYPES[spec.dtype][2]
    epochs = [
        list(dataset.train_batches(epoch, spec.batch_size, spec.seed, spec.steps_per_epoch, numpy_dtype))
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
        val_batches=val_batches, mode=spec.mode, progress=progress, tolerances=tolerances, seed=spec.seed, localize=spec.localize,
        config=spec.to_dict() | {"data_name": dataset.name, "train_samples": len(dataset.x_train),
                                 "val_samples": len(dataset.x_val), "input_size": dataset.input_size,
                                 "num_classes": dataset.num_classes},
    )
