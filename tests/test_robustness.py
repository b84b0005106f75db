"""Jobs hold their workdir: one writer at a time, one config per run, one line per user error.

Kills here never race the clock: a job is killed only once it has shown (a line it printed, or
the marker file of a pause point, `busgen_jax.core.test_hooks`) that it reached the point the
test is about.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pause_points
import pytest
from generator_fixtures import phantom_dataset, tiny_generator

from busgen_jax.core import errors
from busgen_jax.diffusion import generator
from busgen_jax.jobs import import_data, layout, pretrain, shell, synthesize, workdir
from busgen_jax.models import lora

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _busgen(*args, file_size_kib: int | None = None, timeout=600) -> subprocess.CompletedProcess:
    """Runs `busgen ARGS`; with `file_size_kib`, as on a full disk: no file may grow past that
    size, and writes beyond it fail with EFBIG (SIGXFSZ ignored, so they fail, not kill)."""
    command = [sys.executable, "-m", "busgen_jax.cli", *map(str, args)]
    if file_size_kib is not None:
        # The limit is set by a shell in the child, not by a preexec_fn in this threaded process.
        command = [
            "bash",
            "-c",
            f"trap '' XFSZ; ulimit -f {file_size_kib}; exec \"$@\"",
            "-",
            *command,
        ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _last_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr.strip().splitlines()[-1]


def test_a_second_job_on_a_busy_workdir_is_refused_naming_the_first(tmp_path):
    # The first job stops once it holds the workdir, and holds it until it is killed.
    run, marker = tmp_path / "run", tmp_path / "paused"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "busgen_jax.cli",
            "phantom",
            "--config=configs/phantom.py:tiny",
            f"--workdir={run}",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
        env=pause_points.env("workdir_locked", marker),
    )
    try:
        pause_points.wait_until_paused(first, marker)
        holder = json.loads((run / workdir.META_DIR / workdir.LOCK_FILE).read_text())
        assert holder["pid"] == first.pid
        second = _busgen("phantom", "--config=configs/phantom.py:tiny", f"--workdir={run}")
    finally:
        first.kill()
        first.wait()
    line = _last_line(second)
    assert f"on host {socket.gethostname()}, pid {first.pid}" in line, line
    assert line.startswith(f"error: --workdir={run}: in use by 'phantom'")


_HOLDER = """
import sys, time
from busgen_jax.jobs import workdir
with workdir.lock(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(3600)
"""


def test_a_crashed_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    # The crashed holder's label is still there, but no process holds the lock any more.
    assert json.loads((tmp_path / workdir.META_DIR / workdir.LOCK_FILE).read_text())["pid"]
    out = _busgen("phantom", "--config=configs/phantom.py:tiny", f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"took over the lock of 'holder' on host {socket.gethostname()}, pid {holder.pid}" in (
        out.stderr
    )
    assert (tmp_path / "data" / "phantom" / "manifest.json").exists()


def test_the_lock_is_exclusive_within_and_across_processes(tmp_path):
    with workdir.lock(tmp_path, "a"):
        with pytest.raises(
            workdir.WorkdirError, match=rf"in use by 'a' on host .*, pid {os.getpid()}"
        ):
            with workdir.lock(tmp_path, "b"):
                pass
        # The refused job left the holder's label as it found it.
        assert (
            json.loads((tmp_path / workdir.META_DIR / workdir.LOCK_FILE).read_text())["job"] == "a"
        )
    with workdir.lock(tmp_path, "b"):  # released when the first block ended
        pass


def test_without_flock_the_label_is_the_lock(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(workdir.fcntl, "flock", no_flock)
    label = tmp_path / workdir.META_DIR / workdir.LOCK_FILE
    with workdir.lock(tmp_path, "a"):
        with pytest.raises(
            workdir.WorkdirError, match=rf"in use by 'a' on host .*, pid {os.getpid()}"
        ):
            with workdir.lock(tmp_path, "b"):
                pass
        assert json.loads(label.read_text())["job"] == "a"  # the refusal kept the claim
    assert label.read_text() == ""  # released
    # A claim of a process of this host that is gone is taken over; one of another host is not.
    gone = subprocess.Popen(["true"])
    gone.wait()
    label.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "job": "x"}))
    with workdir.lock(tmp_path, "b"):
        assert json.loads(label.read_text())["job"] == "b"
    label.write_text(
        json.dumps({"host": "elsewhere", "pid": os.getpid(), "job": "x", "beat": int(time.time())})
    )
    with pytest.raises(workdir.WorkdirError, match=r"in use by 'x' on host elsewhere, .*delete"):
        with workdir.lock(tmp_path, "b"):
            pass


def test_a_lock_renewed_on_another_host_refuses_even_with_the_flock_free(tmp_path, monkeypatch):
    # What a job on one machine sees of a job on another that shares the mount (Cloud Storage
    # FUSE keeps each machine's flock to itself): only the label, renewed every BEAT_S.
    label = tmp_path / workdir.META_DIR / workdir.LOCK_FILE
    label.parent.mkdir()
    elsewhere = {"host": "elsewhere", "pid": 4321, "job": "pretrain", "since": 0}
    label.write_text(json.dumps({**elsewhere, "beat": int(time.time()) - 30}))
    with pytest.raises(
        workdir.WorkdirError,
        match=r"in use by 'pretrain' on host elsewhere, pid 4321 \(its lock was renewed 3\d s ago",
    ):
        with workdir.lock(tmp_path, "b"):
            pass
    assert json.loads(label.read_text())["host"] == "elsewhere"  # left as it was
    # A label not renewed for STALE_S is a crashed holder's: taken over.
    label.write_text(json.dumps({**elsewhere, "beat": int(time.time() - workdir.STALE_S) - 1}))
    with workdir.lock(tmp_path, "b"):
        assert json.loads(label.read_text())["job"] == "b"
    assert label.read_text() == ""
    # The holder renews its label while it holds the lock.
    monkeypatch.setattr(workdir, "BEAT_S", 0.05)
    with workdir.lock(tmp_path, "c"):
        first = json.loads(label.read_text())["beat"]
        deadline = time.monotonic() + 60
        while json.loads(label.read_text())["beat"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(label.read_text())["beat"] > first
    assert label.read_text() == ""


def test_a_restart_with_another_config_is_refused_naming_the_fields(tmp_path):
    args = ("phantom", "--config=configs/phantom.py:tiny", f"--workdir={tmp_path}")
    assert _busgen(*args).returncode == 0
    line = _last_line(_busgen(*args, "--config.seed=1", "--config.name=other"))
    assert 'config.name "phantom" -> "other", config.seed 0 -> 1' in line, line
    assert "start a new --workdir" in line
    assert not (tmp_path / "data" / "other").exists()
    # The flag accepts safe changes only; a seed is not one.
    line = _last_line(_busgen(*args, "--config.seed=1", "--allow_config_change"))
    assert "config.seed 0 -> 1" in line


def _config(**fields) -> ml_collections.ConfigDict:
    base = {"seed": 0, "salt": "secret", "train": {"steps": 10}, "log_every_steps": 5}
    return ml_collections.ConfigDict({**base, **fields})


def test_safe_fields_change_only_with_the_flag_and_secrets_are_not_stored(tmp_path):
    assert workdir.check_config(tmp_path, "j", _config())
    stored = (tmp_path / workdir.META_DIR / "j.config.json").read_text()
    assert "secret" not in stored and "sha256:" in stored
    longer = _config(train={"steps": 20}, log_every_steps=10)
    with pytest.raises(
        workdir.WorkdirError,
        match=r"config.log_every_steps 5 -> 10, "
        r"config.train.steps 10 -> 20 \(pass --allow_config_change",
    ):
        workdir.check_config(tmp_path, "j", longer)
    assert not workdir.check_config(tmp_path, "j", longer, allow_safe_changes=True)
    with pytest.raises(workdir.WorkdirError, match=r"changed: config.salt \(start a new"):
        workdir.check_config(tmp_path, "j", _config(train={"steps": 20}, salt="other"))
    # Another job's record in the same workdir is its own.
    assert workdir.check_config(tmp_path, "k", _config(seed=5))


def _fake_job(tmp_path, behaviour):
    """A job whose run does `behaviour(config, workdir)`, through the real command path."""

    def run(config, workdir):
        behaviour(config, pathlib.Path(workdir))

    run.__module__ = "busgen_jax.fake"
    return shell.command(run, "configs/phantom.py:tiny", "A fake job.")


def _argv(tmp_path, *overrides) -> list[str]:
    return ["fake", "--config=configs/phantom.py:tiny", f"--workdir={tmp_path}", *overrides]


def _run(main, tmp_path, *overrides, capsys) -> str:
    """Runs the command, which must succeed (return, not exit); its stderr."""
    main(_argv(tmp_path, *overrides))
    return capsys.readouterr().err.strip()


def _refused(main, tmp_path, *overrides, capsys) -> str:
    """Runs the command, which must exit with status 2; its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(_argv(tmp_path, *overrides))
    assert exc.value.code == 2
    return capsys.readouterr().err.strip()


def test_a_run_that_failed_before_writing_does_not_pin_its_config(tmp_path, capsys):
    def fail(config, path):
        if config.seed == 0:
            raise errors.JobError("config.seed: the first try had a typo")

    main = _fake_job(tmp_path, fail)
    assert _refused(main, tmp_path, capsys=capsys) == "error: config.seed: the first try had a typo"
    _run(main, tmp_path, "--config.seed=2", capsys=capsys)

    def write_then_fail(config, path):
        (path / "half.bin").write_bytes(b"x")
        raise errors.JobError("stopped")

    other = tmp_path / "other"
    main = _fake_job(other, write_then_fail)
    _refused(main, other, capsys=capsys)
    assert "config.seed 0 -> 2" in _refused(main, other, "--config.seed=2", capsys=capsys)


@pytest.mark.parametrize(
    "error, message",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/w/x.bin"),
            "error: /w/x.bin: No space left on device",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/w/y"),
            "error: /w/y: Permission denied",
        ),
        (OSError(errno.EROFS, "Read-only file system"), "error: Read-only file system"),
    ],
)
def test_disk_and_permission_errors_are_one_line(tmp_path, capsys, error, message):
    def fail(config, path):
        raise error

    err = _refused(_fake_job(tmp_path, fail), tmp_path, capsys=capsys)
    assert err.splitlines()[-1] == message


def test_other_errors_keep_their_traceback(tmp_path, capsys):
    def fail(config, path):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        _run(_fake_job(tmp_path, fail), tmp_path, capsys=capsys)


@pytest.mark.parametrize("module", [pretrain, synthesize, import_data])
def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys, module):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["job", f"--workdir={path}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --workdir={path}: is a file, not a directory"


def test_a_workdir_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = _refused(_fake_job(tmp_path, print), tmp_path / "file" / "w", capsys=capsys)
    assert err == f"error: --workdir={tmp_path}/file/w: cannot write there (Not a directory)"


def test_an_unknown_field_is_named_readably(tmp_path, capsys):
    err = _refused(_fake_job(tmp_path, print), tmp_path, "--config.seeed=1", capsys=capsys)
    assert err == (
        "error: --config.seeed: no such field (config has class_probs, devices, "
        "image_size, label_map, name, num_images, records_per_shard, seed, "
        "split_fractions)"
    )


def test_a_full_disk_while_writing_a_dataset_is_one_line(tmp_path):
    out = _busgen(
        "phantom", "--config=configs/phantom.py:tiny", f"--workdir={tmp_path}", file_size_kib=20
    )
    line = _last_line(out)
    assert line.startswith(f"error: {tmp_path}/data/phantom/") and "File too large" in line, line
    # Neither a shard nor the (empty) output folders stay behind.
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_stops_pretraining_at_once(tmp_path):
    data = phantom_dataset(tmp_path / "data", num=24)
    run = tmp_path / "run"
    out = _busgen(
        "pretrain",
        "--config=configs/pretrain.py:tiny",
        f"--workdir={run}",
        f"--config.data.paths=('{data}',)",
        "--config.train.steps=400",
        "--config.checkpoint.every_steps=2",
        "--config.sample.every_steps=1000",
        file_size_kib=32,
        timeout=1800,  # compiling on a busy 2-core machine takes minutes
    )
    line = _last_line(out)
    assert "saving checkpoint step 2 failed: File too large" in line, out.stderr[-3000:]
    assert line.startswith(f"error: {run}/checkpoints"), line
    # It stopped at once: by the next save (step 4) at the latest, before the first log step (5)
    # wrote its metrics line ("... logging_writer.py:NN] [5] ..., loss=...").
    assert not re.search(r"\] \[\d+\] .*\bloss=", out.stderr), out.stderr[-3000:]
    assert out.stderr.count("Traceback") == 0


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    return tiny_generator(tmp_path_factory.mktemp("gen") / "generator")


def _synthesize(tmp_path, capsys, *overrides) -> str:
    with pytest.raises(SystemExit) as exit_info:
        synthesize.main(
            [
                "busgen synthesize",
                "--config=configs/synthesize.py:tiny",
                f"--workdir={tmp_path}",
                *overrides,
            ]
        )
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    # A failed synthesis leaves no (empty) output folder behind.
    assert not (tmp_path / layout.SYNTHETIC).exists()
    return err[0]


def test_synthesis_names_an_empty_generator_and_empty_audit_data(tmp_path, capsys, generator_dir):
    # The defaults are the shipped foundation model and its corpus; emptied, each is named.
    no_audit_data = "--config.audit.train_paths=()"
    assert _synthesize(tmp_path, capsys, "--config.generator=", no_audit_data) == "error: " + (
        "config.generator is empty (an exported generator, e.g. RUN/export)"
    )
    err = _synthesize(tmp_path, capsys, f"--config.generator={generator_dir}", no_audit_data)
    assert err.startswith("error: config.audit.train_paths is empty"), err


def test_synthesis_refuses_an_unknown_class_before_reading_the_audit_data(
    tmp_path, capsys, generator_dir
):
    # The audit data does not exist: had it been read first, the error would name it.
    err = _synthesize(
        tmp_path,
        capsys,
        f"--config.generator={generator_dir}",
        f"--config.audit.train_paths=('{tmp_path / 'nowhere'}',)",
        "--config.classes={'fibroma': 1.0}",
    )
    assert "['fibroma'] not known to this generator" in err, err


def test_synthesis_refuses_an_adapter_of_another_generator(tmp_path, capsys, generator_dir):
    other, _ = generator.load_generator(tiny_generator(tmp_path / "other", seed=1))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / lora.ADAPTER_FILE).write_text(
        json.dumps(
            {
                "base_fingerprint": lora.params_fingerprint(other),
                "base_generator": "other/export",
            }
        )
    )
    data = phantom_dataset(tmp_path / "data", num=16)
    err = _synthesize(
        tmp_path / "run",
        capsys,
        f"--config.generator={generator_dir}",
        f"--config.adapter={adapter}",
        f"--config.audit.train_paths=('{data}',)",
    )
    assert "adapter was trained on the base generator other/export" in err, err


def test_an_import_error_is_one_line_naming_the_file(tmp_path, capsys):
    csv_path = tmp_path / "src" / "t.csv"
    csv_path.parent.mkdir()
    csv_path.write_bytes("image_path,pathology\nb\u00e9.png,benign\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        import_data.main(
            [
                "busgen import",
                "--config=configs/import_data.py:table",
                f"--workdir={tmp_path / 'run'}",
                f"--config.source={csv_path}",
                "--config.salt=s",
            ]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {csv_path} line 2: not UTF-8 text (byte 0xe9); save the CSV as UTF-8"
    )
    assert not (tmp_path / "run" / "data").exists()


@pytest.mark.slow
def test_a_full_disk_during_synthesis_is_one_line_and_leaves_no_output(tmp_path, generator_dir):
    data = phantom_dataset(tmp_path / "data", num=24)
    run = tmp_path / "run"
    out = _busgen(
        "synthesize",
        "--config=configs/synthesize.py:tiny",
        f"--workdir={run}",
        f"--config.generator={generator_dir}",
        f"--config.audit.train_paths=('{data}',)",
        file_size_kib=6,
    )
    line = _last_line(out)
    assert line.startswith(f"error: {run / layout.SYNTHETIC}/"), line
    assert "File too large" in line, line
    assert not (run / layout.SYNTHETIC).exists()
