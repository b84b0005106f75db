"""Checkpoints: state + grain iterator round trip, corrupt latest skipped, never a silent restart."""

from __future__ import annotations

import logging
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from busgen_jax import checkpoints
from busgen_jax.parallel import mesh as mesh_lib

# Orbax leaves the reads of a failed restore as un-awaited coroutines; their cleanup warnings
# are expected when a corrupt checkpoint is read.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "step": jnp.int32(step),
        "params": {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)},
        "ema": {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)},
    }


def _data_iter():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset().batch(4))


def _save_steps(directory: pathlib.Path, steps: list[int]) -> list[np.ndarray]:
    """Saves `_state(s)` at each step after consuming one batch; returns the next batch of each."""
    manager = checkpoints.make_manager(directory, max_to_keep=5)
    data_iter, following = _data_iter(), []
    for step in steps:
        next(data_iter)
        checkpoints.save(manager, step, _state(step), data_iter)
        manager.wait_until_finished()
        # What a resumed run must read next (read from a copy of the iterator's state).
        probe = _data_iter()
        probe.set_state(data_iter.get_state())
        following.append(next(probe))
    manager.close()
    return following


def _restore(directory: pathlib.Path):
    manager = checkpoints.make_manager(directory, max_to_keep=5)
    mesh = mesh_lib.make_mesh({"data": -1})
    shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), _state(0))
    data_iter = _data_iter()
    restored = checkpoints.restore_latest(
        manager, checkpoints.abstract_like(_state(0), shardings), data_iter
    )
    return manager, restored, data_iter


def _largest_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_round_trip_restores_state_and_iterator(tmp_path):
    following = _save_steps(tmp_path / "ckpt", [1, 2])
    _, (state, step), data_iter = _restore(tmp_path / "ckpt")
    assert step == 2
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(next(data_iter), following[-1])


def test_empty_directory_restores_nothing(tmp_path):
    assert _restore(tmp_path / "ckpt")[1] is None


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_latest_falls_back_to_last_good(tmp_path, caplog, damage):
    following = _save_steps(tmp_path / "ckpt", [1, 2, 3])
    victim = _largest_file(tmp_path / "ckpt" / "3")
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    else:
        victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))
    with caplog.at_level(logging.WARNING):
        manager, (state, step), data_iter = _restore(tmp_path / "ckpt")
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), _state(2)["params"]["w"])
    np.testing.assert_array_equal(next(data_iter), following[1])
    assert any("step 3" in r.getMessage() for r in caplog.records)
    # The unreadable step is moved aside so that the resumed run can save step 3 again.
    assert manager.all_steps() == [1, 2]
    assert (tmp_path / "ckpt_unreadable" / "3").is_dir()


def test_all_corrupt_raises_instead_of_reinitializing(tmp_path):
    _save_steps(tmp_path / "ckpt", [1, 2])
    for step in (1, 2):
        victim = _largest_file(tmp_path / "ckpt" / str(step))
        victim.write_bytes(b"")
    with pytest.raises(checkpoints.CheckpointError, match="none of the checkpoints"):
        _restore(tmp_path / "ckpt")
    # Nothing was moved: a later attempt still sees (and refuses) the same checkpoints.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["1", "2"]
