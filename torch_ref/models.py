"""torch.nn models, written as a PyTorch user writes them."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MODELS", "SimpleNN"]


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


#: model name -> nn.Module class (names mirror jax_impl.models.MODELS)
MODELS = {"SimpleNN": SimpleNN}
