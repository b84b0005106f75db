"""Generates a phantom dataset as ArrayRecord shards, with a sample grid per class and device.

    busgen phantom --config=configs/phantom.py:default --workdir=DIR

Writes DIR/data/<name>/ (shards + manifest.json) and DIR/data/<name>_grid.png.
"""

from __future__ import annotations

import pathlib
import time

import ml_collections
from absl import logging

from busgen_jax.data import phantom, shards
from busgen_jax.jobs import shell
from busgen_jax.reporting import visualize


def generate(config: ml_collections.ConfigDict, out_dir: str | pathlib.Path) -> dict:
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    out_dir = pathlib.Path(workdir) / "data" / config.name
    manifest = generate(config, out_dir)
    grid = visualize.dataset_grid(out_dir, out_dir.parent / f"{config.name}_grid.png")
    print(f"phantom dataset: {out_dir} ({manifest['num_records']} images); grid: {grid}")
    return manifest


main = shell.command(run, "configs/phantom.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
