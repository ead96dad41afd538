"""The harness localises a forward or gradient divergence layer by layer on its own (and on
request): the report names the first layer that differs, at the first diverging step."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import parity
from parity.cli import main
from parity.report import to_json


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.nn.functional.gelu(self.hidden(x)))


class JaxNet(nnx.Module):
    def __init__(self, approximate: bool):
        self.approximate = approximate
        self.hidden = nnx.Linear(8, 16, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        self.out = nnx.Linear(16, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)

    def __call__(self, x):
        return self.out(jax.nn.gelu(self.hidden(x), approximate=self.approximate))


def _check(approximate: bool, **kwargs) -> parity.ParityReport:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    epochs = [[(rng.standard_normal((16, 8)), rng.integers(0, 3, 16)) for _ in range(2)]]
    return parity.check_port(TorchNet().double(), JaxNet(approximate), loss="CrossEntropyLoss()",
                             optimizer="SGD(lr=0.1)", epochs=epochs, **kwargs)


def test_a_forward_divergence_is_localised_to_the_first_layer_whose_output_differs():
    report = _check(approximate=True)  # the port's bug: GELU's tanh approximation, between the layers
    assert not report.ok and report.first_divergence[1] == "loss"
    assert report.localization_step == 0
    # the activation is a function, not a module: "hidden" agrees, "out" is the first that differs
    assert report.localization.first_forward == "out"
    assert report.localization.layer("hidden").ok("forward")
    data = to_json(report)["localization"]
    assert data["step"] == 0 and json.dumps(data, allow_nan=False)


def test_a_correct_port_is_not_localised_unless_asked_and_then_nothing_diverges():
    assert _check(approximate=False).localization is None
    report = _check(approximate=False, localize=True)
    assert report.ok and report.localization_step == 0
    assert report.localization.first_forward is None and report.localization.first_backward is None


def test_localisation_can_be_turned_off():
    assert _check(approximate=True, localize=False).localization is None


def test_the_command_line_flags(tmp_path, capsys):
    path = tmp_path / "report.json"
    arguments = ["run", "--epochs", "1", "--steps-per-epoch", "1", "--scheduler", "none", "--dtype", "float64"]
    assert main([*arguments, "--json", str(path)]) == 0
    assert json.loads(path.read_text())["localization"] is None
    assert main([*arguments, "--localize", "--json", str(path)]) == 0
    data = json.loads(path.read_text())["localization"]
    assert data["step"] == 0 and [layer["name"] for layer in data["layers"]] == ["fc1", "fc2", ""]
    assert "layer by layer" in capsys.readouterr().out
