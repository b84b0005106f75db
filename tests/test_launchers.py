"""The TPU launchers' dry runs: exact gcloud commands, shell quoting, slice shapes, clear errors.

Nothing here needs gcloud, xmanager or a network: dry runs only print, and the worker script is
executed by a local bash against a stand-in `python3` that records its argv.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap

import pytest

from launch import tpu_vm

REPO = pathlib.Path(__file__).resolve().parent.parent
XM_LAUNCH = REPO / "launch" / "xm_launch.py"
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
# Overrides that a naive `" ".join` would break: spaces, both quote kinds, $ and shell operators.
TRICKY = ['--config.name=it\'s a "run"', "--config.data.paths=['gs://b/d a', '$HOME;|&']"]


# Slice shapes from the Cloud TPU docs (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e, v2, v3):
# the number counts TensorCores for v2-v5p (2 per chip) and chips for v5e/v6e; multi-host slices
# have 4 chips per VM, v5e/v6e slices of up to 8 chips are one VM.
@pytest.mark.parametrize(
    "accelerator, chips, hosts, topology, resource",
    [
        ("v2-8", 4, 1, "2x2", "tpu_v2"),
        ("v3-32", 16, 4, "4x4", "tpu_v3"),
        ("v4-8", 4, 1, "2x2x1", "tpu_v4"),
        ("v4-32", 16, 4, "2x2x4", "tpu_v4"),
        ("v4-128", 64, 16, "4x4x4", "tpu_v4"),
        ("v5p-256", 128, 32, "4x4x8", "tpu_v5p"),
        ("v5litepod-8", 8, 1, "2x4", "tpu_v5e"),
        ("v5litepod-16", 16, 4, "4x4", "tpu_v5e"),
        ("v6e-256", 256, 64, "16x16", "tpu_v6e"),
    ],
)
def test_slice_shapes(accelerator, chips, hosts, topology, resource):
    tpu = tpu_vm.parse_accelerator(accelerator)
    assert (tpu.chips, tpu.hosts, tpu.topology, tpu.xm_resource) == (
        chips,
        hosts,
        topology,
        resource,
    )


@pytest.mark.parametrize(
    "accelerator, topology",
    [("v5e-16", None), ("v4-12", None), ("gpu-8", None), ("v4-32", "4x4"), ("v4-32", "2x2x2")],
)
def test_bad_slices_are_refused(accelerator, topology):
    with pytest.raises(tpu_vm.LaunchError, match=accelerator if topology is None else topology):
        tpu_vm.parse_accelerator(accelerator, topology)


def _remote_command(argv: list[str]) -> str:
    [command] = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
    return command


def _python_argv(script: str) -> list[str]:
    """The job's argv inside a worker script, read back with a POSIX shell lexer."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # words are split only at blanks and shell operators
    tokens = list(lexer)
    start = tokens.index("python3")
    return tokens[start : tokens.index(")", start)]


def _dry_run(capsys, argv: list[str]) -> list[list[str]]:
    assert tpu_vm.main(["--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    return [shlex.split(line) for line in out.splitlines()]


def test_tpu_vm_multihost_source_launch(capsys, tmp_path):
    flags = [
        "--name=busgen-v5e",
        "--zone=us-west4-a",
        "--accelerator-type=v5litepod-16",
        "--hosts=4",
        "--create",
        "--delete",
        "--job=pretrain",
        "--config=configs/pretrain.py:busgen",
        "--workdir=gs://bkt/busgen/runs/pretrain/base run",
        f"--log-dir={tmp_path}",
    ]
    commands = _dry_run(capsys, [*flags, "--", *TRICKY])
    zone = "--zone=us-west4-a"
    assert commands[0] == [
        *GCLOUD_TPU,
        "create",
        "busgen-v5e",
        zone,
        "--accelerator-type=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite",
    ]
    assert commands[1][:3] == ["git", "-C", str(REPO)] and commands[1][-1] == "HEAD"
    archive = f"{tmp_path}/source.tar.gz"
    assert f"--output={archive}" in commands[1]
    assert commands[2] == [
        *GCLOUD_TPU,
        "scp",
        archive,
        "busgen-v5e:busgen_jax-src.tar.gz",
        zone,
        "--worker=all",
    ]
    install, mount, run = commands[3], commands[4], commands[5]
    for ssh in (install, mount, run):
        assert ssh[:7] == [*GCLOUD_TPU, "ssh", "busgen-v5e", zone]
        assert ssh[7] == "--worker=all"
    assert "pip install --quiet -e ./busgen_jax 'jax[tpu]'" in _remote_command(install)
    # Both buckets (the workdir's and the one in an override) are mounted where the job looks.
    mount_line = _remote_command(mount)
    for bucket in ("b", "bkt"):
        assert "gcsfuse --implicit-dirs" in mount_line and f" {bucket} /gcs/{bucket})" in mount_line
    script = _remote_command(run)
    assert _python_argv(script) == [
        "python3",
        "-m",
        "busgen_jax.jobs.pretrain",
        "--config=configs/pretrain.py:busgen",
        "--workdir=/gcs/bkt/busgen/runs/pretrain/base run",
        TRICKY[0],
        "--config.data.paths=['/gcs/b/d a', '$HOME;|&']",
    ]
    assert "BUSGEN_DISTRIBUTED=1" in shlex.split(script)
    fetch = commands[6:10]
    assert fetch == [
        [
            *GCLOUD_TPU,
            "scp",
            "busgen-v5e:busgen_logs/pretrain.log",
            f"{tmp_path}/worker-{i}.log",
            zone,
            f"--worker={i}",
        ]
        for i in range(4)
    ]
    assert commands[10] == [*GCLOUD_TPU, "delete", "busgen-v5e", zone, "--quiet"]
    assert len(commands) == 11


def test_tpu_vm_single_host_image_launch(capsys):
    image = "us-docker.pkg.dev/proj/busgen/jobs:v1"
    commands = _dry_run(
        capsys,
        [
            "--name=b1",
            "--zone=us-central2-b",
            "--project=my-proj",
            "--accelerator-type=v4-8",
            "--job=train_classifier",
            "--workdir=gs://b/runs/classify/c1",
            f"--image={image}",
            "--run-name=clf-1",
        ],
    )
    flags = ["--zone=us-central2-b", "--project=my-proj"]
    install, mount, run, fetch = commands
    assert "/gcs/b" in _remote_command(mount)
    assert install[:9] == [*GCLOUD_TPU, "ssh", "b1", *flags, "--worker=all"]
    assert _remote_command(install) == (
        f"sudo gcloud auth configure-docker us-docker.pkg.dev --quiet && sudo docker pull {image}"
    )
    script = _remote_command(run)
    tokens = shlex.split(script)
    assert tokens[tokens.index("docker") + 1 : tokens.index(image)] == [
        "run",
        "--rm",
        "--privileged",
        "--net=host",
        "-v",
        "/gcs:/gcs",
        "--env",
        "PYTHONUNBUFFERED=1",
    ]  # single host: no BUSGEN_DISTRIBUTED
    assert _python_argv(script) == [
        "python3",
        "-m",
        "busgen_jax.jobs.train_classifier",
        "--workdir=/gcs/b/runs/classify/c1",
    ]
    assert fetch[4:6] == ["scp", "b1:busgen_logs/clf-1.log"] and fetch[-1] == "--worker=0"


def test_worker_script_runs_in_bash_with_argv_intact(tmp_path):
    """The remote line, run by a real shell, hands the job exactly its argv and keeps its status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "python3"
    recorder.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        print(json.dumps([os.getcwd(), os.environ.get("BUSGEN_DISTRIBUTED"), sys.argv[1:]]))
        sys.exit(3)
        """)
    )
    recorder.chmod(0o755)
    (tmp_path / "busgen_jax").mkdir()
    argv = tpu_vm.job_argv("synthesize", "gs://b/w", "configs/synthesize.py:tiny", TRICKY, 2)
    script = tpu_vm.worker_script(argv, tpu_vm.worker_env(2), "syn", image=None)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 3  # pipefail: the job's status, not tee's
    cwd, distributed, args = json.loads(result.stdout)
    assert (cwd, distributed) == (str(tmp_path / "busgen_jax"), "1")
    assert ["python3", *args] == argv
    assert (tmp_path / "busgen_logs" / "syn.log").read_text() == result.stdout


def test_mount_script_mounts_each_bucket_once(tmp_path, monkeypatch):
    """The mount line, run by bash with stand-ins for sudo, gcsfuse and mountpoint, mounts every
    bucket at its /gcs path and leaves an already mounted one alone."""
    monkeypatch.setattr(tpu_vm, "GCS_MOUNT_ROOT", str(tmp_path / "gcs"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcsfuse_calls"
    stand_ins = {
        "sudo": '#!/bin/sh\nexec "$@"\n',
        "gcsfuse": f'#!/bin/sh\necho "$@" >> {calls}\n',
        # "already" counts as mounted.
        "mountpoint": '#!/bin/sh\ncase "$2" in */already) exit 0;; *) exit 1;; esac\n',
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tpu_vm.mount_script(["already", "data-bkt", "runs.bkt"])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    uid_gid = f"--uid={os.getuid()} --gid={os.getgid()}"
    options = (
        "--implicit-dirs --rename-dir-limit=1000000 --metadata-cache-ttl-secs=0 -o allow_other"
    )
    assert calls.read_text().splitlines() == [
        f"{options} {uid_gid} {bucket} {tmp_path}/gcs/{bucket}"
        for bucket in ("data-bkt", "runs.bkt")
    ]
    assert all((tmp_path / "gcs" / b).is_dir() for b in ("already", "data-bkt", "runs.bkt"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--job=pretrian", "--workdir=gs://b/w"], "unknown job 'pretrian'"),
        (["--job=pretrain"], "--workdir is required"),
        (["--job=pretrain", "--workdir=gs://b/w", "--hosts=2"], "--hosts=2 does not match v4-32"),
        (["--job=pretrain", "--workdir=/local/w"], "must be a gs:// path"),
        (["--job=adapt", "--workdir=/w", "--accelerator-type=v4-8", "--image=i"], "with --image"),
        (["--job=pretrain", "--workdir=gs://b/w", "--", "--lr=1"], "override '--lr=1'"),
    ],
)
def test_tpu_vm_bad_requests_fail_in_one_line(capsys, extra, message):
    flags = ["--name=n", "--zone=z", "--accelerator-type=v4-32", "--dry-run"]
    assert tpu_vm.main([*flags, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: ") and message in line


def test_tpu_vm_missing_flag_fails_in_one_line(capsys):
    assert tpu_vm.main(["--zone=z", "--accelerator-type=v4-8", "--job=adapt", "--dry-run"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: the following arguments are required: --name"


def _xm(*args: str) -> subprocess.CompletedProcess:
    """Runs xm_launch.py as a script with xmanager made unimportable."""
    code = (
        "import runpy, sys; sys.modules['xmanager'] = None; "
        f"sys.argv = {[str(XM_LAUNCH), *args]!r}; "
        f"runpy.run_path({str(XM_LAUNCH)!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def _field(out: str, name: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"{name}: ")]


def test_xm_dry_run_tpu_vm_backend():
    result = _xm(
        "--dry_run",
        "--job=adapt",
        "--accelerator_type=v4-32",
        "--hosts=4",
        "--name=pod",
        "--zone=us-central2-b",
        "--config=configs/adapt.py:default",
        "--workdir=gs://b/busgen/runs/adapt/a1",
        "--",
        *TRICKY,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        "python3",
        "-m",
        "busgen_jax.jobs.adapt",
        "--config=configs/adapt.py:default",
        "--workdir=/gcs/b/busgen/runs/adapt/a1",
        *map(tpu_vm.mounted, TRICKY),
    ]
    workers = _field(result.stdout, "worker 0") + [
        _field(result.stdout, f"worker {i}")[0] for i in range(1, 4)
    ]
    assert len(set(workers)) == 1 and not _field(result.stdout, "worker 4")
    env_and_argv = shlex.split(workers[0])
    assert env_and_argv[0] == "env" and env_and_argv[-len(expected) :] == expected
    assert "BUSGEN_DISTRIBUTED=1" in env_and_argv
    assert _field(result.stdout, "requirements")[0].startswith("xm.JobRequirements(tpu_v4='2x2x4')")
    [launcher] = _field(result.stdout, "launcher")
    launcher = shlex.split(launcher)
    assert launcher[1] == str(REPO / "launch" / "tpu_vm.py")
    assert "--accelerator-type=v4-32" in launcher
    assert launcher[launcher.index("--") + 1 :] == TRICKY
    steps = [shlex.split(s) for s in _field(result.stdout, "step")]
    [run] = [s for s in steps if s[4] == "ssh" and "busgen_jax.jobs.adapt" in _remote_command(s)]
    assert "--worker=all" in run and _python_argv(_remote_command(run)) == expected


def test_xm_dry_run_vertex_backend():
    result = _xm(
        "--dry_run",
        "--backend=vertex",
        "--job=train-classifier",
        "--accelerator_type=v3-8",
        "--workdir=gs://b/busgen/runs/classify/c1",
    )
    assert result.returncode == 0, result.stderr
    assert _field(result.stdout, "executor") == [
        "xm_local.Vertex(requirements=xm.JobRequirements(tpu_v3=8))"
    ]
    assert (
        "xm.ModuleName('busgen_jax.jobs.train_classifier')"
        in _field(result.stdout, "executable")[0]
    )
    [worker] = _field(result.stdout, "worker 0")
    assert shlex.split(worker)[-4:] == [
        "python3",
        "-m",
        "busgen_jax.jobs.train_classifier",
        "--workdir=/gcs/b/busgen/runs/classify/c1",  # where Vertex AI mounts the bucket
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend=vertex", "--accelerator_type=v5litepod-16"], "use --backend=tpu_vm"),
        (["--accelerator_type=v5litepod-16", "--hosts=2"], "--hosts=2 does not match"),
        (["--accelerator_type=v4-8", "--job=nope"], "unknown job 'nope'"),
        (["--accelerator_type=v4-8", "--workdir="], "--workdir is required"),
    ],
)
def test_xm_bad_requests_fail_in_one_line(args, message):
    defaults = ["--job=pretrain", "--workdir=gs://b/w", "--name=n", "--zone=z"]
    result = _xm("--dry_run", *defaults, *args)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line
