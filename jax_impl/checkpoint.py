"""Checkpoints as ``.npz`` archives: no pickle, so loading one cannot run code.

Each array is stored under its pytree path (``fc1/kernel``); a JSON string under
``__metadata__`` holds the caller's metadata (epoch, validation loss, ...). Writes are atomic:
the archive is written to a temporary file in the same directory, flushed to disk, and renamed
over the target, so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["save", "load", "flatten", "leaves_by_path", "path_name", "unflatten_into", "atomic_path", "CheckpointError"]

_METADATA = "__metadata__"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, or does not match the expected state."""


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_name(path: tuple[Any, ...]) -> str:
    """A pytree key path as ``"fc1/kernel"`` (an NNX ``Variable.value`` hop dropped)."""
    names = [_key_name(k) for k in path]
    if names and names[-1] == "value":
        names = names[:-1]
    return "/".join(names)


def leaves_by_path(tree: Any) -> dict[str, Any]:
    """``{"fc1/kernel": leaf, ...}`` for any pytree, leaves as they are, in the tree's
    flattening order."""
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flatten(tree: Any) -> dict[str, np.ndarray]:
    """:func:`leaves_by_path` with every leaf copied to a numpy array."""
    return {name: np.asarray(leaf) for name, leaf in leaves_by_path(tree).items()}


def unflatten_into(template: Any, flat: Mapping[str, np.ndarray]) -> Any:
    """Rebuild ``template``'s structure with the arrays of ``flat``; every key must match."""
    expected = leaves_by_path(template)  # shapes only: no copies
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(flat[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in flat and tuple(flat[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes)}")
        raise CheckpointError("checkpoint does not match the state: " + " | ".join(parts))
    treedef = jax.tree.structure(template)
    return jax.tree.unflatten(treedef, [flat[k] for k in expected])


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; the block writes it, and only if the block
    succeeds is it flushed to disk and renamed onto ``path``. On any error it is removed.

    A symbolic link is followed (its target is replaced, the link stays); a path that exists
    and is not a regular file (a device, a pipe) is refused, since renaming over it would
    replace it. The file gets the permissions a plain ``open(path, "w")`` would give.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file; refusing to replace it")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``arrays`` and JSON ``metadata`` to ``path`` atomically."""
    if _METADATA in arrays:
        raise ValueError(f"{_METADATA!r} is reserved")
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload[_METADATA] = np.asarray(json.dumps(dict(metadata or {})))
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **payload)


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save`: ``(arrays, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): {error}") from None
    if _METADATA not in arrays:
        raise CheckpointError(f"{path} has no {_METADATA} entry: not written by jax_impl.checkpoint")
    metadata = json.loads(str(arrays.pop(_METADATA)))
    return arrays, metadata
