"""Stopping a job in a subprocess at a named point before killing it (`core/test_hooks`)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

from busgen_jax.core import test_hooks


def env(point: str, marker: pathlib.Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the job told to pause at `point` and
    to write its pid to `marker` once there."""
    return {
        **(os.environ if base is None else base),
        test_hooks.PAUSE_AT: point,
        test_hooks.MARKER: str(marker),
    }


def wait_until_paused(
    process: subprocess.Popen, marker: pathlib.Path, timeout_s: float = 900
) -> None:
    """Returns once `process` is blocked at its pause point; fails the test if it ends first or
    is not there within `timeout_s` (generous: compiling on a busy 2-core machine is slow)."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the job ended (rc {process.returncode}) before it reached its pause point"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the job did not reach its pause point within {timeout_s} s")
        time.sleep(0.05)
    assert int(marker.read_text()) == process.pid, "another process paused"
