"""A job's hold on its workdir: one writer at a time, and one config per run.

Every job (through `shell.command`) checks that its workdir is a writable directory, takes an
advisory lock on it and compares its config with the one the workdir was started with, before it
reads or writes anything else there. Both live in `WORKDIR/.busgen/`:

  lock                   host, pid and job of the holder while a job runs. The lock is a
                         kernel `flock`, so a crashed holder (SIGKILL, power loss of a local
                         disk) releases it by itself. Where a filesystem has no `flock`, the
                         label itself is the lock: a job claims it when it is empty or names a
                         pid of this host that is gone, and empties it when it ends.
                         A mount shared by several machines (Cloud Storage FUSE, as the
                         launchers use) keeps each machine's `flock` to itself, so the holder
                         also renews its label every BEAT_S seconds: a label of another host
                         renewed within STALE_S refuses the job even when the `flock` is free
                         here, and an older one is a crashed holder's, taken over.
  <job>.config.json      the fields of the config that fix the job's output, written when the
                         job first starts. A restart whose config differs stops with one line
                         naming the changed fields; `--allow_config_change` accepts changes of
                         SAFE_FIELDS only (more steps, other log or checkpoint intervals, mesh).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import pathlib
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import ml_collections

from busgen_jax.core import test_hooks

META_DIR = ".busgen"
LOCK_FILE = "lock"
# The holder rewrites its label this often; a label of another host not rewritten for STALE_S is
# taken for a crashed holder's (clocks of the hosts must agree to well within that).
BEAT_S = 60.0
STALE_S = 600.0
_LABEL_BYTES = 512  # labels are padded to one length, so a rewrite never shows a partial one
# Fields whose change does not alter what a run already wrote, matched against dotted config
# paths ("*" spans dots, so they match inside the demo's nested stage configs too).
SAFE_FIELDS = (
    "*train.steps",
    "*log_every_steps",
    "*every_steps",
    "*checkpoint.*",
    "*mesh",
    "*mesh.*",
    "*finalize_timeout_s",
    # Where `busgen serve` listens changes no output.
    "host",
    "port",
)
# Secrets are fingerprinted by their hash, never written down.
_SECRET_FIELDS = ("*salt",)


class WorkdirError(RuntimeError):
    """The workdir cannot be used: not a writable directory, in use, or started otherwise."""


def check_writable(workdir: str | os.PathLike) -> pathlib.Path:
    """Creates `workdir` if needed and proves it takes a file; errors name it and the reason."""
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir={workdir}: is a file, not a directory")
    probe = path / META_DIR / f".probe-{uuid.uuid4().hex}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise WorkdirError(
            f"--workdir={workdir}: cannot write there ({error.strerror or error})"
        ) from error
    return path


def _holder(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a job that is starting"
    return f"'{holder.get('job')}' on host {holder.get('host')}, pid {holder.get('pid')}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(workdir: str | os.PathLike, job: str) -> Iterator[None]:
    """Holds the workdir's advisory lock for the duration of the block.

    Raises:
      WorkdirError: another job holds it; the message names its host and pid.
    """
    path = pathlib.Path(workdir) / META_DIR / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    me = {"host": socket.gethostname(), "pid": os.getpid(), "job": job, "since": now, "beat": now}
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    renewing = threading.Event()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            use_flock = True
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirError(
                    f"--workdir={workdir}: in use by {_describe(_holder(path))}; wait for it to "
                    "finish or choose another --workdir"
                ) from None
            use_flock = False  # no flock on this filesystem
        previous = _holder(path)
        if not use_flock:
            _claim_without_flock(path, workdir, me, previous)
        _refuse_a_live_holder_elsewhere(path, workdir, me, previous)
        if previous:
            logging.warning(
                "%s: took over the lock of %s, which ended without releasing it",
                workdir,
                _describe(previous),
            )
        held = True
        _write_label(fd, me)
        logging.info("%s: locked by '%s' on host %s, pid %d", workdir, job, me["host"], me["pid"])
        renewer = threading.Thread(
            target=_renew, args=(fd, me, renewing), daemon=True, name="busgen-workdir-lock"
        )
        renewer.start()
        test_hooks.pause_point("workdir_locked")
        try:
            yield
        finally:
            renewing.set()
            renewer.join()
    finally:
        # An empty file marks a clean release; the flock goes with the descriptor. A job that
        # was refused leaves the holder's label (and, without flock, its claim) as it found it.
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)


_VERDICT_BYTES = 2048


def agree(error: BaseException | None) -> None:
    """Shares one process's verdict on the workdir with every process of a multi-host job.

    Only process 0 takes the lock, and any process may find the workdir unusable; a process
    that stopped alone would leave the others waiting in their first collective. So every
    process calls this once, after its checks and before the job starts, with the error it
    met (or None): each learns of the others', and one that met none raises the first one
    met, naming the process that met it. A collective; a no-op in a single-process job.

    Raises:
      WorkdirError: `error` is None and another process met one.
    """
    import jax  # only multi-host jobs get here; the workdir checks themselves need no JAX
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return
    mine = np.zeros(_VERDICT_BYTES, np.uint8)
    if error is not None:
        text = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        encoded = text.encode()[:_VERDICT_BYTES]
        mine[: len(encoded)] = np.frombuffer(encoded, np.uint8)
        mine[0] = mine[0] or ord("?")  # an error never reads as "none"
    verdicts = np.asarray(multihost_utils.process_allgather(mine))
    if error is not None:
        return
    for index, verdict in enumerate(verdicts):
        if verdict[0]:
            text = bytes(verdict).rstrip(b"\0").decode(errors="replace")
            raise WorkdirError(f"{text} (met by process {index} of this job)")


def _write_label(fd: int, me: dict[str, Any]) -> None:
    label = json.dumps(me).encode().ljust(_LABEL_BYTES)
    os.pwrite(fd, label, 0)  # over the previous label, never through an empty file
    os.ftruncate(fd, len(label))
    os.fsync(fd)  # a shared mount (Cloud Storage FUSE) shows other machines the file from here


def _renew(fd: int, me: dict[str, Any], stop: threading.Event) -> None:
    """Rewrites the holder's label every BEAT_S seconds until `stop` is set."""
    while not stop.wait(BEAT_S):
        with contextlib.suppress(OSError):  # a missed beat is retried at the next
            _write_label(fd, {**me, "beat": int(time.time())})


def _claim_without_flock(
    path: pathlib.Path, workdir, me: dict[str, Any], holder: dict[str, Any]
) -> None:
    """The lock by content alone: free when empty, or when its holder on this host is gone
    (a holder on another host is judged by `_refuse_a_live_holder_elsewhere`)."""
    if holder and holder.get("host") == me["host"] and _alive(int(holder["pid"])):
        raise WorkdirError(
            f"--workdir={workdir}: in use by {_describe(holder)} (if that job is gone, delete "
            f"{path})"
        )


def _refuse_a_live_holder_elsewhere(
    path: pathlib.Path, workdir, me: dict[str, Any], holder: dict[str, Any]
) -> None:
    """Raises when the label names a job on another host that renewed it within STALE_S."""
    if not holder or holder.get("host") == me["host"]:
        return
    age = me["beat"] - float(holder.get("beat", holder.get("since", 0)))
    if age < STALE_S:
        raise WorkdirError(
            f"--workdir={workdir}: in use by {_describe(holder)} (its lock was renewed "
            f"{max(age, 0):.0f} s ago; if that job is gone, wait {STALE_S - age:.0f} s or delete "
            f"{path})"
        )


def _flatten(config: ml_collections.ConfigDict | dict, prefix: str = "config") -> dict[str, Any]:
    flat = {}
    for key, value in sorted(config.items()):
        name = f"{prefix}.{key}"
        if isinstance(value, ml_collections.ConfigDict | dict) and value:
            flat.update(_flatten(value, name))
        else:
            value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as {dotted field: JSON value}, secrets replaced by their SHA-256."""
    flat = _flatten(config)
    for name, value in flat.items():
        if value and any(fnmatch.fnmatchcase(name, p) for p in _SECRET_FIELDS):
            flat[name] = "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()
    return flat


def _short(flat: dict[str, Any], key: str) -> str:
    text = json.dumps(flat[key]) if key in flat else "(none)"
    return text if len(text) <= 40 else text[:37] + "..."


def _is_secret(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("sha256:")


def check_config(
    workdir: str | os.PathLike,
    job: str,
    config: ml_collections.ConfigDict,
    *,
    allow_safe_changes: bool = False,
    write: bool = True,
) -> bool:
    """Records `config` as the workdir's, or checks it against the one recorded.

    Returns:
      True when this call recorded the fingerprint for the first time.

    Raises:
      WorkdirError: the workdir was started with another config; names the changed fields.
    """
    path = pathlib.Path(workdir) / META_DIR / f"{job}.config.json"
    new = fingerprint(config)
    old = json.loads(path.read_text()) if path.exists() else None
    if old is not None:
        changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        unsafe = [k for k in changed if not any(fnmatch.fnmatchcase(k, p) for p in SAFE_FIELDS)]
        if changed and (unsafe or not allow_safe_changes):
            shown = ", ".join(
                k if _is_secret(old.get(k)) else f"{k} {_short(old, k)} -> {_short(new, k)}"
                for k in (unsafe or changed)
            )
            hint = (
                "start a new --workdir"
                if unsafe
                else "pass --allow_config_change to accept these, or start a new --workdir"
            )
            raise WorkdirError(
                f"--workdir={workdir} was started by '{job}' with another config; changed: "
                f"{shown} ({hint})"
            )
        if not changed:
            return False
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(new, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return old is None


def _has_files(path: pathlib.Path, skip: str | None = None) -> bool:
    for directory, subdirs, files in os.walk(path):
        subdirs[:] = [d for d in subdirs if not (directory == str(path) and d == skip)]
        if files:
            return True
    return False


def forget_config(workdir: str | os.PathLike, job: str) -> None:
    """Drops a just-recorded config when the run failed before writing anything else, so that
    fixing a typo in the config is not taken for a restart with another config."""
    root = pathlib.Path(workdir)
    if not _has_files(root, skip=META_DIR):
        (root / META_DIR / f"{job}.config.json").unlink(missing_ok=True)


def remove_new_empty_dirs(workdir: str | os.PathLike, before: set[str]) -> None:
    """Removes folders a failed run created in `workdir` (not in `before`) but left without a
    file, so that an output folder exists only when something is in it."""
    for path in pathlib.Path(workdir).iterdir():
        if path.name not in before and path.is_dir() and not _has_files(path):
            shutil.rmtree(path, ignore_errors=True)
