"""Phantom throughput: images/s at 128 x 128 on one core, for a few batch sizes.

    python -m benchmarks.phantom_throughput

Numerical libraries are limited to one thread and generation runs in the main process, so the
numbers are per core. CPU time is reported next to wall time because on a shared machine the wall
clock also counts time spent waiting for the core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/scipy load their thread pools

import time  # noqa: E402

from benchmarks.common import report  # noqa: E402
from busgen_jax.data import phantom  # noqa: E402

IMAGE_SIZE = 128
BATCH_SIZES = (8, 32, 128)
REPEATS = 3


def measure(num: int, repeats: int = REPEATS) -> tuple[float, float]:
    """Best-of-`repeats` (wall, CPU) images/s for generating `num` images."""
    wall, cpu = [], []
    for repeat in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        phantom.generate(num, seed=repeat, image_size=IMAGE_SIZE)
        wall.append(num / (time.perf_counter() - start_wall))
        cpu.append(num / (time.process_time() - start_cpu))
    return max(wall), max(cpu)


def main() -> None:
    load = os.getloadavg()[0]
    phantom.generate(phantom.CHUNK, seed=0, image_size=IMAGE_SIZE)  # warm caches
    rows = [[num, *measure(num)] for num in BATCH_SIZES]
    report(
        "Phantom throughput",
        f"busgen_jax.data.phantom.generate, {IMAGE_SIZE}x{IMAGE_SIZE}, default class and device "
        f"mix, 1 thread, best of {REPEATS}",
        ["images per call", "images/s (wall)", "images/s (CPU time)"],
        rows,
        notes=f"load average {load:.1f} on {os.cpu_count()} cores at start",
    )


if __name__ == "__main__":
    main()
