"""The NNX stateful step (``nnx.Optimizer`` + ``nnx.jit``) and its cached variant: they train as
torch's ``optimizer.step()`` loop does, mutate the model in place, and compile once."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl.losses
import jax_impl.optim
import jax_impl.schedules
from jax_impl.models import SimpleNN
from jax_impl.stateful import make_cached_nnx_train_step, make_nnx_train_step, make_split_nnx_train_step

torch = pytest.importorskip("torch")  # the reference; jax_impl itself never imports it

INPUTS, HIDDEN, CLASSES, BATCH, STEPS_PER_EPOCH = 12, 16, 4, 8, 3
OPTIMIZER, SCHEDULER = "SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)", "StepLR(step_size=1, gamma=0.5)"


def _batches(epochs: int = 2):
    rng = np.random.default_rng(0)
    return [[(rng.standard_normal((BATCH, INPUTS)), rng.integers(0, CLASSES, BATCH)) for _ in range(STEPS_PER_EPOCH)]
            for _ in range(epochs)]


def _torch_run(batches):
    """torch's loop: SimpleNN in float64, SGD with a per-epoch StepLR; the initial weights and
    every step's loss and final weights."""
    from torch_ref.models import SimpleNN as TorchSimpleNN

    torch.manual_seed(0)
    model = TorchSimpleNN(INPUTS, HIDDEN, CLASSES).double()
    initial = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    losses = []
    for epoch in batches:
        for inputs, targets in epoch:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(inputs)), torch.from_numpy(targets))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
    final = {name: p.detach().numpy() for name, p in model.named_parameters()}
    return initial, losses, final


def _jax_model(initial) -> nnx.Module:
    model = SimpleNN(INPUTS, HIDDEN, CLASSES, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    for layer in ("fc1", "fc2"):
        getattr(model, layer).kernel.set_value(jnp.asarray(initial[f"{layer}.weight"].T))  # torch's (out, in)
        getattr(model, layer).bias.set_value(jnp.asarray(initial[f"{layer}.bias"]))
    model.train()
    return model


def _tx():
    schedule = jax_impl.schedules.from_torch(SCHEDULER, 0.1, steps_per_epoch=STEPS_PER_EPOCH)
    return jax_impl.optim.from_torch(OPTIMIZER, lr=schedule)


@pytest.fixture(scope="module")
def torch_run():
    batches = _batches()
    return batches, *_torch_run(batches)


@pytest.mark.parametrize("variant", ["nnx.jit", "cached_partial", "split once"])
def test_stateful_step_trains_as_torch_with_a_per_epoch_schedule(torch_run, variant):
    batches, initial, torch_losses, torch_final = torch_run
    traces = []
    cross_entropy = jax_impl.losses.from_torch("CrossEntropyLoss()")

    def counting_loss(logits, targets):
        traces.append(logits.shape)  # runs only while tracing
        return cross_entropy(logits, targets)

    model = _jax_model(initial)
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    plain_step = make_nnx_train_step(counting_loss)
    cached_step = make_cached_nnx_train_step(counting_loss, model, optimizer)
    graphdef, state = nnx.split((model, optimizer))
    split_step = make_split_nnx_train_step(counting_loss, graphdef)
    losses = []
    for epoch in batches:
        for inputs, targets in epoch:
            batch = (jnp.asarray(inputs), jnp.asarray(targets))
            if variant == "split once":
                state, metrics = split_step(state, batch)
            else:
                metrics = cached_step(batch) if variant == "cached_partial" else plain_step(model, optimizer, batch)
            losses.append(float(metrics["loss"]))
    if variant == "split once":
        assert int(optimizer.step[...]) == 0  # the objects are current only once the state is written back
        nnx.update((model, optimizer), state)
    assert traces == [(BATCH, CLASSES)]  # compiled once, though the lr changed between the epochs
    assert int(optimizer.step[...]) == 6
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-12, atol=0)
    for layer in ("fc1", "fc2"):  # the model itself holds the trained weights: updated in place
        np.testing.assert_allclose(np.asarray(getattr(model, layer).kernel[...]), torch_final[f"{layer}.weight"].T,
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(getattr(model, layer).bias[...]), torch_final[f"{layer}.bias"],
                                   rtol=1e-12, atol=1e-14)


def test_unjitted_step_is_the_same_function(torch_run):
    batches, initial, torch_losses, _ = torch_run
    model = _jax_model(initial)
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    step = make_nnx_train_step(jax_impl.losses.from_torch("CrossEntropyLoss()"), jit=False)
    inputs, targets = batches[0][0]
    metrics = step(model, optimizer, (jnp.asarray(inputs), jnp.asarray(targets)))
    assert float(metrics["loss"]) == pytest.approx(torch_losses[0], rel=1e-12)
    assert int(metrics["correct"]) == int((np.argmax(_forward(initial, inputs), -1) == targets).sum())
    assert not np.allclose(np.asarray(model.fc1.kernel[...]), initial["fc1.weight"].T)  # it stepped


def _forward(weights, inputs):
    hidden = np.maximum(inputs @ weights["fc1.weight"].T + weights["fc1.bias"], 0)
    return hidden @ weights["fc2.weight"].T + weights["fc2.bias"]
