"""What a parity run is: a :class:`RunSpec`, and the builders that turn its PyTorch-style spec
strings into matched torch and JAX components.

Every component is named the way a PyTorch user writes it (``"SGD(lr=0.01, momentum=0.9)"``)
and parsed with ``ast`` (:mod:`jax_impl.spec`); nothing is evaluated. Both sides are built
from the same string, so an argument either framework rejects is an error before any step runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jax_impl.amp
import jax_impl.losses
import jax_impl.models
import jax_impl.optim
import jax_impl.schedules
import torch_ref.loop
import torch_ref.models
from jax_impl.spec import CallSpec, SpecError, bind_call, build_from_registry, parse_call

__all__ = ["RunSpec", "SpecError", "DTYPES", "parse_param_group", "build_models", "build_torch_optimizer",
           "build_torch_scheduler", "build_torch_loss"]

DTYPES = {"float32": (torch.float32, jnp.float32, np.float32), "float64": (torch.float64, jnp.float64, np.float64)}
MODES = ("resync", "free")
INTERVALS = ("epoch", "step")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One parity run. Defaults are the seed's configuration on the embedded digits data."""

    model: str = "SimpleNN"
    loss: str = "CrossEntropyLoss()"
    optimizer: str = "SGD(lr=0.01, momentum=0.9)"
    scheduler: str | None = "StepLR(step_size=2, gamma=0.1)"
    scheduler_interval: str = "epoch"  # when scheduler.step() is called: "epoch" or "step"
    epochs: int = 3
    steps_per_epoch: int | None = None  # None: one full pass over the training split
    batch_size: int = 64
    seed: int = 0
    dtype: str = "float32"
    mode: str = "resync"  # "resync": reset JAX from torch after every step; "free": no reset
    data: str = "digits"  # "digits", "synthetic" or a path to an .npz file
    #: torch parameter groups, each written as its keyword arguments with ``params`` a regular
    #: expression over torch parameter names: ``"params='bias', weight_decay=0.0"``
    param_groups: tuple[str, ...] = ()
    #: layer-by-layer localisation: None on the first loss/gradient divergence, True also of
    #: step 0 when nothing diverges, False never (parity.runner.check_port's ``localize``)
    localize: bool | None = None
    #: float32: measure torch's own gradient rounding each step on a float64 replica, and allow
    #: a multiple of it (parity.runner.check_port's ``rounding_reference``)
    rounding_reference: bool = True
    #: torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm, norm_type,
    #: error_if_nonfinite) between backward() and step(); None: no norm clipping
    clip_grad_norm: float | None = None
    norm_type: float = 2.0
    error_if_nonfinite: bool = False
    #: torch.nn.utils.clip_grad_value_(model.parameters(), clip_grad_value), after any norm clipping
    clip_grad_value: float | None = None
    #: gradient accumulation: this many batches per optimizer step (steps_per_epoch counts
    #: optimizer steps); each loss divided by it before backward() ("mean", the seed's pattern)
    #: or not ("sum")
    accumulate: int = 1
    accumulate_reduction: str = "mean"
    #: full checkpoints after every epoch (and every ``checkpoint_every`` steps) and best-model
    #: checkpoints on validation loss, in this directory (:mod:`parity.checkpoints`)
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    #: a full checkpoint directory to continue from
    resume: str | None = None
    #: gradient and activation statistics of both sides in the report (:mod:`parity.stats`)
    stats: bool = False
    #: TensorBoard event files of both sides in DIR/torch and DIR/jax (:mod:`parity.tensorboard`)
    tensorboard: str | None = None
    #: mixed precision: torch.autocast("cpu", dtype=amp) around the forward pass and the loss
    #: ("bfloat16" or "float16"; None: off), with a torch.amp.GradScaler unless grad_scaler is
    #: False; the GradScaler's own arguments follow (torch's defaults)
    amp: str | None = None
    grad_scaler: bool = True
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    #: False: both loops forget optimizer.zero_grad(), so gradients add up across steps (the
    #: seed's warning); parity.run then also runs the correct loop and reports the departure
    zero_grad: bool = True

    def __post_init__(self) -> None:
        for key in ("model", "loss", "optimizer", "scheduler"):
            value = getattr(self, key)
            if value is None and key == "scheduler":
                continue
            if not isinstance(value, str):
                raise SpecError(f"{key} must be a spec string such as 'SGD(lr=0.01)', got {value!r}")
            parse_call(value)  # raises on a malformed spec
        if isinstance(self.param_groups, str) or not isinstance(self.param_groups, (tuple, list)):
            raise SpecError(f"param_groups must be a tuple of strings such as \"params='bias', weight_decay=0.0\", "
                            f"got {self.param_groups!r}")
        object.__setattr__(self, "param_groups", tuple(self.param_groups))
        for text in self.param_groups:
            parse_param_group(text)
        _choice("scheduler_interval", self.scheduler_interval, INTERVALS)
        _choice("dtype", self.dtype, tuple(DTYPES))
        _choice("mode", self.mode, MODES)
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if self.steps_per_epoch is not None:
            _positive("steps_per_epoch", self.steps_per_epoch)
        if self.checkpoint_every is not None:
            _positive("checkpoint_every", self.checkpoint_every)
            if self.checkpoint_dir is None:
                raise SpecError("checkpoint_every needs checkpoint_dir")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SpecError(f"seed must be a non-negative integer, got {self.seed!r}")
        for key in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value >= 0 or value == float("inf")):
                raise SpecError(f"{key} must be a finite non-negative number, got {value!r}")
        _positive("accumulate", self.accumulate)
        _choice("accumulate_reduction", self.accumulate_reduction, ("mean", "sum"))
        norm_type = self.norm_type
        if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or not norm_type > 0:
            raise SpecError(f"norm_type must be a positive number or inf, got {norm_type!r}")
        if self.clip_grad_norm is None and (norm_type != 2.0 or self.error_if_nonfinite):
            raise SpecError("norm_type and error_if_nonfinite apply to clip_grad_norm: set clip_grad_norm too")
        if self.amp is not None:
            _choice("amp", self.amp, tuple(jax_impl.amp.AUTOCAST_DTYPES))
            if self.dtype != "float32":
                raise SpecError(f"amp={self.amp} trains float32 parameters under autocast: dtype must be float32, "
                                f"got {self.dtype}")
        _ = self.mixed_precision  # builds the GradScaler: its argument checks raise here

    @property
    def mixed_precision(self) -> "jax_impl.amp.MixedPrecision | None":
        """This run's autocast dtype and GradScaler, or None without ``amp``."""
        if self.amp is None:
            return None
        try:
            scaler = (jax_impl.amp.GradScaler(self.init_scale, self.growth_factor, self.backoff_factor,
                                              self.growth_interval) if self.grad_scaler else None)
        except ValueError as error:
            raise SpecError(str(error)) from None
        return jax_impl.amp.MixedPrecision(jax_impl.amp.AUTOCAST_DTYPES[self.amp], scaler)

    @property
    def clipping(self) -> "torch_ref.loop.Clipping | None":
        """The clipping this run applies on both sides, or None."""
        if self.clip_grad_norm is None and self.clip_grad_value is None:
            return None
        return torch_ref.loop.Clipping(self.clip_grad_norm, float(self.norm_type), self.error_if_nonfinite,
                                       self.clip_grad_value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_param_group(text: str) -> dict[str, Any]:
    """A torch parameter group written as keyword arguments, ``params`` a regular expression
    searched in each torch parameter name: ``"params='bias', weight_decay=0.0"`` ->
    ``{"params": "bias", "weight_decay": 0.0}`` (torch's ``{"params": [...], "weight_decay": 0.0}``)."""
    if not isinstance(text, str):
        raise SpecError(f"a param group must be a string such as \"params='bias', weight_decay=0.0\", got {text!r}")
    try:
        call = parse_call(f"group({text})")
    except SpecError as error:
        raise SpecError(f"param group {text!r}: {error}") from None
    group = dict(call.kwargs)
    if not isinstance(group.get("params"), str):
        raise SpecError(f"param group {text!r}: give params='<regular expression over parameter names>', "
                        "e.g. \"params='bias', weight_decay=0.0\"")
    if len(group) == 1:
        raise SpecError(f"param group {text!r}: sets no option (add e.g. weight_decay=0.0 or lr=0.01)")
    return group


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{key} must be a positive integer, got {value!r}")


def _torch_kwargs(call: CallSpec, cls: type, kind: str, skip: tuple[str, ...]) -> dict[str, Any]:
    return bind_call(call, cls.__init__, kind=kind, skip=("self",) + skip)


def build_models(
    spec: str, *, input_size: int, num_classes: int, seed: int, dtype: str
) -> tuple[torch.nn.Module, nnx.Module]:
    """The torch model (seeded torch initialisation) and its NNX twin (any initialisation;
    the harness overwrites it with the converted torch weights)."""
    torch_cls, call = build_from_registry(spec, torch_ref.models.MODELS, kind="model")
    jax_cls, _ = build_from_registry(call, jax_impl.models.MODELS, kind="model")
    kwargs = _torch_kwargs(call, torch_cls, "model", ())
    given = {"input_size": input_size, "num_classes": num_classes}
    for key, value in given.items():
        if key in kwargs and kwargs[key] != value:
            raise SpecError(f"model {call}: {key}={kwargs[key]} but the data has {value}")
    parameters = inspect.signature(torch_cls.__init__).parameters
    for key, value in kwargs.items():
        default = parameters[key].default
        if default is None and value is None:  # an optional argument left to the model (LSTM's seq_len)
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise SpecError(f"model {call}: {key} must be True or False, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(f"model {call}: {key} must be a number, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise SpecError(f"model {call}: {key} must be a string, got {value!r}")
        elif default == 0:  # an index (Transformer's padding_idx)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecError(f"model {call}: {key} must be a non-negative integer, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"model {call}: {key} must be a positive integer, got {value!r}")
    kwargs |= {k: v for k, v in given.items() if k in parameters}
    torch_dtype, jax_dtype, _ = DTYPES[dtype]
    try:
        torch.manual_seed(seed)
        torch_model = torch_cls(**kwargs).to(torch_dtype)
        jax_model = jax_cls(**kwargs, rngs=nnx.Rngs(seed), param_dtype=jax_dtype)
    except Exception as error:  # any failure to build from the user's arguments is bad input
        raise SpecError(f"model {call}: {error}") from None
    return torch_model, jax_model


def _torch_class(module: Any, call: CallSpec, kind: str, registry: dict) -> type:
    """The torch class of a spec; it must also be one the JAX side supports."""
    build_from_registry(call, registry, kind=kind)  # unsupported on the JAX side: clear error
    cls = getattr(module, call.name, None)
    if not isinstance(cls, type):
        raise SpecError(f"{kind} {call.name!r} does not exist in the installed torch {torch.__version__}")
    return cls


def build_torch_optimizer(spec: str, params) -> torch.optim.Optimizer:
    call = parse_call(spec)
    cls = _torch_class(torch.optim, call, "optimizer", jax_impl.optim.OPTIMIZERS)
    kwargs = _torch_kwargs(call, cls, "optimizer", ("params",))
    try:
        return cls(params, **kwargs)
    except Exception as error:  # any failure to build from the user's arguments is bad input
        raise SpecError(f"optimizer {call}: {error}") from None


def build_torch_scheduler(spec: str | CallSpec, optimizer: torch.optim.Optimizer,
                          arguments: dict[str, Any] | None = None):
    """The torch scheduler of ``spec`` on ``optimizer``; nested specs (SequentialLR's
    ``schedulers``) are built on the same optimizer; ``arguments`` adds what a string cannot
    hold (a callable ``lr_lambda``)."""
    call = spec if isinstance(spec, CallSpec) else parse_call(spec)
    cls = _torch_class(torch.optim.lr_scheduler, call, "scheduler", jax_impl.schedules.SCHEDULERS)
    kwargs = _torch_kwargs(call, cls, "scheduler", ("optimizer",)) | dict(arguments or {})
    for key, value in kwargs.items():
        if isinstance(value, list) and value and all(isinstance(v, CallSpec) for v in value):
            kwargs[key] = [build_torch_scheduler(inner, optimizer) for inner in value]
    try:
        return cls(optimizer=optimizer, **kwargs)  # by keyword: ChainedScheduler takes schedulers first
    except Exception as error:  # any failure to build from the user's arguments is bad input
        raise SpecError(f"scheduler {call}: {error}") from None


_TENSOR_ARGUMENTS = ("weight", "pos_weight")


def build_torch_loss(spec: str, dtype: str) -> torch.nn.Module:
    call = parse_call(spec)
    cls = _torch_class(torch.nn, call, "loss", jax_impl.losses.LOSSES)
    kwargs = _torch_kwargs(call, cls, "loss", ())
    torch_dtype = DTYPES[dtype][0]
    for key in _TENSOR_ARGUMENTS:
        if isinstance(kwargs.get(key), (list, tuple)):
            kwargs[key] = torch.tensor(kwargs[key], dtype=torch_dtype)
    try:
        return cls(**kwargs)
    except Exception as error:  # any failure to build from the user's arguments is bad input
        raise SpecError(f"loss {call}: {error}") from None
