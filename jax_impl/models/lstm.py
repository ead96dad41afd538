"""A recurrent classifier, the twin of ``torch_ref.models.LSTMClassifier``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.layers import LSTM, Linear
from jax_impl.models.cnn import image_side


class LSTMClassifier(nnx.Module):
    """:class:`jax_impl.layers.LSTM` (``batch_first``) over the rows of a square image (or
    ``seq_len`` steps of ``input_size // seq_len`` features), Linear on the last step's output;
    ``dropout`` between stacked LSTM layers as ``torch.nn.LSTM``'s.
    Inputs are flat ``(B, input_size)`` or already ``(B, T, F)``."""

    def __init__(self, input_size: int = 784, num_classes: int = 10, hidden_size: int = 64, num_layers: int = 1,
                 seq_len: int | None = None, dropout: float = 0.0, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.seq_len = seq_len or image_side(input_size)
        if input_size % self.seq_len:
            raise ValueError(f"input_size={input_size} is not a multiple of seq_len={self.seq_len}")
        self.lstm = LSTM(input_size // self.seq_len, hidden_size, num_layers, batch_first=True, dropout=dropout, rngs=rngs,
                         param_dtype=param_dtype)
        self.fc = Linear(hidden_size, num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], self.seq_len, -1)  # (B, T, F)
        out, _ = self.lstm(x)  # (B, T, H)
        return self.fc(out[:, -1])  # (B, num_classes)
