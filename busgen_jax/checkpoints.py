"""Orbax checkpoints of the train state together with the grain iterator state.

A checkpoint step directory holds two items: `state` (the sharded train state, restored straight
into its shardings) and `data_iter` (each process's grain iterator state), so a restarted run
reads exactly the batches the interrupted one would have. Saves are asynchronous; orbax writes
into a temporary directory and renames it when complete, so a save cut short by preemption is
never seen as a step. A step that exists but fails to restore (a truncated or garbled file) is
skipped, with a warning, for the newest one that restores, and moved aside so that later saves
do not collide with it. If checkpoints exist and none restores, restoring raises: a run is never
silently re-initialized.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No checkpoint in a directory that has some could be restored."""


def make_manager(
    directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True
) -> ocp.CheckpointManager:
    """A manager of `directory` keeping the last `max_to_keep` steps."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any) -> None:
    """Starts an (asynchronous) save of `state` and the iterator's position at `step`."""
    # The iterator state is read now, synchronously, so it matches `state` even though the
    # array write finishes in the background.
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
    )
    manager.save(step, args=args, force=True)


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` (concrete or abstract) carrying the target `shardings`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def _quarantine(manager: ocp.CheckpointManager, step: int) -> None:
    """Moves an unreadable step out of the checkpoint directory (kept for inspection)."""
    source = pathlib.Path(manager.directory) / str(step)
    target = pathlib.Path(f"{manager.directory}_unreadable") / str(step)
    if jax.process_index() == 0 and source.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(source), str(target))
    manager.reload()


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any
) -> tuple[Any, int] | None:
    """Restores the newest readable step into `abstract_state`'s shardings and `data_iter`.

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
        except Exception as error:  # noqa: BLE001 - any failure means "this step is unreadable"
            logging.warning(
                "Checkpoint step %d in %s cannot be restored (%s: %s); trying an older one.",
                step,
                manager.directory,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            failed.append(step)
            continue
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
