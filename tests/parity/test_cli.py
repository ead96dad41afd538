"""The `parity` command line: exit codes, messages, and the files it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import parity  # noqa: F401  (enables x64 before anything else touches JAX)
import jax_impl.optim
from parity.cli import main

SMALL = ["--epochs", "2", "--steps-per-epoch", "3", "--model", "SimpleNN(hidden_size=16)"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_parity_holds_exit_0_and_prints_both_frameworks(capsys):
    code, out, err = run_cli(capsys, *SMALL)
    assert code == 0, out + err
    assert "PARITY HOLDS: 6 steps" in out
    assert "torch val loss" in out and "jax val acc" in out
    assert "Traceback" not in err


def test_divergence_exit_1_names_step_stage_tensor(capsys, monkeypatch):
    real = jax_impl.optim.OPTIMIZERS["SGD"]

    def wrong_momentum(**kwargs):  # a port that typed 0.8 for torch's 0.9
        return real(**{**kwargs, "momentum": 0.8 if "momentum" in kwargs else kwargs.get("momentum", 0)})

    import inspect

    wrong_momentum.__signature__ = inspect.signature(real)
    monkeypatch.setitem(jax_impl.optim.OPTIMIZERS, "SGD", wrong_momentum)
    code, out, _ = run_cli(capsys, *SMALL, "--dtype", "float64")
    assert code == 1
    assert "DIVERGENCE" in out
    # step 0 stores the gradient itself as the buffer (no momentum yet): the first visible
    # difference is step 1's momentum buffer of the first parameter
    assert "first divergence: step 1 (epoch 0), stage optimizer_state, tensor fc1.weight:momentum_buffer" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "Sgd(lr=0.1)"], "unknown optimizer 'Sgd' (did you mean 'SGD'?)"),
        (["--optimizer", "SGD(lr=0.1, momentun=0.9)"], "unknown argument 'momentun' (did you mean 'momentum'?)"),
        (["--optimizer", "SGD(lr=0.1"], "malformed spec"),
        (["--optimizer", "SGD(lr=-1.0)"], "Invalid learning rate: -1.0"),
        (["--optimizer", "SGD(0.1)"], "pass arguments by keyword"),
        (["--optimizer", "SGD(lr=__import__('os'))"], "not a literal"),
        (["--scheduler", "StepLR(gamma=0.5)"], "step_size"),
        (["--loss", "CrossEntropyLoss(reduction='avg')"], "reduction"),
        (["--model", "SimpleNN(input_size=784)"], "input_size=784 but the data has 64"),
        (["--model", "ResNet"], "unknown model 'ResNet'"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--steps-per-epoch", "1000"], "steps_per_epoch=1000 exceeds"),
        (["--data", "/nonexistent/data.npz"], "no such file"),
        (["--json", "/nonexistent/dir/report.json"], "does not exist"),
        (["--plot", "report.jpg"], "expected a .png"),
    ],
)
def test_bad_input_exit_2_with_one_line_reason(capsys, args, message):
    code, _, err = run_cli(capsys, *SMALL, *args)
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [(["--dtype", "float16"], "invalid choice: 'float16'"), (["--epochs", "two"], "invalid int value: 'two'"),
     (["--no-such-flag"], "unrecognized arguments: --no-such-flag")],
)
def test_argparse_errors_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((10, 4))}, "missing array 'y'"),
        ({"x": np.zeros((10, 4)), "y": np.zeros((10, 2), np.int64)}, "'y' must be integer class labels of shape (N,)"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(9, np.int64)}, "'x' has 10 samples but 'y' has 9"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(10)}, "must be integer class labels"),
        ({"x": np.full((10, 4), np.nan), "y": np.zeros(10, np.int64)}, "NaN or Inf"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(10, np.int64), "x_val": np.zeros((3, 5)), "y_val": np.zeros(3, np.int64)},
         "'x_val' samples have shape (5,)"),
        ({"x": np.zeros((2, 4)), "y": np.zeros(2, np.int64)}, "too few to hold out 20% for validation"),
        ({"x": np.zeros((10, 0)), "y": np.zeros(10, np.int64)}, "'x' has no features"),
        ({"x": np.zeros((10, 4), complex), "y": np.zeros(10, np.int64)}, "must be a real numeric array"),
        ({"x": np.zeros((10, 4)), "y": np.full(10, 10**7)}, "has label 10000000"),
    ],
)
def test_ill_shaped_data_exit_2(capsys, tmp_path, arrays, message):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    report = tmp_path / "report.json"
    code, _, err = run_cli(capsys, *SMALL, "--data", str(path), "--json", str(report))
    assert code == 2
    assert message in err, err
    assert not report.exists(), "nothing may be written on bad input"


def test_corrupted_npz_exit_2(capsys, tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run_cli(capsys, *SMALL, "--data", str(path))
    assert code == 2 and "not an .npz archive" in err


def test_user_npz_data(capsys, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.standard_normal((40, 3, 4)), y=rng.integers(0, 3, 40),
             x_val=rng.standard_normal((8, 3, 4)), y_val=rng.integers(0, 3, 8))
    code, out, err = run_cli(capsys, "--data", str(path), "--epochs", "1", "--batch-size", "8",
                             "--model", "SimpleNN(hidden_size=8)", "--dtype", "float64")
    assert code == 0, out + err
    assert "mine.npz: 40 train / 8 val, 12 features, 3 classes" in out


def test_json_and_plot(capsys, tmp_path):
    report, plot = tmp_path / "report.json", tmp_path / "report.png"
    code, out, _ = run_cli(capsys, *SMALL, "--json", str(report), "--plot", str(plot))
    assert code == 0
    data = json.loads(report.read_text())
    assert data["schema"] == "parity-report/1" and data["verdict"] == "parity"
    assert len(data["steps"]) == 6 and data["first_divergence"] is None
    step = data["steps"][0]
    assert set(step["stages"]) == {"loss", "gradient", "lr", "optimizer_state", "parameters", "buffers"}
    assert step["torch"]["loss"] == pytest.approx(step["jax"]["loss"], rel=1e-5)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.png"]


def test_two_identical_runs_give_identical_json(capsys, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli(capsys, *SMALL, "--json", str(first))[0] == 0
    assert run_cli(capsys, *SMALL, "--json", str(second))[0] == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_failed_plot_leaves_nothing(capsys, tmp_path, monkeypatch):
    import matplotlib.figure

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    plot = tmp_path / "report.png"
    with pytest.raises(OSError, match="disk full"):
        main(["run", *SMALL, "--plot", str(plot)])
    assert list(tmp_path.iterdir()) == []


def test_console_script_exit_codes(tmp_path):
    """The installed `parity` entry point, as a user runs it (one subprocess for the suite)."""
    done = subprocess.run(
        [sys.executable, "-m", "parity.cli", "run", "--optimizer", "SGD(lr=0.1, nesterov=True)"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "parity: error: optimizer SGD(lr=0.1, nesterov=True): "
        "Nesterov momentum requires a momentum and zero dampening"
    )


@pytest.mark.parametrize("name, message", [("digitz", "unknown data set (did you mean 'digits'?)")])
def test_unknown_builtin_data_exit_2(capsys, name, message):
    code, _, err = run_cli(capsys, *SMALL, "--data", name)
    assert code == 2 and message in err


def test_plain_npy_is_not_an_npz(capsys, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((10, 4)))
    code, _, err = run_cli(capsys, *SMALL, "--data", str(path))
    assert code == 2 and "not an .npz archive" in err


def test_a_failing_first_batch_is_bad_input_naming_the_side(capsys):
    # a class weight of the wrong length is only detectable once torch sees the logits
    code, _, err = run_cli(capsys, *SMALL, "--loss", "CrossEntropyLoss(weight=[1.0, 2.0])")
    assert code == 2
    assert "the torch side failed on the first batch" in err and "weight" in err


@pytest.mark.parametrize("flags, message", [
    (["--json", "/dev/null"], "exists and is not a regular file"),
    (["--json", "out/"], "is a directory"),
    (["--json", ""], "empty path"),
])
def test_output_paths_that_cannot_be_written_atomically(capsys, flags, message):
    code, _, err = run_cli(capsys, *SMALL, *flags)
    assert code == 2 and message in err


def test_json_and_plot_may_not_share_a_path(capsys, tmp_path):
    same = tmp_path / "same.png"
    code, _, err = run_cli(capsys, *SMALL, "--json", str(same), "--plot", str(same))
    assert code == 2 and "name the same file" in err
    assert not same.exists()


def test_a_symlinked_output_writes_its_target_with_umask_permissions(capsys, tmp_path):
    import os

    target, link = tmp_path / "target.json", tmp_path / "link.json"
    link.symlink_to(target)
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, *SMALL, "--json", str(link))[0] == 0
    finally:
        os.umask(old)
    assert link.is_symlink() and json.loads(target.read_text())["ok"] is True
    assert target.stat().st_mode & 0o777 == 0o644
