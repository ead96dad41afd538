"""Flax NNX models mirroring ``torch_ref.models`` name for name and attribute for attribute.

Attribute names match the torch module's (``fc1``, ``fc2``, ...), so a torch ``state_dict``
key such as ``fc1.weight`` maps to the NNX path ``fc1/kernel``.
"""

from jax_impl.models.simple_nn import SimpleNN

#: model name -> NNX class; every class takes ``rngs=`` and ``param_dtype=`` keywords.
MODELS = {"SimpleNN": SimpleNN}

__all__ = ["MODELS", "SimpleNN"]
