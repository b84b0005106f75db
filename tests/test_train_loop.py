"""The shared step loop: metrics stay on the device between log steps, and a non-finite loss
found when they are fetched stops the run before that state is saved."""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from clu import metric_writers
from flax import nnx, struct

from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.training import checkpoints, train_loop


@struct.dataclass
class _State:
    step: jax.Array
    params: nnx.State


def _config(steps: int, log_every: int, save_every: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "train": {"steps": steps},
            "log_every_steps": log_every,
            "data": {"batch_size": 2},
            "checkpoint": {"every_steps": save_every},
        }
    )


def _run(tmp_path, config, nan_from: int | None):
    """A state whose loss is its step, or NaN from step `nan_from` on; counts the steps run."""
    calls = []

    @jax.jit
    def step_fn(state, batch, rng):
        step = state.step + 1
        bad = jnp.asarray(nan_from is not None) & (step >= (nan_from or 0))
        loss = jnp.where(bad, jnp.nan, step.astype(jnp.float32) + batch["x"].mean() * 0)
        params = nnx.State({"w": state.params["w"] + 1.0})
        return _State(step, params), {"loss": loss, "grad_norm": jnp.float32(1.0)}

    def counted(state, batch, rng):
        calls.append(1)
        return step_fn(state, batch, rng)

    mesh = mesh_lib.make_mesh({"data": -1})
    state = _State(jnp.int32(0), nnx.State({"w": jnp.zeros((4,), jnp.float32)}))
    data = grain.MapDataset.range(1000).map(lambda i: {"x": np.full((2,), i, np.float32)})
    manager = checkpoints.make_manager(tmp_path / "checkpoints", max_to_keep=10)
    try:
        result = train_loop.run(
            state,
            counted,
            iter(data.to_iter_dataset()),
            config=config,
            mesh=mesh,
            manager=manager,
            writer=metric_writers.create_default_writer(just_logging=True),
            rng=jax.random.key(0),
        )
    finally:
        manager.close()
    return result, len(calls), manager


def test_history_holds_every_step_fetched_at_log_and_save_steps(tmp_path):
    (state, history), calls, manager = _run(tmp_path, _config(7, 3, 5), nan_from=None)
    assert calls == 7 and int(state.step) == 7
    assert [s for s, _ in history] == list(range(1, 8))
    assert [m["loss"] for _, m in history] == [float(s) for s in range(1, 8)]
    # Logged steps (3, 6 and the last) carry images/s; the others only their metrics.
    assert [s for s, m in history if "images_per_sec" in m] == [3, 6, 7]
    assert manager.all_steps() == [5, 7]


@pytest.mark.parametrize("nan_from, stopped_at, last_good", [(7, 10, 5), (3, 5, None)])
def test_non_finite_loss_stops_at_the_next_check_and_keeps_the_last_good_step(
    tmp_path, nan_from, stopped_at, last_good
):
    with pytest.raises(FloatingPointError) as error:
        _run(tmp_path, _config(20, 10, 5), nan_from=nan_from)
    message = str(error.value)
    assert f"at step {nan_from};" in message
    assert f"steps {stopped_at - 4}-{stopped_at} checked" in message
    assert (
        f"last good checkpoint: {'none' if last_good is None else f'step {last_good}'}" in message
    )
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == ([] if last_good is None else [last_good])
