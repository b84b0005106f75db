"""The demo's HTML report, assembled from what each stage wrote to the demo workdir.

    busgen report --config=configs/demo.py:default --workdir=workdir/demo

Every number comes from a file the run wrote; a stage that did not run leaves its section out.
"""

from __future__ import annotations

import pathlib

from busgen_jax.jobs import layout, shell
from busgen_jax.reporting import demo_report


def run(config, workdir: str) -> pathlib.Path:
    path = demo_report.write(layout.Paths(workdir, config), config)
    print(f"report: {path}")
    return path


main = shell.command(run, "configs/demo.py:default", __doc__)

if __name__ == "__main__":
    shell.run_main(main)
