"""What the page asks of a generator: validated requests, random boxes, sampled images.

Image `index` of a request is sampled alone (batch 1) with the key
`jax.random.fold_in(jax.random.key(seed), index)`, so an image depends on its seed, index and
settings only, not on how many images the request asked for, and the same request gives the same
bytes. Sampling goes through `generator.sample_images` (the one sampling entry) with the step
count traced, so changing the steps does not recompile; each (sampler, guidance) pair compiles
once.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import json
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image, PngImagePlugin

from busgen_jax.data import box_priors
from busgen_jax.diffusion import generator, samplers
from busgen_jax.models import lora
from busgen_jax.reporting import visualize

MAX_SEED = 2**32 - 1
FIELDS = ("class", "device", "box", "sampler", "steps", "guidance", "seed", "num_images")


class BadRequest(ValueError):
    """Input the client can fix; the server answers it with `status` and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
    max_steps: int
    max_guidance: float
    max_images: int


@dataclasses.dataclass(frozen=True)
class Request:
    """One validated generation request."""

    pathology: str
    device: str
    box: tuple[float, float, float, float] | None
    sampler: str
    steps: int
    guidance: float
    seed: int
    num_images: int


def _integer(payload: Mapping, name: str, low: int, high: int) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {json.dumps(value)}")
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {value}")
    return value


def _number(payload: Mapping, name: str, low: float, high: float) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a number, got {json.dumps(value)}")
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _choice(payload: Mapping, name: str, choices: tuple[str, ...]) -> str:
    value = payload[name]
    if value not in choices:
        raise BadRequest(
            f"unknown {name} {json.dumps(value)} (this generator knows {list(choices)})"
        )
    return value


def parse_box(value: Any) -> tuple[float, float, float, float] | None:
    """A normalized [x1, y1, x2, y2] box with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, or None."""
    if value is None:
        return None
    numbers = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or len(value) != 4:
        raise BadRequest(f"'box' must be null or [x1, y1, x2, y2], got {json.dumps(value)}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if min(x1, y1, x2, y2) < 0 or max(x1, y1, x2, y2) > 1:
        raise BadRequest(f"'box' {value} lies outside the image: coordinates must be in [0, 1]")
    if x1 >= x2 or y1 >= y2:
        raise BadRequest(f"'box' {value} is empty: it needs x1 < x2 and y1 < y2")
    return x1, y1, x2, y2


def parse_request(payload: Any, spec: generator.GeneratorSpec, limits: Limits) -> Request:
    """Validates a generation request (a decoded JSON object); raises BadRequest naming the field."""
    if not isinstance(payload, dict):
        raise BadRequest("the request must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    missing = [name for name in FIELDS if name not in payload]
    if unknown or missing:
        raise BadRequest(f"unknown fields {unknown}" if unknown else f"missing fields {missing}")
    return Request(
        pathology=_choice(payload, "class", spec.class_names),
        device=_choice(payload, "device", spec.device_names),
        box=parse_box(payload["box"]),
        sampler=_choice(payload, "sampler", samplers.SAMPLERS),
        steps=_integer(payload, "steps", 1, limits.max_steps),
        guidance=_number(payload, "guidance", 0.0, limits.max_guidance),
        seed=_integer(payload, "seed", 0, MAX_SEED),
        num_images=_integer(payload, "num_images", 1, limits.max_images),
    )


class _Reporting(nnx.Module):
    """The U-Net, calling `report` on the host at every network evaluation (page progress)."""

    def __init__(self, model: nnx.Module, report: Callable[[], None]):
        self.model = model
        self.report = report

    @property
    def head(self):  # `sample_images` reads the channel count from it
        return self.model.head

    def __call__(self, x, t, *condition):
        jax.debug.callback(self.report)
        return self.model(x, t, *condition)


class Studio:
    """A loaded generator (plus adapter) and box prior, sampling one image at a time."""

    def __init__(
        self,
        generator_dir: str,
        adapter_dir: str | None,
        prior: box_priors.BoxPrior,
        *,
        sampling: Mapping[str, Any],
        seed: int,
        num_images: int,
        limits: Limits,
    ):
        """`sampling` overrides the generator's own sampling preset (None keeps a setting); the
        page starts from the result, `seed` and `num_images`."""
        model, self.spec = generator.load_generator(generator_dir, adapter=adapter_dir)
        self.prior, self.limits = prior, limits
        try:
            self.sampling = generator.sampling_settings(self.spec, dict(sampling))
        except ValueError as e:
            raise BadRequest(str(e)) from e
        with_boxes = [c for c in self.spec.class_names if len(prior.points.get(c, ()))]
        self.defaults = {
            "class": (with_boxes or self.spec.class_names)[0],
            "device": self.spec.device_names[0],
            "sampler": self.sampling["sampler"],
            "steps": self.sampling["steps"],
            "guidance": self.sampling["guidance_weight"],
            "seed": seed,
            "num_images": num_images,
        }
        parse_request({**self.defaults, "box": None}, self.spec, limits)  # fail at start, not later
        self._model = _Reporting(model, self._report)
        self._on_eval: Callable[[], None] | None = None
        self._compiled: dict[tuple[str, float], tuple[Callable, Any]] = {}
        self.lock = threading.Lock()  # held while sampling: one generation at a time, whoever calls
        self.provenance = {
            "software": f"busgen_jax {importlib.metadata.version('busgen_jax')}",
            "generator": str(generator_dir),
            "adapter": str(adapter_dir) if adapter_dir else None,
            "generator_sha256": lora.params_fingerprint(model),
            "image_size": self.spec.image_size,
        }

    def info(self) -> dict[str, Any]:
        """What the page needs to build its form."""
        return {
            "classes": list(self.spec.class_names),
            "devices": list(self.spec.device_names),
            "samplers": list(samplers.SAMPLERS),
            "image_size": self.spec.image_size,
            "box_classes": [c for c in self.prior.class_names if len(self.prior.points[c])],
            "defaults": self.defaults,
            "limits": dataclasses.asdict(self.limits),
            "generator": self.provenance["generator"],
            "adapter": self.provenance["adapter"],
        }

    def random_box(self, payload: Any) -> list[float] | None:
        """One box drawn from the prior of `payload['class']`, seeded by `payload['seed']`;
        None for a class whose training images had no lesion (normal)."""
        if not isinstance(payload, dict) or set(payload) != {"class", "seed"}:
            raise BadRequest("a random box request is a JSON object with 'class' and 'seed'")
        pathology = _choice(payload, "class", self.spec.class_names)
        seed = _integer(payload, "seed", 0, MAX_SEED)
        if pathology not in self.prior.class_names:
            raise BadRequest(f"the box prior has no boxes for class '{pathology}'", status=422)
        if not len(self.prior.points[pathology]):
            return None
        rng = np.random.default_rng(seed)
        features = box_priors.sample_box_features(self.prior, pathology, 1, rng)
        return [round(float(v), 4) for v in box_priors.features_to_boxes(features)[0]]

    def image(self, request: Request, index: int, on_eval: Callable[[], None]) -> np.ndarray:
        """Image `index` of `request` as uint8 [H, W]; `on_eval` runs after each network call."""
        fn, state = self._sample_fn(request.sampler, request.guidance)
        size = self.spec.image_size
        boxes = [] if request.box is None else [request.box]
        raster = self.sampling["box_raster"]
        mask = jnp.asarray(box_priors.box_mask(boxes, size, size, raster=raster))[None]
        classes = generator.ids_for([request.pathology], self.spec.class_names, "classes")
        devices = generator.ids_for([request.device], self.spec.device_names, "devices")
        key = jax.random.fold_in(jax.random.key(request.seed), index)
        with self.lock:
            self._on_eval = on_eval
            try:
                images = fn(state, key, classes, devices, mask, request.steps)
                return visualize.to_uint8(np.asarray(images)[0, ..., 0])
            finally:
                self._on_eval = None

    def warm_up(self) -> None:
        """Compiles the default setting, so that the first click does not wait for it."""
        settings = {**self.defaults, "box": None, "steps": 1, "num_images": 1}
        request = parse_request(settings, self.spec, self.limits)
        self.image(request, 0, lambda: None)

    def image_provenance(self, request: Request, index: int) -> dict[str, Any]:
        """Everything needed to reproduce image `index` of `request`."""
        chosen = {"sampler": request.sampler, "steps": request.steps}
        settings = generator.sampling_settings(
            self.spec, {**self.sampling, **chosen, "guidance_weight": request.guidance}
        )
        return {
            **self.provenance,
            "class": request.pathology,
            "device": request.device,
            "box": None if request.box is None else list(request.box),
            "seed": request.seed,
            "index": index,
            "key": "jax.random.fold_in(jax.random.key(seed), index)",
            "guidance": request.guidance,
            **{k: v for k, v in settings.items() if k != "guidance_weight"},
        }

    def _sample_fn(self, sampler: str, guidance: float):
        if (sampler, guidance) not in self._compiled:
            self._compiled[sampler, guidance] = generator.make_traced_steps_sample_fn(
                self._model,
                self.spec,
                sampler=sampler,
                guidance_weight=guidance,
                skip=self.sampling["skip"],
                drop_box_mask=self.sampling["drop_box_mask"],
                time_input=self.sampling["time_input"],
                clip_x0=self.sampling["clip_x0"],
            )
        return self._compiled[sampler, guidance]

    def _report(self) -> None:
        if self._on_eval is not None:
            self._on_eval()


def encode_png(image: np.ndarray, provenance: Mapping[str, Any]) -> bytes:
    """A grayscale PNG carrying `provenance` in text chunks: all of it as JSON under
    'busgen:provenance', and each field under its own keyword for tools that list chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("busgen:provenance", json.dumps(provenance, sort_keys=True))
    for key, value in provenance.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_provenance(data: bytes) -> dict[str, Any]:
    """The provenance `encode_png` wrote into a PNG."""
    with Image.open(io.BytesIO(data)) as image:
        return json.loads(image.text["busgen:provenance"])
