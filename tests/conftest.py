"""Shared test set-up.

``import parity`` turns on ``jax_enable_x64``. Doing it here, before any test module runs,
makes every test see the same JAX configuration whichever tests a worker happens to run first
(float32 arrays stay float32: every array the code under test creates has an explicit dtype).

Compiled XLA programs are kept in pytest's cache directory, one folder per xdist worker (JAX
writes cache files without a lock, so two processes must not share one): most parity runs
compile the same few step functions, and a rerun of the suite compiles almost nothing.

Under pytest-xdist each worker runs torch on one thread.

Hypothesis draws the same examples on every run (``derandomize``), so the suite is repeatable;
a failure message still shows the drawn values, and ``--hypothesis-seed`` explores others.
"""

import os

import jax
import pytest
import torch
from hypothesis import settings

import parity  # noqa: F401

settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one torch thread per xdist worker: `pytest -n 2` on 2 cores otherwise runs 4 threads,
        # and torch's small kernels slow down many times when threads outnumber cores
        torch.set_num_threads(1)
    if getattr(config, "cache", None) is None:  # -p no:cacheprovider
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    jax.config.update("jax_compilation_cache_dir", str(config.cache.mkdir(f"jax-compilation-{worker}")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
