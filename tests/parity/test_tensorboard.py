"""--tensorboard: event files for both sides, read back and checked against the report's numbers."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from parity import cli
from parity.tensorboard import read_scalars

pytest.importorskip("tensorboardX")

ARGUMENTS = ["run", "--data", "synthetic", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "16",
             "--optimizer", "Adam(lr=0.01)", "--scheduler", "StepLR(step_size=1, gamma=0.5)", "--no-localize"]


def _f32(value) -> float:
    return float(np.float32(value))  # TensorBoard's simple_value is a float32


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tb")
    report_path = directory / "report.json"
    code = cli.main(ARGUMENTS + ["--stats", "--tensorboard", str(directory / "events"), "--json", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    return report, {side: read_scalars(directory / "events" / side) for side in ("torch", "jax")}


def test_losses_lr_and_gradient_norms(written):
    report, scalars = written
    for side in ("torch", "jax"):
        assert [step for step, _ in scalars[side]["train/loss"]] == list(range(6))
        assert [v for _, v in scalars[side]["train/loss"]] == [_f32(s[side]["loss"]) for s in report["steps"]]
        assert [v for _, v in scalars[side]["train/lr"]] == [_f32(s[side]["lr"]) for s in report["steps"]]
        assert [v for _, v in scalars[side]["train/lr"]][::3] == [_f32(0.01), _f32(0.005)]
        for step, value in scalars[side]["train/grad_norm"]:
            norms = [g["norm"] for g in report["stats"][step][f"{side}_gradients"].values()]
            assert value == _f32(math.sqrt(sum(n * n for n in norms)))
        for name, stats in report["stats"][0][f"{side}_gradients"].items():
            assert scalars[side][f"grad_norm/{name}"][0] == (0, _f32(stats["norm"]))


def test_parity_errors_and_epochs(written):
    report, scalars = written
    for stage in ("loss", "gradient", "lr", "optimizer_state", "parameters"):
        for key in ("max_abs", "max_rel"):
            assert [v for _, v in scalars["jax"][f"parity/{stage}/{key}"]] == [
                _f32(s["stages"][stage][key]) for s in report["steps"]], (stage, key)
    assert not any(tag.startswith("parity/") for tag in scalars["torch"])
    assert "parity/buffers/max_abs" not in scalars["jax"]  # SimpleNN has no buffers
    for side in ("torch", "jax"):
        assert scalars[side]["epoch/val_loss"] == [(2, _f32(report["epochs"][0][f"{side}_val_loss"])),
                                                   (5, _f32(report["epochs"][1][f"{side}_val_loss"]))]
        assert [v for _, v in scalars[side]["epoch/val_accuracy"]] == [
            _f32(e[f"{side}_val_accuracy"]) for e in report["epochs"]]


def test_missing_writer_is_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    assert cli.main(ARGUMENTS + ["--tensorboard", str(tmp_path / "events")]) == 2
    assert "pip install tensorboardX" in capsys.readouterr().err
    assert not (tmp_path / "events").exists()


def test_tensorboard_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(ARGUMENTS + ["--tensorboard", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
