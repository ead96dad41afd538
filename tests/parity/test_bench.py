"""``parity bench``: every mode computes what torch eager computes (a parity check, not a timing),
a mode that computes something else is reported and gets no time, and the command runs."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest

import parity  # noqa: F401  (enables x64 before anything else touches JAX)
from parity import bench
from parity.cli import main

FEW = dict(warmup=1, rounds=2, steps_per_round=2, matmul_size=64)


def _by_mode(results):
    return {row.mode: row for row in results}


@pytest.mark.parametrize("case", bench.CASES, ids=lambda case: case.name)
def test_every_mode_trains_as_torch_eager(case):
    """Each mode's parameters after each of the check's float64 steps on the same batches equal
    torch eager's; torch.compile on the smallest case only (its compile takes tens of seconds here)."""
    modes = ["torch eager", "torch fused", "jax.jit"]
    if case.name == "SimpleNN b64 SGD":
        modes += ["torch.compile", "jax eager"]
    config = bench.BenchConfig(cases=(case,), modes=tuple(modes), **FEW)
    checked = bench.check_modes(case, config)  # what bench_case runs before timing
    assert set(checked) == set(modes)
    for name, (ok, detail) in checked.items():
        assert ok and detail.startswith(f"float64, step {config.check_steps}:"), f"{case.name} {name}: {detail}"


def test_a_mode_that_trains_differently_is_reported_and_not_timed(monkeypatch):
    """Plant: a JAX mode whose optimizer uses momentum 0.8 instead of 0.9 (one coefficient)."""

    def wrong_momentum(setup):
        case = dataclasses.replace(setup.case, optimizer="SGD(lr=0.01, momentum=0.8)")
        return bench.MODES["jax.jit"].build(dataclasses.replace(setup, case=case))

    monkeypatch.setitem(bench.MODES, "planted", bench.Mode("planted", "jax", wrong_momentum))
    case = bench.QUICK_CASES[0]
    config = bench.BenchConfig(cases=(case,), modes=("torch eager", "jax.jit", "planted"), **FEW)
    results = _by_mode(bench.bench_case(case, config, peak_gflops=100.0))
    assert results["jax.jit"].parity_ok
    planted = results["planted"]
    assert planted.parity.startswith("float64, step 2:"), planted.parity  # momentum acts from step 2
    assert not planted.parity_ok and planted.median_ms is None and planted.ratio is None
    assert results["jax.jit"].median_ms > 0 and len(results["jax.jit"].times_ms) == config.rounds * 2
    assert results["jax.jit"].flops > 0
    tensor = planted.parity.split(": ")[1].split("[")[0]
    assert tensor in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"), planted.parity


def test_the_fraction_of_peak_divides_by_the_matmul_rate_of_the_same_rounds():
    """With a probe, each round times one matmul; the fraction divides by the median over the
    rounds of the better side's rate (here a probe returning known rates: 50, 300, 100)."""
    rates = iter([{"jax": 50.0, "torch": 10.0}, {"jax": 20.0, "torch": 300.0}, {"jax": 100.0, "torch": 90.0}])
    case = bench.QUICK_CASES[0]
    config = bench.BenchConfig(cases=(case,), modes=("torch eager", "jax.jit"), **dict(FEW, rounds=3))
    results = _by_mode(bench.bench_case(case, config, peak_gflops=1e6, probe=lambda: next(rates)))
    row = results["jax.jit"]
    assert row.peak_gflops == 100.0
    assert row.peak_fraction == pytest.approx(row.flops / (row.median_ms * 1e-3) / 100e9)
    assert next(rates, None) is None  # one matmul per round, no more


def test_the_tiled_max_pool_is_what_the_cnn_step_traces():
    """The benchmark's CNN step goes through the tiled max-pool (no select-and-scatter in its
    compiled gradient); the former formulation, swapped in, does use one."""
    setup = bench.make_setup(bench.CASES[3])
    step_fn, leaves, _, batches = bench.flat_jit_step(setup)
    assert "select-and-scatter" not in step_fn.lower(leaves, *batches[0]).as_text()
    with bench._pool_formulation("reduce_window"):
        step_fn, leaves, _, batches = bench.flat_jit_step(setup)
        assert "select_and_scatter" in step_fn.lower(leaves, *batches[0]).as_text()


def test_parity_bench_quick_runs(tmp_path, capsys):
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--quick", "--json", str(json_path), "--plot", str(plot_path)]) == 0
    out = capsys.readouterr().out
    assert "SimpleNN b64 SGD" in out and "jax.jit" in out and "peak float32 matmul" in out
    assert "over the matmul rate measured in the same rounds" in out
    written = json.loads(json_path.read_text())
    assert {row["mode"] for row in written["results"]} == {"torch eager", "torch fused", "jax.jit", "jax eager",
                                                           "nnx.jit", "nnx split once"}
    assert all(row["parity_ok"] for row in written["results"])
    assert written["peak_gflops"] > 0 and written["environment"]["versions"]["jax"] == jax.__version__
    assert plot_path.stat().st_size > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--modes", "torch eager,jax.jitt"], "unknown mode(s) 'jax.jitt'"),
    (["--modes", "jax.jit"], "must include 'torch eager'"),
    (["--case", "CNN b65 SGD"], "unknown case(s) 'CNN b65 SGD'"),
    (["--rounds", "0"], "rounds must be a positive integer, got 0"),
    (["--plot", "out.pdf"], "expected a .png file name"),
    (["--torch-threads", "0"], "--torch-threads must be a positive integer"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    json_path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(json_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not json_path.exists()

