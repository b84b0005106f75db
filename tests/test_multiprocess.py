"""Two JAX processes on localhost train exactly as one process with the same two devices.

Each process reads its own block of every global batch (`pipeline.ProcessBatchSlice`), the mesh
spans both processes' devices, and orbax writes one checkpoint collectively.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from generator_fixtures import phantom_dataset

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(data_dir, workdir) -> list[str]:
    return [
        sys.executable, "-m", "busgen_jax.pretrain", "--config=configs/pretrain.py:tiny",
        f"--workdir={workdir}", f"--config.data.paths=('{data_dir}',)",
        f"--config.train.steps={STEPS}", f"--config.checkpoint.every_steps={STEPS}",
        f"--config.sample.every_steps={STEPS}",
    ]  # fmt: skip


def _export(workdir):
    """The exported params, restored onto this (one-device) process whatever their saved layout."""
    path = workdir / "export" / "params"
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
        )
        return checkpointer.restore(path, target)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    data = phantom_dataset(tmp_path / "data", num=48)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    single = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    subprocess.run(_command(data, tmp_path / "one"), env=single, check=True, timeout=900)

    port = _free_port()
    workers = [
        subprocess.Popen(
            _command(data, tmp_path / "two"),
            env={
                **env,
                "BUSGEN_DISTRIBUTED": "1",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(index),
            },  # fmt: skip
        )
        for index in range(2)
    ]
    codes = [worker.wait(timeout=900) for worker in workers]
    assert codes == [0, 0]

    one, two = _export(tmp_path / "one"), _export(tmp_path / "two")
    assert jax.tree.structure(one) == jax.tree.structure(two)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "two" / "checkpoints" / str(STEPS)).is_dir()
