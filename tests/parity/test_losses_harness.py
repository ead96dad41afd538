"""Losses that carry parameters through the harness: trained with the model on both sides, their
parameters compared under ``criterion.*``; a user's converter for the models is extended to the
joined modules; a loss that does not fit the data is bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.models
import torch_ref.models
from parity.convert import Converter
from parity.runner import check_port
from parity.spec import SpecError
from tests.parity.test_cli import run_cli

ASM = "AdaptiveLogSoftmaxWithLoss(in_features=12, n_classes=10, cutoffs=[3, 6], div_value=2.0, head_bias=True)"


def _batches(steps: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 20)), rng.integers(0, 10, 8)) for _ in range(steps)]


def test_check_port_trains_the_loss_parameters_with_a_users_converter():
    torch.manual_seed(0)
    torch_model = torch_ref.models.SimpleNN(input_size=20, hidden_size=16, num_classes=12).double()
    jax_model = jax_impl.models.SimpleNN(input_size=20, hidden_size=16, num_classes=12, rngs=nnx.Rngs(1),
                                         param_dtype=np.float64)
    report = check_port(torch_model, jax_model, loss=ASM, optimizer="SGD(lr=0.1, momentum=0.9)",
                        epochs=[_batches(3)], val_batches=_batches(1, seed=1),
                        converter=Converter.from_torch_module(torch_model))
    assert report.ok, report.first_divergence
    names = {error.name for error in report.steps[-1].stages["parameters"].tensors}
    assert {"model.fc1.weight", "criterion.head.weight", "criterion.head.bias", "criterion.tail.1.1.weight"} <= names
    # that they are trained (their gradients checked) is test_sensitivity_models.py's plant


@pytest.mark.parametrize("loss, message", [
    ("LinearCrossEntropyLoss(in_features=16, num_classes=7)", "num_classes=7 but the data has 10 classes"),
    ("AdaptiveLogSoftmaxWithLoss(n_classes=10, cutoffs=[4])", "give in_features= as a keyword"),
])
def test_a_parameterised_loss_that_does_not_fit_the_data_is_bad_input(capsys, loss, message):
    code, _, err = run_cli(capsys, "--loss", loss, "--epochs", "1", "--steps-per-epoch", "1")
    assert code == 2 and message in err, err


def test_unbuildable_loss_is_a_spec_error():
    with pytest.raises(SpecError, match="cutoffs"):
        check_port(torch_ref.models.SimpleNN(input_size=20, hidden_size=4, num_classes=6).double(),
                   jax_impl.models.SimpleNN(input_size=20, hidden_size=4, num_classes=6, rngs=nnx.Rngs(0),
                                            param_dtype=np.float64),
                   loss="AdaptiveLogSoftmaxWithLoss(in_features=6, n_classes=10, cutoffs=[20])",
                   optimizer="SGD(lr=0.1)", epochs=[_batches(1)])
