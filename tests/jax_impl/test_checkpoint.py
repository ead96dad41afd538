"""jax_impl.checkpoint: .npz checkpoints, written atomically, read without pickle."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import checkpoint
from jax_impl.checkpoint import CheckpointError
from jax_impl.models import SimpleNN


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"fc1/kernel": rng.standard_normal((4, 3)), "fc1/bias": rng.standard_normal(3).astype(np.float32),
            "step": np.asarray(7, np.int32)}


def _leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    path = tmp_path / "best.npz"
    metadata = {"epoch": 3, "val_loss": 0.25, "note": "best"}
    checkpoint.save(path, _arrays(), metadata)
    arrays, loaded_metadata = checkpoint.load(path)
    assert loaded_metadata == metadata
    assert sorted(arrays) == sorted(_arrays())
    for key, value in _arrays().items():
        assert arrays[key].dtype == value.dtype and arrays[key].shape == value.shape
        np.testing.assert_array_equal(arrays[key], value)
    assert _leftovers(tmp_path) == []


def test_a_model_state_round_trips_through_flatten_and_unflatten(tmp_path):
    model = SimpleNN(6, 5, 2, rngs=nnx.Rngs(0), param_dtype=jnp.float32)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    checkpoint.save(tmp_path / "model.npz", checkpoint.flatten(params))
    arrays, _ = checkpoint.load(tmp_path / "model.npz")
    assert sorted(arrays) == ["fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel"]
    other = SimpleNN(6, 5, 2, rngs=nnx.Rngs(1), param_dtype=jnp.float32)
    _, template, _ = nnx.split(other, nnx.Param, ...)
    restored = checkpoint.flatten(checkpoint.unflatten_into(template, arrays))
    for key, value in checkpoint.flatten(params).items():
        np.testing.assert_array_equal(restored[key], value)


def test_unflatten_into_names_missing_unexpected_and_misshaped_keys():
    model = SimpleNN(6, 5, 2, rngs=nnx.Rngs(0))
    _, template, _ = nnx.split(model, nnx.Param, ...)
    arrays = checkpoint.flatten(template)
    arrays.pop("fc2/bias")
    arrays["fc3/kernel"] = np.zeros(2)
    arrays["fc1/kernel"] = np.zeros((5, 6))
    with pytest.raises(CheckpointError) as raised:
        checkpoint.unflatten_into(template, arrays)
    message = str(raised.value)
    assert "fc2/bias" in message and "fc3/kernel" in message
    assert "fc1/kernel" in message and "(5, 6)" in message and "(6, 5)" in message


def test_a_failing_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "best.npz"
    checkpoint.save(path, _arrays(0), {"epoch": 0})
    real_savez = np.savez

    def savez_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")  # some bytes reach the disk first
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, _arrays(1), {"epoch": 1})
    monkeypatch.setattr(np, "savez", real_savez)

    arrays, metadata = checkpoint.load(path)
    assert metadata == {"epoch": 0}
    np.testing.assert_array_equal(arrays["fc1/kernel"], _arrays(0)["fc1/kernel"])
    assert _leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["best.npz"]


def test_an_interrupted_save_also_cleans_up(tmp_path, monkeypatch):
    def interrupted(file, **arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "best.npz", _arrays())
    assert os.listdir(tmp_path) == []


def test_a_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "best.npz"
    checkpoint.save(path, _arrays())
    data = path.read_bytes()
    for length in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match="best.npz"):
            checkpoint.load(path)


def test_a_missing_or_foreign_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "text.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))  # an .npz without our metadata
    with pytest.raises(CheckpointError, match="__metadata__"):
        checkpoint.load(tmp_path / "plain.npz")


def test_the_file_is_a_plain_npz_loadable_without_pickle(tmp_path):
    path = tmp_path / "best.npz"
    checkpoint.save(path, _arrays(), {"epoch": 1})
    with np.load(path, allow_pickle=False) as archive:
        contents = {key: archive[key] for key in archive.files}
    assert set(contents) == set(_arrays()) | {"__metadata__"}
    assert all(value.dtype != object for value in contents.values())
    np.testing.assert_array_equal(contents["fc1/kernel"], _arrays()["fc1/kernel"])


def test_the_metadata_key_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save(tmp_path / "x.npz", {"__metadata__": np.zeros(1)})
