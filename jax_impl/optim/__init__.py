"""torch.optim optimizers with PyTorch's exact semantics, as optax transformations.

>>> from jax_impl.optim import from_torch
>>> tx = from_torch("SGD(lr=0.01, momentum=0.9)")   # an optax.GradientTransformation

Every optimizer is wrapped in ``optax.inject_hyperparams``, so ``state.hyperparams`` holds
torch's param-group values (``lr``, ``momentum``, ...) under torch's names (``betas`` as
``beta1`` and ``beta2``). They are kept in the widest float enabled, as torch keeps them as
Python doubles, so ``1 - beta2`` rounds once, to the parameters' dtype, as in torch.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

from jax_impl.checkpoint import leaves_by_path, path_name
from jax_impl.optim._base import (
    TUPLE_HYPERPARAMS,
    param_group_states,
    replace_param_group_states,
    replace_torch_state_fields,
    set_hyperparam,
    set_update_count,
    torch_state_fields,
)
from jax_impl.optim import adafactor as _adafactor
from jax_impl.optim import muon as _muon
from jax_impl.optim.adadelta import Adadelta
from jax_impl.optim.adafactor import Adafactor, Layout
from jax_impl.optim.adagrad import Adagrad
from jax_impl.optim.adam import Adam, AdamState, AdamW, adam
from jax_impl.optim.adamax import Adamax
from jax_impl.optim.asgd import ASGD
from jax_impl.optim.lbfgs import LBFGS
from jax_impl.optim.muon import Muon
from jax_impl.optim.nadam import NAdam
from jax_impl.optim.radam import RAdam
from jax_impl.optim.rmsprop import RMSprop
from jax_impl.optim.rprop import Rprop
from jax_impl.optim.sgd import SGD, SGDState, sgd
from jax_impl.optim.sparse_adam import SparseAdam
from jax_impl.spec import CallSpec, SpecError, bind_call, build_from_registry

__all__ = [
    "from_torch", "torch_arguments", "needs_closure", "OPTIMIZERS", "CLOSURE_OPTIMIZERS", "LAYOUT_BUILDERS", "Layout",
    "sgd", "SGD", "SGDState", "adam", "Adam", "AdamW", "AdamState",
    "torch_state_fields", "replace_torch_state_fields", "set_update_count",
    "param_group_states", "replace_param_group_states", "set_hyperparam", "TUPLE_HYPERPARAMS",
]

#: torch.optim class name -> builder with that class's constructor signature and defaults.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "SGD": SGD,
    "Adam": Adam,
    "AdamW": AdamW,
    "Adamax": Adamax,
    "NAdam": NAdam,
    "RAdam": RAdam,
    "RMSprop": RMSprop,
    "Adagrad": Adagrad,
    "Adadelta": Adadelta,
    "Rprop": Rprop,
    "ASGD": ASGD,
    "Adafactor": Adafactor,
    "Muon": Muon,
    "SparseAdam": SparseAdam,
    "LBFGS": LBFGS,
}

#: Optimizers whose ``step`` takes a closure (the loss, evaluated again at other parameters):
#: their ``update`` needs ``value`` and ``value_fn`` (see :func:`jax_impl.step.make_train_step`).
CLOSURE_OPTIMIZERS = frozenset({"LBFGS"})

#: Optimizers whose arithmetic depends on the parameters' axes (torch's layout), with the
#: builder taking ``layout`` first: Adafactor factors the last two axes, Muon orthogonalises
#: an (out, in) matrix and scales its step by the shape. Flax kernels are torch's weights
#: transposed, so a port passes ``layout`` to :func:`from_torch`.
LAYOUT_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "Adafactor": _adafactor.build_with_layout,
    "Muon": _muon.build_with_layout,
}

#: torch's param-group key holding the momentum a cycling scheduler (OneCycleLR, CyclicLR) writes,
#: by the name of the builder argument: SGD, RMSprop and Muon have ``momentum``; the Adam
#: family has ``betas``, whose first entry is cycled.
_CYCLED_MOMENTUM = ("momentum", "betas")

Schedule = Callable[[Any], Any]
ParamGroup = Mapping[str, Any]


def from_torch(
    spec: str | CallSpec,
    *,
    lr: Any = None,
    param_groups: Sequence[ParamGroup] | None = None,
    layout: Layout | None = None,
) -> optax.GradientTransformation:
    """Build the optax transformation matching a torch.optim spec such as ``"Adam(lr=3e-4)"``.

    Args:
      spec: the torch class and its constructor arguments, e.g. ``"SGD(lr=0.1, momentum=0.9)"``.
      lr: replaces the spec's learning rate, typically with a schedule from
        :func:`jax_impl.schedules.from_torch` (a callable of the update count). If the schedule
        also cycles momentum (its ``momentum`` attribute, from OneCycleLR or CyclicLR), that
        schedule drives the optimizer's ``momentum``, or ``beta1`` for the Adam family, as
        torch's scheduler overwrites them.
      param_groups: torch's per-parameter-group options. Each group is a mapping with
        ``"params"``, selecting parameters, and the options it overrides, e.g.
        ``{"params": r"bias|norm", "weight_decay": 0.0}``. ``"params"`` is a regular expression
        searched in each parameter's path (``"fc1/bias"``) or a callable ``(path, leaf) ->
        bool``. A parameter belongs to the first group that selects it; the parameters no group
        selects form group 0, with the spec's own options, so group ``i + 1`` is
        ``param_groups[i]``. An ``"lr"`` override may be a schedule too.
      layout: for the optimizers in :data:`LAYOUT_BUILDERS` (Adafactor, Muon), whose update
        depends on which axis is which: ``layout(path, param)`` returns the axis permutation
        taking ``param`` to torch's layout of it (a Flax ``Linear`` kernel ``(in, out)``:
        ``(1, 0)``; a ``Conv`` kernel ``(kh, kw, in, out)``: ``(3, 2, 0, 1)``), or None where
        the layouts agree. Without it, parameters are taken to be in torch's layout. Ignored
        by the other optimizers, which act elementwise.

    Raises :class:`~jax_impl.spec.SpecError` (a ``ValueError``) naming the unknown optimizer,
    the unknown argument, or the invalid value.
    """
    builder, call = build_from_registry(spec, OPTIMIZERS, kind="optimizer")
    kwargs = bind_call(call, builder, kind="optimizer", skip=("params",))
    if param_groups and call.name == "LBFGS":
        raise SpecError("LBFGS doesn't support per-parameter options (parameter groups)")  # torch's words
    if layout is not None and call.name in LAYOUT_BUILDERS:
        builder = _with_layout(builder, LAYOUT_BUILDERS[call.name], layout)
    if not param_groups:
        return _build(builder, call, kwargs, lr)
    transforms = {0: _build(builder, call, kwargs, lr)}
    for index, group in enumerate(param_groups, start=1):
        if not isinstance(group, Mapping) or "params" not in group:
            raise SpecError(f"param group {index}: expected a mapping with a 'params' selector, got {group!r}")
        overrides = {key: value for key, value in group.items() if key != "params"}
        bind_call(CallSpec(call.name, overrides), builder, kind=f"optimizer {call.name} param group {index}",
                  skip=("params",))
        transforms[index] = _build(builder, call, {**kwargs, **overrides}, overrides.get("lr", lr))
    return optax.partition(transforms, functools.partial(_group_labels, param_groups))


def _with_layout(builder: Callable[..., Any], build_with_layout: Callable[..., Any], layout: Layout) -> Callable[..., Any]:
    """``builder`` (torch's signature, kept for binding) building for parameters in ``layout``."""

    @functools.wraps(builder)
    def build(**kwargs: Any) -> optax.GradientTransformation:
        return build_with_layout(layout, **kwargs)

    return build


def needs_closure(spec: str | CallSpec) -> bool:
    """Whether the spec's optimizer re-evaluates the loss within a step (:data:`CLOSURE_OPTIMIZERS`)."""
    _, call = build_from_registry(spec, OPTIMIZERS, kind="optimizer")
    return call.name in CLOSURE_OPTIMIZERS


def _build(builder: Callable[..., optax.GradientTransformation], call: CallSpec, kwargs: dict[str, Any],
           lr: Any) -> optax.GradientTransformation:
    try:
        transform = builder(**kwargs)  # validates the values the spec gave
        if lr is not None:
            transform = builder(**{**kwargs, **_scheduled(builder, call, kwargs, lr)})
    except SpecError:
        raise
    except Exception as error:  # any failure to build from the spec's arguments is bad input
        raise SpecError(f"optimizer {call}: {error}") from None
    return transform


def _scheduled(builder: Callable[..., Any], call: CallSpec, kwargs: dict[str, Any], lr: Any) -> dict[str, Any]:
    """The builder arguments a schedule replaces: ``lr``, and the cycled momentum if any."""
    momentum = getattr(lr, "momentum", None)
    if momentum is None:
        return {"lr": lr}
    arguments = inspect.signature(builder).parameters
    if "momentum" in arguments:
        return {"lr": lr, "momentum": momentum}
    if "betas" in arguments:
        beta2 = kwargs.get("betas", arguments["betas"].default)[1]
        return {"lr": lr, "betas": (momentum, beta2)}
    # torch's own message, raised when such a scheduler is built on this optimizer
    raise SpecError(f"optimizer {call}: optimizer must support momentum or beta1 with `cycle_momentum` option enabled")


def _group_labels(param_groups: Sequence[ParamGroup], params: Any) -> Any:
    """The pytree of group indices ``optax.partition`` routes by (see :func:`from_torch`)."""
    selectors = [_selector(group["params"], index) for index, group in enumerate(param_groups, start=1)]
    used: set[int] = set()

    def label(path: tuple[Any, ...], leaf: Any) -> int:
        name = path_name(path)
        for index, selects in enumerate(selectors, start=1):
            if selects(name, leaf):
                used.add(index)
                return index
        used.add(0)
        return 0

    labels = jax.tree_util.tree_map_with_path(label, params)
    empty = [index for index in range(len(selectors) + 1) if index not in used]
    if empty:
        described = ", ".join("0 (the parameters no group selects)" if i == 0 else
                              f"{i} ({param_groups[i - 1]['params']!r})" for i in empty)
        raise SpecError(f"parameter group(s) {described} select no parameter; "
                        f"parameters: {', '.join(leaves_by_path(params))}")
    return labels


def _selector(selector: Any, index: int) -> Callable[[str, Any], bool]:
    if callable(selector):
        return lambda name, leaf: bool(selector(name, leaf))
    if isinstance(selector, str):
        try:
            pattern = re.compile(selector)
        except re.error as error:
            raise SpecError(f"param group {index}: 'params' {selector!r} is not a valid regular expression: {error}") from None
        return lambda name, leaf: pattern.search(name) is not None
    raise SpecError(f"param group {index}: 'params' must be a regular expression or a callable (path, leaf) -> bool, "
                    f"got {selector!r}")


def torch_arguments(spec: str | CallSpec) -> dict[str, Any]:
    """Every constructor argument of the spec's torch optimizer, defaults filled in, as Python
    values: ``torch_arguments("SGD(momentum=0.9)")["lr"] == 1e-3``.

    Use it to read the base learning rate for a schedule in full precision (the optimizer
    state holds hyperparameters in the parameters' dtype).
    """
    builder, call = build_from_registry(spec, OPTIMIZERS, kind="optimizer")
    kwargs = bind_call(call, builder, kind="optimizer", skip=("params",))
    bound = inspect.signature(builder).bind(**kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
