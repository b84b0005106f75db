"""Two JAX processes on localhost train exactly as one process with the same two devices.

Each process reads its own block of every global batch (`pipeline.ProcessBatchSlice`), the mesh
spans both processes' devices, and orbax writes one checkpoint collectively. Process 0 alone
holds the workdir's lock, and when another job holds it, both processes stop with its one line.

No assertion races the clock: the processes' logs say who locked the workdir, and every wait is
bounded (generous, for compiling on a busy 2-core machine), killing the processes when it ends.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from generator_fixtures import phantom_dataset, pretrain_command

from busgen_jax.jobs import workdir as workdir_lib

STEPS = 3
ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 900  # per run of one or two processes; a run takes 1-2 minutes on an idle machine
GRACE_S = 180  # for a process to stop by itself after its partner failed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(data_dir, workdir, *, steps=STEPS, every=STEPS, extra=()) -> list[str]:
    sample = f"--config.sample.every_steps={steps}"
    return pretrain_command(data_dir, workdir, steps=steps, every=every, extra=(sample, *extra))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _two_processes(
    command: list[str], logs: pathlib.Path, first: list[str] | None = None
) -> tuple[list[int], list[str]]:
    """Runs `command` (`first`, if given, as process 0) as processes 0 and 1 of one job: their
    exit codes and stderr.

    Both are killed if either is still running after TIMEOUT_S, or GRACE_S after the other
    failed, so a hung process fails this test (killed: a negative code) instead of the run.
    """
    port = _free_port()
    logs.mkdir(parents=True, exist_ok=True)
    workers, files = [], []
    try:
        for index in range(2):
            files.append(open(logs / f"process_{index}.stderr", "w+"))  # noqa: SIM115
            env = {
                **_env(),
                "BUSGEN_DISTRIBUTED": "1",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(index),
            }
            workers.append(
                subprocess.Popen(
                    (first or command) if index == 0 else command,
                    cwd=ROOT,
                    env=env,
                    stdout=files[-1],
                    stderr=files[-1],
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            if any(w.poll() for w in workers):  # one failed: the rest get a grace period
                deadline = min(deadline, time.monotonic() + GRACE_S)
            time.sleep(0.5)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
        errs = []
        for file in files:
            file.seek(0)
            errs.append(file.read())
            file.close()
    return [worker.returncode for worker in workers], errs


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
    single = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    subprocess.run(
        _command(data, tmp_path / "one"), cwd=ROOT, env=single, check=True, timeout=TIMEOUT_S
    )

    codes, errs = _two_processes(_command(data, tmp_path / "two"), tmp_path / "logs")
    assert codes == [0, 0], "\n".join(err[-3000:] for err in errs)
    # Process 0 held the workdir's lock; process 1 never took it.
    assert f"locked by 'pretrain' on host {socket.gethostname()}, pid " in errs[0], errs[0][-3000:]
    assert "locked by" not in errs[1], errs[1][-3000:]

    one, two = _export(tmp_path / "one"), _export(tmp_path / "two")
    assert jax.tree.structure(one) == jax.tree.structure(two)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "two" / "checkpoints" / str(STEPS)).is_dir()


# `python -m busgen_jax.jobs.pretrain` whose file moves (only quarantine moves files) take seconds.
_SLOW_MOVES = """
import runpy, shutil, sys, time
move = shutil.move
def slow_move(*args, **kwargs):
    time.sleep(5)
    return move(*args, **kwargs)
shutil.move = slow_move
sys.argv[0] = "busgen_jax.jobs.pretrain"
runpy.run_module("busgen_jax.jobs.pretrain", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_step_that_one_process_finds_bad_is_skipped_by_both(tmp_path):
    """Restoring a multi-host run verifies each process's shards against its checksums; a step
    that only process 1 finds bad is skipped by both, for the last good one, and quarantined."""
    data = phantom_dataset(tmp_path / "data", num=48)
    run = tmp_path / "run"
    # FSDP over the two processes: each holds (and checksums) its own half of every kernel.
    fsdp = ("--config.mesh.data=1", "--config.mesh.fsdp=2")
    codes, errs = _two_processes(
        _command(data, run, steps=4, every=2, extra=fsdp), tmp_path / "logs_first"
    )
    assert codes == [0, 0], "\n".join(err[-3000:] for err in errs)

    # Garble a checksum of a shard that only process 1 holds.
    sums = run / "checkpoints_checksums" / "4"
    theirs = json.loads((sums / "process_0.json").read_text())
    mine = json.loads((sums / "process_1.json").read_text())
    name, key = next(
        (name, key) for name, pieces in mine.items() for key in pieces if key not in theirs[name]
    )
    mine[name][key] = "0" * 64
    (sums / "process_1.json").write_text(json.dumps(mine))

    # Process 0 moves the bad step aside slowly: process 1 must not reload the steps before.
    second = _command(data, run, steps=6, every=2, extra=(*fsdp, "--allow_config_change"))
    slow = [sys.executable, "-c", _SLOW_MOVES, *second[3:]]
    codes, errs = _two_processes(second, tmp_path / "logs_second", first=slow)
    assert codes == [0, 0], "\n".join(err[-3000:] for err in errs)
    assert f"{name} does not match its checksum" in errs[1], errs[1][-3000:]
    assert "another process found its part of this step bad" in errs[0], errs[0][-3000:]
    for err in errs:
        assert "Restored checkpoint step 2 " in err, err[-3000:]
    assert (run / "checkpoints_unreadable" / "4").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == "6"


_HOLDER = """
import sys, time
from busgen_jax.jobs import workdir
with workdir.lock(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(3600)
"""


def test_a_multi_host_job_on_a_busy_workdir_stops_on_every_process_in_one_line(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # The refusal comes before any data is read: the dataset need not exist.
        codes, errs = _two_processes(_command(tmp_path / "data", run), tmp_path / "logs")
    finally:
        holder.kill()
        holder.wait()
    assert codes == [2, 2], "\n".join(err[-3000:] for err in errs)
    refusal = (
        f"error: --workdir={run}: in use by 'holder' on host {socket.gethostname()}, "
        f"pid {holder.pid}; wait for it to finish or choose another --workdir"
    )
    lines = [err.strip().splitlines()[-1] for err in errs]
    assert lines[0] == refusal, errs[0][-3000:]
    assert lines[1] == f"{refusal} (met by process 0 of this job)", errs[1][-3000:]
    assert not any("Traceback" in err for err in errs), errs
    # Neither process wrote the workdir: the holder's label is intact, no config was recorded.
    lock = run / workdir_lib.META_DIR / workdir_lib.LOCK_FILE
    assert f'"pid": {holder.pid}' in lock.read_text()
    assert not list((run / workdir_lib.META_DIR).glob("*.config.json"))
