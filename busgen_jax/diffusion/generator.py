"""A trained generator on disk, and sampling from it.

An exported generator is a directory with
  params/               orbax checkpoint of the U-Net params (`params_io.save_params`)
  model_config.json     the U-Net config
  generator.json        what sampling needs besides the network: the noise schedule, the
                        prediction target, the class and device vocabularies, image size, and
                        the sampling preset it is meant for (`presets.SAMPLING_PRESETS`);
                        for a distilled student (`busgen distill`) also `student`: its
                        teacher, the step count it was distilled for and whether it takes the
                        guidance weight as an input (sampled then in one pass per step).
Pretraining exports its EMA params in this form, the PyTorch converter writes the published
weights in it, and adaptation writes its adapters next to a reference to one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from busgen_jax.data import box_priors
from busgen_jax.data.vocabulary import Vocabulary
from busgen_jax.diffusion import foundation, guidance, samplers, schedules
from busgen_jax.models import params_io, presets
from busgen_jax.models.unet import UNet

SPEC_FILE = "generator.json"


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """Everything besides the weights that turns a U-Net into a sampler."""

    schedule: dict[str, Any]
    prediction: str
    class_names: tuple[str, ...]
    device_names: tuple[str, ...]
    image_size: int
    source: str = "pretrain"
    # How the generator is meant to be sampled (`presets.sampling_preset`); specs written before
    # this was recorded come from this project's pretraining.
    sampling: dict[str, Any] = dataclasses.field(
        default_factory=lambda: presets.sampling_preset("project")
    )
    # None for a trained generator; a distilled student's provenance (`diffusion.distillation`).
    student: dict[str, Any] | None = None
    # Channels the network sees (the published model takes grayscale repeated to RGB); specs
    # written before this was recorded take it from the model config (`load_generator`).
    image_channels: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GeneratorSpec:
        raw = json.loads(text)
        raw["class_names"] = tuple(raw["class_names"])
        raw["device_names"] = tuple(raw["device_names"])
        return cls(**raw)


def export_generator(
    directory: str | pathlib.Path,
    model: nnx.Module,
    model_config: ml_collections.ConfigDict,
    spec: GeneratorSpec,
) -> pathlib.Path:
    """Writes `model`'s params, its config and `spec` to `directory`."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    params_io.save_params(nnx.state(model, nnx.Param), directory, config=model_config)
    (directory / SPEC_FILE).write_text(spec.to_json())
    return directory


def load_generator(
    directory: str | pathlib.Path, adapter: str | pathlib.Path | None = None
) -> tuple[UNet, GeneratorSpec]:
    """Restores an exported generator, with an adaptation job's adapter merged in if given.

    Errors name the directory and what is missing.
    """
    directory = pathlib.Path(directory)
    spec_path = directory / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path}: not an exported generator (no {SPEC_FILE})")
    if (directory / foundation.CHECKSUMS).is_file():  # shipped generators carry checksums
        foundation.verify_checksums(directory)
    spec = GeneratorSpec.from_json(spec_path.read_text())
    model_config = params_io.load_model_config(directory)
    if "image_channels" not in json.loads(spec_path.read_text()):
        spec = dataclasses.replace(spec, image_channels=model_config.image_channels)
    model = nnx.eval_shape(lambda: UNet(model_config, rngs=nnx.Rngs(0)))
    model = _materialize(model)
    params_io.load_params(model, directory)
    if adapter is not None:
        from busgen_jax.models import lora  # the adapter machinery is only needed here

        model, spec = lora.load_adapter(model, spec, adapter)
    return model, spec


def _materialize(abstract_model: nnx.Module) -> nnx.Module:
    """Zero-filled concrete arrays for an abstract model, to be overwritten by a restore."""
    graphdef, state = nnx.split(abstract_model)
    state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state)
    return nnx.merge(graphdef, state)


def sampling_settings(spec: GeneratorSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """The spec's sampling settings with every override that is not None applied.

    Raises ValueError naming an unknown setting or a value outside its choices.
    """
    settings = {**presets.sampling_preset("project"), **spec.sampling}
    for name, value in overrides.items():
        if name not in settings:
            raise ValueError(f"unknown sampling setting '{name}' (known: {sorted(settings)})")
        if value is not None:
            settings[name] = value
    choices = {
        "sampler": samplers.SAMPLERS,
        "skip": samplers.SKIPS,
        "time_input": guidance.TIME_INPUTS,
        "box_raster": box_priors.BOX_RASTERS,
        "drop_box_mask": (True, False),
        "clip_x0": (True, False),
    }
    for name, allowed in choices.items():
        if settings[name] not in allowed:
            raise ValueError(
                f"sampling setting '{name}' is {settings[name]!r}, not one of {allowed}"
            )
    # Named after the preset it equals, so records never claim one their overrides left.
    named = [k for k, v in presets.SAMPLING_PRESETS.items() if all(settings[f] == v[f] for f in v)]
    settings["preset"] = named[0] if named else "custom"
    return settings


def to_model_channels(images: jax.Array, channels: int) -> jax.Array:
    """Grayscale [B, H, W, 1] -> the model's channels (the published model takes RGB copies)."""
    return jnp.repeat(images, channels, axis=-1) if channels != images.shape[-1] else images


def sample_images(
    model: nnx.Module,
    spec: GeneratorSpec,
    rng: jax.Array,
    class_ids: jax.Array,
    device_ids: jax.Array,
    box_mask: jax.Array,
    *,
    sampler: str,
    steps: int,
    guidance_weight: float,
    eta: float = 0.0,
    skip: str = "time_uniform",
    drop_box_mask: bool | None = None,
    time_input: str | None = None,
    clip_x0: bool | None = None,
    protect_fn: Callable[[Callable], Callable] | None = None,
) -> jax.Array:
    """Samples grayscale images [B, H, W, 1] in [-1, 1] for the given conditions.

    protect_fn wraps the guided denoise_fn(x, t), e.g. copy-protected sampling
    (`privacy.cpsample.protect`).
    drop_box_mask (zero the box in the unconditional half), time_input ('floor' | 'interpolate')
    and clip_x0 (clip x0 predictions to [-1, 1]) default (None) to the spec's sampling preset.
    Traceable: call it under `nnx.jit` (see `make_sample_fn`) so the sampler loop compiles once.
    """
    how = sampling_settings(
        spec, {"drop_box_mask": drop_box_mask, "time_input": time_input, "clip_x0": clip_x0}
    )
    schedule = schedules.make_schedule(ml_collections.ConfigDict(spec.schedule))
    guidance_input = takes_guidance_weight(spec)
    denoise_fn = guidance.guided_denoise_fn(
        network_fn(model, guidance_input, guidance_weight),
        class_ids,
        device_ids,
        box_mask,
        guidance_weight=0.0 if guidance_input else guidance_weight,
        drop_box_mask=how["drop_box_mask"],
        time_input=how["time_input"],
    )
    if protect_fn is not None:
        denoise_fn = protect_fn(denoise_fn)
    size = spec.image_size
    images = samplers.sample(
        denoise_fn,
        (class_ids.shape[0], size, size, spec.image_channels),
        rng,
        schedule,
        sampler=sampler,
        steps=steps,
        eta=eta,
        prediction=spec.prediction,
        skip=skip,
        clip_x0=1.0 if how["clip_x0"] else None,
    )
    return jnp.clip(images.mean(axis=-1, keepdims=True), -1.0, 1.0)


def takes_guidance_weight(spec: GeneratorSpec) -> bool:
    """Whether the generator is a guidance-distilled student: a network that computes the guided
    prediction itself, from the weight w, in one pass."""
    return bool(spec.student and spec.student.get("guidance_input"))


def network_fn(model: nnx.Module, guidance_input: bool, guidance_weight: float = 0.0) -> Callable:
    """`fn(x, t, class_ids, device_ids, box_mask)`: the network's prediction, as every caller of
    a generator's network (sampling, membership losses) must make it. A guidance-input student
    is given `guidance_weight`; at 0 it predicts the conditional model, as any other network."""

    def fn(x, t, class_ids, device_ids, box_mask):
        if guidance_input:
            w = jnp.full(x.shape[:1], guidance_weight, jnp.float32)
            return model(x, t, class_ids, device_ids, box_mask, guidance_weight=w)
        return model(x, t, class_ids, device_ids, box_mask)

    return fn


def make_sample_fn(spec: GeneratorSpec, **sampler_kw: Any):
    """A compiled `fn(model, rng, class_ids, device_ids, box_mask) -> images` for one setting."""

    @nnx.jit
    def sample_fn(model, rng, class_ids, device_ids, box_mask):
        return sample_images(model, spec, rng, class_ids, device_ids, box_mask, **sampler_kw)

    return sample_fn


def make_traced_steps_sample_fn(model: nnx.Module, spec: GeneratorSpec, **sampler_kw: Any):
    """(fn, state): a jitted `fn(state, rng, class_ids, device_ids, box_mask, steps) -> images`
    for `model`'s weights `state`, with the step count traced, so one compilation serves every
    step count (benchmarks sweep it). `fn.lower(...)` separates compilation from sampling."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def sample_fn(state, rng, class_ids, device_ids, box_mask, steps):
        model = nnx.merge(graphdef, state)
        return sample_images(
            model, spec, rng, class_ids, device_ids, box_mask, steps=steps, **sampler_kw
        )

    return sample_fn, state


def ids_for(
    names: list[str] | tuple[str, ...], vocabulary: tuple[str, ...], what: str
) -> np.ndarray:
    """1-based ids of `names` in a generator's vocabulary, with an error naming unknown ones."""
    return Vocabulary(vocabulary).ids(names, what, owner="this generator")
