"""Checkpoints: state + grain iterator round trip, corrupt latest skipped, never a silent restart."""

from __future__ import annotations

import logging
import pathlib
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.training import checkpoints

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


def test_every_step_tried_is_agreed_on_even_when_its_restore_raises(tmp_path, monkeypatch):
    # Across processes the verdict on a step is a collective: a process whose restore raised
    # must still take part, or the processes whose restore worked wait for it forever.
    _save_steps(tmp_path / "ckpt", [1, 2])
    victim = _largest_file(tmp_path / "ckpt" / "2")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    verdicts = []
    agree = checkpoints.agree
    monkeypatch.setattr(checkpoints, "agree", lambda p: verdicts.append(list(p)) or agree(p))
    assert _restore(tmp_path / "ckpt")[1][1] == 1
    assert len(verdicts) == 2 and verdicts[0] and verdicts[1] == []


def _overwrite_middle(path: pathlib.Path, size: int, seed: int) -> None:
    """Random bytes over the middle of `path`, keeping its size (damage that may still decode)."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - size // 2)
    data[start : start + size] = np.random.default_rng(seed).bytes(len(data[start : start + size]))
    path.write_bytes(bytes(data))


def test_arrays_that_decode_but_differ_from_their_checksums_are_quarantined(tmp_path):
    following = _save_steps(tmp_path / "ckpt", [1, 2, 3])
    # A checkpoint that decodes perfectly but holds other values than were saved at step 3:
    # the state written by a plain orbax save of different arrays, put in place of step 3's.
    other = ocp.StandardCheckpointer()
    other.save(tmp_path / "other", _state(99))
    other.wait_until_finished()
    shutil.rmtree(tmp_path / "ckpt" / "3" / "state")
    shutil.copytree(tmp_path / "other", tmp_path / "ckpt" / "3" / "state")
    manager, (state, step), data_iter = _restore(tmp_path / "ckpt")
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state["ema"]["w"]), _state(2)["ema"]["w"])
    np.testing.assert_array_equal(next(data_iter), following[1])
    assert manager.all_steps() == [1, 2]
    assert (tmp_path / "ckpt_unreadable" / "3").is_dir()


def test_random_bytes_in_a_checkpoint_never_restore_silently(tmp_path):
    _save_steps(tmp_path / "ckpt", [1, 2])
    _overwrite_middle(_largest_file(tmp_path / "ckpt" / "2"), 4096, seed=1)
    _, (state, step), _ = _restore(tmp_path / "ckpt")
    assert step == 1
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), _state(1)["params"]["w"])


def test_a_non_finite_checkpoint_is_not_restored(tmp_path):
    manager = checkpoints.make_manager(tmp_path / "ckpt", max_to_keep=5)
    data_iter = _data_iter()
    bad = _state(2)
    bad["params"]["w"] = bad["params"]["w"].at[3, 4].set(jnp.nan)
    for step, state in ((1, _state(1)), (2, bad)):
        checkpoints.save(manager, step, state, data_iter)
        manager.wait_until_finished()
    manager.close()
    _, (state, step), _ = _restore(tmp_path / "ckpt")
    assert step == 1


_FILE_SIZE_LIMIT = """
import resource, signal, sys
import grain, jax.numpy as jnp, numpy as np
from busgen_jax.training import checkpoints
manager = checkpoints.make_manager(sys.argv[1])
data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
state = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)), jnp.float32)}
checkpoints.save(manager, 1, state, data_iter)
manager.wait_until_finished()
# From here on no file may grow past 64 KiB, as on a full disk: writes fail with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
checkpoints.save(manager, 2, state, data_iter)
for _ in range(10_000):  # a training loop checking its saves every step
    checkpoints.check_saves(manager)
    if manager.unconfirmed_step is None:
        break
checkpoints.finish(manager)
"""


def test_a_failed_background_save_raises_naming_the_path_and_os_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("busgen_jax.training.checkpoints.CheckpointError: "), out.stderr[-3000:]
    assert str(tmp_path / "ckpt") in last and "File too large" in last and "step 2" in last
