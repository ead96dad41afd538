"""Flax NNX models mirroring ``torch_ref.models`` name for name and attribute for attribute.

Attribute names match the torch module's (``fc1``, ``fc2``, ...), so a torch ``state_dict``
key such as ``fc1.weight`` maps to the NNX path ``fc1/kernel``.
"""

from jax_impl.models.cnn import CNN
from jax_impl.models.lstm import LSTMClassifier
from jax_impl.models.simple_nn import SimpleNN
from jax_impl.models.transformer import TransformerClassifier, TransformerEncoder, TransformerEncoderLayer
from jax_impl.models.with_loss import WithLoss

#: model name -> NNX class; every class takes ``rngs=`` and ``param_dtype=`` keywords. The names
#: are ``torch_ref.models.MODELS``'s (``--model "Transformer(norm_first=True)"``).
MODELS = {"SimpleNN": SimpleNN, "CNN": CNN, "Transformer": TransformerClassifier, "LSTM": LSTMClassifier}

__all__ = ["MODELS", "SimpleNN", "CNN", "TransformerClassifier", "TransformerEncoder", "TransformerEncoderLayer",
           "LSTMClassifier", "WithLoss"]
