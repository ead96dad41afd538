"""The same seeded training in each training style, checked against PyTorch and timed.

Styles (:data:`STYLES`), each run on its own from the same initial weights and batches:

- ``torch eager``: ``torch_ref.loop.train_step``, the stateful loop a PyTorch user writes; the
  reference every other style is compared with.
- ``JAX functional (jit)``: ``jax_impl.step.make_train_step``, a pure jitted step over explicit
  pytrees (``TrainState(params, rest, opt_state)`` in and out).
- ``NNX stateful (nnx.jit)``: ``jax_impl.stateful.make_nnx_train_step``, ``nnx.Optimizer`` and
  ``nnx.jit`` mutating the module in place.
- ``NNX stateful (cached)``: the same step with its graph traversal cached once
  (``jax_impl.stateful.make_cached_nnx_train_step``, Flax's performance guide).
- ``NNX stateful (split once)``: the same step body, with ``(model, optimizer)`` split once and
  their state passed through a ``jax.jit`` step (``jax_impl.stateful.make_split_nnx_train_step``,
  the performance guide's other recipe).
- ``JAX functional (no jit)``: the pure step run op by op, as it is written.

Every JAX style's loss, parameters and buffers after every step are compared with torch's under
torch's names (free mode of :mod:`parity.compare`: the styles run on their own). Dropout models
get torch's masks (:mod:`parity.dropout`). LBFGS (a closure optimizer) and ReduceLROnPlateau
(stepped on a validation loss) are not supported here: ``parity run`` checks them.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import statistics
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import jax_impl.losses
import jax_impl.optim
import jax_impl.schedules
import jax_impl.stateful
import jax_impl.step
from jax_impl.checkpoint import atomic_path
from jax_impl.layers import set_dropout_masks
from jax_impl.spec import SpecError
from parity import convert, data
from parity.compare import TensorError, compare_tensors, tolerance
from parity.dropout import HarnessDropout, hand_masks_to_jax
from parity.runner import BUFFERS, ParamGroups, versions
from parity.spec import (DTYPES, RunSpec, build_models, build_torch_loss, build_torch_optimizer,
                         build_torch_scheduler, parse_param_group)
from torch_ref import loop as torch_loop

__all__ = ["Setup", "StyleRun", "Style", "StyleResult", "StylesReport", "STYLES", "TORCH", "run_styles",
           "run_functional", "run_nnx", "run_nnx_cached", "run_nnx_split", "code_lines", "code_source", "render",
           "to_json", "write_json"]

SCHEMA = "parity-styles/1"


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every JAX style starts from: torch's initial weights in the NNX model's state, the
    optax transform and loss built from the same specs, the batches, and torch's dropout masks."""

    graphdef: nnx.GraphDef
    jax_params: nnx.State  # torch's initial parameters, converted
    jax_rest: nnx.State  # torch's initial buffers, converted; dropout streams and masks
    tx: optax.GradientTransformation
    jax_loss: Callable[[jax.Array, jax.Array], jax.Array]
    batches: tuple[tuple[jax.Array, jax.Array], ...]  # every step's batch, epochs in order
    #: per step, the dropout masks to hand over before it (torch module name -> mask, None clears)
    masks: tuple[dict[str, np.ndarray | None], ...]
    converter: convert.Converter

    def model(self) -> nnx.Module:
        """A fresh NNX model holding the initial state."""
        return nnx.merge(self.graphdef, self.jax_params, self.jax_rest, copy=True)


@dataclasses.dataclass(frozen=True)
class StyleRun:
    """What one style did: per step its loss, parameters and buffers (numpy, by torch name) and
    the seconds its step call took (until its results were ready)."""

    losses: list[float]
    params: list[dict[str, np.ndarray]]
    buffers: list[dict[str, np.ndarray]]
    seconds: list[float]


@dataclasses.dataclass(frozen=True)
class Style:
    name: str
    holds: str  # the state the user holds and passes to the step
    code: tuple[Callable, ...]  # the project's functions that make up the step, as shown and counted
    run: Callable[[Setup], StyleRun]


@dataclasses.dataclass(frozen=True)
class StyleResult:
    name: str
    holds: str
    code: tuple[str, ...]  # qualified names of the functions counted
    code_lines: int
    losses: list[float]
    first_call_seconds: float
    median_step_seconds: float | None  # over the steps after the first; None with one step
    #: the first difference from torch: (step, stage, tensor error); None when it agrees
    difference: tuple[int, str, TensorError] | None = None

    @property
    def ok(self) -> bool:
        return self.difference is None


@dataclasses.dataclass(frozen=True)
class StylesReport:
    config: dict[str, Any]
    dtype: str
    styles: list[StyleResult]  # torch first
    versions: dict[str, str]

    @property
    def ok(self) -> bool:
        return all(style.ok for style in self.styles)

    @property
    def differing(self) -> list[StyleResult]:
        return [style for style in self.styles if not style.ok]


# ------------------------------------------------------------------------------------------
# The JAX styles


def _masked(model: nnx.Module, masks: Mapping[str, np.ndarray | None]) -> None:
    if masks:
        try:
            set_dropout_masks(model, masks)
        except KeyError as error:
            raise SpecError(f"torch drew a dropout mask the JAX model cannot take: {error.args[0]}") from None


def _nnx_trace(setup: Setup, model: nnx.Module, run: StyleRun, loss: Any) -> None:
    _, params, rest = nnx.split(model, nnx.Param, ...)
    _record(setup, run, loss, params, rest)


def _record(setup: Setup, run: StyleRun, loss: Any, params: nnx.State, rest: nnx.State) -> None:
    run.losses.append(float(loss))
    run.params.append(setup.converter.to_torch(params))
    run.buffers.append(setup.converter.to_torch(nnx.filter_state(rest, BUFFERS)))


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = jax.block_until_ready(call())
    return result, time.perf_counter() - started


def run_functional(setup: Setup, *, jit: bool = True) -> StyleRun:
    """``jax_impl.step.make_train_step``: ``state, metrics = train_step(state, batch)``."""
    train_step = jax_impl.step.make_train_step(setup.graphdef, setup.jax_loss, setup.tx, jit=jit)
    state = jax_impl.step.TrainState(setup.jax_params, setup.jax_rest, setup.tx.init(setup.jax_params))
    run = StyleRun([], [], [], [])
    for batch, masks in zip(setup.batches, setup.masks, strict=True):
        if masks:
            state = state._replace(rest=hand_masks_to_jax(setup.graphdef, state.params, state.rest, masks))
        (state, metrics), seconds = _timed(lambda: train_step(state, batch))
        run.seconds.append(seconds)
        _record(setup, run, metrics["loss"], state.params, state.rest)
    return run


def run_nnx(setup: Setup) -> StyleRun:
    """``jax_impl.stateful.make_nnx_train_step``: ``metrics = train_step(model, optimizer, batch)``."""
    model = setup.model()
    model.train()
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    train_step = jax_impl.stateful.make_nnx_train_step(setup.jax_loss)
    run = StyleRun([], [], [], [])
    for batch, masks in zip(setup.batches, setup.masks, strict=True):
        _masked(model, masks)
        metrics, seconds = _timed(lambda: train_step(model, optimizer, batch))
        run.seconds.append(seconds)
        _nnx_trace(setup, model, run, metrics["loss"])
    return run


def run_nnx_cached(setup: Setup) -> StyleRun:
    """``jax_impl.stateful.make_cached_nnx_train_step``: ``metrics = train_step(batch)``."""
    model = setup.model()
    model.train()
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    train_step = jax_impl.stateful.make_cached_nnx_train_step(setup.jax_loss, model, optimizer)
    run = StyleRun([], [], [], [])
    for batch, masks in zip(setup.batches, setup.masks, strict=True):
        _masked(model, masks)  # the cached step shares the model's Variables
        metrics, seconds = _timed(lambda: train_step(batch))
        run.seconds.append(seconds)
        _nnx_trace(setup, model, run, metrics["loss"])
    return run


def run_nnx_split(setup: Setup) -> StyleRun:
    """``jax_impl.stateful.make_split_nnx_train_step``: ``state, metrics = train_step(state, batch)``
    over ``nnx.split((model, optimizer))``, written back with ``nnx.update`` to read the model."""
    model = setup.model()
    model.train()
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    train_step = jax_impl.stateful.make_split_nnx_train_step(setup.jax_loss, graphdef)
    run = StyleRun([], [], [], [])
    for batch, masks in zip(setup.batches, setup.masks, strict=True):
        if masks:
            nnx.update((model, optimizer), state)
            _masked(model, masks)
            state = nnx.state((model, optimizer))
        (state, metrics), seconds = _timed(lambda: train_step(state, batch))
        run.seconds.append(seconds)
        nnx.update((model, optimizer), state)  # to read the model; not timed
        _nnx_trace(setup, model, run, metrics["loss"])
    return run


def _functional_code() -> tuple[Callable, ...]:
    return jax_impl.step.make_train_step, jax_impl.step.make_objective


TORCH = "torch eager"

#: The styles, torch's first (its ``run`` is None: torch runs in :func:`run_styles` itself).
STYLES: tuple[Style, ...] = (
    Style(TORCH, "model, optimizer, scheduler (in place)",
          (torch_loop.train_step,), None),  # type: ignore[arg-type]
    Style("JAX functional (jit)", "TrainState(params, rest, opt_state) in/out",
          _functional_code(), run_functional),
    Style("NNX stateful (nnx.jit)", "model, nnx.Optimizer (in place)",
          (jax_impl.stateful.make_nnx_train_step,), run_nnx),
    Style("NNX stateful (cached)", "model, nnx.Optimizer, bound once (in place)",
          (jax_impl.stateful.make_nnx_train_step, jax_impl.stateful.make_cached_nnx_train_step), run_nnx_cached),
    Style("NNX stateful (split once)", "(model, optimizer) state in/out, split once",
          (jax_impl.stateful.make_nnx_train_step, jax_impl.stateful.make_split_nnx_train_step), run_nnx_split),
    Style("JAX functional (no jit)", "TrainState(params, rest, opt_state) in/out",
          _functional_code(), lambda setup: run_functional(setup, jit=False)),
)


# ------------------------------------------------------------------------------------------
# Code shown and counted


def code_source(function: Callable) -> str:
    """The source of ``function`` as the project's file has it, dedented."""
    return textwrap.dedent(inspect.getsource(inspect.unwrap(function)))


def code_lines(function: Callable) -> int:
    """Lines of code of ``function``: its source without blank lines, comment-only lines and
    docstrings (its own and those of the functions defined inside it)."""
    source = code_source(function)
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), start=1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def _qualified(function: Callable) -> str:
    function = inspect.unwrap(function)
    return f"{function.__module__}.{function.__qualname__}"


# ------------------------------------------------------------------------------------------
# Running and comparing


def _check_supported(spec: RunSpec) -> None:
    if jax_impl.optim.needs_closure(spec.optimizer):
        raise SpecError(f"optimizer {spec.optimizer}: parity styles does not run closure optimizers (LBFGS); "
                        "parity run checks them")
    if spec.scheduler and spec.scheduler.strip().startswith("ReduceLROnPlateau"):
        raise SpecError(f"scheduler {spec.scheduler}: parity styles does not run ReduceLROnPlateau (stepped on a "
                        "validation loss); parity run checks it")


def _epochs(spec: RunSpec) -> tuple[torch.nn.Module, nnx.Module, list[list[tuple[np.ndarray, np.ndarray]]], dict]:
    """The two models and the seeded batches of every epoch, as :func:`parity.runner.run` makes them."""
    dataset = data.load(spec.data, spec.seed)
    torch_model, jax_model = build_models(spec.model, input_size=dataset.input_size,
                                          num_classes=dataset.num_classes, seed=spec.seed, dtype=spec.dtype)
    if getattr(torch_model, "takes_tokens", False):
        dataset = dataset.as_tokens(torch_model.vocab_size, model=f"--model {spec.model}")
    available = dataset.batches_per_epoch(spec.batch_size)
    if spec.steps_per_epoch is not None and spec.steps_per_epoch > available:
        raise SpecError(f"steps_per_epoch={spec.steps_per_epoch} exceeds the {available} batches of size "
                        f"{spec.batch_size} in the training split ({len(dataset.x_train)} samples of {dataset.name})")
    numpy_dtype = DTYPES[spec.dtype][2]
    epochs = [list(dataset.train_batches(epoch, spec.batch_size, spec.seed, spec.steps_per_epoch, numpy_dtype))
              for epoch in range(spec.epochs)]
    info = {"data_name": dataset.name, "train_samples": len(dataset.x_train), "input_size": dataset.input_size,
            "num_classes": dataset.num_classes}
    return torch_model, jax_model, epochs, info


def _numpy_inputs(inputs: Any, numpy_dtype: Any) -> np.ndarray:
    inputs = np.asarray(inputs)
    return inputs.astype(np.int64) if np.issubdtype(inputs.dtype, np.integer) else inputs.astype(numpy_dtype)


def _run_torch(spec: RunSpec, torch_model: torch.nn.Module, epochs, groups: ParamGroups):
    """The torch style: the seed's loop, with the harness's dropout masks. Returns its run and
    the masks each step drew (for the JAX styles)."""
    numpy_dtype = DTYPES[spec.dtype][2]
    criterion = build_torch_loss(spec.loss, spec.dtype)
    optimizer = build_torch_optimizer(spec.optimizer, groups.torch_params(torch_model))
    scheduler = build_torch_scheduler(spec.scheduler, optimizer, {}) if spec.scheduler else None
    run = StyleRun([], [], [], [])
    masks: list[dict[str, np.ndarray | None]] = []
    masked: set[str] = set()
    draws = True  # a model that draws no dropout mask on step 0 draws none: later steps run without the hook
    step = 0
    for batches in epochs:
        for inputs, targets in batches:
            inputs = torch.from_numpy(_numpy_inputs(inputs, numpy_dtype))
            targets = torch.from_numpy(np.asarray(targets))
            dropout = HarnessDropout(torch_model, spec.seed, step) if draws else None
            started = time.perf_counter()
            if dropout is not None:
                with dropout:
                    loss, _ = torch_loop.train_step(torch_model, criterion, optimizer, inputs, targets)
            else:
                loss, _ = torch_loop.train_step(torch_model, criterion, optimizer, inputs, targets)
            run.seconds.append(time.perf_counter() - started)
            drawn = dropout.masks if dropout is not None else {}
            draws = draws and bool(drawn)
            masks.append({name: None for name in masked - set(drawn)} | drawn)
            masked = set(drawn)
            if scheduler is not None and spec.scheduler_interval == "step":
                scheduler.step()
            run.losses.append(float(loss.item()))
            run.params.append({name: convert.to_numpy(p) for name, p in torch_model.named_parameters()})
            run.buffers.append({name: convert.to_numpy(b) for name, b in torch_model.named_buffers()})
            step += 1
        if scheduler is not None and spec.scheduler_interval == "epoch":
            scheduler.step()
    return run, masks


def _setup(spec: RunSpec, torch_model, jax_model, epochs, groups: ParamGroups, masks) -> Setup:
    numpy_dtype = DTYPES[spec.dtype][2]
    converter = convert.Converter.from_torch_module(torch_model)
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)
    params = converter.to_jax({n: convert.to_numpy(p) for n, p in torch_model.named_parameters()}, params,
                              what="parameters")
    buffers, others = nnx.split_state(rest, BUFFERS, ...)
    buffers = converter.to_jax({n: convert.to_numpy(b) for n, b in torch_model.named_buffers()}, buffers,
                               what="buffers")
    rest = nnx.merge_state(buffers, others)
    steps_per_epoch = len(epochs[0])
    lrs = groups.base_lrs(jax_impl.optim.torch_arguments(spec.optimizer)["lr"])
    schedules = ([jax_impl.schedules.from_torch(spec.scheduler, lr, steps_per_epoch if spec.scheduler_interval
                                                == "epoch" else None) for lr in lrs]
                 if spec.scheduler else [None] * groups.count)
    layout = convert.torch_layout(converter)
    tx = jax_impl.optim.from_torch(spec.optimizer, lr=schedules[0],
                                   param_groups=groups.jax_groups(converter, schedules), layout=layout)
    batches = tuple((jnp.asarray(_numpy_inputs(x, numpy_dtype)), jnp.asarray(y)) for b in epochs for x, y in b)
    return Setup(graphdef, params, rest, tx, jax_impl.losses.from_torch(spec.loss), batches, tuple(masks), converter)


def _first_difference(torch_run: StyleRun, jax_run: StyleRun, dtype: str) -> tuple[int, str, TensorError] | None:
    """The first (step, stage, tensor) where ``jax_run`` leaves the free-mode tolerance of torch's run."""
    for step, torch_loss in enumerate(torch_run.losses):
        stages = (("loss", {"loss": torch_loss}, {"loss": jax_run.losses[step]}),
                  ("parameters", torch_run.params[step], jax_run.params[step]),
                  ("buffers", torch_run.buffers[step], jax_run.buffers[step]))
        for stage, torch_values, jax_values in stages:
            tol = tolerance(stage, dtype, step=step, mode="free")
            for name in torch_values.keys() | jax_values.keys():
                if name not in jax_values or name not in torch_values:
                    side = "JAX" if name not in jax_values else "torch"
                    return step, stage, TensorError(name, False, np.inf, np.inf, (), 0, 0,
                                                    problem=f"missing on the {side} side")
            for name in torch_values:
                error = compare_tensors(name, torch_values[name], jax_values[name], tol)
                if not error.ok:
                    return step, stage, error
    return None


def _result(style: Style, run: StyleRun, difference) -> StyleResult:
    later = run.seconds[1:]
    return StyleResult(
        name=style.name, holds=style.holds, code=tuple(_qualified(f) for f in style.code),
        code_lines=sum(code_lines(f) for f in style.code), losses=list(run.losses),
        first_call_seconds=run.seconds[0], median_step_seconds=statistics.median(later) if later else None,
        difference=difference,
    )


def run_styles(spec: RunSpec, styles: Sequence[Style] | None = None,
               progress: Callable[[str], None] | None = None, torch_threads: int | None = None) -> StylesReport:
    """Train ``spec``'s configuration in torch, then in each JAX style of ``styles`` from the
    same initial weights, batches and dropout masks, and compare every step with torch's
    (``spec.mode`` is ignored: the styles always run free). ``styles`` must start with torch's.
    ``torch_threads``: ``torch.set_num_threads`` for the torch run (restored afterwards); on a
    busy machine torch's intra-op threads can wait on each other for tens of milliseconds a step."""
    styles = STYLES if styles is None else styles
    if not styles or styles[0].name != TORCH:
        raise SpecError(f"styles must start with {TORCH!r}, the reference")
    if torch_threads is not None and (isinstance(torch_threads, bool) or not isinstance(torch_threads, int)
                                      or torch_threads < 1):
        raise SpecError(f"torch_threads must be a positive integer, got {torch_threads!r}")
    _check_supported(spec)
    threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return _run_styles(spec, styles, progress)
    finally:
        torch.set_num_threads(threads)


def _run_styles(spec: RunSpec, styles: Sequence[Style], progress: Callable[[str], None] | None) -> StylesReport:
    torch_model, jax_model, epochs, info = _epochs(spec)
    names = [name for name, _ in torch_model.named_parameters()]
    groups = ParamGroups.assign(names, [parse_param_group(text) for text in spec.param_groups])
    if progress is not None:
        progress(TORCH)
    initial = {n: t.detach().clone() for n, t in torch_model.state_dict().items()}
    torch_run, masks = _run_torch(spec, torch_model, epochs, groups)
    torch_model.load_state_dict(initial)
    setup = _setup(spec, torch_model, jax_model, epochs, groups, masks)
    results = [_result(styles[0], torch_run, None)]
    for style in styles[1:]:
        if progress is not None:
            progress(style.name)
        jax_run = style.run(setup)
        results.append(_result(style, jax_run, _first_difference(torch_run, jax_run, spec.dtype)))
    config = spec.to_dict() | info | {"steps": len(torch_run.losses), "torch_threads": torch.get_num_threads()}
    config.pop("mode")
    config.pop("localize")
    return StylesReport(config, spec.dtype, results, versions())


# ------------------------------------------------------------------------------------------
# Showing the report


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def _difference_text(difference: tuple[int, str, TensorError]) -> str:
    step, stage, error = difference
    return f"step {step}, {stage}: {error.describe()}"


def table(report: StylesReport):
    """One row per style: agreement with torch, time per step, first call, code, state held."""
    from rich import box
    from rich.table import Table

    functional = next((s for s in report.styles if s.name == "JAX functional (jit)"), None)
    reference = functional.median_step_seconds if functional is not None else None
    result = Table(title=f"Training styles, {report.dtype}, {report.config['steps']} steps", box=box.SIMPLE_HEAD,
                   pad_edge=False, collapse_padding=True)
    numbers = ("step", "÷ jit", "1st call", "lines")
    for header in ("style", "vs torch", *numbers, "state the user holds and passes"):
        result.add_column(header, justify="right" if header in numbers else "left", overflow="fold",
                          no_wrap=header != "state the user holds and passes")
    for style in report.styles:
        if style.name == TORCH:
            verdict = "[dim]reference[/]"
        else:
            verdict = "[green]same[/]" if style.ok else f"[bold red]step {style.difference[0]}[/]"
        ratio = (f"{style.median_step_seconds / reference:.2f}x"
                 if reference and style.median_step_seconds is not None else "-")
        result.add_row(style.name, verdict, _ms(style.median_step_seconds), ratio, _ms(style.first_call_seconds),
                       str(style.code_lines), style.holds)
    return result


def render(report: StylesReport, console, *, show_code: bool = False, styles: Sequence[Style] | None = None) -> None:
    console.print(table(report))
    for style in report.differing:
        console.print(f"[bold red]{style.name} differs from torch[/] at {_difference_text(style.difference)}")
    if report.ok:
        console.print(f"all {len(report.styles) - 1} JAX styles agree with torch on every step "
                      f"(losses, parameters and buffers; free-mode {report.dtype} tolerances)")
    console.print("step: median time per step after the first; ÷ jit: its ratio to JAX functional (jit); 1st call: "
                  "with compilation; lines: the step's functions (--show-code) without docstrings, comments and "
                  f"blank lines. torch ran on {report.config['torch_threads']} thread(s). Times are noisy on a busy "
                  "machine.")
    if show_code:
        from rich.panel import Panel
        from rich.syntax import Syntax

        for style in STYLES if styles is None else styles:
            source = "\n\n".join(code_source(function) for function in style.code)
            names = ", ".join(_qualified(function) for function in style.code)
            console.print(Panel(Syntax(source, "python", theme="ansi_dark", background_color="default"),
                                title=f"{style.name}: {names}", title_align="left"))


def to_json(report: StylesReport) -> dict[str, Any]:
    def difference(style: StyleResult) -> dict[str, Any] | None:
        if style.difference is None:
            return None
        step, stage, error = style.difference
        return {"step": step, "stage": stage, "tensor": error.name, "index": list(error.index),
                "max_abs": _finite(error.max_abs), "max_rel": _finite(error.max_rel),
                "description": error.describe()}

    return {
        "schema": SCHEMA,
        "ok": report.ok,
        "config": report.config,
        "dtype": report.dtype,
        "styles": [{"name": s.name, "ok": s.ok, "difference": difference(s),
                    "median_step_seconds": s.median_step_seconds, "first_call_seconds": s.first_call_seconds,
                    "code_lines": s.code_lines, "code": list(s.code), "holds": s.holds, "losses": s.losses}
                   for s in report.styles],
        "versions": report.versions,
    }


def _finite(value: float) -> float | str:
    return value if np.isfinite(value) else str(value)


def write_json(report: StylesReport, path) -> None:
    """The report as JSON, atomically (the file appears complete or not at all)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(to_json(report), indent=2) + "\n")
