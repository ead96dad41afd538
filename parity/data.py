"""Seeded data for parity runs: the embedded digits set, synthetic data, or the user's ``.npz``.

Batches are numpy arrays, identical for both frameworks; each side converts them at its
boundary. The shuffling order of every epoch is drawn from ``(seed, epoch)`` so a run is
reproducible and any epoch can be regenerated on its own.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jax_impl.spec import SpecError, suggest

__all__ = ["DataError", "Dataset", "load", "digits", "synthetic", "from_npz"]


class DataError(ValueError):
    """The data cannot be read, or its arrays have the wrong shape or type."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # (N, ...) float
    y_train: np.ndarray  # (N,) int64 class indices
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    #: what ``x * token_scale`` is, as integers, the data set's natural tokens (digits stores
    #: pixel / 16, so its raw pixel values 0..16 are ``x * 16``); see :meth:`as_tokens`
    token_scale: float = 1.0

    @property
    def input_size(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    def as_tokens(self, vocab_size: int, model: str = "the model") -> "Dataset":
        """The same samples as integer tokens ``np.rint(x * token_scale)`` (int64), for a model
        that embeds tokens (a Transformer); a :class:`SpecError` unless every value is an
        integer in ``[0, vocab_size)``."""
        arrays = {}
        for key in ("x_train", "x_val"):
            raw = np.asarray(getattr(self, key), np.float64) * self.token_scale
            tokens = np.rint(raw)
            off = np.flatnonzero(~np.isclose(raw, tokens, rtol=0.0, atol=1e-6))
            if off.size:
                index = np.unravel_index(off[0], raw.shape)
                raise SpecError(
                    f"{model} takes integer tokens in [0, {vocab_size}), but --data {self.name} is not integer-valued "
                    f"({key}[{', '.join(map(str, index))}] = {raw[index]:.6g}); use --data digits (pixel values "
                    "0..16) or an .npz whose 'x' holds token ids"
                )
            if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
                raise SpecError(
                    f"{model} takes integer tokens in [0, {vocab_size}), but --data {self.name} has values from "
                    f"{tokens.min():.0f} to {tokens.max():.0f}; raise vocab_size or map the data to token ids"
                )
            arrays[key] = tokens.astype(np.int64)
        return dataclasses.replace(self, **arrays, token_scale=1.0)

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.x_train) // batch_size)

    def train_batches(
        self, epoch: int, batch_size: int, seed: int, steps: int | None = None, dtype=np.float32
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The shuffled batches of one epoch (the last one may be smaller, as with a
        ``DataLoader`` that keeps it); ``steps`` limits how many are taken."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.x_train))
        count = self.batches_per_epoch(batch_size) if steps is None else steps
        for index in range(count):
            chosen = order[index * batch_size : (index + 1) * batch_size]
            yield _cast(self.x_train[chosen], dtype), self.y_train[chosen]

    def val_batches(self, batch_size: int, dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.x_val), batch_size):
            yield _cast(self.x_val[start : start + batch_size], dtype), self.y_val[start : start + batch_size]


def _cast(x: np.ndarray, dtype) -> np.ndarray:
    """Float features in the run's dtype; integer tokens (:meth:`Dataset.as_tokens`) stay int64."""
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(dtype)


#: More classes than this is taken for a labelling mistake (a model with that many outputs).
MAX_CLASSES = 100_000


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float = 0.2) -> Dataset:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(val_fraction * len(x)))
    if cut < 1 or cut == len(x):
        raise DataError(
            f"--data {name}: {len(x)} samples are too few to hold out {val_fraction:.0%} for validation; "
            "add samples or give 'x_val' and 'y_val'"
        )
    train, val = order[:cut], order[cut:]
    return Dataset(name, x[train], y[train], x[val], y[val], int(y.max()) + 1)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, no download),
    scaled to [0, 1] and split 80/20 with a seeded permutation. As tokens (:meth:`Dataset.as_tokens`)
    they are the raw pixel values 0..16, 0 the blank background (a Transformer's padding)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float64)  # (1797, 64)
    return dataclasses.replace(_split("digits", x, bunch.target.astype(np.int64), seed), token_scale=16.0)


def synthetic(seed: int = 0, samples: int = 1024, input_size: int = 784, num_classes: int = 10) -> Dataset:
    """Gaussian inputs with labels from a fixed random linear teacher (learnable, seeded)."""
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((samples, input_size))
    teacher = rng.standard_normal((input_size, num_classes))
    y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    return _split("synthetic", x, y, seed)


def from_npz(path: str | Path, seed: int = 0) -> Dataset:
    """A user's ``.npz`` with ``x`` (N, ...) and ``y`` (N,) integer labels, and optionally
    ``x_val``/``y_val``; without them 20% of ``x`` is held out with a seeded split."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--data {path}: is a directory, not an .npz file")
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    not_npz = f"--data {path}: not an .npz archive (write one with numpy.savez(path, x=..., y=...))"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise DataError(not_npz) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array
        raise DataError(not_npz)
    try:
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(f"--data {path}: the archive is damaged ({error})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"--data {path}: missing array {key!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"--data {path}: give both 'x_val' and 'y_val' or neither")
    pairs = [("x", "y")] + ([("x_val", "y_val")] if "x_val" in arrays else [])
    for x_key, y_key in pairs:
        x, y = arrays[x_key], arrays[y_key]
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.ndim < 2:
            raise DataError(
                f"--data {path}: {x_key!r} must be a real numeric array (N, features...), got {x.dtype} {x.shape}"
            )
        if x.shape[1:] and int(np.prod(x.shape[1:])) == 0:
            raise DataError(f"--data {path}: {x_key!r} has no features, shape {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"--data {path}: {y_key!r} must be integer class labels of shape (N,), got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"--data {path}: {x_key!r} has {len(x)} samples but {y_key!r} has {len(y)}")
        if len(y) and y.min() < 0:
            raise DataError(f"--data {path}: {y_key!r} has negative labels (min {y.min()})")
        if len(y) and y.max() >= MAX_CLASSES:
            raise DataError(
                f"--data {path}: {y_key!r} has label {y.max()}; labels are class indices 0..C-1 "
                f"(at most {MAX_CLASSES} classes)"
            )
        if not np.all(np.isfinite(x)):
            raise DataError(f"--data {path}: {x_key!r} contains NaN or Inf")
    if "x_val" in arrays and arrays["x_val"].shape[1:] != arrays["x"].shape[1:]:
        raise DataError(
            f"--data {path}: 'x_val' samples have shape {arrays['x_val'].shape[1:]}, 'x' samples {arrays['x'].shape[1:]}"
        )
    x, y = arrays["x"].astype(np.float64), arrays["y"].astype(np.int64)
    if len(x) < 2:
        raise DataError(f"--data {path}: need at least 2 samples, got {len(x)}")
    if "x_val" not in arrays:
        return _split(path.name, x, y, seed)
    x_val, y_val = arrays["x_val"].astype(np.float64), arrays["y_val"].astype(np.int64)
    if len(x_val) == 0:
        raise DataError(f"--data {path}: 'x_val' is empty")
    num_classes = int(max(y.max(), y_val.max())) + 1
    return Dataset(path.name, x, y, x_val, y_val, num_classes)


def load(source: str, seed: int = 0) -> Dataset:
    """``"digits"``, ``"synthetic"`` or a path to an ``.npz`` file."""
    builtin = {"digits": digits, "synthetic": synthetic}
    if source in builtin:
        return builtin[source](seed)
    path = Path(source)
    if not path.exists() and path.suffix == "" and "/" not in source:
        raise DataError(
            f"--data {source}: unknown data set{suggest(source, list(builtin))}; "
            "use digits, synthetic or a path to an .npz file"
        )
    return from_npz(path, seed)
