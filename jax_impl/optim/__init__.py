"""torch.optim optimizers with PyTorch's exact semantics, as optax transformations.

>>> from jax_impl.optim import from_torch
>>> tx = from_torch("SGD(lr=0.01, momentum=0.9)")   # an optax.GradientTransformation

Every optimizer is wrapped in ``optax.inject_hyperparams``, so ``state.hyperparams`` holds
torch's param-group values (``lr``, ``momentum``, ...) under torch's names (``betas`` as
``beta1`` and ``beta2``). They are kept in the widest float enabled, as torch keeps them as
Python doubles, so ``1 - beta2`` rounds once, to the parameters' dtype, as in torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optax

from jax_impl.optim._base import (
    replace_torch_state_fields,
    set_update_count,
    torch_state_fields,
)
from jax_impl.optim.adadelta import Adadelta
from jax_impl.optim.adafactor import Adafactor
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
    "from_torch", "torch_arguments", "OPTIMIZERS",
    "sgd", "SGD", "SGDState", "adam", "Adam", "AdamW", "AdamState",
    "torch_state_fields", "replace_torch_state_fields", "set_update_count",
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


def from_torch(spec: str | CallSpec, *, lr: Any = None) -> optax.GradientTransformation:
    """Build the optax transformation matching a torch.optim spec such as ``"Adam(lr=3e-4)"``.

    ``lr`` replaces the spec's learning rate, typically with a schedule from
    :func:`jax_impl.schedules.from_torch` (a callable of the update count).

    Raises :class:`~jax_impl.spec.SpecError` (a ``ValueError``) naming the unknown optimizer,
    the unknown argument, or the invalid value.
    """
    builder, call = build_from_registry(spec, OPTIMIZERS, kind="optimizer")
    kwargs = bind_call(call, builder, kind="optimizer", skip=("params",))
    try:
        transform = builder(**kwargs)  # validates the values the spec gave
        if lr is not None:
            transform = builder(**{**kwargs, "lr": lr})
    except Exception as error:  # any failure to build from the spec's arguments is bad input
        raise SpecError(f"optimizer {call}: {error}") from None
    return transform


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
