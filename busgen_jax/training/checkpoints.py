"""Orbax checkpoints of the train state together with the grain iterator state.

A checkpoint step directory holds two items: `state` (the sharded train state, restored straight
into its shardings) and `data_iter` (each process's grain iterator state), so a restarted run
reads exactly the batches the interrupted one would have. Saves are asynchronous; orbax writes
into a temporary directory and renames it when complete, so a save cut short by preemption is
never seen as a step. A step that exists but fails to restore (a truncated or garbled file) is
skipped, with a warning, for the newest one that restores, and moved aside so that later saves
do not collide with it. If checkpoints exist and none restores, restoring raises: a run is never
silently re-initialized.

Decoding is not enough: bytes garbled in place can still decode. Every save therefore writes the
SHA-256 of each array (per process, of the shards it holds) to `<directory>_checksums/<step>/`,
and a restore recomputes them; a step whose arrays differ from their checksums, or hold a
non-finite value, is quarantined like an undecodable one. A save that fails in the background
(disk full, permissions) stops the run at the next step with a `CheckpointError` naming the
path and the OS error, instead of training on without checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import uuid
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from busgen_jax.core import errors, test_hooks


class CheckpointError(errors.JobError):
    """No checkpoint in a directory that has some could be restored, or a save failed."""


class Manager(ocp.CheckpointManager):
    """An orbax manager that remembers which background save is not yet confirmed written."""

    unconfirmed_step: int | None = None


def make_manager(
    directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
) -> Manager:
    """A manager of `directory` keeping the last `max_to_keep` steps."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    return Manager(pathlib.Path(directory).absolute(), options=options)


def save(manager: Manager, step: int, state: Any, data_iter: Any) -> None:
    """Starts an (asynchronous) save of `state` and the iterator's position at `step`, with
    the checksums of its arrays written beside it.

    Raises:
      CheckpointError: the checkpoint directory cannot be written, or an earlier background
        save failed.
    """
    check_saves(manager, wait=True)
    directory = pathlib.Path(manager.directory)
    _probe_writable(directory)
    _write_checksums(manager, step, state)
    # The iterator state is read now, synchronously, so it matches `state` even though the
    # array write finishes in the background.
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
    )
    try:
        manager.save(step, args=args, force=True)
    except Exception as error:  # noqa: BLE001 - reported as one line naming the path
        raise _save_error(directory, step, error) from error
    manager.unconfirmed_step = step


def check_saves(manager: Manager, *, wait: bool = False) -> None:
    """Raises at once if a background save has failed; waits for a running one only if `wait`.

    Cheap enough for every step: it only asks whether the save thread is still running.
    """
    step = manager.unconfirmed_step
    if step is None or (not wait and manager.is_saving_in_progress()):
        return
    manager.unconfirmed_step = None
    directory = pathlib.Path(manager.directory)
    try:
        manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 - reported as one line naming the path
        raise _save_error(directory, step, error) from error
    if jax.process_index() == 0 and not (directory / str(step)).is_dir():
        raise CheckpointError(f"{directory / str(step)}: checkpoint step {step} was not written")
    test_hooks.pause_point("checkpoint_confirmed")


def finish(manager: Manager) -> None:
    """Waits for the last save, raising if it failed, and closes the manager."""
    check_saves(manager, wait=True)
    manager.wait_until_finished()
    manager.close()


def _probe_writable(directory: pathlib.Path) -> None:
    """Fails now, naming the directory, rather than inside a background save thread."""
    probe = directory / f".write-probe-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as error:
        probe.unlink(missing_ok=True)
        raise CheckpointError(
            f"{directory}: cannot write checkpoints ({error.strerror or error})"
        ) from error


_OS_ERROR = re.compile(
    r'Failed (?:writing|to \w+)[^"]*"(?P<path>[^"]+)"|os_error_code=\W?(?P<code>\d+)'
)


def _save_error(directory: pathlib.Path, step: int, error: BaseException) -> CheckpointError:
    """One line naming the path and the OS error, out of orbax's and tensorstore's messages."""
    if isinstance(error, OSError) and error.errno:
        reason, path = error.strerror, error.filename or directory
    else:
        text = str(error)
        path = next((m["path"] for m in _OS_ERROR.finditer(text) if m["path"]), directory)
        code = next((int(m["code"]) for m in _OS_ERROR.finditer(text) if m["code"]), None)
        reason = os.strerror(code) if code else (text.splitlines() or [type(error).__name__])[0]
    return CheckpointError(f"{path}: saving checkpoint step {step} failed: {reason}")


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def _host_pieces(leaf: Any) -> dict[str, np.ndarray]:
    """The parts of `leaf` this process holds, keyed by the slice of the whole they are.

    A whole array is keyed "all" however it was sharded, so a run restored onto another mesh
    still verifies; shards of arrays spread over processes are keyed by their index.
    """
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            pieces = {}
            for shard in leaf.addressable_shards:
                bounds = [s.indices(n)[:2] for s, n in zip(shard.index, leaf.shape, strict=True)]
                whole = all(b == (0, n) for b, n in zip(bounds, leaf.shape, strict=True))
                key = "all" if whole else ",".join(f"{a}:{b}" for a, b in bounds)
                pieces.setdefault(key, shard.data)
            return {k: np.asarray(jax.device_get(v)) for k, v in pieces.items()}
    return {"all": np.asarray(jax.device_get(leaf))}


def _leaves(state: Any) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def _checksum_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    return pathlib.Path(f"{manager.directory}_checksums") / str(step)


def _write_checksums(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    sums = {
        name: {key: _digest(piece) for key, piece in _host_pieces(leaf).items()}
        for name, leaf in _leaves(state)
    }
    directory = _checksum_dir(manager, step)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"process_{jax.process_index()}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(sums, sort_keys=True))
        os.replace(tmp, path)
    except OSError as error:
        raise CheckpointError(
            f"{error.filename or directory}: saving checkpoint step {step} failed: "
            f"{error.strerror or error}"
        ) from error
    if jax.process_index() == 0:
        keep = {str(s) for s in manager.all_steps()} | {str(step)}
        for old in directory.parent.iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)


def _read_checksums(manager: ocp.CheckpointManager, step: int) -> dict[str, dict] | None:
    """Every process's checksums of `step`, merged; None for a step saved without them."""
    files = sorted(_checksum_dir(manager, step).glob("process_*.json"))
    if not files:
        return None
    merged: dict[str, dict] = {}
    for path in files:
        for name, sums in json.loads(path.read_text()).items():
            merged.setdefault(name, {}).update(sums)
    return merged


def verify(state: Any, expected: dict[str, dict] | None) -> list[str]:
    """What is wrong with this process's part of a restored `state`: leaves whose checksums
    differ from `expected` or that hold non-finite values (empty when it is good)."""
    problems = []
    for name, leaf in _leaves(state):
        for key, piece in _host_pieces(leaf).items():
            want = (expected or {}).get(name, {}).get(key)
            if expected is not None and want is not None and _digest(piece) != want:
                problems.append(f"{name} does not match its checksum")
            elif expected is not None and name not in expected:
                problems.append(f"{name} has no checksum")
            elif np.issubdtype(piece.dtype, np.inexact) and not np.all(np.isfinite(piece)):
                problems.append(f"{name} holds non-finite values")
    return problems


def agree(problems: list[str]) -> list[str]:
    """This process's `problems` with a step, or a stand-in when only another process found
    some: one process's bad shard makes the step bad for all, so every process restores alike.
    A collective: every process calls it once per step tried, whatever its restore did."""
    if jax.process_count() > 1:
        flags = multihost_utils.process_allgather(np.asarray(len(problems), np.int32))
        if np.any(flags) and not problems:
            return ["another process found its part of this step bad"]
    return problems


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` (concrete or abstract) carrying the target `shardings`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def _quarantine(manager: ocp.CheckpointManager, step: int) -> None:
    """Moves an unreadable step (and its checksums) out of the checkpoint directory, kept for
    inspection. A collective: every process calls it for the same steps."""
    unreadable = pathlib.Path(f"{manager.directory}_unreadable")
    moves = [
        (pathlib.Path(manager.directory) / str(step), unreadable / str(step)),
        (_checksum_dir(manager, step), unreadable / f"{step}_checksums"),
    ]
    if jax.process_index() == 0:
        for source, target in moves:
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                shutil.move(str(source), str(target))
    if jax.process_count() > 1:
        # Every process reloads only once process 0 has moved the step: one that still listed
        # it would refuse to save that step again (orbax: "already exists") while the others
        # wait for it.
        multihost_utils.sync_global_devices(f"busgen_jax.training.checkpoints quarantine {step}")
    manager.reload()


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any
) -> tuple[Any, int] | None:
    """Restores the newest readable step into `abstract_state`'s shardings and `data_iter`.

    A step is good when it decodes, matches the checksums saved with it and holds only finite
    values; bad steps newer than the one restored are quarantined.

    Returns:
      (state, step), or None when the directory holds no checkpoint at all.

    Raises:
      CheckpointError: checkpoints exist but none of them can be restored.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        )
        try:
            restored = manager.restore(step, args=args)
            expected = _read_checksums(manager, step)
            problems = verify(restored.state, expected)
        except Exception as error:  # noqa: BLE001 - any failure means "this step is unreadable"
            problems = [f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"]
        # Outside the try: a process whose restore raised must still join the others' verdict,
        # or they would wait for it forever.
        problems = agree(problems)
        if problems:
            logging.warning(
                "Checkpoint step %d in %s cannot be restored (%s); trying an older one.",
                step,
                manager.directory,
                "; ".join(problems[:3]),
            )
            failed.append(step)
            continue
        if expected is None:
            logging.warning("Checkpoint step %d has no checksums; restored unverified.", step)
        for bad in failed:
            _quarantine(manager, bad)
        logging.info("Restored checkpoint step %d from %s", step, manager.directory)
        return restored.state, step
    if steps:
        raise CheckpointError(
            f"none of the checkpoints {steps} in {manager.directory} can be restored; "
            "refusing to start from scratch (move the directory away to do so)"
        )
    return None
