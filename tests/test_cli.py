"""`busgen`: every job has a subcommand with help, and user errors are one clear line."""

import subprocess
import sys

import pytest

from busgen_jax import cli


def _busgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "busgen_jax.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_every_job():
    out = _busgen("--help")
    assert out.returncode == 0
    for name in cli.JOBS:
        assert f"  {name} " in out.stdout


@pytest.mark.parametrize("job", sorted(cli.JOBS))
def test_every_job_explains_its_flags(job):
    out = _busgen(job, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config" in out.stdout and "--workdir" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("nonsense",), "unknown job 'nonsense'"),
        (("phantom", "--config=configs/nope.py:tiny", "--workdir=/tmp/x"), "nope.py"),
        (
            ("phantom", "--config=configs/phantom.py:huge", "--workdir=/tmp/x"),
            "unknown preset 'huge'",
        ),
        (
            (
                "phantom",
                "--config=configs/phantom.py:tiny",
                "--config.no_such_field=1",
                "--workdir=/tmp/x",
            ),
            "no_such_field",
        ),
        (("phantom", "--config=configs/phantom.py:tiny"), "--workdir is required"),
        (
            ("pretrain", "--config=configs/pretrain.py:tiny", "--workdir=gs://bucket/runs/a"),
            "--workdir='gs://bucket/runs/a': jobs read and write local paths",
        ),
        (
            (
                "pretrain",
                "--config=configs/pretrain.py:tiny",
                "--workdir=/tmp/x",
                "--config.data.paths=('/data/a', 'gs://bucket/data/b')",
            ),
            "config.data.paths[1]='gs://bucket/data/b'",
        ),
        (
            (
                "synthesize",
                "--config=configs/synthesize.py:tiny",
                "--workdir=/tmp/x",
                "--config.generator=/nowhere",
                # Not the default built-in corpus, which would be generated before the error.
                "--config.audit.train_paths=('/data/a',)",
            ),
            "/nowhere",
        ),
        (
            (
                "demo",
                "--config=configs/demo.py:tiny",
                "--workdir=/tmp/x",
                "--config.pretrain.model.channel_mults=(1,2,3,4,5,6,7)",
            ),
            "error:",
        ),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path):
    args = tuple(a.replace("/tmp/x", str(tmp_path)) for a in args)
    out = _busgen(*args)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
