"""Debugging statistics (parity.stats): gradient and activation statistics checked against real
PyTorch computations, and the first NaN/Inf named by step, tensor and stage (planted)."""

from __future__ import annotations

import copy
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.losses
import parity
import torch_ref.models
from parity import cli, data
from parity import report as reports
from parity.spec import DTYPES


def _pair(dtype: str):
    torch_dtype, jax_dtype, numpy_dtype = DTYPES[dtype]
    torch.manual_seed(0)
    torch_model = torch_ref.models.SimpleNN(64, 16, 10).to(torch_dtype)
    jax_model = jax_impl.models.SimpleNN(64, 16, 10, rngs=nnx.Rngs(0), param_dtype=jax_dtype)
    batches = list(data.digits(0).train_batches(0, 32, 0, 3, numpy_dtype))
    return torch_model, jax_model, batches


@pytest.fixture(scope="module", params=["float64", "float32"])
def with_stats(request):
    torch_model, jax_model, batches = _pair(request.param)
    initial = copy.deepcopy(torch_model)
    report = parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)",
                               epochs=[batches[:2], batches[2:]], stats=True)
    return request.param, initial, batches, report


def test_gradient_and_activation_stats_match_pytorch(with_stats):
    """Step 0's statistics against torch computed here: autograd gradients and module outputs."""
    dtype, initial, batches, report = with_stats
    assert report.ok and report.nonfinite is None
    assert [s.step for s in report.stats] == [0, 1, 2]
    assert [s.torch_activations is not None for s in report.stats] == [True, False, True]  # each epoch's first step
    model = copy.deepcopy(initial)
    inputs, targets = (torch.from_numpy(np.asarray(a)) for a in batches[0])
    hidden = model.fc1(inputs)
    outputs = model.fc2(torch.relu(hidden))
    torch.nn.functional.cross_entropy(outputs, targets).backward()
    first = report.stats[0]
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for name, parameter in model.named_parameters():
        grad = parameter.grad.double()
        expected = (grad.norm().item(), grad.mean().item(), grad.abs().max().item())
        for side in (first.torch_gradients, first.jax_gradients):
            actual = side[name]
            np.testing.assert_allclose((actual.norm, actual.max_abs), expected[::2], rtol=rtol, err_msg=name)
            np.testing.assert_allclose(actual.mean, expected[1], rtol=rtol, atol=rtol * expected[2], err_msg=name)
    for module, value in (("fc1", hidden), ("fc2", outputs)):
        value = value.detach().double()
        expected = (value.mean().item(), value.std(unbiased=False).item())
        np.testing.assert_allclose(first.torch_activations[module], expected, rtol=rtol, atol=rtol, err_msg=module)
        np.testing.assert_allclose(first.jax_activations[module], expected, rtol=rtol, atol=rtol, err_msg=module)
    assert "relu" in first.torch_activations  # a module torch calls and JAX does not (nnx.relu) is still shown
    # a later step's gradients are the post-update model's, not step 0's again
    assert report.stats[1].torch_gradients["fc1.weight"].norm != first.torch_gradients["fc1.weight"].norm


def test_stats_in_json_and_terminal(with_stats, tmp_path):
    _, _, _, report = with_stats
    path = tmp_path / "report.json"
    reports.write_json(report, path)
    written = json.loads(path.read_text())
    assert written["nonfinite"] is None
    step = written["stats"][0]
    assert step["torch_gradients"]["fc1.weight"]["norm"] == report.stats[0].torch_gradients["fc1.weight"].norm
    assert step["jax_activations"]["fc2"] == list(report.stats[0].jax_activations["fc2"])
    from rich.console import Console

    console = Console(width=120, record=True)
    reports.render(report, console)
    text = console.export_text()
    assert "Gradient statistics, step 2" in text and "Activation statistics (module outputs), step 2" in text


def test_planted_inf_input_names_the_step():
    """An Inf in one input of the third batch: the loss of step 2 is the first non-finite value."""
    torch_model, jax_model, batches = _pair("float64")
    inputs, targets = batches[2]
    inputs = inputs.copy()
    inputs[3, 5] = np.inf
    batches[2] = (inputs, targets)
    report = parity.check_port(torch_model, jax_model, loss="CrossEntropyLoss()", optimizer="SGD(lr=0.1)",
                               epochs=[batches], localize=False)
    assert report.nonfinite == "step 2: the loss is nan (torch) / nan (JAX)"


def test_planted_nonfinite_gradient_with_a_finite_loss():
    """A loss term sqrt(z - z): zero in the forward pass, an infinite derivative. The loss stays
    finite; the gradients are not, and they are named with their counts on both sides."""
    torch_model, jax_model, batches = _pair("float64")

    def torch_loss(outputs, targets):
        return torch.nn.functional.cross_entropy(outputs, targets) + torch.sqrt(outputs[0, 0] - outputs[0, 0].detach())

    cross_entropy = jax_impl.losses.from_torch("CrossEntropyLoss()")

    def jax_loss(outputs, targets):
        import jax

        return cross_entropy(outputs, targets) + jnp.sqrt(outputs[0, 0] - jax.lax.stop_gradient(outputs[0, 0]))

    report = parity.check_port(torch_model, jax_model, loss=(torch_loss, jax_loss), optimizer="SGD(lr=0.1)",
                               epochs=[batches[:1]], localize=False)
    assert np.isfinite(report.steps[0].torch_loss)
    # fc1.weight: the first parameter; the infinite derivative reaches it through the ReLU as +-Inf, or
    # NaN where an infinite value meets a zero (a dead ReLU unit, a zero input pixel)
    message = report.nonfinite
    assert message.startswith("step 0: fc1.weight gradient has "), message
    torch_part, jax_part = message.removeprefix("step 0: fc1.weight gradient has ").split(" / ")
    assert torch_part.endswith("(torch)") and jax_part.endswith("(JAX)")
    assert "NaN" in torch_part or "Inf" in torch_part


def test_huge_lr_reported_by_the_cli(capsys, tmp_path):
    """lr=1e30: step 0's update is finite but enormous, step 1's loss overflows; the report names
    it without --stats, in the terminal and in the JSON."""
    path = tmp_path / "report.json"
    code = cli.main(["run", "--data", "synthetic", "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "16",
                     "--optimizer", "SGD(lr=1e30)", "--scheduler", "none", "--no-localize", "--json", str(path)])
    out = capsys.readouterr().out
    written = json.loads(path.read_text())
    assert written["stats"] is None
    assert written["nonfinite"].startswith("step 1: the loss is ")
    assert "first non-finite value: step 1: the loss is" in " ".join(out.split())
    assert code in (0, 1)
