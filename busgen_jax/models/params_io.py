"""The project's own params format: an orbax checkpoint of a model's variables plus its config.

  DIR/params/             orbax checkpoint of the `nnx.Param` (or `nnx.LoRAParam`) pure dict
  DIR/model_config.json   the model config that rebuilds the module (optional)

Generators, LoRA adapters and classifiers are all saved this way; the PyTorch converter
(`busgen_jax.models.torch_convert`) writes it too.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx


def save_params(state: nnx.State | Mapping, directory: str | pathlib.Path, *, config=None) -> None:
    """Writes params (an nnx.State or its pure dict) and optionally the model config."""
    directory = pathlib.Path(directory).absolute()
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "params", pure)
    if config is not None:
        (directory / "model_config.json").write_text(config.to_json(indent=2))


def load_params(
    model: nnx.Module, directory: str | pathlib.Path, kind: type = nnx.Param
) -> nnx.Module:
    """Restores the `kind` variables saved under `directory/params` into `model` (in place;
    also returned): params by `save_params`, or LoRA adapters with `kind=nnx.LoRAParam`."""
    directory = pathlib.Path(directory).absolute()
    if not (directory / "params").is_dir():
        raise FileNotFoundError(f"{directory}: no 'params' checkpoint directory")
    state = nnx.state(model, kind)
    # Restore onto this process's devices as the model's arrays are laid out, whatever the
    # sharding of the run that saved them (e.g. 8-way FSDP pretraining, 1-device adaptation).
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        nnx.to_pure_dict(state),
    )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory / "params", target)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def load_model_config(directory: str | pathlib.Path) -> ml_collections.ConfigDict:
    """Reads the model config written next to the params by `save_params`."""
    path = pathlib.Path(directory) / "model_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model config saved with these params")
    return ml_collections.ConfigDict(json.loads(path.read_text()))
