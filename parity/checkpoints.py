"""Checkpoints of a parity run, and resuming one exactly where it stopped.

A *full* checkpoint is a directory ``DIR/step-000040/`` holding

- ``torch.pt``: ``torch.save`` of plain state dicts, ``{"model": model.state_dict(), "optimizer":
  optimizer.state_dict(), "scheduler": scheduler.state_dict() or None, "rng": torch.get_rng_state(),
  "position": {...}}``; read back with ``torch.load(weights_only=True)``, so loading runs no code;
- ``jax.npz``: :mod:`jax_impl.checkpoint` (no pickle) of the JAX state: ``params/...``,
  ``buffers/...``, ``opt_state/...`` (and ``plateau/...`` for ReduceLROnPlateau), the position
  in its JSON metadata.

The position ``(epoch, batch, step)`` is the next batch to train and the optimizer steps taken.
It is all the data order and randomness a run needs: the harness's batches are drawn per epoch
from ``(seed, epoch)`` (:mod:`parity.data`) and every dropout mask from ``(seed, step, module)``
(:mod:`parity.dropout`), so resuming at a position replays the same batches and masks.

A directory is written under a temporary name and renamed into place, so an interrupted save
leaves no partial checkpoint and never touches an earlier one. A directory with ``torch.pt`` only
(a PyTorch run's checkpoint) resumes the JAX side from torch's state: the cross-framework resume.

*Best* checkpoints follow each side's own validation loss: ``DIR/best_torch.pt`` (the model's
``state_dict``) and ``DIR/best_jax.npz`` (parameters and buffers), each written atomically.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jax_impl.checkpoint as jax_checkpoint
from jax_impl.checkpoint import CheckpointError
from jax_impl.spec import SpecError

__all__ = ["Checkpointing", "Position", "Resumed", "save_full", "save_best", "load_torch", "restore",
           "TORCH_FILE", "JAX_FILE"]

TORCH_FILE = "torch.pt"
JAX_FILE = "jax.npz"
FORMAT = 1
#: configuration that must match between the run that wrote a checkpoint and the run resuming it
MATCHING_KEYS = ("optimizer", "scheduler", "scheduler_interval", "dtype", "accumulate")


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where to write checkpoints, how often, and what to resume from.

    ``directory``: full checkpoints after every epoch (and every ``every_steps`` optimizer
    steps within one), best-model checkpoints on validation loss. ``resume``: a full checkpoint
    directory to continue from.
    """

    directory: Path | None = None
    every_steps: int | None = None
    resume: Path | None = None

    def __post_init__(self) -> None:
        if self.every_steps is not None and (not isinstance(self.every_steps, int) or self.every_steps < 1):
            raise SpecError(f"checkpoint every_steps must be a positive integer, got {self.every_steps!r}")
        if self.every_steps is not None and self.directory is None:
            raise SpecError("checkpoint every_steps needs a checkpoint directory")
        if self.directory is not None:
            directory = Path(self.directory)
            if directory.exists() and not directory.is_dir():
                raise SpecError(f"checkpoint directory {directory} exists and is not a directory")
            object.__setattr__(self, "directory", directory)
        if self.resume is not None:
            object.__setattr__(self, "resume", Path(self.resume))

    def due(self, step: int) -> bool:
        """A mid-epoch checkpoint after ``step`` optimizer steps?"""
        return self.directory is not None and self.every_steps is not None and step % self.every_steps == 0


@dataclasses.dataclass(frozen=True)
class Position:
    epoch: int  # the epoch of the next batch
    batch: int  # its index within the epoch
    step: int  # optimizer steps taken
    #: the training losses of the epoch's batches already taken (its summary is their mean)
    torch_losses: tuple[float, ...] = ()
    jax_losses: tuple[float, ...] = ()
    #: each side's best validation loss so far (for the best-model checkpoints)
    torch_best: float | None = None
    jax_best: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any, where: Path) -> "Position":
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(values, Mapping) or not all(k in values for k in ("epoch", "batch", "step")):
            raise CheckpointError(f"{where}: no valid position (epoch, batch, step) in the checkpoint")
        values = {k: tuple(v) if k.endswith("losses") else v for k, v in values.items() if k in names}
        return cls(**values)


def _write_directory(target: Path, write: Any) -> None:
    """``write(temporary_directory)``, then rename it to ``target`` (replacing an older one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(temporary)
        for file in temporary.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if target.exists():  # the same position written again: swap, then drop the old one
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(temporary, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _jax_arrays(state: Any, plateau_states: Sequence[Any] | None, buffers_filter: Any) -> dict[str, np.ndarray]:
    arrays = {f"params/{k}": v for k, v in jax_checkpoint.flatten(state.params).items()}
    arrays |= {f"buffers/{k}": v for k, v in jax_checkpoint.flatten(nnx.filter_state(state.rest, buffers_filter)).items()}
    arrays |= {f"opt_state/{k}": v for k, v in jax_checkpoint.flatten(state.opt_state).items()}
    for index, plateau in enumerate(plateau_states or ()):
        arrays |= {f"plateau/{index}/{k}": v for k, v in jax_checkpoint.flatten(plateau).items()}
    return arrays


def save_full(directory: Path, position: Position, config: Mapping[str, Any], *, torch_model: torch.nn.Module,
              torch_optimizer: torch.optim.Optimizer, torch_scheduler: Any, jax_state: Any,
              plateau_states: Sequence[Any] | None, buffers_filter: Any) -> Path:
    """Write the full checkpoint of both sides at ``position`` to ``directory/step-NNNNNN``."""
    target = Path(directory) / f"step-{position.step:06d}"
    metadata = {"format": FORMAT, "position": position.to_dict(),
                "config": {k: config.get(k) for k in MATCHING_KEYS}}

    def write(temporary: Path) -> None:
        torch.save({"model": torch_model.state_dict(), "optimizer": torch_optimizer.state_dict(),
                    "scheduler": None if torch_scheduler is None else torch_scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "position": position.to_dict(), "config": metadata["config"]},
                   temporary / TORCH_FILE)
        jax_checkpoint.save(temporary / JAX_FILE, _jax_arrays(jax_state, plateau_states, buffers_filter), metadata)

    _write_directory(target, write)
    return target


def save_best(directory: Path, side: str, epoch: int, val_loss: float, *, torch_model: torch.nn.Module | None = None,
              jax_state: Any = None, buffers_filter: Any = None) -> Path:
    """The best-model checkpoint of one side: ``best_torch.pt`` (``state_dict``) or ``best_jax.npz``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if side == "torch":
        path = directory / "best_torch.pt"
        with jax_checkpoint.atomic_path(path) as temporary:
            torch.save(torch_model.state_dict(), temporary)
        return path
    path = directory / "best_jax.npz"
    arrays = {f"params/{k}": v for k, v in jax_checkpoint.flatten(jax_state.params).items()}
    arrays |= {f"buffers/{k}": v
               for k, v in jax_checkpoint.flatten(nnx.filter_state(jax_state.rest, buffers_filter)).items()}
    jax_checkpoint.save(path, arrays, {"epoch": epoch, "val_loss": val_loss})
    return path


def load_torch(path: Path) -> dict[str, Any]:
    """``torch.pt`` of a full checkpoint directory, loaded with ``weights_only=True``."""
    file = Path(path) / TORCH_FILE
    if not Path(path).is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {TORCH_FILE}: not a full checkpoint")
    try:
        loaded = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:  # truncated zip, bad pickle opcode, a class weights_only refuses
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{file} is not a readable torch checkpoint (truncated or corrupted?): {first}") from None
    if not isinstance(loaded, dict) or not {"model", "optimizer", "position"} <= set(loaded):
        raise CheckpointError(f"{file}: expected a dict with 'model', 'optimizer', 'scheduler' and 'position'")
    return loaded


@dataclasses.dataclass(frozen=True)
class Resumed:
    position: Position
    jax_state: Any
    plateau_states: list[Any] | None
    from_torch: bool  # the JAX state was rebuilt from torch's (no jax.npz)


def _section(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _into(template: Any, flat: Mapping[str, np.ndarray], what: str, where: Path) -> Any:
    """``template`` with ``flat``'s arrays, each cast to the template leaf's dtype."""
    try:
        tree = jax_checkpoint.unflatten_into(template, flat)
    except CheckpointError as error:
        raise CheckpointError(f"{where}: {what}: {error}") from None
    return jax.tree.map(lambda new, old: jnp.asarray(new, dtype=jnp.result_type(old)), tree, template)


def restore(path: Path, config: Mapping[str, Any], *, torch_model: torch.nn.Module,
            torch_optimizer: torch.optim.Optimizer, torch_scheduler: Any, jax_state: Any,
            plateau_states: Sequence[Any] | None, buffers_filter: Any, from_torch: Any,
            steps_per_epoch: int | None) -> Resumed:
    """Load the checkpoint at ``path`` into the torch model, optimizer and scheduler (in place)
    and return the JAX state to continue from.

    ``from_torch(step)`` builds the JAX state from the (just loaded) torch objects: used when the
    directory has no ``jax.npz``. There the JAX schedules' update count is the optimizer step
    count; a per-epoch torch scheduler must agree with it (``last_epoch == step // steps_per_epoch``).
    """
    path = Path(path)
    loaded = load_torch(path)
    position = Position.from_dict(loaded["position"], path)
    saved = loaded.get("config") or {}
    wrong = [f"{k}: checkpoint {saved[k]!r}, this run {config.get(k)!r}"
             for k in MATCHING_KEYS if k in saved and saved[k] != config.get(k)]
    if wrong:
        raise CheckpointError(f"{path} was written by another configuration: {'; '.join(wrong)}")
    if (torch_scheduler is None) != (loaded.get("scheduler") is None):
        raise CheckpointError(f"{path}: the checkpoint {'has no' if torch_scheduler else 'has a'} scheduler state, "
                              f"this run {'has' if torch_scheduler else 'has no'} scheduler")
    try:
        torch_model.load_state_dict(loaded["model"])
        torch_optimizer.load_state_dict(loaded["optimizer"])
        if torch_scheduler is not None:
            torch_scheduler.load_state_dict(loaded["scheduler"])
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path / TORCH_FILE} does not fit this run's torch model or optimizer: {first}") from None
    if isinstance(loaded.get("rng"), torch.Tensor):
        torch.set_rng_state(loaded["rng"])
    jax_file = path / JAX_FILE
    if not jax_file.exists():
        if torch_scheduler is not None and steps_per_epoch is not None:
            epochs_done = position.step // steps_per_epoch
            if getattr(torch_scheduler, "last_epoch", epochs_done) != epochs_done:
                raise CheckpointError(
                    f"{path}: the torch scheduler's last_epoch {torch_scheduler.last_epoch} does not match "
                    f"step {position.step} at {steps_per_epoch} steps per epoch")
        plateaus = plateau_from_torch(plateau_states, torch_scheduler, torch_optimizer) if plateau_states else None
        return Resumed(position, from_torch(position.step), plateaus, True)
    arrays, metadata = jax_checkpoint.load(jax_file)
    if Position.from_dict(metadata.get("position"), jax_file) != position:
        raise CheckpointError(f"{path}: {TORCH_FILE} and {JAX_FILE} are at different positions")
    buffers, others = nnx.split_state(jax_state.rest, buffers_filter, ...)
    state = jax_state._replace(
        params=_into(jax_state.params, _section(arrays, "params/"), "parameters", jax_file),
        rest=nnx.merge_state(_into(buffers, _section(arrays, "buffers/"), "buffers", jax_file), others),
        opt_state=_into(jax_state.opt_state, _section(arrays, "opt_state/"), "optimizer state", jax_file),
    )
    plateaus = None
    if plateau_states:
        plateaus = [_into(p, _section(arrays, f"plateau/{i}/"), f"plateau {i}", jax_file)
                    for i, p in enumerate(plateau_states)]
    return Resumed(position, state, plateaus, False)


def plateau_from_torch(plateau_states: Sequence[Any], torch_scheduler: Any,
                       torch_optimizer: torch.optim.Optimizer) -> list[Any]:
    """The JAX ``ReduceLROnPlateau`` states (one per parameter group) of a torch
    ``ReduceLROnPlateau`` and its optimizer: each group's current lr, and the scheduler's
    ``best``, ``num_bad_epochs``, ``cooldown_counter`` and ``last_epoch``."""
    def cast(value: Any, like: Any) -> jax.Array:
        return jnp.asarray(value, dtype=jnp.result_type(like))

    return [state._replace(lr=cast(group["lr"], state.lr), best=cast(torch_scheduler.best, state.best),
                           num_bad_epochs=cast(torch_scheduler.num_bad_epochs, state.num_bad_epochs),
                           cooldown_counter=cast(torch_scheduler.cooldown_counter, state.cooldown_counter),
                           last_epoch=cast(torch_scheduler.last_epoch, state.last_epoch))
            for state, group in zip(plateau_states, torch_optimizer.param_groups, strict=True)]


def describe(path: Path) -> str:
    """One line on a full checkpoint directory (for messages)."""
    position = Position.from_dict(load_torch(path)["position"], Path(path))
    return f"{path}: epoch {position.epoch}, batch {position.batch}, step {position.step}"
