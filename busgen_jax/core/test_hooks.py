"""Test-only pause points: how the tests stop a job at an exact point before they kill it.

Not for users; nothing here changes what a job does unless the tests' environment variable is set.
A test that kills a job to check what survives (tests/test_pretrain.py, tests/test_synthesize.py,
tests/test_robustness.py) starts it with

    BUSGEN_TEST_PAUSE_AT=<point>  BUSGEN_TEST_PAUSE_MARKER=<file>

and the job, on reaching `pause_point("<point>")` for the first time, writes its pid to <file>
and blocks until it is killed. The test waits for <file>, with a deadline that fails the test,
and then kills the job: the kill lands at that point every time, on a fast machine or a busy one,
instead of wherever a sleep or a poll happened to catch it.

The points, each called where its name says:
  workdir_locked         busgen_jax.jobs.workdir.lock: the job holds its workdir's lock and
                         has written its label there.
  checkpoint_confirmed   busgen_jax.training.checkpoints.check_saves: a checkpoint step is
                         complete on disk (its background save finished and was checked).
  synthesis_shard_done   busgen_jax.jobs.synthesize.run: a shard and the sidecar that marks it
                         done are written.
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_AT = "BUSGEN_TEST_PAUSE_AT"
MARKER = "BUSGEN_TEST_PAUSE_MARKER"


def pause_point(name: str) -> None:
    """Blocks this process for good if the tests asked it to pause at `name`; else returns."""
    if os.environ.get(PAUSE_AT) != name:
        return
    print(f"test hook: paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    marker = os.environ.get(MARKER)
    if marker:
        # Written whole, then renamed: the test never reads a half-written pid.
        tmp = f"{marker}.tmp-{os.getpid()}"
        with open(tmp, "w") as file:
            file.write(str(os.getpid()))
        os.replace(tmp, marker)
    while True:  # until the test kills this process
        time.sleep(3600)
