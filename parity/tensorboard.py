"""TensorBoard event files of a parity run, one run per side: ``DIR/torch`` and ``DIR/jax``.

Written with tensorboardX (a standalone writer: no TensorFlow, no ``tensorboard`` package needed
to write; ``pip install tensorboardX``, or the project's ``tensorboard`` extra). Scalars, on the
global optimizer step:

- both runs: ``train/loss``, ``train/lr``, ``train/grad_norm`` (the L2 norm of all gradients
  together, ``sqrt(sum over parameters of sum g^2)``) and ``grad_norm/<torch name>`` per
  parameter; after every epoch (at its last step) ``epoch/train_loss``, ``epoch/val_loss``,
  ``epoch/val_accuracy``;
- the ``jax`` run also: ``parity/<stage>/max_abs`` and ``parity/<stage>/max_rel`` per stage
  (loss, gradient, lr, optimizer_state, parameters, buffers): the JAX side's largest error
  against torch, as in the report's table.

:func:`read_scalars` reads the event files back (tensorboardX's protobuf classes and the
TFRecord framing: a length, its CRC, the record, its CRC), without TensorBoard.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_impl.spec import SpecError
from parity.compare import StepComparison
from parity.trace import StepTrace

__all__ = ["TensorBoardWriter", "read_scalars", "SIDES"]

SIDES = ("torch", "jax")


def _require_writer() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise SpecError("--tensorboard needs the tensorboardX package: pip install tensorboardX "
                        "(or the project's 'tensorboard' extra)") from None
    return SummaryWriter


def global_grad_norm(grads: dict[str, np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads.values())))


class TensorBoardWriter:
    """Pass :meth:`on_step` as ``check_port``'s ``on_step``, then :meth:`epochs` and :meth:`close`.

    The event files are created on the first step, so a run that fails on bad input writes none.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise SpecError(f"--tensorboard {directory}: exists and is not a directory")
        self._writer_class = _require_writer()
        self._writers: dict[str, Any] | None = None

    def _open(self) -> dict[str, Any]:
        if self._writers is None:
            self._writers = {side: self._writer_class(str(self.directory / side)) for side in SIDES}
        return self._writers

    def on_step(self, comparison: StepComparison, torch_trace: StepTrace, jax_trace: StepTrace) -> None:
        writers = self._open()
        step = comparison.step
        for side, trace in zip(SIDES, (torch_trace, jax_trace), strict=True):
            writer = writers[side]
            writer.add_scalar("train/loss", trace.loss, step)
            writer.add_scalar("train/lr", trace.lr, step)
            writer.add_scalar("train/grad_norm", global_grad_norm(trace.grads), step)
            for name, grad in trace.grads.items():
                writer.add_scalar(f"grad_norm/{name}", global_grad_norm({name: grad}), step)
        for stage, result in comparison.stages.items():
            if result.tensors:
                writers["jax"].add_scalar(f"parity/{stage}/max_abs", result.max_abs, step)
                writers["jax"].add_scalar(f"parity/{stage}/max_rel", result.max_rel, step)

    def epochs(self, summaries: Sequence[Any], steps: Sequence[StepComparison]) -> None:
        """Per-epoch scalars, each at the epoch's last global step."""
        last = {comparison.epoch: comparison.step for comparison in steps}
        writers = self._open() if last else None
        for summary in summaries:
            if summary.epoch not in last:
                continue
            for side, writer in writers.items():
                for tag in ("train_loss", "val_loss", "val_accuracy"):
                    value = getattr(summary, f"{side}_{tag}")
                    if value is not None:
                        writer.add_scalar(f"epoch/{tag}", value, last[summary.epoch])

    def close(self) -> None:
        for writer in (self._writers or {}).values():
            writer.close()


def _records(path: Path):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {offset}")
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        start = offset + 12  # the length and its masked CRC
        if start + length + 4 > len(data):
            raise ValueError(f"{path}: truncated record at byte {offset}")
        yield data[start:start + length]
        offset = start + length + 4  # the record's masked CRC


def read_scalars(directory: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the event files under ``directory``
    (one side's run), in the order written."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, float(value.simple_value)))
    return scalars
