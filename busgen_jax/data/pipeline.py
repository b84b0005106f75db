"""The grain input pipeline every job reads through.

ArrayRecord shards (see `shards.py`) -> records -> class filter / class-balanced resampling ->
shuffle and repeat -> per-process slice -> decode, crop, flip, resize, normalize to [-1, 1],
render boxes into a mask channel -> batch. Every random choice is seeded by grain from the
pipeline seed and the element index, so the stream is a pure function of (config, seed), and the
iterator's `get_state()` / `set_state()` resume it exactly.

Batches are dicts of numpy arrays, per process:
  image     float32 [b, H, W, 1] in [-1, 1]
  box_mask  float32 [b, H, W, 1] in {0, 1}
  class_id  int32 [b], 1-based position of the pathology in `class_names` (0 is reserved for null)
  device_id int32 [b], 1-based position of the device in `device_names`; 0 for unknown devices
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from busgen_jax.data import box_priors, schema, shards


@dataclasses.dataclass(frozen=True)
class _Take:
    """Maps a position in a filtered view to the record at `indices[position]`."""

    source: Any
    indices: np.ndarray

    def __call__(self, position: int) -> dict[str, Any]:
        return schema.deserialize(self.source[int(self.indices[position])])


def _lesion_preserving_crop(
    boxes: np.ndarray, min_scale: float, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """A random crop window (normalized x0, y0, w, h) that keeps every lesion box whole.

    The published training crops the same way: scale first, then a position that still
    contains the union of the boxes (falling back to the union itself when it is larger).
    """
    scale = rng.uniform(min_scale, 1.0)
    width = height = scale
    if len(boxes):
        x1, y1 = boxes[:, 0].min(), boxes[:, 1].min()
        x2, y2 = boxes[:, 2].max(), boxes[:, 3].max()
        width, height = max(width, x2 - x1), max(height, y2 - y1)
        x0 = rng.uniform(max(0.0, x2 - width), min(x1, 1.0 - width) + 1e-9)
        y0 = rng.uniform(max(0.0, y2 - height), min(y1, 1.0 - height) + 1e-9)
    else:
        x0 = rng.uniform(0.0, 1.0 - width + 1e-9)
        y0 = rng.uniform(0.0, 1.0 - height + 1e-9)
    return float(x0), float(y0), float(width), float(height)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Decodes a record into model inputs; random crop/flip only when `train`."""

    image_size: int
    class_index: dict[str, int]
    device_index: dict[str, int]
    train: bool
    random_flip: bool = True
    random_crop: bool = True
    crop_min_scale: float = 0.8

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = Image.fromarray(schema.decode_png(record["image"]))
        boxes = np.asarray(record.get("boxes") or [], np.float64).reshape(-1, 4)
        if self.train and self.random_crop:
            x0, y0, w, h = _lesion_preserving_crop(boxes, self.crop_min_scale, rng)
            width, height = image.size
            image = image.crop(
                (
                    round(x0 * width),
                    round(y0 * height),
                    round((x0 + w) * width),
                    round((y0 + h) * height),
                )
            )
            boxes = np.clip((boxes - [x0, y0, x0, y0]) / [w, h, w, h], 0.0, 1.0)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, np.float32)
        # Only left-right flips: the skin line is always at the top of a B-mode image.
        if self.train and self.random_flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
            boxes = boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [1, 0, 1, 0]
        return {
            "image": (pixels / 127.5 - 1.0)[..., None],
            "box_mask": box_priors.box_mask(boxes, self.image_size, self.image_size),
            "class_id": np.int32(self.class_index[record["pathology"]]),
            "device_id": np.int32(self.device_index.get(record["device"], 0)),
        }


def _labels(dataset_dirs: Sequence[str], split: str) -> tuple[list[str], list[str], list[str]]:
    paths, pathologies, devices = [], [], []
    for directory in dataset_dirs:
        info = shards.read_manifest(directory)["splits"].get(split)
        if info is None:
            continue
        paths += shards.shard_paths(directory, split)
        pathologies += info["record_pathology"]
        devices += info["record_device"]
    return paths, pathologies, devices


def make_source(
    dataset_dirs: Sequence[str], split: str, class_names: Sequence[str]
) -> tuple[grain.sources.ArrayRecordDataSource, np.ndarray, np.ndarray]:
    """The split's records across datasets, and the indices and class ids of those kept.

    Records whose pathology is not in `class_names` are left out, so a task (e.g. benign vs
    DCIS) reads the classes it names from a dataset that has more.
    """
    paths, pathologies, _ = _labels(dataset_dirs, split)
    if not paths:
        raise shards.DatasetError(f"no '{split}' records in {list(dataset_dirs)}")
    class_index = {name: k + 1 for k, name in enumerate(class_names)}
    class_ids = np.array([class_index.get(p, 0) for p in pathologies], np.int32)
    kept = np.flatnonzero(class_ids)
    if not len(kept):
        raise shards.DatasetError(
            f"no '{split}' records of classes {list(class_names)} in {list(dataset_dirs)}"
        )
    return grain.sources.ArrayRecordDataSource(paths), kept, class_ids[kept]


def make_dataset(
    config: ml_collections.ConfigDict,
    *,
    split: str,
    seed: int,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """The batched per-process input stream described in the module docstring.

    Args:
      config: data config with `paths`, `image_size`, `batch_size` (global), `class_names`,
        `device_names`, `balance_classes`, `random_flip`, `random_crop`, `crop_min_scale`,
        `num_workers`.
      split: which split to read.
      seed: pipeline seed (shuffling, resampling, augmentation).
      train: augment and repeat (None epochs = forever); False reads each record once, in order.
      process_index, process_count: this host's slice; default to JAX's.
      num_epochs: epochs when `train` (None repeats forever).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if config.batch_size % process_count:
        raise ValueError(
            f"data.batch_size={config.batch_size} is not divisible by {process_count} processes"
        )
    source, kept, class_ids = make_source(config.paths, split, config.class_names)

    def view(indices: np.ndarray) -> grain.MapDataset:
        return grain.MapDataset.range(len(indices)).map(_Take(source, indices))

    if not train:
        dataset = view(kept)
    elif config.balance_classes:
        per_class = [
            view(kept[class_ids == k]).shuffle(seed=seed + k).repeat(num_epochs)
            for k in np.unique(class_ids)
        ]
        dataset = grain.MapDataset.mix(per_class)
    else:
        dataset = view(kept).shuffle(seed=seed).repeat(num_epochs)
    dataset = dataset[process_index::process_count]
    preprocess = Preprocess(
        image_size=config.image_size,
        class_index={name: k + 1 for k, name in enumerate(config.class_names)},
        device_index={name: k + 1 for k, name in enumerate(config.device_names)},
        train=train,
        random_flip=config.random_flip,
        random_crop=config.random_crop,
        crop_min_scale=config.crop_min_scale,
    )
    dataset = dataset.random_map(preprocess, seed=seed).to_iter_dataset()
    if config.num_workers > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    return dataset.batch(config.batch_size // process_count, drop_remainder=train)


def default_data_config(
    paths: Sequence[str] = (), image_size: int = 64
) -> ml_collections.ConfigDict:
    """The data section shared by every job's config; jobs override what they need."""
    return ml_collections.ConfigDict(
        {
            "paths": list(paths),
            "image_size": image_size,
            "batch_size": 16,
            "class_names": list(schema.PATHOLOGIES),
            "device_names": [],
            "balance_classes": False,
            "random_flip": True,
            "random_crop": True,
            "crop_min_scale": 0.8,
            "num_workers": 0,
        }
    )


def load_split(
    dataset_dirs: Sequence[str] | str,
    split: str,
    image_size: int,
    class_names: Sequence[str] = schema.PATHOLOGIES,
) -> dict[str, Any]:
    """Loads one split into memory for evaluation and audits (no augmentation, storage order).

    Returns images float32 [N, H, W] in [-1, 1], box masks [N, H, W], `pathology`, `device`,
    `case_id`, `patient_id` lists and `malignancy_score` (NaN where unknown).
    """
    dirs = [dataset_dirs] if isinstance(dataset_dirs, str | os.PathLike) else list(dataset_dirs)
    preprocess = Preprocess(image_size, {n: k + 1 for k, n in enumerate(class_names)}, {}, False)
    source, kept, _ = make_source(dirs, split, class_names)
    out: dict[str, list] = {
        k: []
        for k in (
            "image",
            "box_mask",
            "pathology",
            "device",
            "case_id",
            "patient_id",
            "malignancy_score",
        )
    }
    for index in kept:
        record = schema.deserialize(source[int(index)])
        inputs = preprocess(record, np.random.default_rng(0))
        out["image"].append(inputs["image"][..., 0])
        out["box_mask"].append(inputs["box_mask"][..., 0])
        for key in ("pathology", "device", "case_id", "patient_id"):
            out[key].append(record[key])
        score = record.get("malignancy_score")
        out["malignancy_score"].append(np.nan if score is None else score)
    arrays = {k: np.stack(out[k]) for k in ("image", "box_mask")}
    arrays["malignancy_score"] = np.asarray(out["malignancy_score"], np.float32)
    return {**{k: out[k] for k in ("pathology", "device", "case_id", "patient_id")}, **arrays}
