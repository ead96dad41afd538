"""Layer-by-layer localisation: which module of a port first computes something different.

One forward and backward pass on both sides from identical weights (torch's, converted), with
every module call recorded:

- torch: a forward pre-hook and a forward hook on every submodule record each call's first
  positional input and its output (the first element of a tuple: LSTM's ``out``, attention's
  ``out``); the pre-hook also replaces the input ``x`` by ``x + zeros`` (a leaf that requires
  grad), so the loss's gradient with respect to that call's input is read off the zeros.
- JAX: while the model is traced, the ``__call__`` of every NNX module class in it is wrapped
  (the approach ``nnx.capture(method_outputs=...)`` takes) to record the same input and output
  and to add the same zero perturbation, differentiated alongside the parameters (the standard
  trick for gradients with respect to intermediates, as ``nnx.Module.perturb``).

"Input gradient" means everywhere: the gradient of the loss with respect to the tensor passed as
the call's first positional argument, through this call only (torch's full backward hook's
``grad_input[0]``); where the same tensor also fills other argument slots (self-attention's
``query``, ``key`` and ``value``), through all of them. Keeping the tensor's identity keeps
torch on its self-attention code path.

Calls are matched by torch module name (``encoder.layers.0.norm1``; ``""`` is the model itself)
and call number (``pool`` runs twice in the CNN); a module that runs on one side only (torch's
``relu`` module where JAX calls ``nnx.relu``; JAX's ``self_attn.out_proj``, whose weights torch
uses without calling the module) is listed, not compared. JAX values of channels-last layers
(convolutions, BatchNorm and pooling on ``(N, ..., C)``) are moved to torch's channels-first
layout before comparing. Dropout masks torch draws are recorded and handed to the JAX model
(``jax_impl.layers.set_dropout_masks``); masks given in ``dropout_masks`` replace torch's draws
on both sides.

The first divergence is looked for in the order each quantity is computed: forward outputs
and buffers (BatchNorm's running statistics, updated by a training-mode forward pass) in the
order the calls finish (an inner module before the one containing it), input and parameter
gradients in the order the backward pass produces them (the reverse of the order the calls
start).

    result = localize(torch_model, jax_model, (x, y), loss="CrossEntropyLoss()")
    print(result)                       # one line per layer, then the first divergent layer
    result.first_forward                # "encoder.layers.0.norm1", or None

Limits: a torch module that modifies its input in place (``ReLU(inplace=True)``) modifies the
perturbed copy, so the caller's tensor keeps its value (torch's full backward hooks refuse such
modules); JAX modules called inside a transform within the model (a cell under ``nnx.scan``)
are not recorded; while the JAX model is traced, the wrapped ``__call__`` methods are those of
the classes themselves (restored afterwards), so other threads tracing the same classes would
see them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch.utils._python_dispatch import TorchDispatchMode

import jax_impl.layers as L
import jax_impl.losses
from parity.compare import TensorError, Tolerance, compare_tensors, tolerance
from parity.convert import Converter, to_numpy
from parity.spec import build_torch_loss

__all__ = ["localize", "Localization", "LayerComparison", "Divergence", "STAGES", "CHANNELS_LAST"]

#: What is compared per layer, in the order a divergence is reported when several are found:
#: a forward difference explains everything after it; a buffer difference (forward outputs
#: agreeing) is a running statistic; an input-gradient difference with agreeing forward values
#: is a derivative; a parameter-gradient difference alone, a derivative that stops at the weights.
STAGES = ("forward", "buffers", "input_gradient", "parameter_gradient")

_STAGE_WORDS = {"forward": "forward output", "buffers": "buffer after the forward pass",
                "input_gradient": "gradient w.r.t. its input", "parameter_gradient": "parameter gradient"}

#: JAX layers whose inputs and outputs are channels-last ``(N, ..., C)`` where torch's are
#: channels-first ``(N, C, ...)``: moved with ``np.moveaxis(x, -1, 1)`` before comparing (any other
#: layer's value too when only that move makes its shape torch's).
CHANNELS_LAST: tuple[type, ...] = (nnx.Conv, nnx.ConvTranspose, nnx.BatchNorm, L.BatchNorm, L.MaxPool2d,
                                   L.AvgPool2d)

#: A one-off program, run once: on CPU, LLVM's optimisations cost most of its compile time
#: (measured 7 s -> 1.8 s for a small Transformer's forward and backward) and change only how
#: it rounds, far inside the tolerances.
_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

_DTYPES = {torch.float64: "float64", torch.float32: "float32"}
_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class LayerComparison:
    """One call of one module, both sides. ``None``: nothing to compare (an integer input, a
    call whose output is not an array)."""

    name: str  # torch's module path; "" is the model itself
    call: int  # 0 for the module's first call in the forward pass, 1 for its second, ...
    calls: int  # how many times the module ran
    type: str  # torch's class name
    jax_type: str  # the JAX module's
    start: int  # position of the call's start among all calls' starts and ends
    end: int  # position of its end
    forward: TensorError | None  # its output
    input: TensorError | None  # its first positional input, before it ran
    input_gradient: TensorError | None  # d loss / d input (see the module docstring)
    parameter_gradients: tuple[TensorError, ...] = ()  # the module's own parameters (with uncalled children's)
    buffers: tuple[TensorError, ...] = ()  # its buffers after the forward pass

    @property
    def label(self) -> str:
        label = self.name or "(model)"
        return f"{label} (call {self.call + 1} of {self.calls})" if self.calls > 1 else label

    def error(self, stage: str) -> TensorError | None:
        """The stage's error; for several tensors the first outside tolerance, else the worst."""
        if stage == "forward":
            return self.forward
        if stage == "input_gradient":
            return self.input_gradient
        tensors = self.parameter_gradients if stage == "parameter_gradient" else self.buffers
        return next((t for t in tensors if not t.ok), max(tensors, key=lambda t: t.ratio, default=None))

    def ok(self, stage: str) -> bool:
        error = self.error(stage)
        return error is None or error.ok


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first layer that differs in one stage."""

    stage: str
    layer: LayerComparison
    error: TensorError
    tolerance: Tolerance
    previous: LayerComparison | None = None  # forward: the call that finished just before

    @property
    def between_modules(self) -> bool:
        """A forward output whose input already differed while every call before it agreed: the
        difference comes from code between modules (a function such as an activation)."""
        return self.stage == "forward" and self.layer.input is not None and not self.layer.input.ok

    def describe(self) -> str:
        error, tol = self.error, self.tolerance
        what = _STAGE_WORDS[self.stage]
        if self.stage in ("buffers", "parameter_gradient"):
            what += f" {error.name}"
        if error.problem:
            text = f"{self.layer.label} ({what}: {error.problem})"
        else:
            text = (f"{self.layer.label} ({what}, max abs {error.max_abs:.2g}, max rel {error.max_rel:.2g}, "
                    f"tolerance {_tolerance_text(tol)})")
        if self.between_modules:
            after = f"after {self.previous.label}, whose output agrees" if self.previous else "before it"
            text += (f"; its input already differs, so the difference arises in code between modules, {after} "
                     f"(a function such as an activation, or an operation on the module's input)")
        return text


@dataclasses.dataclass(frozen=True)
class Localization:
    """Per-layer errors of one forward and backward pass, in the order the calls finish."""

    layers: tuple[LayerComparison, ...]
    dtype: str
    train: bool
    loss: TensorError  # torch's loss vs JAX's
    torch_loss: float
    jax_loss: float
    tolerances: Mapping[str, Tolerance]  # per stage, as applied (see localize)
    torch_only: tuple[str, ...] = ()  # modules that ran on the torch side only (not compared)
    jax_only: tuple[str, ...] = ()  # and on the JAX side only

    def _order(self, stage: str) -> list[LayerComparison]:
        if stage in ("input_gradient", "parameter_gradient"):  # as the backward pass produces them
            return sorted(self.layers, key=lambda layer: -layer.start)
        return list(self.layers)

    def first(self, stage: str) -> Divergence | None:
        """The first layer, in the order ``stage`` is computed, outside tolerance."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        for layer in self._order(stage):
            if not layer.ok(stage):
                previous = None
                if stage == "forward":
                    earlier = [other for other in self.layers if other.end < layer.end]
                    previous = earlier[-1] if earlier else None
                return Divergence(stage, layer, layer.error(stage), self.tolerances[stage], previous)
        return None

    @property
    def first_forward(self) -> str | None:
        """Torch name of the first module whose forward output differs (``None``: none does)."""
        return _name(self.first("forward"))

    @property
    def first_backward(self) -> str | None:
        """Torch name of the first module, in backward order, whose input gradient differs."""
        return _name(self.first("input_gradient"))

    @property
    def first_buffer(self) -> str | None:
        return _name(self.first("buffers"))

    @property
    def first_parameter_gradient(self) -> str | None:
        return _name(self.first("parameter_gradient"))

    @property
    def first_divergence(self) -> Divergence | None:
        """The most telling divergence: the first stage of :data:`STAGES` that has one."""
        return next((d for d in map(self.first, STAGES) if d is not None), None)

    @property
    def ok(self) -> bool:
        return self.loss.ok and self.first_divergence is None

    def layer(self, name: str, call: int = 0) -> LayerComparison:
        for layer in self.layers:
            if layer.name == name and layer.call == call:
                return layer
        compared = ", ".join(layer.label for layer in self.layers)
        raise KeyError(f"no compared call {call} of {name!r}; compared: {compared}")

    def summary(self) -> str:
        divergence = self.first_divergence
        if divergence is not None:
            return f"first divergent layer: {divergence.describe()}"
        if not self.loss.ok:
            return (f"every layer agrees but the loss differs (max abs {self.loss.max_abs:.2g}): "
                    f"the loss functions differ")
        return f"no layer diverges ({len(self.layers)} module calls compared)"

    def format(self) -> str:
        """A table, one line per module call (``!`` marks a value outside tolerance), then the
        first divergent layer."""
        mode = "train" if self.train else "eval"
        loss = (f"loss torch {self.torch_loss:.10g} jax {self.jax_loss:.10g} "
                f"(max abs {self.loss.max_abs:.2g}{'' if self.loss.ok else ' !'})")
        lines = [f"layer-by-layer localisation ({self.dtype}, {mode} mode): {loss}",
                 ("max abs / max rel error of each module's output and of the loss's gradient w.r.t. its input; "
                  "max abs of its parameter gradients and buffers")]
        header = ("layer", "type", "forward output", "input gradient", "param grads", "buffers")
        rows = [(layer.label, layer.type, _cell(layer.forward), _cell(layer.input_gradient),
                 _cell(layer.error("parameter_gradient"), relative=False),
                 _cell(layer.error("buffers"), relative=False))
                for layer in self.layers]
        widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
        for row in [header] + rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        skipped = [f"torch only: {', '.join(n or '(model)' for n in self.torch_only)}" if self.torch_only else "",
                   f"JAX only: {', '.join(n or '(model)' for n in self.jax_only)}" if self.jax_only else ""]
        if any(skipped):
            lines.append("not compared (no counterpart on the other side): " + "; ".join(filter(None, skipped)))
        lines.append(self.summary())
        return "\n".join(lines)

    __str__ = format

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``json.dumps(..., allow_nan=False)`` works: inf and NaN become strings)."""
        divergences = {stage: self.first(stage) for stage in STAGES}
        first = self.first_divergence
        return {
            "dtype": self.dtype, "train": self.train,
            "loss": {"torch": _number(self.torch_loss), "jax": _number(self.jax_loss), **_error_dict(self.loss)},
            "tolerances": {stage: {"rtol": tol.rtol, "atol": tol.atol, "tensor_rtol": tol.tensor_rtol,
                                   "reason": tol.reason} for stage, tol in self.tolerances.items()},
            "layers": [{
                "name": layer.name, "call": layer.call, "calls": layer.calls, "type": layer.type,
                "jax_type": layer.jax_type,
                "forward": _error_dict(layer.forward), "input": _error_dict(layer.input),
                "input_gradient": _error_dict(layer.input_gradient),
                "parameter_gradients": [_error_dict(t) for t in layer.parameter_gradients],
                "buffers": [_error_dict(t) for t in layer.buffers],
            } for layer in self.layers],
            "first": {stage: None if d is None else {"name": d.layer.name, "call": d.layer.call}
                      for stage, d in divergences.items()},
            "first_forward": self.first_forward, "first_backward": self.first_backward,
            "first_divergence": None if first is None else {
                "stage": first.stage, "name": first.layer.name, "call": first.layer.call,
                "between_modules": first.between_modules, "error": _error_dict(first.error)},
            "summary": self.summary(),
            "torch_only": list(self.torch_only), "jax_only": list(self.jax_only),
        }


def _name(divergence: Divergence | None) -> str | None:
    return None if divergence is None else divergence.layer.name


def _tolerance_text(tol: Tolerance) -> str:
    parts = [f"{tol.rtol:.2g} |torch|" if tol.rtol else "", f"{tol.atol:.2g}" if tol.atol else "",
             f"{tol.tensor_rtol:.2g} max|torch|" if tol.tensor_rtol else ""]
    return " + ".join(filter(None, parts)) or "0"


def _cell(error: TensorError | None, relative: bool = True) -> str:
    if error is None:
        return "-"
    if error.problem:
        return "! " + error.problem
    text = f"{error.max_abs:.1e} / {error.max_rel:.1e}" if relative else f"{error.max_abs:.1e}"
    return text if error.ok else text + " !"


def _number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _error_dict(error: TensorError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"tensor": error.name, "ok": error.ok, "max_abs": _number(error.max_abs), "max_rel": _number(error.max_rel),
            "tolerance_ratio": _number(error.ratio), "index": list(error.index), "mismatched": error.mismatched,
            "size": error.size, "torch_value": _number(error.torch_value), "jax_value": _number(error.jax_value),
            "problem": error.problem or None}


# ------------------------------------------------------------------------------------------
# Recording module calls


@dataclasses.dataclass(frozen=True)
class _Call:
    key: str
    name: str
    call: int
    module_type: type
    start: int
    end: int


def _key(name: str, call: int) -> str:
    return f"{name}#{call}"


class _TorchTap(TorchDispatchMode):
    """Records every module call of ``model`` (input, output, a zero perturbation of the input)
    and the dropout masks drawn inside each module, replacing them with ``given_masks``."""

    def __init__(self, model: torch.nn.Module, given_masks: Mapping[str, np.ndarray]):
        super().__init__()
        self.model, self.given_masks = model, dict(given_masks)
        self.calls: list[_Call] = []
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self.masks: dict[str, np.ndarray] = {}
        self._running: list[tuple[str, int, int]] = []  # (name, call, start) of the calls under way
        self._counts: dict[str, int] = {}
        self._clock = itertools.count()
        self._handles: list[Any] = []

    def __enter__(self):
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._enter, name),
                                                                  with_kwargs=True))
            self._handles.append(module.register_forward_hook(functools.partial(self._leave, name)))
        return super().__enter__()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def _enter(self, name: str, module: torch.nn.Module, args: tuple, kwargs: dict):
        call = self._counts.get(name, 0)
        self._counts[name] = call + 1
        self._running.append((name, call, next(self._clock)))
        if not (args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point()):
            return None
        x, key = args[0], _key(name, call)
        self.inputs[key] = x.detach().clone()
        self.deltas[key] = delta = torch.zeros_like(x, requires_grad=True)
        moved = x + delta  # numerically x; the same object wherever x was passed
        return (tuple(moved if a is x else a for a in args), {k: moved if v is x else v for k, v in kwargs.items()})

    def _leave(self, name: str, module: torch.nn.Module, args: tuple, output: Any) -> None:
        running, call, start = self._running.pop()
        assert running == name, f"module calls out of order: {running} left as {name}"
        key = _key(name, call)
        first = _first(output)
        if isinstance(first, torch.Tensor):
            self.outputs[key] = first.detach().clone()
        self.calls.append(_Call(key, name, call, type(module), start, next(self._clock)))
        # returns None: a forward hook's return value would replace the output

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.bernoulli_.float and self._running:
            name = self._running[-1][0]  # the innermost running module drew it
            if name in self.masks:
                raise ValueError(f"{name or '(model)'} drew two dropout masks in one forward pass; the JAX "
                                 f"layers take one mask per module")
            if name in self.given_masks:
                given = torch.as_tensor(np.asarray(self.given_masks[name]))
                out.copy_(given.reshape(out.shape).to(out.dtype))
            self.masks[name] = out.detach().clone().numpy()
        return out


def _first(value: Any) -> Any:
    """A module's output, or the first element of a tuple output ((out, (h, c)), (out, weights))."""
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value


def _is_float_array(value: Any) -> bool:
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating)


class _JaxTap:
    """While bound to a model, records every call of its modules: input, output, and the input
    moved by ``deltas[key]`` (zeros, differentiated). Bound inside the traced function: the
    records hold tracers, which the function returns."""

    def __init__(self):
        self.deltas: dict[str, jax.Array] = {}
        self.calls: list[_Call] = []
        self.inputs: dict[str, jax.Array] = {}
        self.outputs: dict[str, jax.Array] = {}
        self._names: dict[int, str] = {}
        self._counts: dict[str, int] = {}
        self._clock = itertools.count()
        self._active: set[int] = set()

    @contextlib.contextmanager
    def bind(self, model: nnx.Module, deltas: Mapping[str, jax.Array]) -> Iterator[None]:
        self.deltas = dict(deltas)
        modules = list(nnx.iter_modules(model))
        for path, module in modules:
            self._names.setdefault(id(module), ".".join(map(str, path)))
        classes = {}
        for _, module in modules:  # the class whose __call__ the module runs
            owner = next((cls for cls in type(module).__mro__ if "__call__" in cls.__dict__), None)
            if owner is not None:
                classes[owner] = owner.__dict__["__call__"]
        try:
            for owner, original in classes.items():
                setattr(owner, "__call__", self._wrap(original))  # noqa: B010
            yield
        finally:
            for owner, original in classes.items():
                setattr(owner, "__call__", original)  # noqa: B010

    def _wrap(self, original: Callable) -> Callable:
        tap = self

        @functools.wraps(original)
        def wrapped(module, *args, **kwargs):
            name = tap._names.get(id(module))
            if name is None or id(module) in tap._active:  # not the model's, or a super().__call__
                return original(module, *args, **kwargs)
            return tap._record(module, name, original, args, kwargs)

        return wrapped

    def _record(self, module: nnx.Module, name: str, original: Callable, args: tuple, kwargs: dict) -> Any:
        call = self._counts.get(name, 0)
        self._counts[name] = call + 1
        key, start = _key(name, call), next(self._clock)
        if args and _is_float_array(args[0]):
            x = args[0]
            self.inputs[key] = x
            if key in self.deltas:
                moved = x + self.deltas[key]
                args = tuple(moved if a is x else a for a in args)
                kwargs = {k: moved if v is x else v for k, v in kwargs.items()}
        self._active.add(id(module))
        try:
            output = original(module, *args, **kwargs)
        finally:
            self._active.discard(id(module))
        first = _first(output)
        if isinstance(first, jax.Array):
            self.outputs[key] = first
        self.calls.append(_Call(key, name, call, type(module), start, next(self._clock)))
        return output


# ------------------------------------------------------------------------------------------
# The two passes


def _torch_pass(torch_model, inputs, targets, criterion, train, dropout_masks):
    """Forward and backward on ``torch_model`` (a copy: the caller's model, its buffers, grads
    and the global RNG are left as they were)."""
    model = torch_model
    model.train(train)
    with torch.random.fork_rng(devices=[]), _TorchTap(model, dropout_masks) as tap:
        output = model(inputs)
    loss = criterion(output, targets)
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    deltas = tap.deltas
    grads = torch.autograd.grad(loss, list(parameters.values()) + list(deltas.values()), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in
             zip(grads, list(parameters.values()) + list(deltas.values()))]
    parameter_grads = {name: to_numpy(g) for name, g in zip(parameters, grads)}
    input_grads = {key: to_numpy(g) for key, g in zip(deltas, grads[len(parameters):])}
    buffers = {name: to_numpy(b) for name, b in model.named_buffers()}
    return dict(loss=float(loss.item()), calls=tap.calls, inputs={k: to_numpy(v) for k, v in tap.inputs.items()},
                outputs={k: to_numpy(v) for k, v in tap.outputs.items()}, input_grads=input_grads,
                parameter_grads=parameter_grads, buffers=buffers, masks=tap.masks)


def _jax_pass(jax_model, inputs, targets, jax_loss, converter):
    graphdef, params, rest = nnx.split(jax_model, nnx.Param, ...)

    def run(params, deltas, rest, inputs, targets, tap):
        model = nnx.merge(graphdef, params, rest, copy=True)
        with tap.bind(model, deltas):
            output = model(inputs)
        loss = jax_loss(output, targets)
        return loss, (tap.inputs, tap.outputs, nnx.state(model, nnx.BatchStat))

    shapes = _JaxTap()  # first trace: which calls take a float input, and its shape
    _, (input_shapes, _, _) = jax.eval_shape(functools.partial(run, tap=shapes), params, {}, rest, inputs, targets)
    deltas = {key: np.zeros(shape.shape, shape.dtype) for key, shape in input_shapes.items()}

    tap = _JaxTap()
    value_and_grad = jax.jit(jax.value_and_grad(functools.partial(run, tap=tap), argnums=(0, 1), has_aux=True))
    options = _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    compiled = value_and_grad.lower(params, deltas, rest, inputs, targets).compile(options)
    (loss, (jax_inputs, outputs, stats)), (parameter_grads, input_grads) = compiled(
        params, deltas, rest, inputs, targets)
    return dict(loss=float(loss), calls=tap.calls, inputs=_numpy(jax_inputs), outputs=_numpy(outputs),
                input_grads=_numpy(input_grads), parameter_grads=converter.to_torch(parameter_grads),
                buffers=converter.to_torch(stats))


def _numpy(tree: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in tree.items()}


def _torch_layout(value: np.ndarray, torch_value: np.ndarray | None, channels_last: bool) -> np.ndarray:
    if value.ndim >= 3:
        moved = np.moveaxis(value, -1, 1)
        if channels_last or (torch_value is not None and value.shape != torch_value.shape
                             and moved.shape == torch_value.shape):
            return moved
    return value


# ------------------------------------------------------------------------------------------
# The entry point


def _jax_module(jax_model: nnx.Module | Sequence[Any]) -> nnx.Module:
    if isinstance(jax_model, nnx.Module):
        return nnx.clone(jax_model)
    return nnx.merge(*jax_model)  # (graphdef, params, rest, ...)


def _load_torch_weights(jax_model: nnx.Module, torch_model: torch.nn.Module, converter: Converter) -> None:
    params = {name: to_numpy(p) for name, p in torch_model.named_parameters()}
    buffers = {name: to_numpy(b) for name, b in torch_model.named_buffers()}
    nnx.update(jax_model, converter.to_jax(params, nnx.state(jax_model, nnx.Param), what="parameters"))
    nnx.update(jax_model, converter.to_jax(buffers, nnx.state(jax_model, nnx.BatchStat), what="buffers"))


def _losses(loss: str | tuple[Callable, Callable], dtype: str) -> tuple[Callable, Callable]:
    if isinstance(loss, str):
        return build_torch_loss(loss, dtype), jax_impl.losses.from_torch(loss)
    torch_loss, jax_loss = loss
    return torch_loss, jax_loss


def _owner(name: str, owners: Sequence[str]) -> str | None:
    """The deepest of ``owners`` (module names) that ``name`` (a variable's) lies in."""
    inside = [owner for owner in owners if owner == "" or name.startswith(owner + ".")]
    return max(inside, key=lambda owner: len(owner.split(".")) if owner else 0, default=None)


def _stage_tolerance(base: Tolerance, torch_values: Sequence[np.ndarray]) -> Tolerance:
    """``base`` with its term relative to the tensor's largest element taken relative to the
    largest element of the whole stage instead (see :func:`localize`)."""
    largest = max((float(np.max(np.abs(v), initial=0.0)) for v in torch_values if np.size(v)), default=0.0)
    largest = largest if math.isfinite(largest) else 0.0
    return dataclasses.replace(base, atol=base.atol + base.tensor_rtol * largest, tensor_rtol=0.0)


def localize(
    torch_model: torch.nn.Module,
    jax_model: nnx.Module | Sequence[Any],
    batch: tuple[Any, Any],
    *,
    loss: str | tuple[Callable, Callable] = "CrossEntropyLoss()",
    converter: Converter | None = None,
    dtype: str | None = None,
    train: bool | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    dropout_masks: Mapping[str, np.ndarray] | None = None,
) -> Localization:
    """One forward and backward pass of both models on ``batch``, compared module by module.

    Args:
      torch_model: the reference; not modified (a copy runs, under a forked RNG).
      jax_model: its NNX twin, or ``(graphdef, params, rest, ...)`` from ``nnx.split``; not
        modified. Its variables are overwritten (in a copy) with torch's, converted by
        ``converter`` (default ``Converter.from_torch_module(torch_model)``).
      batch: ``(inputs, targets)`` in torch's layout (numpy or array-likes); float inputs are
        cast to ``dtype``.
      loss: a torch.nn loss spec (``"CrossEntropyLoss()"``) or ``(torch_fn, jax_fn)``, each
        ``fn(output, targets)``.
      dtype: ``"float64"`` or ``"float32"`` (the torch copy is cast to it); default the torch
        model's parameter dtype. The JAX model keeps its own dtypes.
      train: training mode on both sides (default: the torch model's mode).
      tolerances: per stage (:data:`STAGES`); default the harness's table
        (``parity.compare.tolerance``): ``"gradient"`` for forward outputs and both kinds of
        gradients, ``"buffers"`` for buffers. The term relative to a tensor's largest element
        applies to the largest element of the stage (every layer's outputs, say): a value that
        is zero in exact arithmetic (the gradient of a bias followed by BatchNorm) is a sum of
        terms as large as the others, and its rounding is judged at their scale.
      dropout_masks: ``{torch module name: mask}`` (0/1, any shape with the mask's size) used
        by both sides instead of torch's draws; the masks torch draws elsewhere are recorded and
        handed to JAX.

    Returns a :class:`Localization`; ``print`` it for a table and the first divergent layer.
    """
    torch_copy = copy.deepcopy(torch_model)
    if dtype is None:
        floats = [p.dtype for p in torch_copy.parameters() if p.is_floating_point()]
        dtype = _DTYPES.get(floats[0], "float32") if floats else "float32"
    elif dtype in _TORCH_DTYPES:
        torch_copy.to(_TORCH_DTYPES[dtype])
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_TORCH_DTYPES)}, got {dtype!r}")
    train = torch_model.training if train is None else train
    converter = converter or Converter.from_torch_module(torch_model)
    torch_criterion, jax_criterion = _losses(loss, dtype)

    inputs, targets = (np.asarray(x) for x in batch)
    if np.issubdtype(inputs.dtype, np.floating):
        inputs = inputs.astype(np.dtype(dtype))
    if np.issubdtype(targets.dtype, np.floating):
        targets = targets.astype(np.dtype(dtype))

    jax_twin = _jax_module(jax_model)
    _load_torch_weights(jax_twin, torch_copy, converter)  # before torch's forward moves its buffers
    torch_side = _torch_pass(torch_copy, torch.from_numpy(inputs.copy()), torch.from_numpy(targets.copy()),
                             torch_criterion, train, dict(dropout_masks or {}))
    if train:
        L.set_dropout_masks(jax_twin, torch_side["masks"])
    jax_twin.train() if train else jax_twin.eval()
    jax_side = _jax_pass(jax_twin, jnp.asarray(inputs), jnp.asarray(targets), jax_criterion, converter)
    return _compare(torch_side, jax_side, dtype, train, tolerances)


def _compare(torch_side: dict, jax_side: dict, dtype: str, train: bool,
             tolerances: Mapping[str, Tolerance] | None) -> Localization:
    jax_calls = {call.key: call for call in jax_side["calls"]}
    torch_calls = sorted(torch_side["calls"], key=lambda call: call.end)  # the order calls finish
    matched = [call for call in torch_calls if call.key in jax_calls]
    counts = {}
    for call in torch_calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    torch_keys = {call.key for call in torch_calls}
    torch_only = tuple(dict.fromkeys(call.name for call in torch_calls if call.key not in jax_calls))
    jax_only = tuple(dict.fromkeys(call.name for call in sorted(jax_side["calls"], key=lambda c: c.end)
                                   if call.key not in torch_keys))

    # Pair up every value in torch's layout: (torch value or None, JAX value or None) by stage.
    pairs: dict[str, dict[str, tuple[np.ndarray | None, np.ndarray | None]]] = {
        "forward": {}, "input": {}, "input_gradient": {}}
    for call in matched:
        channels_last = issubclass(jax_calls[call.key].module_type, CHANNELS_LAST)
        for stage, source in (("forward", "outputs"), ("input", "inputs"), ("input_gradient", "input_grads")):
            torch_value, jax_value = torch_side[source].get(call.key), jax_side[source].get(call.key)
            if torch_value is None and jax_value is None:
                continue
            if stage != "forward" and (torch_value is None or jax_value is None):
                continue  # an input passed by keyword on one side: nothing to compare it with
            if jax_value is not None:
                jax_value = _torch_layout(jax_value, torch_value, channels_last)
            pairs[stage][call.key] = (torch_value, jax_value)

    owners = [call.name for call in matched]
    by_owner: dict[str, dict[str, list]] = {"parameter_gradient": {}, "buffers": {}}
    for stage, source in (("parameter_gradient", "parameter_grads"), ("buffers", "buffers")):
        torch_values, jax_values = torch_side[source], jax_side[source]
        for name in list(torch_values) + [n for n in jax_values if n not in torch_values]:
            owner = _owner(name, owners)
            if owner is not None:
                by_owner[stage].setdefault(owner, []).append((name, torch_values.get(name), jax_values.get(name)))

    given = dict(tolerances or {})
    defaults = {"forward": "gradient", "input": "gradient", "input_gradient": "gradient",
                "parameter_gradient": "gradient", "buffers": "buffers"}
    applied = {}
    for stage, row in defaults.items():
        base = given.get(stage if stage != "input" else "forward") or tolerance(row, dtype)
        values = ([t for t, _ in pairs[stage].values() if t is not None] if stage in pairs else
                  [t for entries in by_owner[stage].values() for _, t, _ in entries if t is not None])
        applied[stage] = _stage_tolerance(base, values)

    def error(name: str, stage: str, torch_value, jax_value) -> TensorError:
        if torch_value is None or jax_value is None:
            side = "torch" if torch_value is None else "JAX"
            return TensorError(name, False, np.inf, np.inf, (), 1, 1, np.inf, problem=f"missing on the {side} side")
        return compare_tensors(name, torch_value, jax_value, applied[stage])

    layers = []
    for call in matched:
        compared = {stage: error(call.name, stage, *pairs[stage][call.key]) if call.key in pairs[stage] else None
                    for stage in pairs}
        first_call = call.call == 0
        owned = {stage: tuple(error(name, stage, t, j) for name, t, j in by_owner[stage].get(call.name, ()))
                 if first_call else () for stage in by_owner}
        layers.append(LayerComparison(
            name=call.name, call=call.call, calls=counts[call.name], type=call.module_type.__name__,
            jax_type=jax_calls[call.key].module_type.__name__,
            start=call.start, end=call.end, forward=compared["forward"], input=compared["input"],
            input_gradient=compared["input_gradient"], parameter_gradients=owned["parameter_gradient"],
            buffers=owned["buffers"]))

    loss_tolerance = tolerance("loss", dtype)
    loss_error = compare_tensors("loss", np.asarray(torch_side["loss"]), np.asarray(jax_side["loss"]), loss_tolerance)
    return Localization(
        layers=tuple(layers), dtype=dtype, train=train, loss=loss_error, torch_loss=torch_side["loss"],
        jax_loss=jax_side["loss"], tolerances={stage: applied[stage] for stage in STAGES},
        torch_only=torch_only, jax_only=jax_only)
