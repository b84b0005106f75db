"""What the audited-generation loop asks of a sampler, and the sampler of an exported generator.

The loop (`synthesis.generate`) decides which records to draw, with which labels, boxes and key;
a `Sampler` only turns them into images. `GeneratorSampler` is the one `busgen synthesize` runs;
tests inject toy samplers (one that copies training images, one that draws noise) in its place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from busgen_jax.data import box_priors
from busgen_jax.diffusion import generator as generator_lib
from busgen_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Draw:
    """One candidate to draw: record `index` of the plan, its labels and its lesion boxes."""

    index: int
    pathology: str
    device: str
    boxes: np.ndarray  # [K, 4] xyxy in [0, 1], as `box_priors.sample_boxes` gives them


# Images [len(draws), H, W, C] in [-1, 1], row j for draws[j], a function of the draws and key.
Sampler = Callable[[Sequence[Draw], jax.Array], np.ndarray]


@dataclasses.dataclass(frozen=True)
class GeneratorSampler:
    """Draws from an exported generator in fixed-size batches sharded over the local devices.

    Batch b of a call samples with `fold_in(key, b)`; the last batch is padded to `batch_size`
    (one compiled shape) and the padding dropped.
    """

    model: Any
    spec: generator_lib.GeneratorSpec
    # `generator.make_sample_fn(spec, ...)`: (model, key, class ids, device ids, box masks).
    sample_fn: Callable[..., jax.Array]
    mesh: jax.sharding.Mesh
    batch_size: int
    box_raster: str

    def __call__(self, draws: Sequence[Draw], key: jax.Array) -> np.ndarray:
        size, batch = self.spec.image_size, self.batch_size
        out = []
        for b, first in enumerate(range(0, len(draws), batch)):
            chunk = list(draws[first : first + batch])
            padded = chunk + [chunk[-1]] * (batch - len(chunk))
            inputs = mesh_lib.host_batch_to_global(
                {
                    "class_id": generator_lib.ids_for(
                        [d.pathology for d in padded], self.spec.class_names, "classes"
                    ),
                    "device_id": generator_lib.ids_for(
                        [d.device for d in padded], self.spec.device_names, "devices"
                    ),
                    "box_mask": np.stack(
                        [box_priors.box_mask(d.boxes, size, size, self.box_raster) for d in padded]
                    ),
                },
                self.mesh,
            )
            images = self.sample_fn(
                self.model,
                jax.random.fold_in(key, b),
                inputs["class_id"],
                inputs["device_id"],
                inputs["box_mask"],
            )
            out.append(np.asarray(jax.device_get(images))[: len(chunk)])
        return np.concatenate(out)
