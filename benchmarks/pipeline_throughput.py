"""Grain input pipeline throughput: images/s at 128 x 128 from ArrayRecord shards.

    python -m benchmarks.pipeline_throughput

Writes a phantom dataset to a temporary directory, then times `pipeline.make_dataset` (decode,
lesion-preserving crop, flip, resize, normalize, box mask, batch) with 0 and 2 worker processes,
and without augmentation.
"""

from __future__ import annotations

import os
import tempfile
import time

from benchmarks.common import report
from busgen_jax.data import phantom, pipeline, shards

IMAGE_SIZE = 128
NUM_IMAGES = 512
BATCH = 32
BATCHES = 24


def measure(dataset_dir: str, *, workers: int, train: bool) -> float:
    config = pipeline.default_data_config([dataset_dir], IMAGE_SIZE)
    config.update(batch_size=BATCH, num_workers=workers, balance_classes=True)
    stream = iter(
        pipeline.make_dataset(config, split="train", seed=0, train=train, num_epochs=None)
    )
    next(stream)  # start-up (worker processes, first reads) is not throughput
    start = time.perf_counter()
    count = 0
    for _ in range(BATCHES):
        try:
            count += len(next(stream)["image"])
        except StopIteration:
            break
    return count / (time.perf_counter() - start)


def main() -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        records = phantom.phantom_records(
            NUM_IMAGES, 0, IMAGE_SIZE, split_fractions=(1.0, 0.0, 0.0)
        )
        shards.write_dataset(records, directory, name="bench")
        rows = [
            ["train (augment)", 0, measure(directory, workers=0, train=True)],
            ["train (augment)", 2, measure(directory, workers=2, train=True)],
            ["eval (no augment)", 0, measure(directory, workers=0, train=False)],
        ]
    report(
        "Grain pipeline throughput",
        f"busgen_jax.data.pipeline.make_dataset, phantom shards, {IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"batch {BATCH}, {BATCHES} batches after the first",
        ["mode", "worker processes", "images/s"],
        rows,
        notes=f"load average {load:.1f} on {os.cpu_count()} cores at start",
    )


if __name__ == "__main__":
    main()
