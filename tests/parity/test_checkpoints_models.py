"""Exact resume of a model with buffers and dropout: the CNN (BatchNorm running statistics and
num_batches_tracked; dropout masks from the harness's (seed, step, module) stream)."""

from __future__ import annotations

from parity.spec import RunSpec
from tests.parity.test_checkpoints import _assert_same_traces, _traced


def test_cnn_resumes_exactly(tmp_path):
    options = dict(model="CNN", epochs=2, steps_per_epoch=2, batch_size=16, dtype="float64",
                   optimizer="SGD(lr=0.05, momentum=0.9)")
    report, traces = _traced(RunSpec(**options, checkpoint_dir=str(tmp_path)))
    assert report.ok
    assert any(name.endswith("running_mean") for name in traces[0][1].buffers)  # buffers are in the trace
    resumed, resumed_traces = _traced(RunSpec(**options, resume=str(tmp_path / "step-000002")))
    _assert_same_traces(traces[2:], resumed_traces)
    assert resumed.epochs == report.epochs[1:]
