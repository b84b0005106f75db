"""Generates a phantom dataset as ArrayRecord shards, with a sample grid per class and device.

    busgen phantom --config=configs/phantom.py:default --workdir=DIR

Writes DIR/data/<name>/ (shards + manifest.json) and DIR/data/<name>_grid.png.
"""

from __future__ import annotations

import pathlib

import ml_collections

from busgen_jax.data.phantom import writer
from busgen_jax.jobs import shell
from busgen_jax.reporting import visualize


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    out_dir = pathlib.Path(workdir) / "data" / config.name
    manifest = writer.write_dataset(config, out_dir)
    grid = visualize.dataset_grid(out_dir, out_dir.parent / f"{config.name}_grid.png")
    print(f"phantom dataset: {out_dir} ({manifest['num_records']} images); grid: {grid}")
    return manifest


main = shell.command(run, "configs/phantom.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
