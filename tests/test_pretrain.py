"""Pretraining: config checks, schedule, condition dropout, grids, and real tiny runs.

The end-to-end tests run the `tiny` preset on small schema records: the loss falls, a sample grid
and the EMA export appear, a SIGKILLed run resumes to bit-identical params, and a diverging run
stops naming the step without saving the bad state.
"""

from __future__ import annotations

import math
import os
import pathlib
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pause_points
import pytest
from generator_fixtures import pretrain_command
from PIL import Image
from records import make_records

from busgen_jax.data import shards
from busgen_jax.diffusion import train_step
from busgen_jax.jobs import pretrain
from busgen_jax.reporting import visualize
from busgen_jax.training import train_state
from configs import pretrain as pretrain_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS, EVERY = 12, 4


def _make_test_config(data_dir: pathlib.Path, **train_overrides):
    config = pretrain_config.get_config("tiny")
    config.data.paths = [str(data_dir)]
    config.train.update({"steps": STEPS, **train_overrides})
    config.checkpoint.every_steps = EVERY
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "records"
    shards.write_dataset(make_records(40, size=(32, 32)), path, name="records")
    return path


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, pretrain.train_and_evaluate(_make_test_config(data_dir), str(workdir))


@pytest.mark.parametrize("preset", pretrain_config.PRESETS)
def test_presets_validate(preset):
    config = pretrain_config.get_config(preset)
    config.data.paths = ["/data"]
    pretrain.validate_config(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.image_size", 31, r"config.data.image_size = 31 must equal model.image_size"),
        ("train.cond_drop_mode", "pixel", r"config.train.cond_drop_mode = 'pixel'"),
        ("diffusion.reduction", "sum", r"config.diffusion.reduction = 'sum'"),
        ("train.warmup_steps", 10**9, r"config.train.warmup_steps"),
    ],
)
def test_bad_field_is_named(field, value, message):
    config = pretrain_config.get_config("tiny")
    config.data.paths = ["/data"]
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        pretrain.validate_config(config)


def test_published_training_defaults():
    train = pretrain_config.get_config("busgen_toy").train
    assert (train.learning_rate, train.weight_decay, train.grad_clip) == (6.25e-6, 1e-4, 1.0)
    assert (train.cond_drop_prob, train.cond_drop_mode) == (0.1, "batch")
    assert train.warmup_steps == train.steps // 10
    assert pretrain_config.get_config("busgen").model.image_size == 160


def test_learning_rate_schedule_matches_closed_form():
    train = pretrain_config.get_config("busgen_toy").train
    train.update(steps=1000, warmup_steps=100)
    schedule = train_state.learning_rate_schedule(train)
    base, peak = 6.25e-6, 6.25e-6 * 2.5
    for step in (0, 50, 100, 400, 999):
        if step < 100:
            expected = base + (peak - base) * step / 100
        else:
            expected = 0.5 * peak * (1 + math.cos(math.pi * (step - 100) / 900))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-10)


def _batch(size: int = 64) -> dict[str, jax.Array]:
    return {
        "class_id": jnp.arange(size, dtype=jnp.int32) % 3 + 1,
        "device_id": jnp.ones(size, jnp.int32),
        "box_mask": jnp.ones((size, 4, 4, 1)),
    }


def test_batch_condition_dropout_drops_all_together():
    dropped = []
    for seed in range(200):
        out = train_step.drop_conditions(_batch(), jax.random.key(seed), 0.3, "batch", True)
        null = np.asarray(out["class_id"]) == 0
        assert null.all() or not null.any()
        assert (np.asarray(out["device_id"]) == 0).all() == null.all()
        assert (np.asarray(out["box_mask"]).sum() == 0) == null.all()
        dropped.append(null.all())
    # Binomial(200, 0.3): mean 60, sd 6.5.
    assert 35 <= sum(dropped) <= 85


def test_example_condition_dropout_keeps_mask_when_asked():
    out = train_step.drop_conditions(_batch(4000), jax.random.key(0), 0.25, "example", False)
    null = np.asarray(out["class_id"]) == 0
    np.testing.assert_array_equal(null, np.asarray(out["device_id"]) == 0)
    assert abs(null.mean() - 0.25) < 0.03  # binomial sd 0.007
    np.testing.assert_array_equal(np.asarray(out["box_mask"]), 1.0)


def test_make_grid_places_tiles_row_major():
    images = np.stack([np.full((3, 2, 1), v) for v in (-1.0, 0.0, 1.0)])
    grid = visualize.tile_grid(images, ncols=2, padding=1)
    assert grid.shape == (2 * 4 + 1, 2 * 3 + 1)
    np.testing.assert_array_equal(grid[1:4, 1:3], 0)
    np.testing.assert_array_equal(grid[1:4, 4:6], 128)  # round(127.5)
    np.testing.assert_array_equal(grid[5:8, 1:3], 255)
    np.testing.assert_array_equal(grid[5:8, 4:6], 0)  # empty cell
    assert grid[0].sum() == 0 and grid[:, 0].sum() == 0


@pytest.mark.slow
def test_tiny_run_learns_and_writes_samples_and_export(reference_run):
    workdir, out = reference_run
    losses = [m["loss"] for _, m in out["history"]]
    assert len(losses) == STEPS
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    grid = workdir / "samples" / f"step_{STEPS:07d}.png"
    with Image.open(grid) as image:
        pixels = np.asarray(image.convert("L"), np.float32)
    assert pixels.shape[0] > 100 and pixels.std() > 10  # a rendered figure, not a blank page
    export = ocp.StandardCheckpointer().restore(workdir / "export" / "params")
    ema = jax.tree.leaves(out["state"].ema_params)
    assert len(jax.tree.leaves(export)) == len(ema)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([np.ravel(x) for x in jax.tree.leaves(export)])),
        np.sort(np.concatenate([np.ravel(np.asarray(x)) for x in ema])),
    )


def _command(workdir: pathlib.Path, data_dir: pathlib.Path) -> list[str]:
    return pretrain_command(data_dir, workdir, steps=STEPS, every=EVERY)


def _restore_pure(path: pathlib.Path):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(path))


@pytest.mark.slow
def test_sigkilled_run_resumes_bit_exactly(reference_run, data_dir, tmp_path):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
    # The run stops once its first checkpoint (step EVERY) is complete on disk, and is killed
    # there: after that save and before the next one, every time.
    marker = tmp_path / "paused"
    first = subprocess.Popen(
        _command(tmp_path / "run", data_dir),
        cwd=ROOT,
        env=pause_points.env("checkpoint_confirmed", marker, env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pause_points.wait_until_paused(first, marker)
    finally:
        first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "run" / "checkpoints" / str(STEPS)).exists()
    saved = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == [str(EVERY)]

    second = subprocess.run(
        _command(tmp_path / "run", data_dir), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Restored checkpoint step {EVERY} " in second.stderr, second.stderr[-3000:]

    reference, _ = reference_run
    for part in (f"checkpoints/{STEPS}/state", "export/params"):
        resumed, expected = _restore_pure(tmp_path / "run" / part), _restore_pure(reference / part)
        assert len(resumed) == len(expected)
        for a, b in zip(resumed, expected, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_diverging_run_stops_naming_the_step(data_dir, tmp_path):
    config = _make_test_config(data_dir, learning_rate=1e30, steps=4)
    config.checkpoint.every_steps = 1
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step (\d+)") as error:
        pretrain.train_and_evaluate(config, str(tmp_path))
    bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == list(range(1, bad_step))
    assert f"last good checkpoint: step {bad_step - 1}" in error.value.args[0]
