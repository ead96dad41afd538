"""The functional train step: pure, compiled once, and the same function with or without jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl.losses
import jax_impl.optim
import jax_impl.schedules
from jax_impl.models import SimpleNN
from jax_impl.step import init_train_state, make_eval_step, make_train_step

BATCH, INPUTS, CLASSES = 8, 12, 4


def _setup(optimizer: str = "SGD(lr=0.1, momentum=0.9)", schedule: str | None = None):
    model = SimpleNN(INPUTS, 16, CLASSES, rngs=nnx.Rngs(0), param_dtype=jnp.float32)
    lr = None if schedule is None else jax_impl.schedules.from_torch(schedule, 0.1, steps_per_epoch=3)
    tx = jax_impl.optim.from_torch(optimizer, lr=lr)
    graphdef, state = init_train_state(model, tx)
    return graphdef, state, tx


def _batches(count: int, size: int = BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.standard_normal((size, INPUTS)), jnp.float32),
             jnp.asarray(rng.integers(0, CLASSES, size))) for _ in range(count)]


def test_train_step_is_traced_and_compiled_once_across_steps_and_epochs():
    """Two epochs of three equal-sized batches, under a per-epoch StepLR whose lr changes
    between them: one trace. (A smaller last batch has another shape and would legitimately
    trace again; the batches here are all the same size.)"""
    traces = []
    cross_entropy = jax_impl.losses.from_torch("CrossEntropyLoss()")

    def counting_loss(logits, targets):
        traces.append(logits.shape)  # runs only while tracing
        return cross_entropy(logits, targets)

    graphdef, state, tx = _setup(schedule="StepLR(step_size=1, gamma=0.5)")
    train_step = make_train_step(graphdef, counting_loss, tx)
    lrs = []
    for epoch in range(2):
        for batch in _batches(3, seed=epoch):
            state, metrics = train_step(state, batch)
            lrs.append(float(metrics["lr"]))
    assert traces == [(BATCH, CLASSES)]
    assert train_step._cache_size() == 1
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 3, rel=1e-7)  # the schedule did change inside the compiled step

    train_step(state, _batches(1, size=BATCH - 3)[0])  # a smaller batch is a new shape
    assert len(traces) == 2 and train_step._cache_size() == 2


def test_train_step_is_pure():
    graphdef, state, tx = _setup()
    train_step = make_train_step(graphdef, jax_impl.losses.from_torch("CrossEntropyLoss()"), tx)
    before = jax.tree.map(np.array, state)
    new_state, _ = train_step(state, _batches(1)[0])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, state), before)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), new_state.params, state.params)
    assert all(jax.tree.leaves(changed))


def test_jit_and_eager_steps_agree():
    graphdef, state, tx = _setup("Adam(lr=0.01)")
    loss_fn = jax_impl.losses.from_torch("CrossEntropyLoss()")
    jitted = make_train_step(graphdef, loss_fn, tx, with_grads=True)
    eager = make_train_step(graphdef, loss_fn, tx, with_grads=True, jit=False)
    jit_state, eager_state = state, state
    for batch in _batches(3):
        jit_state, jit_metrics = jitted(jit_state, batch)
        eager_state, eager_metrics = eager(eager_state, batch)
        np.testing.assert_allclose(float(jit_metrics["loss"]), float(eager_metrics["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(jit_state.params), jax.tree.leaves(eager_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_metrics_are_the_loss_gradients_and_hits_of_the_batch():
    graphdef, state, tx = _setup()
    loss_fn = jax_impl.losses.from_torch("CrossEntropyLoss()")
    train_step = make_train_step(graphdef, loss_fn, tx, with_grads=True)
    inputs, targets = _batches(1)[0]

    def objective(params):
        return loss_fn(nnx.merge(graphdef, params, state.rest)(inputs), targets)

    loss, grads = jax.value_and_grad(objective)(state.params)
    logits = nnx.merge(graphdef, state.params, state.rest)(inputs)
    _, metrics = train_step(state, (inputs, targets))
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), metrics["grads"], grads)
    assert int(metrics["correct"]) == int((np.argmax(logits, axis=-1) == np.asarray(targets)).sum())
    assert float(metrics["lr"]) == pytest.approx(0.1, rel=1e-7)


def test_eval_step_does_not_train():
    graphdef, state, tx = _setup()
    loss_fn = jax_impl.losses.from_torch("CrossEntropyLoss()")
    eval_step = make_eval_step(graphdef, loss_fn)
    batch = _batches(1)[0]
    first, second = eval_step(state, batch), eval_step(state, batch)
    assert float(first["loss"]) == float(second["loss"])
    logits = nnx.merge(graphdef, state.params, state.rest)(batch[0])
    np.testing.assert_allclose(float(first["loss"]), float(loss_fn(logits, batch[1])), rtol=1e-6)


def test_train_step_updates_batchnorm_statistics():
    """Variables a forward pass mutates (BatchNorm's running statistics) come back updated
    from the compiled step, not a trace-level error."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jax_impl.losses import from_torch
    from jax_impl.step import init_train_state, make_train_step

    class WithBatchNorm(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.fc(x))

    tx = optax.sgd(0.1)
    graphdef, state = init_train_state(WithBatchNorm(nnx.Rngs(0)), tx)
    step = make_train_step(graphdef, from_torch("CrossEntropyLoss()"), tx)
    x = jnp.arange(20.0, dtype=jnp.float32).reshape(5, 4) / 10
    new_state, metrics = step(state, (x, jnp.zeros(5, jnp.int32)))
    assert jnp.isfinite(metrics["loss"])
    assert not jnp.allclose(new_state.rest["bn"]["mean"][...], state.rest["bn"]["mean"][...])
