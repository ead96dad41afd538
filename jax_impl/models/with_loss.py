"""A model trained together with a loss that carries parameters; the twin of
``torch_ref.models.WithLoss``."""

from __future__ import annotations

import jax
from flax import nnx

from jax_impl.losses import AdaptiveLogSoftmaxWithLoss, LinearCrossEntropyLoss


class WithLoss(nnx.Module):
    """``model`` and ``criterion`` (:class:`~jax_impl.losses.AdaptiveLogSoftmaxWithLoss` or
    :class:`~jax_impl.losses.LinearCrossEntropyLoss`) as one module, so that one optimizer trains
    both, as ``torch.optim.SGD([*model.parameters(), *criterion.parameters()])`` does.

    ``__call__(x)`` is the model's (its outputs are the loss's input features); :meth:`loss` is
    the criterion's. The train and eval steps of :mod:`jax_impl.step` use :meth:`loss` when given
    no loss function, and :meth:`scores` for accuracy. Variable paths are ``model/...`` and
    ``criterion/...`` (torch's ``model.*`` and ``criterion.*``).
    """

    def __init__(self, model: nnx.Module, criterion: AdaptiveLogSoftmaxWithLoss | LinearCrossEntropyLoss):
        if not isinstance(criterion, (AdaptiveLogSoftmaxWithLoss, LinearCrossEntropyLoss)):
            raise TypeError(f"criterion must be a loss that carries parameters, got {type(criterion).__name__}")
        self.model, self.criterion = model, criterion

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.model(x)  # (B, in_features)

    def loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        result = self.criterion(outputs, targets)
        return result.loss if isinstance(self.criterion, AdaptiveLogSoftmaxWithLoss) else result

    def scores(self, outputs: jax.Array) -> jax.Array:
        """(B, num_classes) class scores: ``log_prob`` or the linear layer's logits."""
        if isinstance(self.criterion, AdaptiveLogSoftmaxWithLoss):
            return self.criterion.log_prob(outputs)
        return self.criterion.logits(outputs)
