"""The sample grid a training job writes as it goes: a few guided samples per class.

Pretraining renders it from the EMA params every `sample.every_steps`, adaptation from the
saved adapter; both sample through `generator.sample_images` with the spec the generator is
exported with, so a preview shows what synthesis from that generator will draw. Each row is a
class, each column a sample of one central lesion box.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from busgen_jax.diffusion import generator
from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.reporting import visualize
from busgen_jax.training import train_state


def grid_conditions(
    class_names: tuple[str, ...], image_size: int, per_class: int
) -> dict[str, np.ndarray]:
    """`per_class` samples per class, null device, a central lesion box except for 'normal'."""
    class_ids = np.repeat(np.arange(1, len(class_names) + 1), per_class)
    box = np.zeros((image_size, image_size, 1), np.float32)
    box[image_size // 3 : 2 * image_size // 3, image_size // 3 : 2 * image_size // 3] = 1.0
    has_box = np.array([name != "normal" for name in class_names])[class_ids - 1]
    return {
        "class_id": class_ids.astype(np.int32),
        "device_id": np.zeros_like(class_ids, np.int32),
        "box_mask": box[None] * has_box[:, None, None, None],
    }


def sampler_settings(spec: generator.GeneratorSpec, sample: ml_collections.ConfigDict) -> dict:
    """The `generator.sample_images` settings of a job's `sample` config section; what it leaves
    unset (the guidance weight, by default) is the spec's."""
    names = ("sampler", "steps", "guidance_weight")
    settings = generator.sampling_settings(spec, {name: sample[name] for name in names})
    return {name: settings[name] for name in names}


def make_sample_fn(
    spec: generator.GeneratorSpec, sample: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
):
    """Jitted (state, rng) -> grid samples [classes * per_class, H, W, 1] from the EMA params."""
    cond = grid_conditions(spec.class_names, spec.image_size, sample.per_class)
    inputs = [jnp.asarray(cond[k]) for k in ("class_id", "device_id", "box_mask")]
    settings = sampler_settings(spec, sample)

    def sample_fn(state: train_state.TrainState, rng: jax.Array) -> jax.Array:
        model = state.model(state.ema_params)
        return generator.sample_images(model, spec, rng, *inputs, **settings)

    # Replicated output: every process can read the whole grid.
    return jax.jit(sample_fn, out_shardings=mesh_lib.replicated(mesh))


def save_sample_grid(
    images: np.ndarray,
    class_names: tuple[str, ...],
    per_class: int,
    path: pathlib.Path,
    column: str = "samples",
    title: str | None = None,
) -> pathlib.Path:
    """`grid_conditions` samples as a PNG with one labelled row per class."""
    tiles = visualize.to_uint8(np.asarray(images).mean(axis=-1))
    cells = {
        (name, column): list(tiles[k * per_class : (k + 1) * per_class])
        for k, name in enumerate(class_names)
    }
    return visualize.labelled_grid(
        cells,
        row_labels=list(class_names),
        col_labels=[column],
        per_cell=per_class,
        path=path,
        title=title,
    )
