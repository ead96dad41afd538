"""torch.nn models, written as a PyTorch user writes them."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MODELS", "SimpleNN", "CNN", "TransformerClassifier", "LSTMClassifier", "WithLoss", "image_side"]


class SimpleNN(nn.Module):
    """The seed's MLP: ``Linear(input_size, hidden_size) -> ReLU -> Linear(hidden_size, num_classes)``.

    ``bias=False`` leaves out both biases (every parameter is then a matrix, as torch's Muon needs).
    """

    def __init__(self, input_size: int = 784, hidden_size: int = 256, num_classes: int = 10, bias: bool = True):
        super().__init__()
        self.input_size = input_size
        self.fc1 = nn.Linear(input_size, hidden_size, bias=bias)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.input_size)  # (B, input_size)
        x = self.relu(self.fc1(x))  # (B, hidden_size)
        return self.fc2(x)  # (B, num_classes)


def image_side(input_size: int, in_channels: int = 1) -> int:
    """The side of the square images that ``input_size`` flat features hold (784 -> 28, 64 -> 8)."""
    side = math.isqrt(input_size // in_channels)
    if side * side * in_channels != input_size:
        raise ValueError(f"input_size={input_size} is not {in_channels} channel(s) of a square image")
    return side


class CNN(nn.Module):
    """``(Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2))`` twice, then
    flatten, Dropout, Linear: for square images, flat ``(B, input_size)`` or ``(B, C, H, W)``.

    ``input_size=784`` is 1x28x28 (MNIST), ``input_size=64`` the 1x8x8 digits.
    """

    def __init__(self, input_size: int = 784, num_classes: int = 10, in_channels: int = 1, channels: int = 16,
                 dropout: float = 0.5):
        super().__init__()
        self.in_channels, self.side = in_channels, image_side(input_size, in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * channels * (self.side // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.in_channels, self.side, self.side)  # (B, C, H, W)
        x = self.pool(self.relu(self.bn1(self.conv1(x))))  # (B, c, H/2, W/2)
        x = self.pool(self.relu(self.bn2(self.conv2(x))))  # (B, 2c, H/4, W/4)
        x = self.dropout(torch.flatten(x, 1))  # (B, 2c * H/4 * W/4)
        return self.fc(x)  # (B, num_classes)


class TransformerClassifier(nn.Module):
    """A sequence classifier over integer tokens ``(B, T)``, ``T <= input_size``:

    token Embedding (``padding_idx`` rows ignored) + learned position Embedding ->
    ``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer(batch_first=True)`` with the
    padding as ``src_key_padding_mask`` -> mean over the non-padding tokens -> Linear.

    A sequence of padding only has nothing to attend to: avoid it (torch gives NaN or zeros
    depending on the code path). The encoder is built with ``enable_nested_tensor=False`` so
    that it computes padded positions too, in every mode.

    ``takes_tokens``: the parity harness feeds it integer tokens ``(B, T)`` (int64, values in
    ``[0, vocab_size)``) rather than float features.
    """

    takes_tokens = True

    def __init__(self, input_size: int = 64, num_classes: int = 10, vocab_size: int = 17, d_model: int = 32,
                 nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 64, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, padding_idx: int = 0):
        super().__init__()
        self.padding_idx, self.vocab_size = padding_idx, vocab_size
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.position = nn.Embedding(input_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                           batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        padding = tokens == self.padding_idx  # (B, T), True = ignore
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embedding(tokens) + self.position(positions)  # (B, T, d_model)
        x = self.encoder(x, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        x = (x * keep).sum(dim=1) / keep.sum(dim=1)  # (B, d_model)
        return self.fc(x)


class LSTMClassifier(nn.Module):
    """``nn.LSTM(batch_first=True)`` over the rows of a square image (or ``seq_len`` steps of
    ``input_size // seq_len`` features), Linear on the last step's output; ``dropout`` between
    stacked LSTM layers (``nn.LSTM``'s own)."""

    def __init__(self, input_size: int = 784, num_classes: int = 10, hidden_size: int = 64, num_layers: int = 1,
                 seq_len: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.seq_len = seq_len or image_side(input_size)
        if input_size % self.seq_len:
            raise ValueError(f"input_size={input_size} is not a multiple of seq_len={self.seq_len}")
        self.lstm = nn.LSTM(input_size // self.seq_len, hidden_size, num_layers, batch_first=True,
                            dropout=dropout)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.seq_len, -1)  # (B, T, F)
        out, _ = self.lstm(x)  # (B, T, H)
        return self.fc(out[:, -1])  # (B, num_classes)


class WithLoss(nn.Module):
    """A model and a loss that carries parameters (``nn.AdaptiveLogSoftmaxWithLoss``,
    ``nn.LinearCrossEntropyLoss``), trained together as a PyTorch user trains them: one optimizer
    over ``[*model.parameters(), *criterion.parameters()]``. The model's outputs are the loss's
    input features.

    ``forward(x)`` is the model's; :meth:`loss` is the criterion's (the ``.loss`` of
    ``AdaptiveLogSoftmaxWithLoss``'s output); :meth:`scores` gives per-class scores for accuracy.
    Parameter names are ``model.*`` and ``criterion.*``.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, in_features): the loss's input

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result = self.criterion(outputs, targets)
        return result.loss if isinstance(self.criterion, nn.AdaptiveLogSoftmaxWithLoss) else result

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, num_classes): ``log_prob`` of AdaptiveLogSoftmaxWithLoss, the linear layer's logits
        of LinearCrossEntropyLoss."""
        if isinstance(self.criterion, nn.AdaptiveLogSoftmaxWithLoss):
            return self.criterion.log_prob(outputs)
        return self.criterion.linear(outputs)


#: model name -> nn.Module class (names mirror jax_impl.models.MODELS)
MODELS = {"SimpleNN": SimpleNN, "CNN": CNN, "Transformer": TransformerClassifier, "LSTM": LSTMClassifier}
