"""Config files: `configs/<job>.py:<preset>` specs, their presets, and loading one from Python.

Every job's `get_config(preset)` checks its preset with `check_preset`; `load` reads a spec as
`--config` would, for the demo, the notebook and tests.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Sequence

import ml_collections

from busgen_jax.core import errors

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def check_fields(
    config: ml_collections.ConfigDict, checks: Sequence[tuple[str, bool, str]]
) -> None:
    """Raises ConfigError for the first `(dotted field, ok, requirement)` that is not ok:
    `config.<field> = <value> <requirement>`, one line naming the field."""
    for field, ok, requirement in checks:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise errors.ConfigError(f"config.{field} = {value!r} {requirement}")


def one_of(field: str, value: object, choices: Sequence[object]) -> tuple[str, bool, str]:
    """The `check_fields` check that `field` (holding `value`) is one of `choices`."""
    return field, value in choices, f"must be one of {tuple(choices)}"


def resolve_path(spec: str) -> str:
    """Lets `configs/x.py:preset` work from any directory when the repo checkout is installed."""
    path, _, preset = spec.partition(":")
    if not os.path.exists(path) and (REPO_ROOT / path).exists():
        path = str(REPO_ROOT / path)
    return f"{path}:{preset}" if preset else path


def check_preset(preset: str, presets: Sequence[str]) -> str:
    """`preset` if it is one of `presets`; else a ValueError naming them (for `get_config`)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} (choose one of {', '.join(presets)})")
    return preset


def load(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py:preset` (as `--config` would) for use from Python, e.g. the demo."""
    path, _, preset = resolve_path(spec).partition(":")
    if not os.path.isfile(path):
        raise errors.JobError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()
