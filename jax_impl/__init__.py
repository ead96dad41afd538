"""PyTorch training semantics in JAX: Flax NNX models, optax optimizers, schedules and losses.

Never imports torch. Build components from the spec strings a PyTorch user writes::

    from jax_impl import optim, schedules, losses
    tx = optim.from_torch("SGD(lr=0.01, momentum=0.9)")
"""

__version__ = "0.1.0"
