"""The exit codes of the ``stoker`` command, and the two errors a command raises to end with 1 or 2."""

from __future__ import annotations

#: The command did what it was asked (``wait``: the job completed, or the
#: queue drained).
EXIT_OK = 0
#: The command failed: a stoker error (printed with its type), a job id that
#: does not exist (or is beyond 64 bits), a file that is not a stoker
#: database, an app that cannot be loaded, an error stoker did not foresee.
EXIT_FAILED = 1
#: Wrong usage: an unknown option, a missing argument, a number out of range,
#: options that do not go together (``purge`` without ``--yes`` or ``--dry-run``).
EXIT_USAGE = 2
#: ``wait``: the job ended dead, or expired before it ran (no result, ever).
EXIT_DEAD = 3
#: ``wait``: the job was cancelled.
EXIT_CANCELLED = 4
#: ``wait``: the job (or, with ``--drain``, the queue) did not finish within ``--timeout``.
EXIT_TIMEOUT = 5


class CommandError(Exception):
    """The command cannot go on; the message says why (exit code 1)."""


class UsageError(Exception):
    """The command was given arguments that do not go together (exit code 2)."""
