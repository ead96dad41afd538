"""``parity styles``: every training style trains as PyTorch does, and a style that differs is named."""

from __future__ import annotations

import dataclasses
import json

import pytest

import jax_impl.optim
import jax_impl.schedules
from parity import cli, styles
from parity.spec import RunSpec

SCHEDULED = RunSpec(optimizer="Adam(lr=0.01)", scheduler="StepLR(step_size=1, gamma=0.5)", epochs=2,
                    steps_per_epoch=3, dtype="float64")
PLANTED = "JAX functional, Adam betas=(0.8, 0.999)"


def _planted_run(setup: styles.Setup) -> styles.StyleRun:
    """The functional style with Adam's beta1 changed: the same on step 0 (Adam's first update is
    m / sqrt(v) = g / |g| whatever the betas), different from step 1's update on."""
    schedule = jax_impl.schedules.from_torch(SCHEDULED.scheduler, 0.01, 3)
    tx = jax_impl.optim.from_torch("Adam(lr=0.01, betas=(0.8, 0.999))", lr=schedule)
    return styles.run_functional(dataclasses.replace(setup, tx=tx))


PLANTED_STYLE = styles.Style(PLANTED, "TrainState", styles.STYLES[1].code, _planted_run)


@pytest.fixture(scope="module")
def scheduled_report() -> styles.StylesReport:
    return styles.run_styles(SCHEDULED, styles=(*styles.STYLES, PLANTED_STYLE))


def test_every_style_trains_as_torch_in_float64_with_a_scheduler(scheduled_report):
    by_name = {style.name: style for style in scheduled_report.styles}
    assert list(by_name) == [style.name for style in styles.STYLES] + [PLANTED]
    assert scheduled_report.config["steps"] == 6
    torch_losses = by_name[styles.TORCH].losses
    assert len(torch_losses) == 6 and len(set(torch_losses)) == 6  # it trained: every loss differs
    for style in styles.STYLES[1:]:
        result = by_name[style.name]
        assert result.ok, f"{style.name}: {result.difference}"
        assert result.losses == pytest.approx(torch_losses, rel=1e-12, abs=0)
        assert result.code_lines > 0 and result.median_step_seconds is not None


def test_a_planted_difference_is_reported_as_that_style_at_its_step_stage_and_tensor(scheduled_report):
    assert not scheduled_report.ok
    assert [style.name for style in scheduled_report.differing] == [PLANTED]
    step, stage, error = scheduled_report.differing[0].difference
    assert (step, stage, error.name) == (1, "parameters", "fc1.weight")
    assert error.max_rel > 1e-6  # a semantic difference, far outside float64's 1e-12


def test_the_stateful_styles_are_the_project_source_and_their_code_is_counted():
    def step(model, batch):
        """A docstring

        on two lines."""
        # a comment
        x, y = batch

        return model(x) - y  # trailing comment counts as code

    assert styles.code_lines(step) == 3
    names = {style.name: style for style in styles.STYLES}
    assert "nnx.Optimizer" in styles.code_source(names["NNX stateful (nnx.jit)"].code[0])
    assert "optimizer.step()" in styles.code_source(names[styles.TORCH].code[0])


def test_cli_runs_every_style_of_a_dropout_model_writes_json_and_shows_code(tmp_path, capsys):
    """CNN (dropout: torch's masks reach every JAX style) with SGD in float64, 2 steps."""
    path = tmp_path / "styles.json"
    code = cli.main(["styles", "--model", "CNN", "--optimizer", "SGD(lr=0.05, momentum=0.9)", "--scheduler", "none",
                     "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--dtype", "float64",
                     "--show-code", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == cli.EXIT_PARITY, out
    report = json.loads(path.read_text())
    assert report["schema"] == styles.SCHEMA and report["ok"] is True
    assert [s["name"] for s in report["styles"]] == [s.name for s in styles.STYLES]
    assert all(s["ok"] and s["difference"] is None and len(s["losses"]) == 2 for s in report["styles"])
    assert "def make_nnx_train_step" in out and "def train_step" in out and "all 5 JAX styles agree" in out


def test_cli_exits_1_naming_the_differing_style(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(styles, "STYLES", (styles.STYLES[0], PLANTED_STYLE))
    path = tmp_path / "styles.json"
    code = cli.main(["styles", "--optimizer", "Adam(lr=0.01)", "--scheduler", SCHEDULED.scheduler, "--epochs", "2",
                     "--steps-per-epoch", "3", "--dtype", "float64", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == cli.EXIT_DIVERGENCE
    assert f"{PLANTED} differs from torch at step 1, parameters: fc1.weight" in " ".join(out.split())
    planted = json.loads(path.read_text())["styles"][1]
    assert (planted["ok"], planted["difference"]["step"], planted["difference"]["tensor"]) == (False, 1, "fc1.weight")


@pytest.mark.parametrize("arguments, message", [
    (["--optimizer", "LBFGS(lr=1)"], "closure optimizers (LBFGS)"),
    (["--scheduler", "ReduceLROnPlateau()"], "ReduceLROnPlateau"),
    (["--optimizer", "Adam(lr=0.01, bogus=1)"], "bogus"),
    (["--steps-per-epoch", "1000"], "steps_per_epoch=1000"),
    (["--torch-threads", "0"], "torch_threads must be a positive integer"),
])
def test_bad_input_exits_2_with_a_reason_and_writes_nothing(arguments, message, tmp_path, capsys):
    path = tmp_path / "styles.json"
    assert cli.main(["styles", *arguments, "--json", str(path)]) == cli.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not path.exists()


def test_json_into_a_missing_directory_is_bad_input(tmp_path, capsys):
    assert cli.main(["styles", "--json", str(tmp_path / "no" / "styles.json")]) == cli.EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
