"""Writes a phantom dataset (a `configs/phantom.py` config) as ArrayRecord shards, with progress.

Used by `busgen phantom` and by the built-in phantom cache (`busgen_jax.data.builtin`).
"""

from __future__ import annotations

import pathlib
import time

import ml_collections
from absl import logging

from busgen_jax.data import phantom, shards


def write_dataset(config: ml_collections.ConfigDict, out_dir: str | pathlib.Path) -> dict:
    """Writes the phantom dataset described by `config` to `out_dir`; returns its manifest."""
    start = time.perf_counter()
    records = phantom.phantom_records(
        config.num_images,
        config.seed,
        config.image_size,
        class_probs=config.class_probs,
        devices=tuple(config.devices) or None,
        split_fractions=tuple(config.split_fractions),
        label_map=config.label_map,
    )
    manifest = shards.write_dataset(
        _with_progress(records, config.num_images),
        out_dir,
        name=config.name,
        records_per_shard=config.records_per_shard,
        extra={"generator": "phantom", "config": config.to_dict()},
    )
    elapsed = time.perf_counter() - start
    logging.info(
        "wrote %d phantom images in %.1f s (%.1f images/s) to %s",
        manifest["num_records"],
        elapsed,
        manifest["num_records"] / elapsed,
        out_dir,
    )
    return manifest


def _with_progress(records, total: int, every: int = 500):
    start = time.perf_counter()
    for index, record in enumerate(records, 1):
        if index % every == 0 or index == total:
            rate = index / (time.perf_counter() - start)
            logging.info(
                "phantom %d/%d images (%.1f images/s, ETA %.0f s)",
                index,
                total,
                rate,
                (total - index) / rate,
            )
        yield record
