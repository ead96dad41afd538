"""The README works when copied: its commands are CI's, its Python runs, its tables are true."""

from __future__ import annotations

import re
import textwrap
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


def test_readme_tolerance_table_matches_the_code():
    rows = re.findall(r"^\| (float\d\d),? ([a-z ]+?) \| ([0-9.e-]+) \| ([0-9.e-]+) \|", README, flags=re.M)
    assert len(rows) == 7, rows
    for dtype, stage, rtol, tensor_rtol in rows:
        keys = [key for key in TOLERANCES if key[1] == dtype] if stage == "every stage" else [
            (stage.replace(" ", "_"), dtype)]
        for key in keys:
            tol = TOLERANCES[key]
            assert (tol.rtol, tol.tensor_rtol, tol.atol) == (float(rtol), float(tensor_rtol), 0.0), key
    assert parity.TOLERANCES is TOLERANCES


def test_readme_lbfgs_example_runs_as_torchs_lbfgs(capsys):
    import numpy as np
    import torch

    namespace: dict = {"__name__": "readme_example"}
    example = next(block for block in blocks("python") if "LBFGS" in block)
    exec(compile(example, "README.md", "exec"), namespace)
    w = torch.zeros(4, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=1, max_iter=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.sum((w - 3.0) ** 2) + torch.sum(w**4)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    np.testing.assert_allclose(np.asarray(namespace["params"]["w"]), w.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(w.detach().numpy(), 1.0, rtol=1e-5)  # 4w^3 + 2w - 6 = 0 at w = 1
    assert "loss" not in capsys.readouterr().err


def test_readme_amp_example_runs(capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks("python")[1], "README.md", "exec"), namespace)  # "continuing the example above"
    capsys.readouterr()
    example = next(block for block in blocks("python") if "MixedPrecision" in block)
    exec(compile(textwrap.dedent(example), "README.md", "exec"), namespace)
    scale, found_inf = capsys.readouterr().out.split()
    assert float(scale) == 2.0**16 and found_inf == "False"


def test_readme_autocast_tolerance_rows_match_the_code():
    assert "| bfloat16 / float16 (`--amp`) loss | 2u | 0 |" in README
    assert "| bfloat16 / float16 gradient | 4u | 2u |" in README
    assert "| bfloat16 / float16 buffers | u/64 | u/64 |" in README
    for name, u in (("bfloat16", 2.0**-8), ("float16", 2.0**-11)):
        assert (TOLERANCES[("loss", name)].rtol, TOLERANCES[("loss", name)].tensor_rtol) == (2 * u, 0.0)
        assert (TOLERANCES[("gradient", name)].rtol, TOLERANCES[("gradient", name)].tensor_rtol) == (4 * u, 2 * u)
        assert (TOLERANCES[("buffers", name)].rtol, TOLERANCES[("buffers", name)].tensor_rtol) == (u / 64, u / 64)
        for stage in ("lr", "optimizer_state", "parameters"):  # "as float32"
            tol, f32 = TOLERANCES[(stage, name)], TOLERANCES[(stage, "float32")]
            assert (tol.rtol, tol.tensor_rtol, tol.atol) == (f32.rtol, f32.tensor_rtol, f32.atol)


def test_readme_stateful_example_runs(capsys):
    example = next(block for block in blocks("python") if "make_split_nnx_train_step" in block)
    exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
    step, loss = capsys.readouterr().out.split()
    assert int(step) == 4 and 0 < float(loss) < 10  # one nnx.jit step and three split-once steps


def test_readme_styles_output_is_the_commands():
    """The pasted ``parity styles`` table names every style the command runs."""
    from parity.styles import STYLES

    section = README.split("## Training styles side by side", 1)[1].split("\n## ", 1)[0]
    output = section.split("$ parity styles --torch-threads 1\n", 1)[1].split("```", 1)[0]
    assert [line.split("  ")[0].strip() for line in output.splitlines()[4:4 + len(STYLES)]] == [
        style.name for style in STYLES]
    assert "all 5 JAX styles agree with torch" in output
