"""Shared helpers for benchmark scripts: the demo's command line; print a table and append it
to BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import subprocess
import sys

import jax

BENCHMARKS_MD = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine_description() -> str:
    """One line naming the host and the JAX backend the numbers were taken on."""
    devices = jax.devices()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {len(devices)} x "
        f"{devices[0].device_kind} ({jax.default_backend()})"
    )


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=BENCHMARKS_MD.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(
    title: str, config: str, header: list[str], rows: list[list[object]], notes: str = ""
) -> str:
    """Prints the table and appends it, with machine, date and config, to BENCHMARKS.md."""
    table = markdown_table(header, rows)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {title}\n\n- date: {stamp}; commit: {git_revision()}\n"
        f"- machine: {machine_description()}\n- config: {config}\n"
        + (f"- notes: {notes}\n" if notes else "")
        + f"\n{table}\n"
    )
    print(section)
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text(
            "# Benchmarks\n\nEvery table below was appended by a script in `benchmarks/`.\n"
        )
    with BENCHMARKS_MD.open("a") as f:
        f.write(section)
    return section


def demo_command(workdir, *flags: str) -> list[str]:
    """The command line of `busgen demo` on the default config (what `make demo` runs)."""
    return [
        sys.executable,
        "-m",
        "busgen_jax.cli",
        "demo",
        "--config=configs/demo.py:default",
        f"--workdir={workdir}",
        *flags,
    ]
