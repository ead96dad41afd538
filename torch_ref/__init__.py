"""The PyTorch reference: models and the stateful training loop as a PyTorch user writes it.

Never imports JAX or the parity harness.
"""

__version__ = "0.1.0"
