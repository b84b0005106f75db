"""Import of the published BUSGen PyTorch U-Net weights.

Converts a released checkpoint (`ckpt_*.pt`), or a periodic one of the official Train.py with its
optimizer and LR-scheduler state, to this project's params (`models.params_io`) and a spec
naming the 'published' sampling preset; the command is `busgen_jax.jobs.convert_weights`:

  python -m busgen_jax.jobs.convert_weights --checkpoint ckpt.pt --preset busgen_toy --out DIR

Conversion is pure numpy; only reading a `.pt` file needs torch (the optional `torch` extra).
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from busgen_jax.models.presets import sampling_preset
from busgen_jax.models.unet import UNet

PUBLISHED_PRESETS = ("busgen_toy", "busgen")
# Flax module / parameter names -> the published state_dict names.
_RENAMES = {
    "time_table": "time_embedding.timembedding.0.weight",
    "time_dense1": "time_embedding.timembedding.1",
    "time_dense2": "time_embedding.timembedding.3",
    "class_embed": "cond_embedding.cls_condEmbedding",
    "device_embed": "cond_embedding.dev_condEmbedding",
    "cond_dense1": "cond_embedding.condEmbedding.0",
    "cond_dense2": "cond_embedding.condEmbedding.2",
    "down": "downblocks",
    "middle": "middleblocks",
    "up": "upblocks",
    "norm1": "block1.0",
    "conv1": "block1.2",
    "temb_proj": "temb_proj.1",
    "cond_proj": "cond_proj.1",
    "norm2": "block2.0",
    "conv2": "block2.3",
    "norm": "group_norm",
    "q": "proj_q",
    "k": "proj_k",
    "v": "proj_v",
    "conv3": "c1",
    "conv5": "c2",
    "deconv": "t",
    "conv": "c",
    "tail_norm": "tail.0",
    "tail_conv": "tail.2",
    "kernel": "weight",
    "scale": "weight",
    "embedding": "weight",
}


def torch_name(path: tuple[Any, ...]) -> str:
    """The published state_dict name of the Flax parameter at `path` (pure-dict keys)."""
    return ".".join(_RENAMES.get(str(part), str(part)) for part in path)


def _to_flax_layout(path: tuple[Any, ...], tensor: np.ndarray) -> np.ndarray:
    """Rearranges a PyTorch tensor into the Flax layout of the parameter at `path`."""
    if path[-1] != "kernel":
        return tensor
    if path[-2] == "deconv":
        # ConvTranspose2d [in, out, kh, kw] is a dilated-input conv with the kernel flipped.
        return np.flip(tensor.transpose(2, 3, 0, 1), axis=(0, 1))
    if tensor.ndim == 4 and path[-2] in ("q", "k", "v", "proj"):
        tensor = tensor[:, :, 0, 0]  # 1x1 conv [out, in, 1, 1] is a dense layer
    return tensor.T if tensor.ndim == 2 else tensor.transpose(2, 3, 1, 0)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Removes the DistributedDataParallel `module.` prefix when every key has it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


@functools.lru_cache(maxsize=4)
def _abstract_params(config_json: str) -> nnx.State:
    """Parameter shapes of a UNet, cached: tracing the model costs seconds."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    return nnx.state(nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0))), nnx.Param)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config) -> nnx.State:
    """Converts a published U-Net state_dict to this project's UNet params for `config`.

    Args:
      state_dict: tensor name -> numpy array (a `module.` prefix is removed).
      config: model config of the published layout (e.g. `model_config('busgen_toy')`).

    Returns:
      The nnx.Param state; apply with `nnx.update(model, state)`, where `model` may be
      abstract (`nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))`): no init needed.

    Raises:
      ValueError naming the tensor that is missing, unmatched or of the wrong shape.
    """
    if config.num_heads != 1 or config.attention_in_up_path or not config.middle_attention:
        raise ValueError("published weights need num_heads=1, no up-path and a middle attention")
    tensors = strip_prefix(state_dict)
    # A fresh copy: the cached abstract state is shared between calls.
    state = jax.tree.map(lambda leaf: leaf, _abstract_params(config.to_json()))
    used = set()

    def convert(key_path, leaf):
        path = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)
        name = torch_name(path)
        if name not in tensors:
            raise ValueError(f"state_dict has no tensor '{name}' (for parameter {path})")
        value = _to_flax_layout(path, np.asarray(tensors[name], dtype=np.float32))
        if value.shape != leaf.shape:
            raise ValueError(
                f"tensor '{name}' has shape {np.shape(tensors[name])}, which does not give the "
                f"expected {leaf.shape} of parameter {path} (weights of another preset?)"
            )
        used.add(name)
        return jax.numpy.asarray(value)

    params = jax.tree_util.tree_map_with_path(convert, nnx.to_pure_dict(state))
    unmatched = sorted(set(tensors) - used)
    if unmatched:
        raise ValueError(f"state_dict tensor '{unmatched[0]}' matches no parameter ({unmatched})")
    nnx.replace_by_pure_dict(state, params)
    return state


class _Inert:
    """Stands in for every object of a checkpoint besides tensors and plain containers (the
    optimizer, LR schedulers, ...): made without running any code of the file, then dropped."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _plain_dict(*args, **kwargs) -> dict:
    """An empty dict for a defaultdict of optimizer state (its items are filled in after)."""
    return {}


# Globals read as plain dicts rather than inert objects: the safe loader fills only real dicts.
_DICT_GLOBALS = {"collections.defaultdict": _plain_dict, "builtins.dict": dict}
UNET_MARKER = "head.weight"  # a tensor every published U-Net state_dict has


def _read_checkpoint(path: pathlib.Path):
    """torch.load with weights_only=True, every non-tensor class of the file replaced by an
    inert stand-in (`_Inert`), so periodic training checkpoints (model, optimizer and scheduler
    state) load without unpickling arbitrary objects. Errors name the file."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "reading .pt checkpoints needs torch: pip install 'busgen_jax[torch]'"
        ) from error
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
    try:
        unsafe = []
        if zipfile.is_zipfile(path) and hasattr(torch.serialization, "safe_globals"):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        stand_ins = [(_DICT_GLOBALS.get(name, _Inert), name) for name in unsafe]
        with torch.serialization.safe_globals(stand_ins) if unsafe else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {detail}"
        ) from error


def _tensor_dicts(obj, where: str = "") -> list[tuple[str, Mapping]]:
    """(key path, mapping) of every mapping of tensors nested in `obj`, `obj` included."""
    import torch

    if not isinstance(obj, Mapping) or not obj:
        return []
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return [(where, obj)]
    return [
        found
        for key, value in obj.items()
        for found in _tensor_dicts(value, f"{where}/{key}" if where else str(key))
    ]


def load_torch_checkpoint(
    path: str | pathlib.Path, key: str | None = None
) -> dict[str, np.ndarray]:
    """Reads the U-Net state_dict of a PyTorch checkpoint into name -> float32 numpy arrays.

    The file may be the state_dict itself, a released checkpoint or a periodic training one
    (with optimizer and LR-scheduler state, read safely by `_read_checkpoint`); the U-Net's
    tensors are found under whatever key holds them. When several entries hold a U-Net (e.g.
    'net_model' and 'ema_model'), `key` (a top-level key) chooses one.
    """
    path = pathlib.Path(path)
    obj = _read_checkpoint(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else []
            raise ValueError(f"{path}: checkpoint has no entry '{key}' (entries: {keys})")
        obj = obj[key]
    found = _tensor_dicts(obj)
    unets = [(where, d) for where, d in found if UNET_MARKER in strip_prefix(d)]
    if len(unets) != 1:
        if not unets:
            raise ValueError(
                f"{path}: no U-Net state_dict in the checkpoint (no tensor '{UNET_MARKER}' in "
                f"any of its mappings of tensors: {[where or '(top level)' for where, _ in found]})"
            )
        names = [where or "(top level)" for where, _ in unets]
        raise ValueError(f"{path}: several U-Net state_dicts ({names}); choose one with key=")
    return {name: t.detach().float().numpy() for name, t in unets[0][1].items()}


def write_published_spec(config: ml_collections.ConfigDict, directory: str | pathlib.Path) -> None:
    """The sampling spec of the published model (its linear schedule, epsilon prediction,
    vocabularies and the 'published' sampling preset), so converted weights are a complete
    generator for `busgen synthesize`."""
    from busgen_jax.diffusion import generator  # the converter alone needs the diffusion stack

    spec = generator.GeneratorSpec(
        schedule={
            "schedule": "linear",
            "num_timesteps": config.num_timesteps,
            "beta_start": 1e-4,
            "beta_end": 0.028,
        },
        prediction="eps",
        class_names=tuple(config.class_names),
        # Layouts other than the published presets carry no device vocabulary: number them.
        device_names=tuple(
            config.get("device_names") or (f"device-{i}" for i in range(1, config.num_devices + 1))
        ),
        image_size=config.image_size,
        source="published BUSGen weights",
        sampling=sampling_preset("published"),
        image_channels=config.image_channels,
    )
    (pathlib.Path(directory) / generator.SPEC_FILE).write_text(spec.to_json())
