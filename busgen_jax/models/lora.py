"""Low-rank adaptation (LoRA) of the NNX U-Net, new condition rows, and adapter files.

LoRA (Hu et al. 2022, Eq. 3) keeps a pretrained weight W frozen and learns a low-rank update:
h = W x + (alpha / r) B A x, with A: in -> r, B: r -> out and B = 0 at initialisation, so the
adapted network equals the pretrained one before the first step. Here

  dense layers   (time/condition projections, attention q, k, v, proj) get `nnx.LoRA` (A, B as
                 `nnx.LoRAParam`) next to the frozen `nnx.Linear`;
  convolutions   get a k x k conv down to r channels (same kernel size, strides, padding and
                 dilation as the frozen conv) followed by a 1x1 conv up; transposed convs alike.

Because both paths are linear in x with the same geometry, an adapter folds exactly into the base
kernel: W' = W + (alpha / r) A B, contracted over the rank (`merge_lora`).

A task may name classes or devices the base never saw (e.g. 'dcis'). `extend_vocabulary` maps each
task name onto the base embedding row of the same name and gives unknown names new rows, trained
with the adapters; new rows start from the mean of the base's non-null rows ('mean', an average
known condition) or from the null row ('null', the unconditional model), unless `new_row_from`
names a base row to start from: a finer label starts from its coarse parent (DCIS from
malignant), so the few-shot steps only have to move it from there.

An adapter directory (`save_adapter`) holds only what the adaptation trained:
  params/        orbax checkpoint of the `nnx.LoRAParam` state (adapters and new rows)
  adapter.json   LoRA config, vocabularies and their mapping onto the base, base fingerprint,
                 sizes; `load_adapter` rebuilds the adapted model on the base and merges it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from busgen_jax.data.vocabulary import NULL_ID, Vocabulary
from busgen_jax.models import params_io

ADAPTER_FILE = "adapter.json"
ROW_INITS = ("mean", "null")
# Every conv and dense of the residual blocks and attention, and the condition MLP; the time
# MLP, head and tail stay as pretrained.
# One compiled initializer per shape instead of one per primitive of an eager initialisation.
_init_a = jax.jit(nnx.initializers.he_uniform(), static_argnums=(1, 2))
DEFAULT_TARGET = r"(conv1|conv2|shortcut|temb_proj|cond_proj|attn/(q|k|v|proj)|cond_dense\d)$"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (update scale alpha / r), a regex over module paths, new-row init."""

    rank: int = 4
    alpha: float = 4.0
    target: str = DEFAULT_TARGET
    new_row_init: str = "mean"
    # New task name -> base name whose row it starts from (overrides new_row_init for it).
    new_row_from: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> LoRAConfig:
        """Builds and validates from a dict or ConfigDict; errors name the `lora` field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"config.lora: unknown fields {unknown}; expected {sorted(fields)}")
        values = dict(config)
        values["new_row_from"] = dict(values.get("new_row_from") or {})
        lora = cls(**values)
        if lora.rank < 1:
            raise ValueError(f"config.lora.rank must be >= 1, got {lora.rank}")
        if lora.alpha <= 0:
            raise ValueError(f"config.lora.alpha must be > 0, got {lora.alpha}")
        if lora.new_row_init not in ROW_INITS:
            raise ValueError(f"config.lora.new_row_init must be one of {ROW_INITS}")
        try:
            re.compile(lora.target)
        except re.error as e:
            raise ValueError(f"config.lora.target {lora.target!r} is not a valid regex: {e}") from e
        return lora

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRADense(nnx.Module):
    """base(x) + (alpha / r) x A B around a frozen `nnx.Linear`."""

    def __init__(self, base: nnx.Linear, rank: int, scale: float, *, rngs: nnx.Rngs):
        self.base = base
        self.lora = nnx.LoRA(
            base.in_features, rank, base.out_features, a_initializer=_init_a, rngs=rngs
        )
        self.scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.base(x) + self.scale * self.lora(x)

    def delta(self) -> jax.Array:
        """The kernel update (alpha / r) A B, [in, out]."""
        return self.scale * self.lora.lora_a[...] @ self.lora.lora_b[...]


class LoRAConv(nnx.Module):
    """base(x) + (alpha / r) up(down(x)) around a frozen `nnx.Conv` or `nnx.ConvTranspose`.

    `down` is the base's conv geometry with r output channels (its kernel is A); `up` is a 1x1
    conv, i.e. a per-pixel [r, out] matrix B, zero at init.
    """

    def __init__(self, base: nnx.Conv | nnx.ConvTranspose, rank: int, scale: float, *, rngs):
        self.base = base
        self.down = _rank_conv(base, rank, rngs)
        self.down.kernel = nnx.LoRAParam(self.down.kernel[...])
        self.up = nnx.LoRAParam(jnp.zeros((rank, base.out_features), jnp.float32))
        self.scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.base(x) + self.scale * (self.down(x) @ self.up[...])

    def delta(self) -> jax.Array:
        """The kernel update (alpha / r) A B, contracted over r: [kh, kw, in, out]."""
        return self.scale * jnp.einsum("...ir,ro->...io", self.down.kernel[...], self.up[...])


def _rank_conv(base, rank: int, rngs: nnx.Rngs):
    common = dict(
        strides=base.strides,
        padding=base.padding,
        kernel_dilation=base.kernel_dilation,
        use_bias=False,
        kernel_init=_init_a,
        rngs=rngs,
    )
    if isinstance(base, nnx.ConvTranspose):
        if base.transpose_kernel:
            raise ValueError("LoRA does not support ConvTranspose with transpose_kernel=True")
        # The base's own class, so a sub-pixel transposed conv keeps its fast gradient.
        return type(base)(base.in_features, rank, base.kernel_size, **common)
    if base.feature_group_count != 1:
        raise ValueError("LoRA does not support grouped convolutions")
    return nnx.Conv(
        base.in_features, rank, base.kernel_size, input_dilation=base.input_dilation, **common
    )


class ExtendedEmbed(nnx.Module):
    """An embedding over a task vocabulary: row k is base row `index[k]`, or a new row.

    Base rows stay frozen `nnx.Param`; new rows are `nnx.LoRAParam`, so they train with the
    adapters. `index` is static: positions >= the base's size address the new rows.
    """

    def __init__(
        self,
        base: nnx.Embed,
        rows: Sequence[int | None],
        init: str,
        starts: Sequence[int | None] | None = None,
    ):
        if rows[0] != 0:
            raise ValueError("task row 0 must be the base's null row 0")
        table = base.embedding[...]
        num_new = sum(row is None for row in rows)
        default = table[0] if init == "null" else table[1:].mean(axis=0)
        starts = [None] * len(rows) if starts is None else starts
        new_starts = [
            default if start is None else table[start]
            for row, start in zip(rows, starts, strict=True)
            if row is None
        ]
        self.base = base
        self.new_rows = nnx.LoRAParam(jnp.stack(new_starts)) if num_new else None
        new_index = iter(range(table.shape[0], table.shape[0] + num_new))
        self.index = tuple(next(new_index) if row is None else int(row) for row in rows)

    def table(self) -> jax.Array:
        rows = [self.base.embedding[...]]
        if self.new_rows is not None:
            rows.append(self.new_rows[...])
        return jnp.concatenate(rows)[jnp.asarray(self.index)]

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.table(), ids, axis=0)


def vocabulary_rows(task_names: Sequence[str], base_names: Sequence[str]) -> list[int | None]:
    """Base embedding row per task id (0 = null, then task names), None for a new name."""
    base = Vocabulary(base_names).index
    return [NULL_ID] + [base.get(name) for name in task_names]


def start_rows(
    task_names: Sequence[str], base_names: Sequence[str], new_row_from: Mapping[str, str]
) -> list[int | None]:
    """Per task id (0 = null first), the base row a new name starts from, else None.

    Raises ValueError naming a `new_row_from` entry whose base name the base does not know.
    """
    base = Vocabulary(base_names).index
    unknown = sorted(v for v in new_row_from.values() if v not in base)
    if unknown:
        raise ValueError(
            f"config.lora.new_row_from names {unknown}, not known to the base ({list(base_names)})"
        )
    return [None] + [
        base[new_row_from[name]] if name in new_row_from and name not in base else None
        for name in task_names
    ]


def _set_child(model: nnx.Module, path: tuple[Any, ...], child: nnx.Module) -> None:
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = child
    else:
        setattr(parent, path[-1], child)


def _path_name(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


def apply_lora(
    model: nnx.Module, config: LoRAConfig | Mapping[str, Any], *, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """Wraps every Linear / Conv / ConvTranspose whose path matches `config.target` (in place).

    Returns:
      The model, whose forward pass equals the base's until the adapters train.

    Raises:
      ValueError: the target regex matches no dense or conv layer.
    """
    config = config if isinstance(config, LoRAConfig) else LoRAConfig.from_mapping(config)
    rngs = rngs or nnx.Rngs(0)
    pattern = re.compile(config.target)
    targets = [
        (path, module)
        for path, module in nnx.iter_modules(model)
        if isinstance(module, nnx.Linear | nnx.Conv | nnx.ConvTranspose)
        and pattern.search(_path_name(path))
    ]
    if not targets:
        raise ValueError(f"config.lora.target {config.target!r} matches no dense or conv layer")
    for path, module in targets:
        wrapper = LoRADense if isinstance(module, nnx.Linear) else LoRAConv
        _set_child(model, path, wrapper(module, config.rank, config.scale, rngs=rngs))
    return model


def extend_vocabulary(
    model: nnx.Module,
    class_rows: Sequence[int | None],
    device_rows: Sequence[int | None],
    init: str = "mean",
    class_starts: Sequence[int | None] | None = None,
) -> nnx.Module:
    """Replaces the U-Net's class and device embeddings by task embeddings (in place)."""
    if init not in ROW_INITS:
        raise ValueError(f"new_row_init must be one of {ROW_INITS}, got {init!r}")
    model.class_embed = ExtendedEmbed(model.class_embed, class_rows, init, class_starts)
    model.device_embed = ExtendedEmbed(model.device_embed, device_rows, init)
    return model


def _wrappers(model: nnx.Module) -> list[tuple[tuple[Any, ...], nnx.Module]]:
    return [
        (path, module)
        for path, module in nnx.iter_modules(model)
        if isinstance(module, LoRADense | LoRAConv | ExtendedEmbed)
    ]


def adapted_paths(model: nnx.Module) -> list[str]:
    """Paths of the modules that carry adapters or task embeddings."""
    return [_path_name(path) for path, _ in _wrappers(model)]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its base kernel and every task embedding into a plain table.

    The merged model has the plain U-Net structure (no `nnx.LoRAParam` left) and computes the
    same function as the adapted one. In place; also returned.
    """
    for path, module in _wrappers(model):
        base = module.base
        if isinstance(module, ExtendedEmbed):
            table = module.table()
            base.embedding = nnx.Param(table)
            base.num_embeddings = table.shape[0]
        else:
            # A new Variable, not an in-place add: the old kernel may be shared with a state.
            base.kernel = nnx.Param(base.kernel[...] + module.delta().astype(base.kernel.dtype))
        _set_child(model, path, base)
    return model


def count_params(model: nnx.Module, kind: Any = nnx.LoRAParam) -> int:
    """Number of parameters of `kind` (default: adapters and new rows) in `model`."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(nnx.state(model, kind))))


def params_fingerprint(model: nnx.Module) -> str:
    """SHA-256 of the model's `nnx.Param` values in path order: identifies a base generator."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))):
        digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return digest.hexdigest()


def directory_bytes(directory: str | pathlib.Path) -> int:
    """Total size of the files under `directory`."""
    return sum(p.stat().st_size for p in pathlib.Path(directory).rglob("*") if p.is_file())


def save_adapter(directory: str | pathlib.Path, model: nnx.Module, info: dict[str, Any]) -> dict:
    """Writes `model`'s LoRAParam state and `info` + its size as `adapter.json`; returns it."""
    directory = pathlib.Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "params", nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam)))
    info = {
        **info,
        "adapter_params": count_params(model),
        "adapter_bytes": directory_bytes(directory / "params"),
    }
    (directory / ADAPTER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def read_adapter_info(directory: str | pathlib.Path) -> dict[str, Any]:
    """The `adapter.json` of an adapter directory; errors name the missing file."""
    path = pathlib.Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an adapter directory (no {ADAPTER_FILE})")
    return json.loads(path.read_text())


def adapted_model(base: nnx.Module, info: Mapping[str, Any]) -> nnx.Module:
    """`base` with the adapters and task embeddings `info` describes (fresh values, in place)."""
    lora = LoRAConfig.from_mapping(info["lora"])
    apply_lora(base, lora, rngs=nnx.Rngs(0))
    return extend_vocabulary(
        base,
        info["class_rows"],
        info["device_rows"],
        lora.new_row_init,
        info.get("class_starts"),
    )


def load_adapter(
    base: nnx.Module, spec: Any, directory: str | pathlib.Path
) -> tuple[nnx.Module, Any]:
    """Rebuilds the adapted model on `base`, restores the adapter and merges it.

    Args:
      base: the base generator's U-Net (modified in place).
      spec: the base's `generator.GeneratorSpec`.
      directory: an adapter directory written by `save_adapter`.

    Returns:
      The merged model and `spec` with the task's class and device vocabularies.

    Raises:
      ValueError: the adapter was trained on another base generator.
    """
    directory = pathlib.Path(directory).absolute()
    info = read_adapter_info(directory)
    if info.get("base_fingerprint") != params_fingerprint(base):
        raise ValueError(
            f"{directory}: adapter was trained on the base generator {info.get('base_generator')}"
            ", whose weights differ from the base it is being loaded on"
        )
    model = params_io.load_params(adapted_model(base, info), directory, kind=nnx.LoRAParam)
    spec = dataclasses.replace(
        spec,
        class_names=tuple(info["class_names"]),
        device_names=tuple(info["device_names"]),
        source="adapt",
    )
    return merge_lora(model), spec
