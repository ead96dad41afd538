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
from jax_impl.optim import (
    TUPLE_HYPERPARAMS,
    param_group_states,
    replace_param_group_states,
    replace_torch_state_fields,
    set_update_count,
    torch_state_fields,
)
from parity.layouts import LAYOUT_RULES, Rule

__all__ = ["ConversionError", "Rule", "LAYOUT_RULES", "Converter", "torch_optimizer_state",
           "jax_optimizer_state", "load_torch_optimizer_state", "load_jax_optimizer_state_into_torch",
           "torch_param_groups"]


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

    def jax_path(self, torch_name: str) -> str:
        """The NNX path (``"fc1/kernel"``) of a torch variable (``"fc1.weight"``)."""
        if torch_name not in self.mapping:
            raise ConversionError(f"no JAX variable corresponds to torch {torch_name!r}")
        return self.mapping[torch_name][0]

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
# "fc1.weight:momentum_buffer" or "fc1.weight:step". Parameter groups map one to one: torch's
# optimizer.param_groups[i] <-> jax_impl.optim.param_group_states(opt_state)[i].


def torch_param_groups(optimizer: torch.optim.Optimizer, names: Mapping[torch.Tensor, str]) -> list[list[str]]:
    """The torch names of each parameter group's parameters, in torch's order."""
    return [[names[p] for p in group["params"]] for group in optimizer.param_groups]


def _group_values(group: Mapping[str, Any]) -> dict[str, Any]:
    """A torch param group's numeric options under the JAX hyperparameter names."""
    values = {}
    for key, value in group.items():
        if key in TUPLE_HYPERPARAMS:
            values.update(zip(TUPLE_HYPERPARAMS[key], value, strict=True))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = value
    return values


def _is_shared(value: Any) -> bool:
    """A state field holding one array for the whole group (NAdam's ``mu_product``), which torch
    keeps per parameter, rather than a tree mirroring the parameters."""
    return isinstance(value, (jax.Array, np.ndarray))


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


def jax_optimizer_state(
    opt_state: Any, converter: Converter, groups: Sequence[Sequence[str]]
) -> dict[str, np.ndarray]:
    """The JAX optimizer state under the same flat keys as :func:`torch_optimizer_state`.

    ``groups`` lists the torch names of each parameter group's parameters
    (:func:`torch_param_groups`). The update count is reported as every parameter's ``step``,
    as torch keeps one per parameter, and so is any other field shared by a whole group.
    """
    group_states = param_group_states(opt_state)
    if len(group_states) != len(groups):
        raise ConversionError(f"the JAX optimizer has {len(group_states)} parameter group(s), torch {len(groups)}")
    flat = {}
    for group_state, group_names in zip(group_states, groups, strict=True):
        fields = torch_state_fields(group_state)
        fields.pop("hyperparams", None)
        fields["step"] = fields.pop("count", None)
        for field, value in fields.items():
            if value is None:
                continue
            if _is_shared(value):
                flat.update({f"{name}:{field}": np.asarray(value, dtype=np.float64 if field == "step" else None)
                             for name in group_names})
                continue
            for name, array in converter.to_torch(value).items():
                flat[f"{name}:{field}"] = array
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
    """``opt_state`` with its buffers and counters (and, with ``include_hyperparams``, each
    group's options such as ``lr`` and ``momentum``) taken from ``optimizer``.

    A buffer torch has not created yet (before its first step) keeps its JAX value. By default
    hyperparameters are left alone: they are the port's own configuration, and copying them
    from torch would hide a wrong value or default; resuming a torch run wants them.
    """
    group_states = param_group_states(opt_state)
    if len(group_states) != len(optimizer.param_groups):
        raise ConversionError(
            f"the JAX optimizer has {len(group_states)} parameter group(s), torch {len(optimizer.param_groups)}"
        )
    loaded = []
    for group_state, group in zip(group_states, optimizer.param_groups, strict=True):
        fields = torch_state_fields(group_state)
        states = {names[p]: optimizer.state.get(p, {}) for p in group["params"]}
        updates: dict[str, Any] = {}
        for field, tree in fields.items():
            if field in ("count", "hyperparams") or tree is None:
                continue
            arrays = {name: to_numpy(state[field]) for name, state in states.items()
                      if isinstance(state.get(field), torch.Tensor)}
            if not arrays:
                continue
            if _is_shared(tree):
                updates[field] = jnp.asarray(next(iter(arrays.values())), dtype=jnp.result_type(tree))
            else:
                updates[field] = converter.to_jax(arrays, tree, what=f"optimizer state {field!r}")
        if include_hyperparams and "hyperparams" in fields:
            values = _group_values(group)
            hyperparams = dict(fields["hyperparams"])
            for key, value in hyperparams.items():
                if key in values:
                    hyperparams[key] = jnp.asarray(values[key], dtype=jnp.result_type(value))
            updates["hyperparams"] = hyperparams
        loaded.append(replace_torch_state_fields(group_state, updates))
    return set_update_count(replace_param_group_states(opt_state, loaded), steps_taken)


def load_jax_optimizer_state_into_torch(
    optimizer: torch.optim.Optimizer,
    opt_state: Any,
    names: Mapping[torch.Tensor, str],
    converter: Converter,
) -> None:
    """Continue a JAX run in torch: write ``opt_state``'s buffers, step counts and each group's
    hyperparameters into ``optimizer`` (built over the matching parameters, with the same
    groups), so its next ``step()`` continues where the JAX optimizer stopped."""
    groups = torch_param_groups(optimizer, names)
    flat = jax_optimizer_state(opt_state, converter, groups)
    by_name = {name: p for p, name in names.items()}
    for group, group_state in zip(optimizer.param_groups, param_group_states(opt_state), strict=True):
        hyperparams = torch_state_fields(group_state).get("hyperparams", {})
        for key, value in group.items():
            if key in TUPLE_HYPERPARAMS and all(name in hyperparams for name in TUPLE_HYPERPARAMS[key]):
                group[key] = tuple(float(hyperparams[name]) for name in TUPLE_HYPERPARAMS[key])
            elif key in hyperparams and isinstance(value, (int, float)) and not isinstance(value, bool):
                group[key] = float(hyperparams[key])
    dtype_of = {}
    for key, array in flat.items():
        name, field = key.rsplit(":", 1)
        parameter = by_name[name]
        state = optimizer.state[parameter]
        if field == "step" and "step" not in _state_keys(optimizer):
            continue  # an optimizer that keeps no step counter (SGD)
        like = state.get(field)
        dtype_of[field] = like.dtype if isinstance(like, torch.Tensor) else (
            torch.get_default_dtype() if array.ndim == 0 else parameter.dtype)
        state[field] = torch.as_tensor(np.array(array), dtype=dtype_of[field])


def _state_keys(optimizer: torch.optim.Optimizer) -> set[str]:
    return {key for state in optimizer.state.values() for key in state}
