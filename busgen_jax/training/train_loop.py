"""The step loop the training jobs share.

Pretraining, adaptation and the classifier differ in their state and train step; what happens
around each step is the same for all three and lives here: the progress line with steps/s and
ETA (clu), scalars with images/s to TensorBoard and the console, a stop on a non-finite loss that
keeps the last good checkpoint, and periodic checkpoints of the state with the grain iterator.

Metrics stay on the device between log steps, so no step waits on the host: they are fetched,
all at once, at log steps and before every checkpoint save, and a non-finite loss or gradient
found then stops the run before that state is saved. Saves run in the background; a failed one
stops the run at the next step with one line naming the path and the OS error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions
from flax import nnx

from busgen_jax.core import errors
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.training import checkpoints

# Metrics whose non-finite value means the state is no longer worth keeping.
FINITE_METRICS = ("loss", "grad_norm")


class NonFiniteError(errors.JobError, FloatingPointError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept."""


def fetch_checked(
    pending: list[tuple[int, Any]], manager: Any
) -> list[tuple[int, dict[str, float]]]:
    """Moves the metrics of the steps since the last check to the host in one transfer.

    Raises:
      NonFiniteError: a loss or gradient norm is not finite; the message names the first
        bad step, the steps checked and the last good checkpoint, which stays in place.
    """
    if not pending:
        return []
    fetched = jax.device_get([metrics for _, metrics in pending])
    history = [
        (step, {k: float(v) for k, v in metrics.items()})
        for (step, _), metrics in zip(pending, fetched, strict=True)
    ]
    for step, metrics in history:
        bad = {k: v for k, v in metrics.items() if k in FINITE_METRICS and not np.isfinite(v)}
        if bad:
            manager.wait_until_finished()
            latest = manager.latest_step()
            raise NonFiniteError(
                f"non-finite {bad} at step {step}; stopping without saving this state "
                f"(metrics of steps {history[0][0]}-{history[-1][0]} checked; last good "
                f"checkpoint: {'none' if latest is None else f'step {latest}'})"
            )
    return history


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The job's mesh (`config.mesh`), over whose batch shards the global batch must divide."""
    mesh = mesh_lib.make_mesh(config.mesh)
    shards = mesh_lib.num_batch_shards(mesh)
    if config.data.batch_size % shards:
        raise ValueError(
            f"config.data.batch_size={config.data.batch_size} is not divisible by "
            f"the {shards} batch shards of the mesh"
        )
    return mesh


def make_writer(workdir) -> metric_writers.MetricWriter:
    """TensorBoard and console scalars from the first process; the others only log."""
    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def make_manager(workdir, config: ml_collections.ConfigDict):
    """The job's checkpoint manager, from its `checkpoint` config section."""
    return checkpoints.make_manager(
        workdir / "checkpoints",
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
    )


def run(
    state: Any,
    train_step: Callable,
    data_iter: Iterator,
    *,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    manager: Any,
    writer: metric_writers.MetricWriter,
    rng: jax.Array,
    prepare: Callable[[dict], dict] = lambda batch: batch,
    saved: Callable[[Any], Any] = lambda state: state,
    after_step: Callable[[int, Any], None] | None = None,
) -> tuple[Any, list[tuple[int, dict[str, float]]]]:
    """Steps `state` from its own step to `config.train.steps`; closes the manager at the end
    and flushes the writer.

    Args:
      train_step: train_step(state, global batch, rng) -> (state, metrics).
      prepare: host batch -> the host batch the step takes (before it is sharded).
      saved: state -> what a checkpoint holds (adapters save only the trained part).
      after_step: called as after_step(step, state) after every step's bookkeeping.

    Returns:
      (the final state, [(step, metrics), ...] of this run; logged steps carry images_per_sec).
    """
    parameter_overview.log_parameter_overview(nnx.to_pure_dict(state.params), include_stats=False)
    total = config.train.steps
    report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
    step = int(state.step)
    history, pending, tick, logged_step = [], [], time.perf_counter(), step
    while step < total:
        batch = mesh_lib.host_batch_to_global(prepare(next(data_iter)), mesh)
        state, metrics = train_step(state, batch, rng)
        step += 1
        pending.append((step, metrics))
        checkpoints.check_saves(manager)
        report(step)
        log = step % config.log_every_steps == 0 or step == total
        save = step % config.checkpoint.every_steps == 0 or step == total
        if log or save:
            history += fetch_checked(pending, manager)
            pending = []
        if log:
            elapsed, tick = time.perf_counter() - tick, time.perf_counter()
            history[-1][1]["images_per_sec"] = (
                (step - logged_step) * config.data.batch_size / elapsed
            )
            logged_step = step
            writer.write_scalars(step, history[-1][1])
        if save:
            checkpoints.save(manager, step, saved(state), data_iter)
        if after_step is not None:
            after_step(step, state)
    checkpoints.finish(manager)
    writer.flush()
    return state, history
