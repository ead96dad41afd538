"""A torch.optim optimizer and its jax_impl twin, stepped side by side on identical gradients.

The unit-level companion of the parity suite's registered cases: no model, no data, just the
optimizer. Each parameter's gradient is a fixed nonlinear function of that parameter, computed
in numpy on each side from that side's own parameters, so the gradients are identical while the
parameters are, and any difference comes from the optimizer alone.

    >>> errors = compare_optimizer("RMSprop(lr=0.01, centered=True)", steps=20)
    >>> errors.assert_close(1e-12)

State is compared under torch's keys: ``optimizer.state[p][key]`` against field ``key`` of our
state (see :mod:`jax_impl.optim._base`), a field that is a single array being a value torch
keeps per parameter but which is equal for all of them (``step``, NAdam's ``mu_product``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import jax_impl.optim
from jax_impl.optim import torch_state_fields
from parity.spec import build_torch_optimizer

#: parameter name -> shape: a matrix, a vector, a row and a scalar, as a model has them
SHAPES: Mapping[str, tuple[int, ...]] = {"weight": (4, 3), "bias": (3,), "row": (1, 5), "scalar": ()}

GradFn = Callable[[str, np.ndarray, int], np.ndarray]  # (name, parameter, step) -> gradient


def smooth_gradient(name: str, p: np.ndarray, step: int) -> np.ndarray:
    """A gradient that depends on the parameter and the step, with mixed signs and scales."""
    seed = sum(map(ord, name))
    scale = np.random.default_rng(seed).uniform(0.1, 2.0, size=p.shape)
    return scale * np.cos(3.0 * p + 0.1 * step) + 0.5 * p


@dataclasses.dataclass
class Errors:
    """Largest relative error per quantity (``"params"``, ``"state:<key>"``), and where."""

    worst: dict[str, tuple[float, int, str]] = dataclasses.field(default_factory=dict)  # q -> (err, step, name)

    def record(self, quantity: str, step: int, name: str, torch_value: np.ndarray, jax_value: np.ndarray) -> None:
        torch_value, jax_value = np.asarray(torch_value, np.float64), np.asarray(jax_value, np.float64)
        if torch_value.shape != jax_value.shape:
            raise AssertionError(f"step {step}: {quantity} of {name!r}: torch shape {torch_value.shape}, "
                                 f"JAX shape {jax_value.shape}")
        both_nan = np.isnan(torch_value) & np.isnan(jax_value)
        scale = max(float(np.max(np.abs(np.where(both_nan, 0, torch_value)), initial=0.0)), 1e-30)
        error = float(np.max(np.abs(np.where(both_nan, 0, torch_value - jax_value)), initial=0.0)) / scale
        if np.isnan(error):
            error = np.inf
        if error > self.worst.get(quantity, (-1.0,))[0]:
            self.worst[quantity] = (error, step, name)

    def assert_close(self, rtol: float) -> None:
        bad = {q: w for q, w in self.worst.items() if not w[0] <= rtol}
        if bad:
            lines = [f"{q}: relative error {e:.3g} at step {s}, tensor {n!r}" for q, (e, s, n) in sorted(bad.items())]
            raise AssertionError(f"differences above rtol={rtol:g}:\n  " + "\n  ".join(lines))


def compare_optimizer(
    spec: str,
    *,
    steps: int = 20,
    dtype: str = "float64",
    shapes: Mapping[str, tuple[int, ...]] = SHAPES,
    gradient: GradFn = smooth_gradient,
    seed: int = 0,
    tx: optax.GradientTransformation | None = None,
) -> Errors:
    """Step ``torch.optim`` (built from ``spec``) and ``tx`` (default: ``from_torch(spec)``)
    ``steps`` times; return the largest relative errors of the parameters and of every state
    tensor torch keeps, per quantity, against the torch value's largest magnitude."""
    np_dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    initial = {name: rng.normal(size=shape).astype(np_dtype) for name, shape in shapes.items()}

    torch_params = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in initial.items()}
    torch_opt = build_torch_optimizer(spec, list(torch_params.values()))
    tx = tx or jax_impl.optim.from_torch(spec)
    jax_params = {name: jnp.asarray(value) for name, value in initial.items()}
    state = tx.init(jax_params)
    update = jax.jit(tx.update)

    errors = Errors()
    for step in range(steps):
        for name, p in torch_params.items():
            p.grad = torch.from_numpy(np.asarray(gradient(name, p.detach().numpy(), step), np_dtype))
        torch_opt.step()
        grads = {name: jnp.asarray(np.asarray(gradient(name, np.asarray(p), step), np_dtype))
                 for name, p in jax_params.items()}
        updates, state = update(grads, state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)

        fields = torch_state_fields(state)
        for name, p in torch_params.items():
            errors.record("params", step, name, p.detach().numpy(), jax_params[name])
            for key, value in torch_opt.state[p].items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    ours = fields["count"]
                elif key not in fields:
                    raise AssertionError(f"torch keeps state {key!r}; our state has no field of that name "
                                         f"(fields: {sorted(fields)})")
                else:
                    ours = fields[key]
                    ours = ours[name] if isinstance(ours, Mapping) else ours
                errors.record(f"state:{key}", step, name, value.detach().numpy(), ours)
    return errors
