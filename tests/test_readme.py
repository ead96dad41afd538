"""The README works when copied: its commands are CI's, its Python runs, its tables are true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import parity
from parity.compare import TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    bash = "\n".join(blocks("bash"))
    test_command = next(line for line in bash.splitlines() if "pytest" in line)
    # the README's one-liner, split at '&&', is what .ci/run runs, line for line
    for part in (p.strip() for p in test_command.split("&&")):
        assert part in ci, f"README step {part!r} is not in .ci/run"
    main_command = next(line for line in bash.splitlines() if "parity run" in line)
    assert 'pip install "torch==2.13.0" -e .' in main_command


def test_readme_port_example_finds_the_gelu_bug(capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks("python")[0], "README.md", "exec"), namespace)
    step, stage, error = namespace["report"].first_divergence
    assert (step.step, stage, error.name) == (0, "loss", "loss")
    assert "DIVERGENCE: 8 of 8 steps" in capsys.readouterr().out


def test_readme_jax_impl_example_runs(capsys):
    exec(compile(blocks("python")[1], "README.md", "exec"), {"__name__": "readme_example"})
    loss, lr = map(float, capsys.readouterr().out.split())
    assert lr == pytest.approx(0.01) and 0 < loss < 10


@pytest.mark.parametrize(
    "row, stages, dtype",
    [("1e-12 / 1e-14", ["loss", "gradient", "lr", "optimizer_state", "parameters", "buffers"], "float64"),
     ("1e-5 / 1e-6", ["loss", "parameters", "buffers"], "float32"),
     ("1e-4 / 1e-6", ["gradient", "optimizer_state"], "float32"),
     ("2.4e-7 / 0", ["lr"], "float32")],
)
def test_readme_tolerance_table_matches_the_code(row, stages, dtype):
    rtol, atol = (float(v) for v in row.split(" / "))
    assert f"| {row} |" in README
    for stage in stages:
        tol = TOLERANCES[(stage, dtype)]
        assert (tol.rtol, tol.atol) == (rtol, atol), (stage, dtype)
    assert parity.TOLERANCES is TOLERANCES
