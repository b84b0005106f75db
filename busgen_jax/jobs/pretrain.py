"""Sharded diffusion pretraining of the conditional U-Net on BUS shards.

  python -m busgen_jax.jobs.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/pretrain \
      --config.data.paths="('/data/phantom',)" --config.train.steps=20

`train_and_evaluate` builds the mesh, creates the sharded state (or restores the newest readable
checkpoint together with the input iterator), runs the jitted `train_step`, logs metrics and
sample grids, checkpoints periodically, and exports the final EMA params to `workdir/export`
(`busgen_jax.diffusion.generator` format, read by the adaptation and synthesis jobs).
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from busgen_jax.core import config_files, errors
from busgen_jax.diffusion import generator, losses, preview, samplers, train_step
from busgen_jax.jobs import layout, shell
from busgen_jax.models import presets, unet
from busgen_jax.parallel import partition
from busgen_jax.reporting import visualize
from busgen_jax.training import checkpoints, train_loop, train_state


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError with one line naming the first bad field of a pretraining config."""
    unet.validate_config(config.model)
    model, data, diffusion, train = config.model, config.data, config.diffusion, config.train
    checks = [
        ("data.paths", len(data.paths) > 0, "must name at least one dataset directory"),
        (
            "data.image_size",
            data.image_size == model.image_size,
            f"must equal model.image_size={model.image_size}",
        ),
        (
            "data.class_names",
            len(data.class_names) == model.num_classes,
            f"must list model.num_classes={model.num_classes} classes",
        ),
        (
            "data.device_names",
            len(data.device_names) <= model.num_devices,
            f"lists more devices than model.num_devices={model.num_devices}",
        ),
        ("data.batch_size", data.batch_size >= 1, "must be >= 1"),
        (
            "diffusion.num_timesteps",
            diffusion.num_timesteps == model.num_timesteps,
            f"must equal model.num_timesteps={model.num_timesteps}",
        ),
        config_files.one_of("diffusion.prediction", diffusion.prediction, losses.PREDICTIONS),
        config_files.one_of("diffusion.weighting", diffusion.weighting, losses.WEIGHTINGS),
        config_files.one_of("diffusion.reduction", diffusion.reduction, losses.REDUCTIONS),
        ("train.steps", train.steps >= 1, "must be >= 1"),
        ("train.learning_rate", train.learning_rate > 0, "must be > 0"),
        ("train.warmup_steps", 0 <= train.warmup_steps <= train.steps, "must be in [0, steps]"),
        ("train.ema_decay", 0.0 <= train.ema_decay < 1.0, "must be in [0, 1)"),
        ("train.cond_drop_prob", 0.0 <= train.cond_drop_prob <= 1.0, "must be in [0, 1]"),
        config_files.one_of(
            "train.cond_drop_mode", train.cond_drop_mode, train_step.COND_DROP_MODES
        ),
        config_files.one_of("train.compute_dtype", train.compute_dtype, train_step.COMPUTE_DTYPES),
        ("checkpoint.every_steps", config.checkpoint.every_steps >= 1, "must be >= 1"),
        ("checkpoint.max_to_keep", config.checkpoint.max_to_keep >= 1, "must be >= 1"),
        config_files.one_of("sample.sampler", config.sample.sampler, samplers.SAMPLERS),
    ]
    config_files.check_fields(config, checks)
    partition.validate_rules(config.partition.rules)
    train_state.trainable_filter(config.train.trainable)


def export_generator(state: train_state.TrainState, config, directory: pathlib.Path) -> None:
    """Writes the EMA model as an exported generator (params, model config, sampling spec)."""
    if jax.process_index() == 0 and directory.exists():
        shutil.rmtree(directory)
    multihost_utils.sync_global_devices("export_generator")
    generator.export_generator(
        directory, state.model(state.ema_params), config.model, generator_spec(config)
    )


def generator_spec(config: ml_collections.ConfigDict) -> generator.GeneratorSpec:
    """What sampling a model trained with this pretraining config needs besides its weights."""
    return generator.GeneratorSpec(
        schedule={
            k: config.diffusion[k] for k in ("schedule", "num_timesteps", "beta_start", "beta_end")
        },
        prediction=config.diffusion.prediction,
        class_names=tuple(config.data.class_names),
        device_names=tuple(config.data.device_names),
        image_size=config.data.image_size,
        sampling=presets.sampling_preset(config.sampling_preset),
        image_channels=config.model.image_channels,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs pretraining to `config.train.steps`, resuming from `workdir` if it has checkpoints.

    Returns:
      {'state': the final TrainState, 'history': [(step, metrics dict), ...] of this run}.
    """
    from busgen_jax.data import pipeline  # the input stack (grain, PIL) only when training

    validate_config(config)
    workdir = pathlib.Path(workdir)
    mesh = train_loop.make_mesh(config)
    init_fn, abstract, shardings = train_state.abstract_state_and_shardings(
        config, mesh, train_step.unet_fn(config)
    )
    data_iter = iter(pipeline.make_dataset(config.data, split="train", seed=config.train.seed))
    manager = train_loop.make_manager(workdir, config)
    target = checkpoints.abstract_like(abstract, shardings)
    restored = checkpoints.restore_latest(manager, target, data_iter)
    state = restored[0] if restored else jax.jit(init_fn, out_shardings=shardings)()
    sample_fn = preview.make_sample_fn(generator_spec(config), config.sample, mesh)
    writer = train_loop.make_writer(workdir)

    def sample_grid(step, state):
        if step % config.sample.every_steps and step != config.train.steps:
            return
        images = np.asarray(jax.device_get(sample_fn(state, jax.random.key(config.sample.seed))))
        writer.write_images(
            step, {"samples": visualize.tile_grid(images, config.sample.per_class)[None, ..., None]}
        )
        if jax.process_index() == 0:
            path = workdir / layout.SAMPLES / f"step_{step:07d}.png"
            preview.save_sample_grid(
                images,
                tuple(config.data.class_names),
                config.sample.per_class,
                path,
                title=f"EMA samples, {path.stem}",
            )

    state, history = train_loop.run(
        state,
        train_step.make_pretrain_step(config, mesh, shardings),
        data_iter,
        config=config,
        mesh=mesh,
        manager=manager,
        writer=writer,
        rng=jax.random.key(config.train.seed),
        after_step=sample_grid,
    )
    export_generator(state, config, workdir / layout.EXPORT)
    return {"state": state, "history": history}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    try:
        result = train_and_evaluate(config, workdir)
    except (ValueError, checkpoints.CheckpointError, FloatingPointError) as e:
        raise errors.JobError(str(e)) from e
    export = pathlib.Path(workdir) / layout.EXPORT
    print(f"pretrained to step {int(result['state'].step)}; generator: {export}")
    return result


main = shell.command(run, "configs/pretrain.py:tiny", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
