"""The grain input pipeline every job reads through.

ArrayRecord shards (see `shards.py`) -> records -> class filter / class-balanced resampling ->
shuffle and repeat -> mixing of datasets by weight -> per-process slice -> decode, crop, flip,
resize, normalize to [-1, 1], render boxes into a mask channel -> batch. Every random choice is
seeded by grain from the pipeline seed and the element index, so the stream is a pure function
of (config, seed), and the iterator's `get_state()` / `set_state()` resume it exactly.

Batches are dicts of numpy arrays, per process:
  image     float32 [b, H, W, 1] in [-1, 1]
  box_mask  float32 [b, H, W, 1] in {0, 1}
  class_id  int32 [b], 1-based position of the record's class in `class_names` (0 is reserved
            for null); the class is the pathology, or the `labels[label_field]` value as a
            string when the config names a `label_field`
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
from absl import flags
from PIL import Image

from busgen_jax.data import box_priors, schema, shards
from busgen_jax.data.vocabulary import NULL_ID, Vocabulary


@dataclasses.dataclass(frozen=True)
class _Take:
    """Maps a position in a filtered view to the record at `indices[position]`."""

    source: Any
    indices: np.ndarray

    def __call__(self, position: int) -> dict[str, Any]:
        return schema.deserialize(self.source[int(self.indices[position])])


class ProcessBatchSlice(grain.MapDataset):
    """This process's part of every global batch: a contiguous block of `per_process` elements.

    Global batch k is elements [k * B, (k + 1) * B) of the shared stream, and process p reads
    [k * B + p * b, k * B + (p + 1) * b) with b = B / P. Concatenating the processes' batches in
    process order gives exactly the single-process batch, so a run's numbers do not depend on
    how many hosts feed it.
    """

    def __init__(self, parent: grain.MapDataset, index: int, count: int, per_process: int):
        super().__init__(parent)
        self._index, self._count, self._per_process = index, count, per_process
        global_batch = count * per_process
        full, rest = divmod(len(parent), global_batch)
        self._length = full * per_process + min(max(rest - index * per_process, 0), per_process)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        block, offset = divmod(index, self._per_process)
        global_index = (block * self._count + self._index) * self._per_process + offset
        return self._parent[global_index]

    def __str__(self) -> str:
        return f"ProcessBatchSlice({self._index}/{self._count}, per_process={self._per_process})"


def model_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """A stored 8-bit grayscale image as models read it: float32 [image_size, image_size] in
    [-1, 1], resized bilinearly."""
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32) / 127.5 - 1.0


def lesion_preserving_crop(
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


def record_class(record: dict[str, Any], label_field: str = "") -> str | None:
    """The class a record belongs to: its pathology, or `labels[label_field]` as a string."""
    if not label_field:
        return record["pathology"]
    value = (record.get("labels") or {}).get(label_field)
    return None if value is None else str(value)


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
    label_field: str = ""

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = Image.fromarray(schema.decode_png(record["image"]))
        boxes = np.asarray(record.get("boxes") or [], np.float64).reshape(-1, 4)
        if self.train and self.random_crop:
            x0, y0, w, h = lesion_preserving_crop(boxes, self.crop_min_scale, rng)
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
        pixels = model_pixels(image, self.image_size)
        # Only left-right flips: the skin line is always at the top of a B-mode image.
        if self.train and self.random_flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
            boxes = boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [1, 0, 1, 0]
        return {
            "image": pixels[..., None],
            "box_mask": box_priors.box_mask(boxes, self.image_size, self.image_size),
            "class_id": np.int32(self.class_index[record_class(record, self.label_field)]),
            "device_id": np.int32(self.device_index.get(record["device"], 0)),
        }


def _classes(dataset_dirs: Sequence[str], split: str, label_field: str) -> tuple[list, list]:
    """The split's shard paths and each record's class (see `record_class`), in storage order."""
    paths, classes = [], []
    for directory in dataset_dirs:
        info = shards.read_manifest(directory)["splits"].get(split)
        if info is None:
            continue
        paths += shards.shard_paths(directory, split)
        classes += info["record_pathology"]
    if label_field and paths:
        # The manifest lists pathologies only; other label columns are read from the records.
        source = grain.sources.ArrayRecordDataSource(paths)
        classes = [
            record_class(schema.deserialize(source[i]), label_field) for i in range(len(source))
        ]
    return paths, classes


def make_source(
    dataset_dirs: Sequence[str], split: str, class_names: Sequence[str], label_field: str = ""
) -> tuple[grain.sources.ArrayRecordDataSource, np.ndarray, np.ndarray]:
    """The split's records across datasets, and the indices and class ids of those kept.

    Records whose class is not in `class_names` are left out, so a task (e.g. benign vs DCIS)
    reads the classes it names from a dataset that has more.
    """
    paths, classes = _classes(dataset_dirs, split, label_field)
    if not paths:
        raise shards.DatasetError(f"no '{split}' records in {list(dataset_dirs)}")
    class_index = Vocabulary(class_names).index
    class_ids = np.array([class_index.get(c, NULL_ID) for c in classes], np.int32)
    kept = np.flatnonzero(class_ids)
    if not len(kept):
        field = f"labels['{label_field}']" if label_field else "pathology"
        raise shards.DatasetError(
            f"no '{split}' records of classes {list(class_names)} (by {field}) in "
            f"{list(dataset_dirs)}"
        )
    return grain.sources.ArrayRecordDataSource(paths), kept, class_ids[kept]


def _train_view(
    config: ml_collections.ConfigDict,
    dataset_dirs: Sequence[str],
    split: str,
    seed: int,
    num_epochs: int | None,
) -> grain.MapDataset:
    """Shuffled, repeated records of `dataset_dirs`, resampled per class if `balance_classes`."""
    source, kept, class_ids = make_source(
        dataset_dirs, split, config.class_names, config.label_field
    )
    view = lambda indices: grain.MapDataset.range(len(indices)).map(_Take(source, indices))
    if not config.balance_classes:
        return view(kept).shuffle(seed=seed).repeat(num_epochs)
    present = np.unique(class_ids)
    per_class = [
        view(kept[class_ids == k]).shuffle(seed=seed + k).repeat(num_epochs) for k in present
    ]
    weights = [config.class_weights[k - 1] for k in present] if config.class_weights else None
    return grain.MapDataset.mix(per_class, weights)


def check_weights(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming `mix_weights` / `class_weights` if they do not fit the config."""
    for field, count, of in (
        ("mix_weights", len(config.paths), "paths"),
        ("class_weights", len(config.class_names), "class_names"),
    ):
        weights = list(config[field])
        if weights and (len(weights) != count or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(
                f"config.data.{field} = {weights} needs one non-negative weight per entry of "
                f"data.{of} ({count}), not all zero"
            )


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
      config: data config (see `default_data_config`). With `mix_weights`, training draws from
        each path in proportion to its weight (a path of weight 0 is not read); without, the
        paths are read as one dataset. `class_weights` weigh the classes when `balance_classes`
        (default: equal).
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
    check_weights(config)
    if not train:
        source, kept, _ = make_source(config.paths, split, config.class_names, config.label_field)
        dataset = grain.MapDataset.range(len(kept)).map(_Take(source, kept))
    elif config.mix_weights:
        weighted = [(p, w) for p, w in zip(config.paths, config.mix_weights, strict=True) if w > 0]
        parts = [
            _train_view(config, [p], split, seed + 7919 * i, num_epochs)
            for i, (p, _) in enumerate(weighted)
        ]
        dataset = grain.MapDataset.mix(parts, [w for _, w in weighted])
    else:
        dataset = _train_view(config, config.paths, split, seed, num_epochs)
    preprocess = Preprocess(
        image_size=config.image_size,
        class_index=Vocabulary(config.class_names).index,
        device_index=Vocabulary(config.device_names).index,
        train=train,
        random_flip=config.random_flip,
        random_crop=config.random_crop,
        crop_min_scale=config.crop_min_scale,
        label_field=config.label_field,
    )
    # Augmentation is seeded by the global index, before slicing, so it does not depend on the
    # number of processes either.
    dataset = dataset.random_map(preprocess, seed=seed)
    per_process = config.batch_size // process_count
    dataset = ProcessBatchSlice(dataset, process_index, process_count, per_process)
    dataset = dataset.to_iter_dataset()
    if config.num_workers > 0:
        # grain's worker processes read absl flags; outside an absl app nobody parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    return dataset.batch(per_process, drop_remainder=train)


def default_data_config(
    paths: Sequence[str] = (), image_size: int = 64
) -> ml_collections.ConfigDict:
    """The data section shared by every job's config; jobs override what they need.

    `label_field` "" makes the classes pathologies; a key of the records' `labels` dict makes
    them that column's values (as strings). `mix_weights` (one per path) and `class_weights`
    (one per class name) are empty for equal weights.
    """
    return ml_collections.ConfigDict(
        {
            # Tuples, not lists: ml_collections can override tuples from the command line.
            "paths": tuple(paths),
            "image_size": image_size,
            "batch_size": 16,
            "class_names": tuple(schema.PATHOLOGIES),
            "device_names": (),
            "label_field": "",
            "balance_classes": False,
            "class_weights": (),
            "mix_weights": (),
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
    label_field: str = "",
) -> dict[str, Any]:
    """Loads one split into memory for evaluation and audits (no augmentation, storage order).

    Returns images float32 [N, H, W] in [-1, 1], box masks [N, H, W], `class_id` int32 [N]
    (as in batches), `pathology`, `device`, `case_id`, `patient_id` lists and
    `malignancy_score` (NaN where unknown).
    """
    dirs = [dataset_dirs] if isinstance(dataset_dirs, str | os.PathLike) else list(dataset_dirs)
    preprocess = Preprocess(
        image_size, Vocabulary(class_names).index, {}, False, label_field=label_field
    )
    source, kept, class_ids = make_source(dirs, split, class_names, label_field)
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
    arrays["class_id"] = class_ids
    return {**{k: out[k] for k in ("pathology", "device", "case_id", "patient_id")}, **arrays}
