"""A Transformer encoder and sequence classifier, the twins of ``torch.nn.TransformerEncoderLayer``,
``torch.nn.TransformerEncoder`` and ``torch_ref.models.TransformerClassifier``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.layers import Dropout, Embedding, LayerNorm, Linear, MultiheadAttention, gelu

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nnx.relu, "gelu": gelu}  # gelu: exact erf


class TransformerEncoderLayer(nnx.Module):
    """``torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1,
    activation='relu', layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True)``:

        norm_first=False:  x = norm1(x + sa(x));         x = norm2(x + ff(x))
        norm_first=True:   x = x + sa(norm1(x));         x = x + ff(norm2(x))
        sa(x) = dropout1(self_attn(x, x, x, need_weights=False)[0])
        ff(x) = dropout2(linear2(dropout(activation(linear1(x)))))

    ``activation`` is ``'relu'`` or ``'gelu'`` (exact, torch's) or a function. The attribute
    names are torch's, so ``state_dict`` keys map one to one.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[jax.Array], jax.Array] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        if isinstance(activation, str) and activation not in _ACTIVATIONS:
            raise ValueError(f"activation should be relu/gelu, not {activation}")
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first, rngs=rngs,
                                            param_dtype=param_dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, rngs=rngs, param_dtype=param_dtype)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, rngs=rngs, param_dtype=param_dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias, param_dtype=param_dtype)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias, param_dtype=param_dtype)
        self.dropout1 = Dropout(dropout, rngs=rngs)
        self.dropout2 = Dropout(dropout, rngs=rngs)
        self.activation = activation

    def _sa_block(self, x, src_mask, src_key_padding_mask):
        x, _ = self.self_attn(x, x, x, key_padding_mask=src_key_padding_mask, need_weights=False, attn_mask=src_mask)
        return self.dropout1(x)

    def _ff_block(self, x):
        activation = _ACTIVATIONS[self.activation] if isinstance(self.activation, str) else self.activation
        return self.dropout2(self.linear2(self.dropout(activation(self.linear1(x)))))

    def __call__(self, src: jax.Array, src_mask: jax.Array | None = None,
                 src_key_padding_mask: jax.Array | None = None) -> jax.Array:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff_block(x))


class TransformerEncoder(nnx.Module):
    """``torch.nn.TransformerEncoder(encoder_layer, num_layers, norm=None)``: ``num_layers``
    copies of ``encoder_layer`` in ``layers``, then ``norm`` if given.

    Like torch (which deep-copies the layer), every layer starts with the same weights. Each
    copy's dropout draws from streams forked from ``rngs``, so copies do not share masks.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nnx.Module | None = None, *,
                 rngs: nnx.Rngs):
        layers = [encoder_layer] + [nnx.clone(encoder_layer) for _ in range(num_layers - 1)]
        for layer in layers[1:]:
            for _, module in nnx.iter_modules(layer):
                if isinstance(getattr(module, "rngs", None), nnx.RngStream):
                    module.rngs = rngs["dropout"].fork()
        self.layers = nnx.List(layers)
        self.norm = norm

    def __call__(self, src: jax.Array, mask: jax.Array | None = None,
                 src_key_padding_mask: jax.Array | None = None) -> jax.Array:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
        return x if self.norm is None else self.norm(x)


class TransformerClassifier(nnx.Module):
    """A sequence classifier over integer tokens ``(B, T)``, ``T <= input_size``: token
    Embedding (``padding_idx``) + learned position Embedding -> TransformerEncoder
    (``batch_first``, padding as ``src_key_padding_mask``) -> mean over the non-padding tokens
    -> Linear. A sequence of padding only is not supported (nothing to attend to).

    ``takes_tokens``: inputs are integer tokens in ``[0, vocab_size)``, not float features.
    """

    takes_tokens = True

    def __init__(self, input_size: int = 64, num_classes: int = 10, vocab_size: int = 17, d_model: int = 32,
                 nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 64, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, padding_idx: int = 0, *,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.padding_idx, self.vocab_size = padding_idx, vocab_size
        self.embedding = Embedding(vocab_size, d_model, padding_idx=padding_idx, rngs=rngs, param_dtype=param_dtype)
        self.position = Embedding(input_size, d_model, rngs=rngs, param_dtype=param_dtype)
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, batch_first=True,
                                        norm_first=norm_first, rngs=rngs, param_dtype=param_dtype)
        self.encoder = TransformerEncoder(layer, num_layers, rngs=rngs)
        self.fc = Linear(d_model, num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        padding = tokens == self.padding_idx  # (B, T), True = ignore
        x = self.embedding(tokens) + self.position(jnp.arange(tokens.shape[1]))  # (B, T, d_model)
        x = self.encoder(x, src_key_padding_mask=padding)
        keep = (~padding)[..., None].astype(x.dtype)  # (B, T, 1)
        x = (x * keep).sum(axis=1) / keep.sum(axis=1)  # (B, d_model)
        return self.fc(x)
