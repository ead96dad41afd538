"""jax_impl.loop.train_with_validation: per-epoch history, and a checkpoint of the best model
written only when the validation loss improves."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl.losses
import jax_impl.optim
from jax_impl import checkpoint
from jax_impl.loop import train_with_validation
from jax_impl.models import SimpleNN
from jax_impl.step import init_train_state

INPUTS, CLASSES, BATCH = 10, 3, 16
LOSS = jax_impl.losses.from_torch("CrossEntropyLoss()")


def _data():
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((INPUTS, CLASSES))

    def batch(seed):
        x = np.random.default_rng(seed).standard_normal((BATCH, INPUTS)).astype(np.float32)
        return jnp.asarray(x), jnp.asarray(np.argmax(x @ teacher, axis=1))

    train = lambda epoch: [batch(100 * epoch + i) for i in range(4)]  # noqa: E731
    val = lambda: [batch(10_000 + i) for i in range(2)]  # noqa: E731
    return train, val


def _train(optimizer: str, epochs: int, path):
    model = SimpleNN(INPUTS, 8, CLASSES, rngs=nnx.Rngs(0), param_dtype=jnp.float32)
    tx = jax_impl.optim.from_torch(optimizer)
    graphdef, state = init_train_state(model, tx)
    train, val = _data()
    final, history = train_with_validation(graphdef, state, LOSS, tx, train, val, epochs, path)
    return graphdef, state, final, history


def _mean_loss_and_accuracy(graphdef, state, batches):
    model = nnx.merge(graphdef, state.params, state.rest)
    losses, hits, seen = [], 0, 0
    for x, y in batches:
        logits = model(x)
        losses.append(float(LOSS(logits, y)))
        hits += int((np.argmax(logits, axis=1) == np.asarray(y)).sum())
        seen += len(y)
    return float(np.mean(losses)), hits / seen


def test_learning_run_saves_exactly_when_validation_improves(tmp_path):
    path = tmp_path / "best.npz"
    graphdef, _, final, history = _train("SGD(lr=0.5, momentum=0.9)", 4, path)
    assert [r.epoch for r in history] == [0, 1, 2, 3]
    best = np.inf
    for result in history:
        assert result.saved == (result.val_loss < best), result
        best = min(best, result.val_loss)
        assert np.isfinite(result.train_loss) and 0.0 <= result.val_accuracy <= 1.0
    assert history[-1].val_loss < history[0].val_loss  # it learned
    _, metadata = checkpoint.load(path)
    last_saved = max(r.epoch for r in history if r.saved)
    assert metadata["epoch"] == last_saved
    assert metadata["val_loss"] == pytest.approx(history[last_saved].val_loss)
    # the history's validation numbers are the final model's, computed independently
    _, val = _data()
    loss, accuracy = _mean_loss_and_accuracy(graphdef, final, val())
    assert history[-1].val_loss == pytest.approx(loss, rel=1e-5)
    assert history[-1].val_accuracy == pytest.approx(accuracy)


def test_no_improvement_no_checkpoint(tmp_path):
    """lr=0 leaves the model unchanged: the validation loss is equal (not lower) after
    epoch 0, so only epoch 0 writes; and the training loss is the mean batch loss of the
    fixed model."""
    path = tmp_path / "best.npz"
    graphdef, start, final, history = _train("SGD(lr=0.0)", 3, path)
    assert [r.saved for r in history] == [True, False, False]
    assert len({r.val_loss for r in history}) == 1
    train, _ = _data()
    for result in history:
        expected, _ = _mean_loss_and_accuracy(graphdef, start, train(result.epoch))
        assert result.train_loss == pytest.approx(expected, rel=1e-5)
    _, metadata = checkpoint.load(path)
    assert metadata["epoch"] == 0


def test_a_worsening_run_keeps_the_first_epochs_checkpoint(tmp_path):
    """Gradient ascent makes every epoch worse: the checkpoint stays the epoch-0 model."""
    path = tmp_path / "best.npz"
    graphdef, start, final, history = _train("SGD(lr=0.5, maximize=True)", 3, path)
    assert [r.saved for r in history] == [True, False, False]
    assert history[2].val_loss > history[1].val_loss > history[0].val_loss
    arrays, metadata = checkpoint.load(path)
    assert metadata == {"epoch": 0, "val_loss": history[0].val_loss}
    after_one = _train("SGD(lr=0.5, maximize=True)", 1, tmp_path / "one.npz")[2]  # the model after epoch 0
    expected = checkpoint.flatten({"params": after_one.params, "rest": after_one.rest})
    assert sorted(arrays) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(arrays[key], value)
    final_kernel = checkpoint.flatten({"params": final.params})["params/fc1/kernel"]
    assert not np.array_equal(arrays["params/fc1/kernel"], final_kernel)


def test_without_a_path_nothing_is_saved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, _, _, history = _train("SGD(lr=0.5)", 2, None)
    assert [r.saved for r in history] == [False, False]
    assert list(tmp_path.iterdir()) == []
