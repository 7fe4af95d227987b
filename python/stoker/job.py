"""Handles on stored jobs: status, result, error history, cancellation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import serialization
from .errors import DependencyFailedError, JobCancelledError, JobExpiredError, ResultTimeoutError, StokerError
from .remote_errors import rebuild

if TYPE_CHECKING:
    from ._core import ErrorRecord, JobRecord
    from .queue import Queue

#: Statuses after which a job never changes again.
FINISHED = frozenset({"complete", "dead", "cancelled", "expired"})

#: Waiting for a result polls the job's status: first after this many seconds,
#: then twice as long each time up to RESULT_POLL_MAX. A short first wait keeps
#: the latency of quick jobs low; the cap bounds the reads spent on long jobs.
RESULT_POLL_MIN = 0.0005
RESULT_POLL_MAX = 0.05


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class AttemptError:
    """One failed attempt in a job's error history."""

    job_id: int
    attempt: int
    kind: str
    """error, timeout, crash, or lease_expired."""
    type_name: str
    message: str
    traceback: str
    failed_at: datetime
    worker: str
    _exc_pickle: bytes | None

    @classmethod
    def from_record(cls, record: ErrorRecord) -> AttemptError:
        failed_at = _datetime(record.failed_ms)
        assert failed_at is not None
        return cls(
            job_id=record.job_id,
            attempt=record.attempt,
            kind=record.kind,
            type_name=record.exc_type,
            message=record.message,
            traceback=record.traceback,
            failed_at=failed_at,
            worker=record.worker,
            _exc_pickle=record.exc_pickle,
        )

    def exception(self) -> BaseException:
        """The exception of this attempt, rebuilt (see :mod:`stoker.remote_errors`)."""
        return rebuild(
            exc_type=self.type_name,
            message=self.message,
            traceback_text=self.traceback,
            exc_pickle=self._exc_pickle,
            job_id=self.job_id,
            attempt=self.attempt,
        )


class Job:
    """A handle on one stored job. Cheap to create; every property reads storage."""

    __slots__ = ("id", "queue")

    def __init__(self, queue: Queue, job_id: int) -> None:
        self.queue = queue
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.queue is self.queue

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def status(self) -> str:
        """pending, scheduled, running, complete, dead, cancelled, expired or waiting (for dependencies)."""
        return self.queue._engine.status(self.id)

    def done(self) -> bool:
        """Whether the job has finished (complete, dead, cancelled or expired)."""
        return self.status in FINISHED

    def record(self) -> JobRecord:
        """The job's stored row."""
        return self.queue._engine.get(self.id)

    @property
    def errors(self) -> list[AttemptError]:
        """The error history: one entry per failed attempt, oldest first."""
        return [AttemptError.from_record(r) for r in self.queue._engine.errors(self.id)]

    def cancel(self) -> str:
        """Cancel the job.

        A job that has not started never will ("cancelled"); a running one has
        its worker killed by its supervisor ("requested"); a finished one is left
        as it is, and its status is returned.
        """
        return self.queue._engine.cancel(self.id)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job finishes; return its final status."""
        engine = self.queue._engine
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = RESULT_POLL_MIN
        while True:
            status = engine.status(self.id)
            if status in FINISHED:
                return status
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResultTimeoutError(self.id, timeout if timeout is not None else 0.0)
                time.sleep(min(pause, left))
            else:
                time.sleep(pause)
            pause = min(pause * 2, RESULT_POLL_MAX)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its value, or raise its error.

        A job that failed for good raises its last error: the task's own
        exception type with its attributes (or a stand-in that keeps its type
        name, message and traceback), the remote traceback as ``__cause__``. A
        cancelled job raises :class:`~stoker.errors.JobCancelledError`, an
        expired one :class:`~stoker.errors.JobExpiredError`, one whose
        dependency failed :class:`~stoker.errors.DependencyFailedError`; waiting
        past ``timeout`` raises :class:`~stoker.errors.ResultTimeoutError`.
        """
        status = self.wait(timeout)
        if status == "cancelled":
            raise JobCancelledError(self.id)
        if status == "expired":
            raise JobExpiredError(self.id)
        if status == "dead":
            raise self._last_error()
        record = self.record()
        if record.result is None:
            raise StokerError(f"job {self.id} is complete but its result has expired")
        return serialization.loads(record.result)

    def _last_error(self) -> BaseException:
        errors = self.queue._engine.errors(self.id)
        if not errors:
            return StokerError(f"job {self.id} is dead without an error record")
        if errors[-1].kind == "dependency":
            for dep_id, dep_status in self.queue._engine.dependencies(self.id):
                if dep_status in ("dead", "cancelled", "expired"):
                    return DependencyFailedError(self.id, dep_id, dep_status)
        return AttemptError.from_record(errors[-1]).exception()

    def dependencies(self) -> list[tuple[Job, str]]:
        """The jobs this job depends on, with their statuses, in the order given."""
        return [
            (Job(self.queue, dep_id), status) for dep_id, status in self.queue._engine.dependencies(self.id)
        ]
