"""The error type every library raises for a problem the user can fix.

A job prints such an error as one `error:` line naming the file or field, without a traceback
(`busgen_jax.jobs.shell`). It lives apart from the job shell so that libraries (checkpoints, the
training loop, the shipped model's checksums) can raise it without importing the commands.
"""

from __future__ import annotations


class JobError(RuntimeError):
    """An error the user can fix (bad input, missing checkpoint); printed as one line.

    Libraries subclass it for their own user-facing errors (checkpoints.CheckpointError), so
    that every job reports them in one line without wrapping them.
    """


class ConfigError(JobError, ValueError):
    """A config field with a value its job cannot run with; the message names the field.

    Also a ValueError, the type config checks of the libraries (model configs, partition
    rules) raise, so one `except ValueError` covers a whole config's validation.
    """
