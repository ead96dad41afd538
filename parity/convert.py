"""Moving state between torch and JAX: parameters, buffers and optimizer state.

Everything is keyed by torch's names. A :class:`Converter` maps each ``state_dict`` key of a
torch module to the path of the matching variable in the NNX model, with the layout change
between them (``nn.Linear.weight`` (out, in) <-> ``nnx.Linear.kernel`` (in, out)). It is built
from the torch module's structure, so any pair of models whose attribute names mirror each
other converts without configuration; pass ``rules`` for layers of your own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jax_impl.checkpoint import flatten, leaves_by_path
from jax_impl.optim import replace_torch_state_fields, set_update_count, torch_state_fields
from parity.layouts import LAYOUT_RULES, Rule

__all__ = ["ConversionError", "Rule", "LAYOUT_RULES", "Converter", "torch_optimizer_state",
           "jax_optimizer_state", "load_torch_optimizer_state"]


class ConversionError(ValueError):
    """The two models' variables do not correspond: names or shapes differ."""


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


class Converter:
    """torch ``state_dict`` names <-> NNX variable paths, with layout changes."""

    def __init__(self, mapping: Mapping[str, tuple[str, Rule]]):
        self.mapping = dict(mapping)  # torch name -> (NNX path "fc1/kernel", rule)
        self._by_jax = {path: (name, rule) for name, (path, rule) in self.mapping.items()}

    @classmethod
    def from_torch_module(cls, module: torch.nn.Module, rules: Mapping[str, Mapping[str, Rule]] | None = None) -> "Converter":
        rules = LAYOUT_RULES | dict(rules or {})  # yours are added to (and may replace) the built-in ones
        mapping = {}
        for module_name, submodule in module.named_modules():
            own = dict(submodule.named_parameters(recurse=False)) | dict(submodule.named_buffers(recurse=False))
            for variable in own:
                rule = rules.get(type(submodule).__name__, {}).get(variable, Rule(variable))
                torch_name = f"{module_name}.{variable}" if module_name else variable
                path = "/".join(filter(None, module_name.split(".") + [rule.jax_name]))
                mapping[torch_name] = (path, rule)
        return cls(mapping)

    def to_jax(self, arrays: Mapping[str, np.ndarray], template: Any, *, what: str = "state") -> Any:
        """A pytree shaped like ``template`` (an ``nnx.State`` or any tree mirroring one) holding
        ``arrays`` (torch names, torch layouts), cast to the template's dtypes.

        Raises :class:`ConversionError` listing every missing, unexpected and mis-shaped key.
        """
        expected = leaves_by_path(template)  # shapes and dtypes only: no device-to-host copies
        converted, unexpected, shapes, misshaped = {}, [], [], set()
        for name, array in arrays.items():
            if name not in self.mapping or self.mapping[name][0] not in expected:
                unexpected.append(name)
                continue
            path, rule = self.mapping[name]
            value = rule.to_jax(np.asarray(array))
            target = expected[path]
            if value.shape != target.shape:
                misshaped.add(path)
                shapes.append(
                    f"{name}: torch {tuple(np.shape(array))} -> {path} {value.shape}, "
                    f"JAX model has {target.shape}"
                )
                continue
            converted[path] = value.astype(target.dtype, copy=False)
        missing = [
            self._by_jax.get(path, (path,))[0]
            for path in expected
            if path not in converted and path not in misshaped
        ]
        _raise_if(what, missing, unexpected, shapes)
        leaves = [jnp.asarray(converted[path]) for path in expected]
        return jax.tree.unflatten(jax.tree.structure(template), leaves)

    def to_torch(self, tree: Any) -> dict[str, np.ndarray]:
        """``{torch name: array in torch layout}`` from a tree mirroring the NNX variables."""
        result, unknown = {}, []
        for path, value in flatten(tree).items():
            if path not in self._by_jax:
                unknown.append(path)
                continue
            name, rule = self._by_jax[path]
            result[name] = rule.to_torch(np.asarray(value))
        if unknown:
            raise ConversionError(
                f"JAX variables with no torch counterpart: {', '.join(unknown)}"
            )
        return result


def _raise_if(what: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> None:
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing in torch (the JAX model needs them): {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected (no JAX variable to receive them): {', '.join(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {'; '.join(shapes)}")
    raise ConversionError(f"error(s) converting {what}: " + " | ".join(parts))


# ------------------------------------------------------------------------------------------
# Optimizer state. Flat keys are "<torch parameter name>:<torch state key>", e.g.
# "fc1.weight:momentum_buffer" or "fc1.weight:step".

#: torch param-group keys whose value is a tuple spread over several JAX hyperparameters.
_GROUP_TUPLES = {"betas": ("beta1", "beta2")}


def _group_values(group: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in group.items():
        if key in _GROUP_TUPLES:
            values.update(zip(_GROUP_TUPLES[key], value, strict=True))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = value
    return values


def torch_optimizer_state(
    optimizer: torch.optim.Optimizer, names: Mapping[torch.Tensor, str], steps_taken: int
) -> dict[str, np.ndarray]:
    """torch's per-parameter optimizer state under flat keys.

    torch optimizers that keep no step counter (SGD) get ``step = steps_taken``, the number of
    ``optimizer.step()`` calls, so the JAX update count is checked for them too.
    """
    flat = {}
    for parameter, name in names.items():
        state = optimizer.state.get(parameter, {})
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                flat[f"{name}:{key}"] = to_numpy(value)
        if "step" not in state:
            flat[f"{name}:step"] = np.asarray(float(steps_taken))
    return flat


def jax_optimizer_state(opt_state: Any, converter: Converter, parameter_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The JAX optimizer state under the same flat keys as :func:`torch_optimizer_state`.

    The update count is reported as every parameter's ``step``, as torch keeps one per
    parameter.
    """
    fields = torch_state_fields(opt_state)
    fields.pop("hyperparams", None)
    count = fields.pop("count", None)
    flat = {}
    for field, tree in fields.items():
        for name, array in converter.to_torch(tree).items():
            flat[f"{name}:{field}"] = array
    if count is not None:
        for name in parameter_names:
            flat[f"{name}:step"] = np.asarray(float(count))
    return flat


def load_torch_optimizer_state(
    opt_state: Any,
    optimizer: torch.optim.Optimizer,
    names: Mapping[torch.Tensor, str],
    converter: Converter,
    steps_taken: int,
    *,
    include_hyperparams: bool = False,
) -> Any:
    """``opt_state`` with its buffers and counters (and, with ``include_hyperparams``, the
    param-group values such as ``lr`` and ``momentum``) taken from ``optimizer``.

    A buffer torch has not created yet (before its first step) keeps its JAX value. By default
    hyperparameters are left alone: they are the port's own configuration, and copying them
    from torch would hide a wrong value or default; resuming a torch run wants them.
    """
    fields = torch_state_fields(opt_state)
    updates: dict[str, Any] = {}
    for field, tree in fields.items():
        if field in ("count", "hyperparams"):
            continue
        arrays = {
            name: to_numpy(optimizer.state[p][field])
            for p, name in names.items()
            if isinstance(optimizer.state.get(p, {}).get(field), torch.Tensor)
        }
        if arrays:
            updates[field] = converter.to_jax(arrays, tree, what=f"optimizer state {field!r}")
    if include_hyperparams and "hyperparams" in fields:
        group = _group_values(optimizer.param_groups[0])
        hyperparams = dict(fields["hyperparams"])
        for key, value in hyperparams.items():
            if key in group:
                hyperparams[key] = jnp.asarray(group[key], dtype=jnp.result_type(value))
        updates["hyperparams"] = hyperparams
    return set_update_count(replace_torch_state_fields(opt_state, updates), steps_taken)
