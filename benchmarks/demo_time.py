"""Wall time of `make demo` (the default demo config), stage by stage.

    python -m benchmarks.demo_time                      # runs the demo in a fresh workdir
    python -m benchmarks.demo_time --workdir=workdir/demo --existing   # reports a finished run

A fresh run uses an empty XLA compilation cache, as a first `make demo` on a new machine does.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

from benchmarks.common import demo_command, report


def run_demo(workdir: pathlib.Path) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    cache = tempfile.mkdtemp(prefix="busgen_jax_cache_")
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    start = time.perf_counter()
    subprocess.run(demo_command(workdir), check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="workdir/demo_benchmark")
    parser.add_argument("--existing", action="store_true", help="report a finished run")
    parser.add_argument("--wall", type=float, default=None, help="measured wall time, seconds")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    wall = args.wall if args.existing else run_demo(workdir)
    timings = json.loads((workdir / "timings.json").read_text())
    rows = [[stage, round(seconds, 1)] for stage, seconds in timings.items()]
    rows.append(["sum of stages", round(sum(timings.values()), 1)])
    if wall is not None:
        rows.append(["wall clock (incl. start-up)", round(wall, 1)])
    report(
        "make demo wall time",
        f"configs/demo.py:default, workdir {workdir}, empty XLA compilation cache",
        ["stage", "seconds"],
        rows,
        notes="target: under 15 minutes on 2 CPU cores",
    )


if __name__ == "__main__":
    main()
