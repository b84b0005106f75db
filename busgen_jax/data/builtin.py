"""Embedded default data: the built-in phantom, generated once into a cache and reused.

Every job runs with only `--config` and `--workdir`: configs name the built-in phantom as a
dataset path `phantom:PRESET` (a preset of `configs/phantom.py`), and `resolve_config` (called
once, by the job command) replaces each such path with the cached dataset directory. The cache directory is `$BUSGEN_CACHE_DIR`
(default `~/.cache/busgen_jax`); each entry is named by the preset and a hash of its config and
of the simulator's code, so a changed simulator never reuses a stale dataset. Generation stages into a private directory
and renames it into place, so concurrent jobs (or test workers) at worst generate twice, and
never see a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import uuid

import ml_collections

CACHE_ENV = "BUSGEN_CACHE_DIR"
SCHEME = "phantom:"


def phantom_path(preset: str) -> str:
    """The config value that stands for the built-in phantom `preset`."""
    return f"{SCHEME}{preset}"


def resolve_path(value: str) -> str:
    """A dataset path with `phantom:PRESET` replaced by the cached dataset directory."""
    if value.startswith(SCHEME):
        return str(phantom_dataset(value[len(SCHEME) :]))
    return value


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with every `phantom:PRESET` string (in any field, tuples included) replaced by
    that dataset's directory, generated first if it is not cached yet."""

    def resolve(value):
        if isinstance(value, str):
            return resolve_path(value)
        if isinstance(value, tuple | list):
            return type(value)(resolve(v) for v in value)
        return value

    def walk(node: ml_collections.ConfigDict) -> None:
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value)
            else:
                resolved = resolve(value)
                if resolved != value:
                    node[key] = resolved

    config = config.copy_and_resolve_references()
    with config.unlocked():
        walk(config)
    return config


def cache_root() -> pathlib.Path:
    default = pathlib.Path.home() / ".cache" / "busgen_jax"
    return pathlib.Path(os.environ.get(CACHE_ENV) or default)


def phantom_config(preset: str) -> ml_collections.ConfigDict:
    from busgen_jax.core import config_files

    return config_files.load(f"configs/phantom.py:{preset}")


def _simulator_source() -> bytes:
    """The simulator's code: a changed simulator makes new cache entries, not stale reuse."""
    here = pathlib.Path(__file__).parent / "phantom"
    return b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))


def phantom_dataset(preset: str = "demo", **overrides) -> pathlib.Path:
    """The dataset directory of phantom `preset` (with config `overrides`), generated if absent."""
    from busgen_jax.data import shards
    from busgen_jax.data.phantom import writer
    from busgen_jax.reporting import visualize

    config = phantom_config(preset)
    config.update(overrides)
    digest = hashlib.sha256(
        json.dumps(config.to_dict(), sort_keys=True, default=str).encode() + _simulator_source()
    ).hexdigest()[:12]
    entry = cache_root() / "phantom" / f"{preset}-{digest}"
    dataset = entry / "data" / config.name
    if (dataset / shards.MANIFEST).is_file():
        return dataset
    staging = entry.with_name(f".{entry.name}.{uuid.uuid4().hex[:8]}")
    try:
        out_dir = staging / "data" / config.name
        writer.write_dataset(config, out_dir)
        visualize.dataset_grid(out_dir, out_dir.parent / f"{config.name}_grid.png")
        try:
            staging.rename(entry)
        except OSError:
            if not (dataset / shards.MANIFEST).is_file():  # not a concurrent writer's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset
