"""Test-wide settings, applied before any test module imports JAX."""

import os
import pathlib

# XLA compiles dominate CPU test time, and many tests (and their subprocesses) compile the same
# tiny programs: a persistent compilation cache shared by the whole run pays for them once.
_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
