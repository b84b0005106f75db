"""The sample grid a training job writes as it goes: a few guided samples per class.

Pretraining renders it from the EMA params every `sample.every_steps`; adaptation from the
saved adapter. Each row is a class, each column a sample of one central lesion box.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from busgen_jax.diffusion import guidance, samplers, schedules
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.reporting import visualize
from busgen_jax.training import train_state


def grid_conditions(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """`per_class` samples per class, null device, a central lesion box except for 'normal'."""
    size, per_class = config.model.image_size, config.sample.per_class
    class_ids = np.repeat(np.arange(1, len(config.data.class_names) + 1), per_class)
    box = np.zeros((size, size, 1), np.float32)
    box[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 1.0
    has_box = np.array([name != "normal" for name in config.data.class_names])[class_ids - 1]
    return {
        "class_id": class_ids.astype(np.int32),
        "device_id": np.zeros_like(class_ids, np.int32),
        "box_mask": box[None] * has_box[:, None, None, None],
    }


def make_sample_fn(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """Jitted (state, rng) -> guided samples [classes * per_class, H, W, C] from the EMA params."""
    cond = grid_conditions(config)
    schedule = schedules.make_schedule(config.diffusion)
    shape = (len(cond["class_id"]), config.model.image_size, config.model.image_size,
             config.model.image_channels)  # fmt: skip

    def sample(state: train_state.TrainState, rng: jax.Array) -> jax.Array:
        model = state.model(state.ema_params)
        denoise = guidance.guided_denoise_fn(
            lambda x, t, c, d, m: model(x, t, c, d, m),
            jnp.asarray(cond["class_id"]),
            jnp.asarray(cond["device_id"]),
            jnp.asarray(cond["box_mask"]),
            guidance_weight=config.sample.guidance_weight,
            drop_box_mask=config.train.drop_box_mask,
        )
        return samplers.sample(
            denoise, shape, rng, schedule, sampler=config.sample.sampler,
            steps=config.sample.steps, prediction=config.diffusion.prediction, clip_x0=1.0,
        )  # fmt: skip

    # Replicated output: every process can read the whole grid.
    return jax.jit(sample, out_shardings=mesh_lib.replicated(mesh))


def save_sample_grid(images: np.ndarray, config, path: pathlib.Path) -> pathlib.Path:
    """The `grid_conditions` samples as a PNG with one labelled row per class."""
    tiles = visualize.to_uint8(images.mean(axis=-1))
    per_class = config.sample.per_class
    cells = {
        (name, "samples"): list(tiles[k * per_class : (k + 1) * per_class])
        for k, name in enumerate(config.data.class_names)
    }
    return visualize.labelled_grid(
        cells, row_labels=list(config.data.class_names), col_labels=["samples"],
        per_cell=per_class, path=path, title=f"EMA samples, {path.stem}",
    )  # fmt: skip
