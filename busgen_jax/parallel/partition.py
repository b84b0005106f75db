"""Partition rules: an ordered list of `(regex, spec)` pairs mapped over an abstract state.

A leaf's path (e.g. `opt_state/0/mu/down/0/conv/kernel`) is matched against the rules in order;
the first match decides its sharding. A spec is

  "fsdp"            shard the largest dimension divisible by the fsdp axis size over `FSDP`,
                    if the leaf has at least `min_size` elements (else replicate);
  None / "replicated"
                    replicate on every device;
  a tuple           an explicit `PartitionSpec(*tuple)` over the mesh axis names.

Leaves that match no rule are replicated. Because the rules see full paths, the optimizer
moments of a kernel follow the kernel's sharding without extra rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from busgen_jax.parallel.mesh import FSDP

Rule = tuple[str, Any]


def path_to_str(path: Sequence[Any]) -> str:
    """`/`-joined names of a pytree key path; NNX `Variable.value` hops are dropped."""
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        names.append(str(name))
    if names and names[-1] == "value":
        names.pop()
    return "/".join(names)


def validate_rules(rules: Sequence[Rule]) -> None:
    """Raises ValueError naming the bad rule of `config.partition.rules`."""
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(f"config.partition.rules[{i}]: expected (regex, spec), got {rule!r}")
        pattern, spec = rule
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"config.partition.rules[{i}]: bad regex {pattern!r}: {e}") from e
        if not (spec in (None, "fsdp", "replicated") or isinstance(spec, tuple | list)):
            raise ValueError(f"config.partition.rules[{i}]: bad spec {spec!r}")


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> PartitionSpec:
    """Shards the largest `fsdp_size`-divisible dimension (ties: the last one) over `FSDP`."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    candidates = [(dim, i) for i, dim in enumerate(shape) if dim % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*[FSDP if i == axis else None for i in range(len(shape))])


def leaf_spec(
    path: str, shape: Sequence[int], rules: Sequence[Rule], mesh: Mesh, min_size: int
) -> PartitionSpec:
    """The PartitionSpec the first matching rule gives the leaf at `path`."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            if spec is None or spec == "replicated" or len(shape) == 0:
                return PartitionSpec()
            if spec == "fsdp":
                return fsdp_spec(shape, mesh.shape[FSDP], min_size)
            if len(spec) != len(shape):
                raise ValueError(f"partition rule {pattern!r}: spec {spec} for {path}{shape}")
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(
    abstract_state: Any, rules: Sequence[Rule], mesh: Mesh, *, min_size: int = 2**14
) -> Any:
    """Maps an abstract state (from `jax.eval_shape`) to a matching tree of NamedShardings."""
    validate_rules(rules)
    lines, replicated = [], 0

    def assign(path, leaf):
        nonlocal replicated
        name = path_to_str(path)
        spec = leaf_spec(name, leaf.shape, rules, mesh, min_size)
        if spec == PartitionSpec():
            replicated += 1
        else:
            lines.append(f"  {name} {tuple(leaf.shape)} -> {spec}")
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(assign, abstract_state)
    logging.info(
        "Partitioning on mesh %s: %d sharded leaves, %d replicated\n%s",
        dict(mesh.shape),
        len(lines),
        replicated,
        "\n".join(lines),
    )
    return shardings
