"""An exported classifier: loading it, its probabilities and features, and per-case CSV rows.

An exported classifier (written by `busgen train-classifier` to `workdir/export/`) is
  params/, model_config.json   `models.params_io.save_params` format (EMA params)
  config.json                  the training job's config (task, image size, data)
`extract_features(export_dir, images)` gives other jobs its penultimate features.
"""

from __future__ import annotations

import csv
import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from busgen_jax.data.vocabulary import Task
from busgen_jax.models import classifier, params_io

CONFIG_FILE = "config.json"
CSV_COLUMNS = ("case_id", "patient_id", "pathology", "device", "label", "probability")


def load_classifier(
    export_dir: str | pathlib.Path,
) -> tuple[classifier.Classifier, ml_collections.ConfigDict]:
    """The exported classifier (EMA params) and the config it was trained with.

    Raises:
      FileNotFoundError naming the export directory and the missing file.
    """
    export_dir = pathlib.Path(export_dir)
    config_path = export_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not an exported classifier (no {CONFIG_FILE})")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    model_config = params_io.load_model_config(export_dir)
    # Abstract first: every variable of the classifier is a Param, all replaced by the restore.
    model = nnx.eval_shape(lambda: classifier.Classifier(model_config, rngs=nnx.Rngs(0)))
    return params_io.load_params(model, export_dir), config


def _batched(fn: Callable[[jax.Array], jax.Array], images: np.ndarray, batch_size: int):
    """`fn` over fixed-size batches (the last one padded, so it compiles once), concatenated."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = np.concatenate(
            [chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.float32)]
        )
        outputs.append(np.asarray(fn(padded))[: len(chunk)])
    return np.concatenate(outputs)


@functools.lru_cache(maxsize=8)
def _apply(graphdef: nnx.GraphDef, method: str) -> Callable:
    # One compiled function per architecture and method, shared by every model of that shape.
    return jax.jit(lambda state, x: getattr(nnx.merge(graphdef, state), method)(x))


def _jitted(model: nnx.Module, method: str) -> Callable[[jax.Array], jax.Array]:
    graphdef, state = nnx.split(model)
    return functools.partial(_apply(graphdef, method), state)


def probabilities(model: classifier.Classifier, images: np.ndarray, batch_size: int = 64):
    """Probability of the positive class, [N], for images [N, H, W(, 1)] in [-1, 1]."""
    logits = _batched(_jitted(model, "__call__"), images, batch_size)
    return np.asarray(jax.nn.sigmoid(logits[:, 0]))


def extract_features(
    export_dir: str | pathlib.Path, images: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Penultimate (pooled) features [N, D] of an exported classifier for images in [-1, 1]."""
    model, _ = load_classifier(export_dir)
    return _batched(_jitted(model, "features"), images, batch_size)


def predict_split(
    model: classifier.Classifier,
    config: ml_collections.ConfigDict,
    paths: list[str],
    split: str,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Scores a split of the task's classes (config: the classifier's training config).

    Returns CSV_COLUMNS -> per-case lists / arrays, in storage order.
    """
    from busgen_jax.data import pipeline  # the input stack only when reading data

    task = Task.from_config(config.task)
    data = pipeline.load_split(
        paths, split, config.data.image_size, task.class_names, config.task.label_field
    )
    rows = {key: data[key] for key in ("case_id", "patient_id", "pathology", "device")}
    rows["label"] = task.labels(data["class_id"])
    rows["probability"] = probabilities(model, data["image"], batch_size)
    return rows


def write_csv(rows: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    """Writes `predict_split` rows (one line per case, CSV_COLUMNS) to `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for values in zip(*(rows[c] for c in CSV_COLUMNS), strict=True):
            writer.writerow([repr(float(v)) if isinstance(v, np.floating) else v for v in values])
    return path
