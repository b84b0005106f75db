"""A tiny exported generator and phantom data for job tests (no pretraining run needed)."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from busgen_jax.data import phantom, shards
from busgen_jax.diffusion import generator
from busgen_jax.models import presets
from busgen_jax.models.unet import UNet


def random_unet(config, seed: int = 0, scale: float = 0.1) -> UNet:
    """A U-Net with random N(0, scale^2) parameters (the default init zeroes output layers).

    Built abstractly and filled from numpy: eager init compiles one XLA program per parameter
    shape, which costs far more on CPU.
    """
    model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype), nnx.state(model)
    )
    nnx.update(model, state)
    return model


def tiny_generator(directory: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """Exports a random tiny U-Net as a generator over the phantom's vocabulary."""
    config = presets.model_config("tiny")
    config.num_classes = len(phantom.schema.PATHOLOGIES)
    config.num_devices = len(phantom.PHANTOM_DEVICES)
    model = random_unet(config, seed)
    spec = generator.GeneratorSpec(
        schedule={"schedule": "linear", "num_timesteps": 500},
        prediction="eps",
        class_names=tuple(phantom.schema.PATHOLOGIES),
        device_names=tuple(phantom.PHANTOM_DEVICES),
        image_size=config.image_size,
        # A random network: any sampler gives noise, so the cheapest few steps do for tests.
        sampling={**presets.sampling_preset("project"), "steps": 6},
    )
    return generator.export_generator(directory, model, config, spec)


def phantom_dataset(directory: pathlib.Path, num: int = 64, seed: int = 0, size: int = 32):
    """A small phantom dataset (all splits) written as shards."""
    shards.write_dataset(phantom.phantom_records(num, seed, size), directory, name="phantom")
    return directory


def pretrain_command(data_dir, workdir, *, steps: int, every: int, extra=()) -> list[str]:
    """`python -m busgen_jax.jobs.pretrain` on the tiny preset, for tests that run it as a
    separate process (to kill it, or to run two processes of one job)."""
    return [
        sys.executable,
        "-m",
        "busgen_jax.jobs.pretrain",
        "--config=configs/pretrain.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.paths=('{data_dir}',)",
        f"--config.train.steps={steps}",
        f"--config.checkpoint.every_steps={every}",
        *extra,
    ]
