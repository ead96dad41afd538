"""Dropout at parity: the harness draws every dropout mask, and both frameworks use it.

torch's CPU dropout (``nn.Dropout``, ``F.dropout``, and the attention-weight dropout of
``nn.MultiheadAttention`` / ``scaled_dot_product_attention``) draws its mask as
``empty_like(x).bernoulli_(1 - p)`` and then scales it in place. :class:`HarnessDropout` is a
``TorchDispatchMode`` that, while one torch step runs, replaces each such draw with a mask from
the harness's own numpy stream (:func:`dropout_mask`) keyed by (run seed, step, torch module
name), fills torch's tensor with it, and records it under the module's name. torch then scales
and applies that mask exactly as it would its own. The JAX side receives the recorded masks
through its ``DropoutMask`` variables (``jax_impl.layers.set_dropout_masks``) before its step.

A mask depends only on its key, so evaluating the model again in the same step (an LBFGS
closure) draws the same masks, and a module that drops twice in one forward pass gets the same
mask both times, as the JAX layer's single ``DropoutMask`` applies it. Eval mode draws nothing.
Without the harness, plain JAX dropout keeps drawing from ``nnx.Rngs``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch
from flax import nnx
from torch.utils._python_dispatch import TorchDispatchMode

from jax_impl.layers import set_dropout_masks
from jax_impl.spec import SpecError

__all__ = ["HarnessDropout", "dropout_mask", "hand_masks_to_jax"]

#: separates the dropout streams from the data's (``default_rng([seed, epoch])``)
_STREAM = 0xD0

_BERNOULLI = torch.ops.aten.bernoulli_.float


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def dropout_mask(seed: int, step: int, module: str, shape: tuple[int, ...], keep: float,
                 dtype: np.dtype = np.float32) -> np.ndarray:
    """The mask of torch module ``module`` at optimizer step ``step`` of a run seeded ``seed``:
    1 (keep) with probability ``keep``, else 0, in ``dtype``."""
    rng = np.random.default_rng([_STREAM, seed, step, _name_key(module)])
    return (rng.random(shape) < keep).astype(dtype)


class HarnessDropout(TorchDispatchMode):
    """While active, every dropout mask ``model`` draws comes from :func:`dropout_mask`;
    ``masks[module name]`` holds each (the innermost running module: the ``nn.Dropout``
    itself, or the ``nn.MultiheadAttention`` whose attention weights it drops).

    Any other random draw inside the model is an error (the JAX side could not reproduce it);
    random draws outside the model (none in torch's losses and optimizers) are left to torch.
    """

    def __init__(self, model: torch.nn.Module, seed: int, step: int):
        super().__init__()
        self.model, self.seed, self.step = model, seed, step
        self.masks: dict[str, np.ndarray] = {}
        self._running: list[str] = []
        self._handles: list = []

    def __enter__(self):
        self._running.clear()
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(lambda *_, name=name: self._running.append(name)))
            self._handles.append(module.register_forward_hook(self._leave, always_call=True))
        return super().__enter__()

    def _leave(self, *_) -> None:  # a forward hook's return value would replace the output
        if self._running:
            self._running.pop()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._running:  # outside the model's forward pass: torch as it is
            return func(*args, **kwargs)
        if func is _BERNOULLI:
            tensor = args[0]
            keep = float(args[1] if len(args) > 1 else kwargs.get("p", 0.5))
            mask = self._mask(self._running[-1], tuple(tensor.shape), keep, tensor.dtype)
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(mask))
            return tensor
        if torch.Tag.nondeterministic_seeded in func.tags and _draws(func, args, kwargs):
            raise SpecError(f"torch module {self._running[-1] or type(self.model).__name__!r} draws random numbers "
                            f"with {func}: the harness can hand only dropout masks (bernoulli_) to JAX")
        return func(*args, **kwargs)

    def _mask(self, name: str, shape: tuple[int, ...], keep: float, dtype: torch.dtype) -> np.ndarray:
        mask = self.masks.get(name)
        if mask is None:
            # 0 and 1 are exact in every dtype; numpy has no bfloat16 (autocast), so that mask is float32
            numpy_dtype = np.float32 if dtype == torch.bfloat16 else torch.empty((), dtype=dtype).numpy().dtype
            mask = self.masks[name] = dropout_mask(self.seed, self.step, name, shape, keep, numpy_dtype)
        elif mask.shape != shape:
            raise SpecError(f"torch module {name!r} drew dropout masks of shapes {mask.shape} and {shape} in one "
                            "step; its JAX twin holds one mask per layer")
        return mask


def _draws(func, args, kwargs) -> bool:
    """Whether a random op draws in this call: not an attention kernel with ``dropout_p=0`` (torch's
    fused CPU attention is tagged random for its dropout), nor a dropout op with ``train=False``."""
    schema = func._schema.arguments
    values = {a.name: a.default_value for a in schema if a.has_default_value()}
    values |= {argument.name: value for argument, value in zip(schema, args)} | kwargs
    return not (values.get("dropout_p", None) == 0 or values.get("train", True) is False)


def hand_masks_to_jax(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                      masks: Mapping[str, np.ndarray | None]) -> nnx.State:
    """``rest`` with the ``DropoutMask`` of each torch module named in ``masks`` set to its mask
    (``None`` clears one). The masks become leaves of ``rest``: a compiled step traces once
    for them and is reused while their shapes stay the same."""
    model = nnx.merge(graphdef, params, rest, copy=True)
    try:
        set_dropout_masks(model, masks)
    except KeyError as error:
        raise SpecError(f"torch drew a dropout mask the JAX model cannot take: {error.args[0]} (jax_impl.layers' "
                        "Dropout and MultiheadAttention take the harness's masks)") from None
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return rest
