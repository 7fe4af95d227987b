"""The messages between the supervisor and a worker process, one type each.

::

    supervisor ── Run ──▶ worker          (a job; a busy worker may get its next ones ahead)
    supervisor ── Stop ──▶ worker         (run the worker_shutdown handlers and exit)
    supervisor ── DROP_FRAME ──▶ worker   (on the second pipe: give back a job sent ahead)
    supervisor ◀── Ready | StartupError   (once, at the start)
                 | Progress               (any number, while a job runs)
                 | Done | Failed | Cancelled | Requeue   (the outcome of a Run: an ``Outcome``)
                 | Dropped                (a job given back before it started)

Each is a NamedTuple: it pickles as a tuple tagged with its class, and reads
as named fields on both sides. Their reducer is registered with ``copyreg``
so that pickling one costs about what a plain tuple costs (the default
reduction of a tuple subclass calls ``__getnewargs__`` and more for each
message, and the no-op job path sends two messages per job).
"""

from __future__ import annotations

import copyreg
import struct
from typing import Any, NamedTuple

from .._base.remote_errors import CapturedError

#: A take-back on the drop pipe: the job's ``seq`` (its place among the runs
#: sent to this worker), its id and its token.
DROP_FRAME = struct.Struct("!qqq")


class Run(NamedTuple):
    """Run this attempt; ``seq`` numbers the runs sent to this worker, which starts them in order."""

    job_id: int
    token: int
    attempt: int
    task_name: str
    payload: bytes
    labels: str | None
    seq: int


class Stop(NamedTuple):
    """Exit after the job running now (recycling, a stop of the pool)."""


class Ready(NamedTuple):
    """The worker imported its modules and ran its start-up handlers."""

    pid: int


class StartupError(NamedTuple):
    """The worker could not start: what its start-up raised."""

    error: CapturedError


class Progress(NamedTuple):
    """``ctx.progress()`` of the running job, as the JSON stored in its row."""

    job_id: int
    token: int
    progress: str


class Done(NamedTuple):
    """The attempt returned: its sealed result (None if the task stores none) and its usage JSON."""

    job_id: int
    token: int
    result: bytes | None
    usage: str | None


class Failed(NamedTuple):
    """The attempt raised; ``retryable`` is the task's retry filter's verdict."""

    job_id: int
    token: int
    error: CapturedError
    retryable: bool
    usage: str | None


class Cancelled(NamedTuple):
    """The task stopped on a cooperative cancel (``ctx.check_cancelled()``)."""

    job_id: int
    token: int
    usage: str | None


class Requeue(NamedTuple):
    """The task asked to run again later (``ctx.requeue()``)."""

    job_id: int
    token: int


class Dropped(NamedTuple):
    """A job sent ahead was given back before it started."""

    job_id: int
    token: int


#: What a worker answers to a Run.
Outcome = Done | Failed | Cancelled | Requeue


def _reduce(message: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    return type(message), tuple(message)


for _message_type in (Run, Stop, Ready, StartupError, Progress, Done, Failed, Cancelled, Requeue, Dropped):
    copyreg.pickle(_message_type, _reduce)
