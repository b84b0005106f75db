"""Device mesh, its axis names, and how host batches become global arrays.

Every sharded array in the project is laid out on one 2-D mesh: `DATA` replicates parameters and
splits the batch; `FSDP` splits the batch *and* shards large parameters (ZeRO-3 / FSDP style), so
the per-device parameter memory falls with the FSDP axis size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
FSDP = "fsdp"
AXES = (DATA, FSDP)
# Batch dimension is split over both axes: every device sees a distinct slice of examples.
BATCH_AXES = (DATA, FSDP)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves the mesh shape in `AXES` order; at most one axis may be -1 (fill the rest).

    Raises:
      ValueError: naming the `mesh` field when the shape does not tile `num_devices`.
    """
    unknown = set(mesh_config) - set(AXES)
    if unknown:
        raise ValueError(f"config.mesh: unknown axes {sorted(unknown)}; expected {AXES}")
    sizes = [int(mesh_config.get(axis, 1)) for axis in AXES]
    requested = dict(zip(AXES, sizes, strict=True))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh: {requested} needs positive sizes and at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes and num_devices % known == 0:
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh: {requested} does not tile the {num_devices} devices")
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: list[Any] | None = None) -> Mesh:
    """Builds the (data, fsdp) mesh over `devices` (default: all of `jax.devices()`)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: shardings are set by jit in/out_shardings, the model code stays sharding-agnostic.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose leading (batch) axis is split over the data and fsdp axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def num_batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def host_batch_to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into one global, batch-sharded array.

    The global batch is `process_count` times the local one; each host passes only its rows.
    """
    out = {}
    for key, local in batch.items():
        local = np.asarray(local)
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        if global_shape[0] % num_batch_shards(mesh):
            raise ValueError(
                f"batch field '{key}': global batch {global_shape[0]} is not divisible by the "
                f"{num_batch_shards(mesh)} batch shards of mesh {dict(mesh.shape)}"
            )
        sharding = batch_sharding(mesh, local.ndim)
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out
