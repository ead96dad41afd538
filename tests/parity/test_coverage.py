"""Every optimizer and scheduler class of the installed torch is supported on the JAX side, or
listed here with the reason it is not: a torch upgrade that adds one fails this test."""

from __future__ import annotations

import torch
import torch.optim.lr_scheduler

import jax_impl.optim
import jax_impl.schedules

#: installed classes that are not components a user builds, with the reason
NOT_COMPONENTS = {
    "Optimizer": "the base class of every torch optimizer",
    "LRScheduler": "the base class of every torch scheduler",
    "_LRScheduler": "a deprecated alias of LRScheduler",
}


def _installed(module, base: type) -> set[str]:
    return {name for name, value in vars(module).items() if isinstance(value, type) and issubclass(value, base)}


def test_every_installed_optimizer_is_supported_or_listed():
    installed = _installed(torch.optim, torch.optim.Optimizer)
    missing = sorted(installed - set(jax_impl.optim.OPTIMIZERS) - set(NOT_COMPONENTS))
    assert not missing, f"torch {torch.__version__} optimizers with no JAX counterpart: {missing}"
    assert installed >= set(jax_impl.optim.OPTIMIZERS), "a supported name is not a torch optimizer"


def test_every_installed_scheduler_is_supported_or_listed():
    installed = _installed(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    missing = sorted(installed - set(jax_impl.schedules.SCHEDULERS) - set(NOT_COMPONENTS))
    assert not missing, f"torch {torch.__version__} schedulers with no JAX counterpart: {missing}"
    assert installed >= set(jax_impl.schedules.SCHEDULERS), "a supported name is not a torch scheduler"


def test_the_listed_exceptions_exist_in_the_installed_torch():
    """A stale entry would hide nothing, but it would no longer say anything true."""
    for name in NOT_COMPONENTS:
        assert hasattr(torch.optim, name) or hasattr(torch.optim.lr_scheduler, name), name
