"""Moving state between torch and JAX: parameters, buffers and optimizer state.

Everything is keyed by torch's names. A :class:`Converter` maps each ``state_dict`` key of a
torch module to the path of the matching variable in the NNX model, with the layout change
between them (``nn.Linear.weight`` (out, in) <-> ``nnx.Linear.kernel`` (in, out)). It is built
from the torch module's structure, so any pair of models whose attribute names mirror each
other converts without configuration; pass ``rules`` for layers of your own.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jax_impl.checkpoint import flatten, leaves_by_path, path_name
from jax_impl.optim import lbfgs as jax_lbfgs
from jax_impl.optim import (
    TUPLE_HYPERPARAMS,
    param_group_states,
    replace_param_group_states,
    replace_torch_state_fields,
    set_update_count,
    torch_state_fields,
)
from parity.layouts import LAYOUT_RULES, Rule

__all__ = ["ConversionError", "Rule", "LAYOUT_RULES", "Converter", "IncompatibleKeys", "torch_optimizer_state",
           "jax_optimizer_state", "load_torch_optimizer_state", "load_jax_optimizer_state_into_torch",
           "torch_param_groups", "FlatOrder", "torch_layout"]


class ConversionError(ValueError):
    """The two models' variables do not correspond: names or shapes differ. For a state_dict,
    the message has torch's ``load_state_dict(strict=True)`` lines (missing keys, unexpected
    keys, "size mismatch for ..."), every offending key named."""


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


class IncompatibleKeys(NamedTuple):
    """What :meth:`Converter.load_into_torch` did not load, as torch's ``load_state_dict``
    returns it: torch names the module has and the JAX state lacks (``missing_keys``), and
    variables of the JAX state the module has no place for (``unexpected_keys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Converter:
    """torch ``state_dict`` names <-> NNX variable paths, with layout changes.

    Both directions check as torch's ``load_state_dict(strict=True)`` does and report every
    missing key, unexpected key and size mismatch in one :class:`ConversionError`, worded as
    torch words them (shapes in torch's layout, the JAX variable and its shape added).

    Integer variables (BatchNorm's ``num_batches_tracked``, torch's int64 ``long``) are held
    by JAX as its default integer: int64 when ``jax_enable_x64`` is on (``import parity``
    turns it on), int32 otherwise. :meth:`to_jax` casts to the JAX variable's dtype and refuses
    a value that does not fit it; :meth:`to_torch` gives them back in torch's integer dtype.
    """

    def __init__(self, mapping: Mapping[str, tuple[str, Rule]],
                 integer_dtypes: Mapping[str, np.dtype] | None = None):
        self.mapping = dict(mapping)  # torch name -> (NNX path "fc1/kernel", rule)
        self.integer_dtypes = dict(integer_dtypes or {})  # torch name -> numpy dtype of torch's integer variables
        self._by_jax = {path: (name, rule) for name, (path, rule) in self.mapping.items()}

    @classmethod
    def from_torch_module(cls, module: torch.nn.Module, rules: Mapping[str, Mapping[str, Rule]] | None = None) -> "Converter":
        rules = LAYOUT_RULES | dict(rules or {})  # yours are added to (and may replace) the built-in ones
        mapping, integer_dtypes = {}, {}
        for module_name, submodule in module.named_modules():
            own = dict(submodule.named_parameters(recurse=False)) | dict(submodule.named_buffers(recurse=False))
            for variable, tensor in own.items():
                rule = rules.get(type(submodule).__name__, {}).get(variable, Rule(variable))
                torch_name = f"{module_name}.{variable}" if module_name else variable
                path = "/".join(filter(None, module_name.split(".") + [rule.jax_name]))
                mapping[torch_name] = (path, rule)
                if not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
                    integer_dtypes[torch_name] = torch.empty((), dtype=tensor.dtype).numpy().dtype
        return cls(mapping, integer_dtypes)

    def jax_path(self, torch_name: str) -> str:
        """The NNX path (``"fc1/kernel"``) of a torch variable (``"fc1.weight"``)."""
        if torch_name not in self.mapping:
            raise ConversionError(f"no JAX variable corresponds to torch {torch_name!r}")
        return self.mapping[torch_name][0]

    def to_jax(self, arrays: Mapping[str, np.ndarray], template: Any, *, what: str = "state") -> Any:
        """A pytree shaped like ``template`` (an ``nnx.State`` or any tree mirroring one) holding
        ``arrays`` (torch names, torch layouts), cast to the template's dtypes.

        Strict, as ``load_state_dict(strict=True)``: raises :class:`ConversionError` naming
        every missing key (a template variable no array fills), unexpected key (an array with
        no template variable) and size mismatch (both shapes), and every integer value that
        does not fit the template's integer dtype.
        """
        expected = leaves_by_path(template)  # shapes and dtypes only: no device-to-host copies
        converted, unexpected, errors, reported = {}, [], [], set()
        for name, array in arrays.items():
            if name not in self.mapping or self.mapping[name][0] not in expected:
                unexpected.append(name)
                continue
            path, rule = self.mapping[name]
            array = np.asarray(array)
            target = expected[path]
            value = _apply(rule.to_jax, array)
            if value is None or value.shape != tuple(target.shape):
                reported.add(path)
                errors.append(_size_mismatch(name, array.shape, rule.torch_shape(tuple(target.shape)),
                                             f"the JAX model's {path} is {tuple(target.shape)}"))
                continue
            overflow = _integer_overflow(name, value, target.dtype, path)
            if overflow:
                reported.add(path)
                errors.append(overflow)
                continue
            converted[path] = value.astype(target.dtype, copy=False)
        missing = [self._by_jax.get(path, (path,))[0] for path in expected
                   if path not in converted and path not in reported]
        order = {name: i for i, name in enumerate(self.mapping)}  # torch's order, as torch lists them
        missing.sort(key=lambda name: order.get(name, len(order)))
        _raise_if(what, missing, unexpected, errors)
        leaves = [jnp.asarray(converted[path]) for path in expected]
        return jax.tree.unflatten(jax.tree.structure(template), leaves)

    def to_torch(self, tree: Any) -> dict[str, np.ndarray]:
        """``{torch name: array in torch layout}`` from a tree mirroring the NNX variables (all
        of them or any part: a parameter tree, gradients, one optimizer-state field).

        Integer variables come back in torch's dtype (int64 for ``num_batches_tracked``, also
        when JAX holds an int32); floats keep the JAX dtype. A JAX variable with no torch
        counterpart is an error; for a strict load into a module see :meth:`load_into_torch`.
        """
        result, unknown = {}, []
        for path, value in flatten(tree).items():
            if path not in self._by_jax:
                unknown.append(path)
                continue
            name, rule = self._by_jax[path]
            result[name] = self._torch_dtype(name, rule.to_torch(np.asarray(value)))
        if unknown:
            raise ConversionError("Error(s) in converting JAX variables to torch names:\n\t"
                                  + _key_list("Unexpected key(s) in the JAX state (no torch variable corresponds)",
                                              unknown))
        return result

    def load_into_torch(self, module: torch.nn.Module, tree: Any, *, strict: bool = True,
                        what: str = "state") -> IncompatibleKeys:
        """Copy a JAX state into ``module`` as ``module.load_state_dict(..., strict)`` would copy
        its converted ``state_dict``: values cast to each torch variable's dtype.

        ``tree`` mirrors the NNX variables (``nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))``),
        or is the NNX model itself (its parameters and batch statistics are taken). With
        ``strict`` every key of ``module.state_dict()`` must be given and nothing else; size
        mismatches are errors in either mode. All problems are reported in one
        :class:`ConversionError` and ``module`` is left unchanged; otherwise returns the
        :class:`IncompatibleKeys` (empty when strict).
        """
        if isinstance(tree, nnx.Module):
            tree = nnx.state(tree, nnx.Any(nnx.Param, nnx.BatchStat))
        current = module.state_dict()  # persistent buffers only, as torch loads them
        loaded, unexpected, mismatches = {}, [], {}
        for path, value in flatten(tree).items():
            name, rule = self._by_jax.get(path, (None, None))
            if name is None or name not in current:
                unexpected.append(name or path)
                continue
            array = _apply(rule.to_torch, value)
            shape = tuple(current[name].shape)
            if array is None or array.shape != shape:
                mismatches[name] = _size_mismatch(name, None if array is None else array.shape, shape,
                                                  f"the JAX state's {path} is {value.shape}")
                continue
            loaded[name] = array
        missing = [name for name in current if name not in loaded and name not in mismatches]
        errors = [mismatches[name] for name in current if name in mismatches]  # in torch's order
        if strict:
            _raise_if(what, missing, unexpected, errors, into=f"the torch model {type(module).__name__}")
        else:
            _raise_if(what, [], [], errors, into=f"the torch model {type(module).__name__}")
        module.load_state_dict({name: torch.as_tensor(np.array(array)) for name, array in loaded.items()},
                               strict=False)
        return IncompatibleKeys(missing, unexpected)

    def _torch_dtype(self, name: str, array: np.ndarray) -> np.ndarray:
        dtype = self.integer_dtypes.get(name)
        if dtype is None or not np.issubdtype(array.dtype, np.integer):
            return array
        return array.astype(dtype, copy=False)


def _apply(layout: Any, array: np.ndarray) -> np.ndarray | None:
    """A layout change, or ``None`` when it does not apply to the array's shape (a Conv2d
    weight of the wrong rank): reported as a size mismatch."""
    try:
        return np.asarray(layout(np.asarray(array)))
    except (ValueError, IndexError):
        return None


def _shape(shape: tuple[int, ...] | None) -> str:
    return "(unknown)" if shape is None else str(tuple(int(n) for n in shape))


def _size_mismatch(name: str, given: tuple[int, ...] | None, current: tuple[int, ...] | None,
                   jax_detail: str) -> str:
    """torch's wording: "size mismatch for fc1.weight: copying a param with shape (32, 64) from
    checkpoint, the shape in current model is (16, 64)." (torch's layout on both sides), then
    the JAX variable's own shape. ``current`` is ``None`` when the JAX shape has no torch
    equivalent (the layout rule does not apply to it)."""
    message = f"size mismatch for {name}: copying a param with shape {_shape(given)} from checkpoint, "
    if current is None:
        return message + f"the shape in current model is not torch's ({jax_detail})."
    return message + f"the shape in current model is {_shape(current)} ({jax_detail})."


def _integer_overflow(name: str, value: np.ndarray, dtype: Any, path: str) -> str | None:
    """A message when integers do not fit the JAX variable's integer dtype (torch's int64
    counter into int32, the JAX default without ``jax_enable_x64``), else ``None``."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer) or value.size == 0 or not np.issubdtype(value.dtype, np.integer):
        return None
    info = np.iinfo(dtype)
    low, high = int(value.min()), int(value.max())
    if info.min <= low and high <= info.max:
        return None
    return (f"value out of range for {name}: {low if low < info.min else high} does not fit the JAX model's "
            f"{path} ({dtype}; JAX holds integers as int32 unless jax_enable_x64 is on).")


def _key_list(label: str, keys: Sequence[str]) -> str:
    """torch's line: 'Missing key(s) in state_dict: "fc1.weight", "fc2.bias". '"""
    quoted = ", ".join('"' + key + '"' for key in keys)
    return f"{label}: {quoted}. "


def _raise_if(what: str, missing: list[str], unexpected: list[str], errors: list[str], *,
              into: str = "the JAX model") -> None:
    """One :class:`ConversionError` with every problem, in torch's order and words:

        Error(s) in loading state into the JAX model:
            Missing key(s) in state_dict: "fc2.bias".
            Unexpected key(s) in state_dict: "fc3.weight".
            size mismatch for fc1.weight: copying a param with shape (32, 64) from checkpoint, ...
    """
    lines = []
    if missing:
        lines.append(_key_list("Missing key(s) in state_dict", missing))
    if unexpected:
        lines.append(_key_list("Unexpected key(s) in state_dict", unexpected))
    lines.extend(errors)
    if lines:
        raise ConversionError(f"Error(s) in loading {what} into {into}:\n\t" + "\n\t".join(lines))


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
    ``optimizer.step()`` calls, so the JAX update count is checked for them too. L-BFGS keeps
    one state for all parameters, under the first one (see :func:`_torch_lbfgs_state`).
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        return _torch_lbfgs_state(optimizer, names, steps_taken)
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
    opt_state: Any, converter: Converter, groups: Sequence[Sequence[str]], *, flat_order: "FlatOrder | None" = None
) -> dict[str, np.ndarray]:
    """The JAX optimizer state under the same flat keys as :func:`torch_optimizer_state`.

    ``groups`` lists the torch names of each parameter group's parameters
    (:func:`torch_param_groups`). The update count is reported as every parameter's ``step``,
    as torch keeps one per parameter, and so is any other field shared by a whole group.
    L-BFGS's state is over the flat vector of all parameters: pass ``flat_order``.
    """
    if jax_lbfgs._search_state(opt_state) is not None:
        return _jax_lbfgs_state(opt_state, groups, flat_order)
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
    flat_order: "FlatOrder | None" = None,
    schedule_steps: int | None = None,
) -> Any:
    """``opt_state`` with its buffers and counters (and, with ``include_hyperparams``, each
    group's options such as ``lr`` and ``momentum``) taken from ``optimizer``.

    A buffer torch has not created yet (before its first step) keeps its JAX value. By default
    hyperparameters are left alone: they are the port's own configuration, and copying them
    from torch would hide a wrong value or default; resuming a torch run wants them.
    L-BFGS's state is over the flat vector of all parameters: pass ``flat_order``.
    ``schedule_steps``: the schedules' step count when it differs from ``steps_taken`` (the
    optimizer steps a GradScaler skipped).
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        first = optimizer.param_groups[0]["params"][0]
        torch_state = {key: _numpy_values(value) for key, value in optimizer.state.get(first, {}).items()}
        opt_state = jax_lbfgs.state_from_torch(torch_state, opt_state,
                                               from_torch_flat=_require(flat_order).from_torch)
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
            if field in ("count", "hyperparams") or tree is None or isinstance(optimizer, torch.optim.LBFGS):
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
    return set_update_count(replace_param_group_states(opt_state, loaded), steps_taken, schedule_steps)


def load_jax_optimizer_state_into_torch(
    optimizer: torch.optim.Optimizer,
    opt_state: Any,
    names: Mapping[torch.Tensor, str],
    converter: Converter,
    *,
    flat_order: "FlatOrder | None" = None,
) -> None:
    """Continue a JAX run in torch: write ``opt_state``'s buffers, step counts and each group's
    hyperparameters into ``optimizer`` (built over the matching parameters, with the same
    groups), so its next ``step()`` continues where the JAX optimizer stopped.
    L-BFGS's state is over the flat vector of all parameters: pass ``flat_order``."""
    groups = torch_param_groups(optimizer, names)
    by_name = {name: p for p, name in names.items()}
    for group, group_state in zip(optimizer.param_groups, param_group_states(opt_state), strict=True):
        hyperparams = torch_state_fields(group_state).get("hyperparams", {})
        for key, value in group.items():
            if key in TUPLE_HYPERPARAMS and all(name in hyperparams for name in TUPLE_HYPERPARAMS[key]):
                group[key] = tuple(float(hyperparams[name]) for name in TUPLE_HYPERPARAMS[key])
            elif key in hyperparams and isinstance(value, (int, float)) and not isinstance(value, bool):
                integer = jnp.issubdtype(jnp.result_type(hyperparams[key]), jnp.integer)  # LBFGS's max_iter
                group[key] = int(hyperparams[key]) if integer else float(hyperparams[key])
    if isinstance(optimizer, torch.optim.LBFGS):
        _load_lbfgs_into_torch(optimizer, opt_state, _require(flat_order))
        return
    flat = jax_optimizer_state(opt_state, converter, groups)
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


# ------------------------------------------------------------------------------------------
# L-BFGS keeps one state for all parameters, over their flat concatenation: torch stores it in
# optimizer.state[first parameter] and concatenates the parameters in param_groups order, each
# in torch's layout; jax_impl.optim.lbfgs concatenates jax.tree.leaves(params) in JAX layouts.

#: torch's L-BFGS state keys compared by the harness. ``al`` is left out: it is scratch space
#: of the two-loop recursion, written before it is read, so no result depends on its value.
_LBFGS_KEYS = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
               "prev_flat_grad", "prev_loss")


class FlatOrder:
    """The element order of L-BFGS's flat parameter vector on each side.

    >>> order = FlatOrder.build(converter, params, ["fc1.weight", "fc1.bias", ...])
    >>> torch_flat = order.to_torch(jax_flat)
    """

    def __init__(self, torch_from_jax: np.ndarray):
        self.torch_from_jax = np.asarray(torch_from_jax)  # torch_flat = jax_flat[torch_from_jax]
        self.jax_from_torch = np.argsort(self.torch_from_jax)

    @classmethod
    def build(cls, converter: Converter, params: Any, torch_names: Sequence[str]) -> "FlatOrder":
        """From the JAX parameters (any tree mirroring the NNX variables) and the torch names in
        torch's order (its ``param_groups``, flattened)."""
        leaves, treedef = jax.tree.flatten(params)
        sizes = [int(np.size(leaf)) for leaf in leaves]
        offsets = np.cumsum([0, *sizes])
        positions = jax.tree.unflatten(treedef, [
            np.arange(start, start + size).reshape(np.shape(leaf))
            for start, size, leaf in zip(offsets[:-1], sizes, leaves, strict=True)
        ])
        by_name = converter.to_torch(positions)
        if sorted(by_name) != sorted(torch_names):
            raise ConversionError(f"the JAX parameters ({', '.join(sorted(by_name))}) are not torch's "
                                  f"({', '.join(sorted(torch_names))})")
        return cls(np.concatenate([by_name[name].reshape(-1) for name in torch_names]))

    def to_torch(self, flat: np.ndarray) -> np.ndarray:
        return np.asarray(flat)[self.torch_from_jax]

    def from_torch(self, flat: np.ndarray) -> np.ndarray:
        return np.asarray(flat)[self.jax_from_torch]


def _require(flat_order: FlatOrder | None) -> FlatOrder:
    if flat_order is None:
        raise ConversionError("L-BFGS's state is over the flat vector of all parameters: pass flat_order="
                              "FlatOrder.build(converter, params, torch parameter names in torch's order)")
    return flat_order


def _numpy_values(value: Any) -> Any:
    """A torch L-BFGS state value with its tensors as numpy arrays (lists kept as lists)."""
    if isinstance(value, torch.Tensor):
        return to_numpy(value)
    if isinstance(value, list):
        return [_numpy_values(item) for item in value]
    return value


def _lbfgs_flat(state: Mapping[str, Any], prefix: str, steps_taken: int) -> dict[str, np.ndarray]:
    """Flat keys ``"<first parameter>:<key>"`` from a torch-format L-BFGS state; the histories
    stacked oldest first, ``(pairs held, N)``."""
    flat = {f"{prefix}:step": np.asarray(float(steps_taken))}
    for key in _LBFGS_KEYS:
        if key not in state:
            continue
        value = state[key]
        if key in ("old_dirs", "old_stps", "ro"):
            value = np.stack([np.asarray(v) for v in value]) if value else np.zeros([0])
        flat[f"{prefix}:{key}"] = np.asarray(value, dtype=np.float64 if np.ndim(value) == 0 else None)
    return flat


def _torch_lbfgs_state(optimizer: torch.optim.LBFGS, names: Mapping[torch.Tensor, str],
                       steps_taken: int) -> dict[str, np.ndarray]:
    first = optimizer.param_groups[0]["params"][0]
    state = {key: _numpy_values(value) for key, value in optimizer.state.get(first, {}).items()}
    return _lbfgs_flat(state, names[first], steps_taken)


def _jax_lbfgs_state(opt_state: Any, groups: Sequence[Sequence[str]], flat_order: FlatOrder | None) -> dict[str, np.ndarray]:
    state = jax_lbfgs.state_to_torch(opt_state, to_torch_flat=_require(flat_order).to_torch)
    return _lbfgs_flat(state, groups[0][0], int(jax_lbfgs._find_state(opt_state).count))


def _load_lbfgs_into_torch(optimizer: torch.optim.LBFGS, opt_state: Any, flat_order: FlatOrder) -> None:
    first = optimizer.param_groups[0]["params"][0]
    dtype = first.dtype

    def tensor(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return torch.as_tensor(np.array(value), dtype=dtype)
        if isinstance(value, list):
            return [tensor(item) for item in value]
        return value

    state = jax_lbfgs.state_to_torch(opt_state, to_torch_flat=flat_order.to_torch)
    optimizer.state[first] = {key: tensor(value) for key, value in state.items()}


def torch_layout(converter: Converter) -> Any:
    """``layout(path, leaf)`` for :func:`jax_impl.optim.from_torch`: the axis permutation taking
    a JAX variable to torch's layout (``(1, 0)`` for a ``Linear`` kernel), found by applying the
    converter's rule to a probe array of the leaf's shape; None where the layouts agree."""
    cache: dict[tuple[str, tuple[int, ...]], tuple[int, ...] | None] = {}

    def layout(path: tuple[Any, ...], leaf: Any) -> tuple[int, ...] | None:
        name, shape = path_name(path), tuple(np.shape(leaf))
        if (name, shape) not in cache:
            cache[name, shape] = _permutation(converter, name, shape)
        return cache[name, shape]

    return layout


def _permutation(converter: Converter, path: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if path not in converter._by_jax:
        return None
    _, rule = converter._by_jax[path]
    probe = np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)
    converted = rule.to_torch(probe)
    for perm in itertools.permutations(range(len(shape))):
        if converted.shape == probe.transpose(perm).shape and np.array_equal(converted, probe.transpose(perm)):
            return None if perm == tuple(range(len(shape))) else perm
    raise ConversionError(f"the layout rule of {path} is not an axis permutation; optimizers that depend on "
                          "the parameters' axes (Adafactor, Muon) need one")
