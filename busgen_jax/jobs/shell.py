"""What every job command shares: `--config path.py:preset`, `--workdir`, overrides, clean errors.

A job module defines `run(config, workdir)` and ends with `main = shell.command(run, default)`.
`busgen <job> --config=configs/x.py:preset --workdir=DIR --config.some.field=value` and
`python -m busgen_jax.jobs.<job> ...` both end up here. Before `run` starts, the workdir is checked to
be a writable directory, locked for this job (one writer at a time; process 0 of a multi-host
job) and its config compared with the one it was started with (`busgen_jax.jobs.workdir`).
"""

from __future__ import annotations

import contextlib
import errno
import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from busgen_jax.core import config_files, errors
from busgen_jax.data import builtin, schema, shards
from busgen_jax.jobs import workdir as workdir_lib

# Set to "1" by the launchers on multi-host slices.
DISTRIBUTED_ENV = "BUSGEN_DISTRIBUTED"


# Errors a job raises about its inputs (each names the file or field): one line, no traceback.
USER_ERRORS = (
    errors.JobError,
    FileNotFoundError,
    shards.DatasetError,
    schema.SchemaError,
    workdir_lib.WorkdirError,
)
# OS errors about the machine rather than the code: a full disk, a read-only or foreign folder.
USER_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's to fix, and so one `error:` line rather than a traceback."""
    return isinstance(error, USER_ERRORS) or (
        isinstance(error, OSError) and error.errno in USER_ERRNOS
    )


def _resolve_config_argument(argv: Sequence[str]) -> list[str]:
    resolved = []
    for arg in argv:
        if arg.startswith("--config="):
            arg = "--config=" + config_files.resolve_path(arg.split("=", 1)[1])
        resolved.append(arg)
    return resolved


_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _strings(value: Any, field: str):
    if isinstance(value, str):
        yield field, value
    elif isinstance(value, ml_collections.ConfigDict | dict):
        for key, item in value.items():
            yield from _strings(item, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{field}[{index}]")


def check_local_paths(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses URLs such as gs://bucket/x, which would otherwise become a local directory
    named 'gs:' (pathlib) whose checkpoints vanish with the machine."""
    for field, value in [("--workdir", workdir), *_strings(config, "config")]:
        if _URL.match(value):
            raise errors.JobError(
                f"{field}={value!r}: jobs read and write local paths (ArrayRecord cannot open "
                "URLs); mount the bucket, e.g. with gcsfuse at /gcs/BUCKET as the launchers "
                "in launch/ do, and pass the mounted path"
            )


def command(run: Callable[[ml_collections.ConfigDict, str], Any], default_config: str, doc: str):
    """Builds the `main(argv)` of a job whose work is `run(config, workdir)`."""

    def main(argv: Sequence[str] | None = None) -> None:
        argv = _resolve_config_argument(list(sys.argv if argv is None else argv))
        flag_values = flags.FlagValues()
        config_flag = config_flags.DEFINE_config_file(
            "config",
            default=config_files.resolve_path(default_config),
            help_string="Config file and preset, e.g. configs/pretrain.py:tiny. Any field can be "
            "overridden with --config.<field>=<value>.",
            flag_values=flag_values,
            lock_config=True,
            sys_argv=argv,  # overrides come from this argv, not from sys.argv
        )
        workdir_flag = flags.DEFINE_string(
            "workdir",
            None,
            "Directory for this job's outputs, checkpoints and logs.",
            flag_values=flag_values,
        )
        allow_flag = flags.DEFINE_bool(
            "allow_config_change",
            False,
            "Restart on a workdir whose config differs only in fields that do not change what was "
            "already written: training steps, log and checkpoint intervals, mesh, timeouts.",
            flag_values=flag_values,
        )
        flags.DEFINE_bool("help", False, "Show this help.", flag_values=flag_values, short_name="h")
        try:
            flag_values(argv)
            if flag_values["help"].value:
                print(
                    f"{doc.strip()}\n\nFlags:\n{flag_values.main_module_help() or _help(flag_values)}"
                )
                return
            if not workdir_flag.value:
                raise errors.JobError("--workdir is required")
            config_path = config_flags.get_config_filename(flag_values["config"]).split(":")[0]
            if not os.path.isfile(config_path):
                raise errors.JobError(f"config file {config_path} does not exist")
            config = config_flag.value
            config.keys()  # a config that failed to load raises here, not deep inside the job
            check_local_paths(config, workdir_flag.value)
        except (KeyError, AttributeError) as e:
            _fail(_unknown_field(argv) or e)
        except (flags.Error, errors.JobError, ValueError, OSError) as e:
            _fail(e)
        _log_to_stderr()
        maybe_initialize_distributed()
        try:
            # Built-in phantom paths (`phantom:PRESET`) become cached datasets, once, here.
            config = builtin.resolve_config(config)
        except (errors.JobError, ValueError, OSError) as e:
            _fail(e)
        _run_in_workdir(run, config, workdir_flag.value, allow_flag.value)

    return main


def _job_name(run: Callable) -> str:
    module = run.__module__
    if module == "__main__":  # python -m busgen_jax.jobs.<job>
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else "main"
    return module.rsplit(".", 1)[-1]


def _run_in_workdir(run: Callable, config, workdir: str, allow_config_change: bool) -> None:
    """`run(config, workdir)` holding the workdir, with user errors as one line."""
    name = _job_name(run)
    writer = _is_writer()
    # Every process of a multi-host job learns whether any of them found the workdir unusable
    # (only process 0 locks it), so that all stop with the one line instead of the rest waiting.
    agree = workdir_lib.agree if os.environ.get(DISTRIBUTED_ENV) == "1" else lambda error: None
    try:
        with contextlib.ExitStack() as held:
            try:
                before = {p.name for p in workdir_lib.check_writable(workdir).iterdir()}
                if writer:
                    held.enter_context(workdir_lib.lock(workdir, name))
                first = workdir_lib.check_config(
                    workdir, name, config, allow_safe_changes=allow_config_change, write=writer
                )
            except Exception as error:
                agree(error)
                raise
            agree(None)
            try:
                run(config, workdir)
            except BaseException:
                if writer:
                    workdir_lib.remove_new_empty_dirs(workdir, before)
                    if first:
                        workdir_lib.forget_config(workdir, name)
                raise
    except Exception as e:
        if not is_user_error(e):
            raise
        _fail(e)


def _is_writer() -> bool:
    """Whether this process writes the workdir's bookkeeping: all but process 0 of a
    multi-host job only read it."""
    if os.environ.get(DISTRIBUTED_ENV) != "1":
        return True
    import jax

    return jax.process_index() == 0


def _unknown_field(argv: Sequence[str]) -> str | None:
    """ "--config.a.b: no such field ..." for the first override the config lacks, in place of
    ml_collections' message (a quoted KeyError repr)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    try:
        config = config_files.load(spec) if spec else None
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0]
        node, parent = config, "config"
        for part in path.split("."):
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in keys:
                known = ", ".join(sorted(keys)) or "no fields"
                return f"--config.{path}: no such field ({parent} has {known})"
            node, parent = node[part], f"{parent}.{part}"
    return None


def _log_to_stderr() -> None:
    """INFO logs of every library (progress, checkpoints, metrics) to stderr, absl-formatted."""
    # Each job parses its own FlagValues; absl's global FLAGS only gate absl logging.
    flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    std_logging.getLogger().setLevel(std_logging.INFO)
    logging.get_absl_handler().addFilter(_quiet_libraries)


def _quiet_libraries(record: std_logging.LogRecord) -> bool:
    """Drops the INFO chatter of orbax (dozens of lines per checkpoint); warnings still show,
    without the tracebacks of its background threads (a failed save is reported in one line by
    `checkpoints`)."""
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
        return True
    record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


def maybe_initialize_distributed() -> None:
    """Joins a multi-process run when a launcher asks for one (see launch/README.md).

    On Cloud TPU VMs (and SLURM, Open MPI, Kubernetes) `jax.distributed.initialize()` finds the
    coordinates by itself. Elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, as the two-process test on localhost does.
    """
    if os.environ.get(DISTRIBUTED_ENV) != "1":
        return
    import jax

    if jax.distributed.is_initialized():
        return
    explicit = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        explicit = {
            "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
            "process_id": int(os.environ["JAX_PROCESS_ID"]),
        }
    jax.distributed.initialize(**explicit)


def _help(flag_values: flags.FlagValues) -> str:
    return "\n".join(
        f"  --{name}: {flag_values[name].help}" for name in ("config", "workdir", "help")
    )


def _fail(error: Exception | str) -> None:
    if isinstance(error, OSError) and error.strerror:
        where = "" if error.filename is None else f"{error.filename}: "
        error = f"{where}{error.strerror}"
    message = str(error).strip().splitlines()
    print(f"error: {message[-1] if message else type(error).__name__}", file=sys.stderr)
    sys.exit(2)


def run_main(main: Callable[[Sequence[str]], None]) -> None:
    """Entry point for `python -m busgen_jax.jobs.<job>`: the same as `busgen <job>`."""
    main(sys.argv)
