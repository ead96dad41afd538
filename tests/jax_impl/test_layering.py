"""The dependency direction of DESIGN.md: jax_impl never imports torch or parity, torch_ref
never imports JAX or parity. Each package is imported in a fresh interpreter in which the
forbidden packages cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_BLOCKED_IMPORT = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this layering test")
            return None

    sys.meta_path.insert(0, Block())
    for module in {modules!r}:
        __import__(module)
    leaked = sorted({{m.split(".")[0] for m in sys.modules}} & BLOCKED)
    assert not leaked, leaked
    print("imported", len({modules!r}), "modules")
""")

JAX_IMPL_MODULES = ["jax_impl", "jax_impl.spec", "jax_impl.optim", "jax_impl.schedules", "jax_impl.losses",
                    "jax_impl.models", "jax_impl.layers", "jax_impl.init", "jax_impl.step", "jax_impl.loop",
                    "jax_impl.checkpoint", "jax_impl.stateful"]
TORCH_REF_MODULES = ["torch_ref", "torch_ref.models", "torch_ref.loop"]


def _import_with_blocked(modules: list[str], blocked: set[str]) -> subprocess.CompletedProcess:
    script = _BLOCKED_IMPORT.format(blocked=blocked, modules=modules)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("modules, blocked", [
    (JAX_IMPL_MODULES, {"torch", "parity", "torch_ref"}),
    (TORCH_REF_MODULES, {"jax", "jaxlib", "flax", "optax", "parity", "jax_impl"}),
], ids=["jax_impl without torch", "torch_ref without jax"])
def test_package_imports_with_the_other_side_blocked(modules, blocked):
    result = _import_with_blocked(modules, blocked)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)} modules" in result.stdout


def test_the_block_works():
    """The check itself can fail: parity needs both sides, so it cannot import without torch."""
    result = _import_with_blocked(["parity"], {"torch"})
    assert result.returncode != 0
    assert "torch is blocked" in result.stderr
