"""A tiny exported generator and phantom data for job tests (no pretraining run needed)."""

from __future__ import annotations

import pathlib

from flax import nnx

from busgen_jax import generator
from busgen_jax.data import phantom, shards
from busgen_jax.models import presets
from busgen_jax.models.unet import UNet


def tiny_generator(directory: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """Exports a randomly initialised tiny U-Net as a generator over the phantom's vocabulary."""
    config = presets.model_config("tiny")
    config.num_classes = len(phantom.schema.PATHOLOGIES)
    config.num_devices = len(phantom.PHANTOM_DEVICES)
    model = UNet(config, rngs=nnx.Rngs(seed))
    spec = generator.GeneratorSpec(
        schedule={"schedule": "linear", "num_timesteps": 500},
        prediction="eps",
        class_names=tuple(phantom.schema.PATHOLOGIES),
        device_names=tuple(phantom.PHANTOM_DEVICES),
        image_size=config.image_size,
    )
    return generator.export_generator(directory, model, config, spec)


def phantom_dataset(directory: pathlib.Path, num: int = 64, seed: int = 0, size: int = 32):
    """A small phantom dataset (all splits) written as shards."""
    shards.write_dataset(phantom.phantom_records(num, seed, size), directory, name="phantom")
    return directory
