"""Mesh and partition rules; one sharded train step on 8 simulated devices equals 1 device."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from busgen_jax.parallel import mesh as mesh_lib
from busgen_jax.parallel import partition

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "config, devices, expected",
    [
        ({"data": -1}, 8, (8, 1)),
        ({"data": -1, "fsdp": 4}, 8, (2, 4)),
        ({"data": 2, "fsdp": -1}, 8, (2, 4)),
        ({"data": 1, "fsdp": 1}, 1, (1, 1)),
    ],
)
def test_mesh_shape_fills_minus_one(config, devices, expected):
    assert mesh_lib.mesh_shape(config, devices) == expected


@pytest.mark.parametrize(
    "config, devices, message",
    [
        ({"data": 3}, 8, "does not tile"),
        ({"data": -1, "fsdp": 3}, 8, "does not tile"),
        ({"data": -1, "fsdp": -1}, 8, "at most one -1"),
        ({"model": 2}, 8, "unknown axes"),
    ],
)
def test_mesh_shape_rejects_bad_config(config, devices, message):
    with pytest.raises(ValueError, match=f"config.mesh.*{message}"):
        mesh_lib.mesh_shape(config, devices)


class _FakeMesh:
    def __init__(self, fsdp: int):
        self.shape = {mesh_lib.DATA: 1, mesh_lib.FSDP: fsdp}


@pytest.mark.parametrize(
    "shape, fsdp, min_size, expected",
    [
        ((3, 3, 64, 128), 4, 0, P(None, None, None, "fsdp")),  # largest divisible dim
        ((3, 3, 128, 64), 4, 0, P(None, None, "fsdp", None)),
        ((256, 6), 4, 0, P("fsdp", None)),
        ((5, 7), 4, 0, P()),  # nothing divisible: replicated
        ((64, 64), 4, 10_000, P()),  # below min_size: replicated
        ((64, 64), 1, 0, P()),  # no fsdp axis
    ],
)
def test_fsdp_spec(shape, fsdp, min_size, expected):
    assert partition.fsdp_spec(shape, fsdp, min_size) == expected


def test_rules_first_match_wins_and_paths_include_optimizer_state():
    rules = [(r"ema/.*kernel$", "replicated"), (r"kernel$", "fsdp"), (r"bias$", (None,))]
    tree = {
        "params": {"conv": {"kernel": np.zeros((3, 3, 8, 16)), "bias": np.zeros(16)}},
        "ema": {"conv": {"kernel": np.zeros((3, 3, 8, 16))}},
        "opt_state": [{"mu": {"conv": {"kernel": np.zeros((3, 3, 8, 16))}}}],
    }
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    mesh = jax.make_mesh((1, 1), mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)
    specs = {
        partition.path_to_str(path): partition.leaf_spec(
            partition.path_to_str(path), leaf.shape, rules, _FakeMesh(4), 0
        )
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)
    }
    assert specs == {
        "params/conv/kernel": P(None, None, None, "fsdp"),
        "params/conv/bias": P(None),
        "ema/conv/kernel": P(),
        "opt_state/0/mu/conv/kernel": P(None, None, None, "fsdp"),
    }
    shardings = partition.state_shardings(abstract, rules, mesh, min_size=0)
    assert jax.tree.structure(shardings) == jax.tree.structure(abstract)


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match=r"rules\[1\].*bad regex"):
        partition.validate_rules([(r"kernel$", "fsdp"), (r"(", None)])


_EIGHT_DEVICE_SCRIPT = """
import json, os
import jax, numpy as np
from configs import pretrain as pretrain_config
from busgen_jax.diffusion import train_step
from busgen_jax.parallel import mesh as mesh_lib, partition
from busgen_jax.training import train_state

config = pretrain_config.get_config("tiny")
config.data.paths = ["unused"]
config.partition.min_size = 256
rng = np.random.default_rng(0)
size = config.data.image_size
batch = {
    "image": rng.uniform(-1, 1, (8, size, size, 1)).astype(np.float32),
    "box_mask": (rng.uniform(size=(8, size, size, 1)) < 0.3).astype(np.float32),
    "class_id": rng.integers(1, 5, 8).astype(np.int32),
    "device_id": rng.integers(0, 3, 8).astype(np.int32),
}

def one_step(mesh):
    unet_fn = train_step.unet_fn(config)
    init_fn, _, shardings = train_state.abstract_state_and_shardings(config, mesh, unet_fn)
    state = jax.jit(init_fn, out_shardings=shardings)()
    step = train_step.make_pretrain_step(config, mesh, shardings)
    state, metrics = step(state, mesh_lib.host_batch_to_global(batch, mesh), jax.random.key(0))
    params = {partition.path_to_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)}
    return params, {k: float(v) for k, v in metrics.items()}

single, m1 = one_step(mesh_lib.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
sharded, m8 = one_step(mesh_lib.make_mesh({"data": 2, "fsdp": 4}))
name = max((k for k in sharded if k.startswith("params/") and k.endswith("kernel")),
           key=lambda k: sharded[k].size)
x = sharded[name]
print(json.dumps({
    "devices": jax.device_count(),
    "metrics": [m1, m8],
    "max_diff": max(float(np.max(np.abs(np.asarray(single[k]) - np.asarray(sharded[k]))))
                    for k in single),
    "max_scale": max(float(np.max(np.abs(np.asarray(v)))) for v in single.values()),
    "name": name, "shape": list(x.shape), "spec": str(x.sharding.spec),
    "shard_shape": list(x.addressable_shards[0].data.shape),
    "num_sharded": sum(any(a is not None for a in v.sharding.spec) for v in sharded.values()),
}))
"""


@pytest.mark.slow
def test_one_step_on_eight_devices_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    single, sharded = out["metrics"]
    for key in ("loss", "grad_norm", "learning_rate"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5)
    assert out["max_diff"] <= 1e-5 * max(out["max_scale"], 1.0)
    # The largest kernel really is split 4 ways over the fsdp axis.
    assert "fsdp" in out["spec"]
    assert np.prod(out["shard_shape"]) * 4 == np.prod(out["shape"])
    assert out["num_sharded"] > 0
