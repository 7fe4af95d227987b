"""The context of the job a task is running: ``stoker.current_job()``.

Inside a worker process (or in test mode) a task reads its job's id, task
name, attempt and labels from its context, reports progress, checks its soft
timeout and cancellation, and can reject or requeue its job::

    @queue.task(soft_timeout=50, timeout=60, cancel_grace=5)
    def render(frames: int) -> None:
        ctx = stoker.current_job()
        for frame in range(frames):
            ctx.check_timeout()      # SoftTimeoutError once 50 s have passed
            ctx.check_cancelled()    # JobCancelledError once a cancel was requested
            draw(frame)
            ctx.progress(frame + 1, frames)

A task may also take the context as a parameter annotated ``JobContext``.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import (
    InvalidOptionError,
    JobCancelledError,
    PluginTriggerError,
    RejectedError,
    SoftTimeoutError,
    StokerError,
)

#: Progress reports closer together than this are coalesced: the latest one is
#: sent with the next report that comes later (the last report of a loop,
#: ``current == total``, is always sent). A task may report in a tight loop
#: without turning each report into a database write.
PROGRESS_MIN_INTERVAL = 0.05
#: The longest progress report stored, in characters of its JSON (``[current, total, message]``):
#: a report is rewritten into the job's row each time, so a long one costs that much per report.
PROGRESS_MAX_CHARS = 64 * 1024

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("stoker_job", default=None)


class RequeueRequested(Exception):
    """Raised by :meth:`JobContext.requeue`; the worker turns it into a requeue."""


class CancelFlag:
    """Set when the supervisor signals a cooperative cancel to this worker process."""

    requested = False


class JobContext:
    """What a running task knows of its job and can tell its supervisor."""

    def __init__(
        self,
        *,
        job_id: int,
        token: int,
        task_name: str,
        attempt: int,
        labels: dict[str, Any],
        soft_timeout: float | None,
        report: Callable[[tuple[Any, ...]], None],
    ) -> None:
        self.job_id = job_id
        self.token = token
        self.task_name = task_name
        self.attempt = attempt
        self.labels = labels
        self.soft_timeout = soft_timeout
        self._report = report
        self._started = time.monotonic()
        self._last_progress_sent = 0.0
        self._unsent_progress: str | None = None

    def __repr__(self) -> str:
        return f"<JobContext job={self.job_id} task={self.task_name} attempt={self.attempt}>"

    # --- progress --------------------------------------------------------------

    def progress(self, current: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the job is; the caller sees it in ``job.progress``."""
        encoded = json.dumps([current, total, message])
        if len(encoded) > PROGRESS_MAX_CHARS:
            raise InvalidOptionError(
                f"the progress report of job {self.job_id} is {len(encoded)} characters of JSON, "
                f"more than the {PROGRESS_MAX_CHARS} stored"
            )
        now = time.monotonic()
        finished = total is not None and current >= total
        if finished or now - self._last_progress_sent >= PROGRESS_MIN_INTERVAL:
            self._last_progress_sent = now
            self._unsent_progress = None
            self._report(("progress", self.job_id, self.token, encoded))
        else:
            self._unsent_progress = encoded

    def flush_progress(self) -> None:
        """Send a coalesced report that is still waiting (called when the task ends)."""
        if self._unsent_progress is not None:
            encoded, self._unsent_progress = self._unsent_progress, None
            self._report(("progress", self.job_id, self.token, encoded))

    # --- time and cancellation ------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since this attempt started."""
        return time.monotonic() - self._started

    def time_left(self) -> float | None:
        """Seconds left before the soft timeout (None without one)."""
        if self.soft_timeout is None:
            return None
        return self.soft_timeout - self.elapsed()

    def check_timeout(self) -> None:
        """Raise :class:`~stoker.errors.SoftTimeoutError` once the soft timeout has passed."""
        left = self.time_left()
        if left is not None and left <= 0:
            raise SoftTimeoutError(
                f"job {self.job_id} ({self.task_name}) passed its soft timeout of {self.soft_timeout:g} s",
                job_id=self.job_id,
                attempt=self.attempt,
            )

    @property
    def cancel_requested(self) -> bool:
        """Whether a cancel was requested (tasks with ``cancel_grace`` are told; others are killed)."""
        return CancelFlag.requested

    def check_cancelled(self) -> None:
        """Raise :class:`~stoker.errors.JobCancelledError` if a cancel was requested."""
        if CancelFlag.requested:
            raise JobCancelledError(self.job_id)

    # --- ending the job another way -----------------------------------------------------

    def reject(self, reason: str = "") -> NoReturn:
        """End the job dead with a :class:`~stoker.errors.RejectedError`; it is not retried."""
        raise RejectedError(
            f"job {self.job_id} ({self.task_name}) was rejected" + (f": {reason}" if reason else ""),
            job_id=self.job_id,
            attempt=self.attempt,
        )

    def requeue(self) -> NoReturn:
        """Put the job back to pending without counting a failed attempt (bounded per job)."""
        raise RequeueRequested()

    def plugin_error(self, message: str = "", **details: Any) -> NoReturn:
        """Raise :class:`~stoker.errors.PluginTriggerError`; a plugin handler may supply the result."""
        raise PluginTriggerError(message, **details)


def current_job() -> JobContext:
    """The context of the job this task runs for; :class:`StokerError` outside a job."""
    ctx = _current.get()
    if ctx is None:
        raise StokerError("current_job() is only available while a task runs for a job")
    return ctx


def enter(ctx: JobContext) -> contextvars.Token[JobContext | None]:
    return _current.set(ctx)


def leave(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)
