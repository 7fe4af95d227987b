"""The exception tree of stoker.

Every error stoker raises derives from :class:`StokerError`. Where a built-in
exception already says the same thing, the stoker error subclasses it too, so
code that catches the built-in keeps working: a missing job is also a
``KeyError``, a wrong option value is also a ``ValueError``, waiting too long
is also a ``TimeoutError``.

The Rust engine raises these classes itself (its error enum is converted in one
place, ``rust/stoker-py/src/errors.rs``), so their constructor signatures are a
contract: change them only together with that file.

Errors cross process boundaries (a worker raises, the caller re-raises), so
each class pickles round-trip: classes whose constructor takes more than a
message define ``__reduce__`` to rebuild themselves from their own fields.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CircuitBreakerOpenError",
    "DependencyFailedError",
    "InvalidOptionError",
    "JobCancelledError",
    "JobExpiredError",
    "JobNotFoundError",
    "JobStateError",
    "LeaseExpiredError",
    "MainModuleNotGuardedError",
    "MaxRetriesExceededError",
    "MemoryLimitExceededError",
    "MiddlewareError",
    "NoResultError",
    "NotAStokerDatabaseError",
    "PluginTriggerError",
    "QueueError",
    "RateLimitExceededError",
    "RejectedError",
    "RemoteTaskError",
    "RemoteTraceback",
    "RequeueLimitError",
    "ResultExpiredError",
    "ResultGetError",
    "ResultNotReadyError",
    "ResultTimeoutError",
    "ScheduleCancelledError",
    "ScheduleNotFoundError",
    "SchemaVersionError",
    "SecurityError",
    "SendError",
    "SerializationError",
    "SoftTimeoutError",
    "StokerError",
    "StorageBusyError",
    "StorageError",
    "TaskFailedError",
    "TaskRegisteredTwiceError",
    "TaskTimeoutError",
    "UnknownTaskError",
    "WorkerLostError",
    "WorkerStartupError",
]


class StokerError(Exception):
    """Base class of every error stoker raises."""


# --- storage -----------------------------------------------------------------


class StorageError(StokerError):
    """The database could not be read or written (the message says why)."""


class NotAStokerDatabaseError(StorageError):
    """The file exists but is not a stoker database (or not a database at all)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path!r} is not a stoker database: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class SchemaVersionError(StorageError):
    """The database was written by a stoker with a different schema version."""

    def __init__(self, path: str, found: int, expected: int) -> None:
        super().__init__(f"{path!r} has stoker schema version {found}, this stoker reads version {expected}")
        self.path = path
        self.found = found
        self.expected = expected

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.found, self.expected))


class StorageBusyError(StorageError):
    """The database stayed locked by another writer past the busy timeout."""


# --- calls with wrong arguments ----------------------------------------------------


class InvalidOptionError(StokerError, ValueError):
    """An option has a value stoker cannot accept (the message names it)."""


class JobNotFoundError(StokerError, KeyError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job with id {self.job_id}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id,))


class JobStateError(StokerError):
    """The operation does not apply to a job in its current state."""

    def __init__(self, job_id: int, status: str, operation: str) -> None:
        super().__init__(f"cannot {operation} job {job_id}: it is {status}")
        self.job_id = job_id
        self.status = status
        self.operation = operation

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.status, self.operation))


class UnknownTaskError(StokerError, LookupError):
    """No task of this name is registered (on the caller, or in the worker)."""

    def __init__(self, task_name: str, message: str = "") -> None:
        super().__init__(
            message
            or f"no task named {task_name!r} is registered; is the module that "
            "defines it imported by the queue's module?"
        )
        self.task_name = task_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, str(self)))


class SerializationError(StokerError):
    """Arguments, a result or an error could not be pickled or unpickled."""


# --- outcomes of jobs ----------------------------------------------------------


class TaskFailedError(StokerError):
    """Base of the errors that stand for a failed attempt of a job.

    ``job_id`` is the job, when known; ``attempt`` the attempt (1 for the first run).
    """

    def __init__(self, message: str, *, job_id: int | None = None, attempt: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempt = attempt

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_keywords, (type(self), (str(self),), self._keywords()))

    def _keywords(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "attempt": self.attempt}


def _rebuild_keywords(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return cls(*args, **kwargs)


class RemoteTaskError(TaskFailedError):
    """Stand-in for a task's exception that could not cross back to the caller.

    It keeps what can always cross: the exception's qualified type name, its
    message, and the formatted remote traceback (also attached as ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str,
        remote_traceback: str = "",
        job_id: int | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(f"{type_name}: {message}", job_id=job_id, attempt=attempt)
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_keywords,
            (
                type(self),
                (self.remote_message,),
                {"type_name": self.type_name, "remote_traceback": self.remote_traceback, **self._keywords()},
            ),
        )


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in a worker.

    stoker sets it as the ``__cause__`` of a re-raised task exception, so the
    printed traceback shows where the error happened in the worker.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class TaskTimeoutError(TaskFailedError, TimeoutError):
    """The attempt ran past its hard timeout and its worker process was killed."""


class WorkerLostError(TaskFailedError):
    """The worker process running the job died (the message names its exit code or signal)."""


class LeaseExpiredError(WorkerLostError):
    """The job's lease ran out: its supervisor stopped heartbeating (it died or hung)."""


class JobCancelledError(StokerError):
    """The job was cancelled; it has no result."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id,))


class ResultTimeoutError(StokerError, TimeoutError):
    """Waiting for a job's result took longer than the caller's timeout."""

    def __init__(self, job_id: int, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g} s")
        self.job_id = job_id
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.timeout))


class WorkerStartupError(StokerError):
    """Worker processes keep failing before they can take a job (the message holds the cause)."""


class MainModuleNotGuardedError(WorkerStartupError):
    """The main module sends jobs, waits for results or starts a pool when it is imported.

    Worker processes start with spawn or forkserver, which import the main
    module again in each of them; that code must run under
    ``if __name__ == "__main__":``. Raised at once, without retries.
    """


# --- results --------------------------------------------------------------------


class ResultGetError(StokerError):
    """The job finished but its result cannot be read (expired, or not unpicklable)."""

    def __init__(self, job_id: int, reason: str) -> None:
        super().__init__(f"the result of job {job_id} cannot be read: {reason}")
        self.job_id = job_id
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.reason))


class NoResultError(ResultGetError):
    """The job's task does not store results (``store_result=False``)."""

    def __init__(self, job_id: int, reason: str = "its task was registered with store_result=False") -> None:
        super().__init__(job_id, reason)


class ResultExpiredError(ResultGetError):
    """The job finished longer ago than its task's ``result_ttl``: its result and
    error history are gone (or go at the next purge), and are not served any more."""

    def __init__(self, job_id: int, expired_ms: int | None = None) -> None:
        when = "" if expired_ms is None else f" at {_utc(expired_ms)}"
        super().__init__(job_id, f"it expired{when} (its task's result_ttl ran out)")
        self.expired_ms = expired_ms

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.expired_ms))


def _utc(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


class ResultNotReadyError(StokerError):
    """The job has not finished, and the caller asked not to wait."""

    def __init__(self, job_id: int, status: str) -> None:
        super().__init__(f"job {job_id} is not finished: it is {status}")
        self.job_id = job_id
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.status))


class MaxRetriesExceededError(TaskFailedError):
    """The job failed on every attempt it was allowed; ``__cause__`` is the last error."""

    def __init__(self, message: str, *, job_id: int | None = None, attempt: int | None = None) -> None:
        super().__init__(message, job_id=job_id, attempt=attempt)


# --- sending and registering ------------------------------------------------------------


class SendError(StokerError):
    """The call could not be sent (the message names the task and the cause)."""

    def __init__(self, task_name: str, reason: str) -> None:
        super().__init__(f"cannot send {task_name}: {reason}")
        self.task_name = task_name
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.reason))


class TaskRegisteredTwiceError(StokerError, ValueError):
    """Two different functions were registered under one task name for one database.

    Task names are per database: a worker finds the task of a job by its name
    among the tasks of its supervisor's database. Queues of other databases
    may use the same name for other functions.
    """

    def __init__(self, task_name: str, first: str, second: str, database: str = "") -> None:
        where = f" on a queue of {database!r}" if database else ""
        super().__init__(
            f"task name {task_name!r} is taken by {first}{where}; cannot register {second} "
            "under it too (a worker of that database finds a task by its name alone)"
        )
        self.task_name = task_name
        self.first = first
        self.second = second
        self.database = database

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.first, self.second, self.database))


class SecurityError(StokerError):
    """A payload or result failed its signature check; it was not unpickled."""

    def __init__(self, job_id: int | None, what: str) -> None:
        where = f"job {job_id}" if job_id is not None else "a job"
        super().__init__(f"the {what} of {where} has a missing or wrong signature; it was not unpickled")
        self.job_id = job_id
        self.what = what

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.what))


class QueueError(StokerError):
    """The queue cannot do what was asked in its current state (the message says why)."""


# --- raised inside tasks ----------------------------------------------------------------


class RejectedError(TaskFailedError):
    """The task rejected its job (``ctx.reject()``): it ends dead and is not retried."""


class SoftTimeoutError(TaskFailedError, TimeoutError):
    """The task ran past its soft timeout (raised by ``ctx.check_timeout()``)."""


class PluginTriggerError(StokerError):
    """Raised by ``ctx.plugin_error(**details)``: plugin handlers may supply a result instead."""

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or f"plugin trigger {details!r}")
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_keywords, (type(self), (self.message,), dict(self.details)))


class MemoryLimitExceededError(TaskFailedError, MemoryError):
    """The attempt went over its task's memory limit and its worker was killed."""


class MiddlewareError(TaskFailedError):
    """A middleware or hook raised; the message names it and the stage."""


class RequeueLimitError(TaskFailedError):
    """The task asked to be requeued more times than allowed."""


# --- flow control and schedules --------------------------------------------------


class JobExpiredError(StokerError):
    """The job was still waiting when its expiry passed; it never ran and has no result."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} expired before it started")
        self.job_id = job_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id,))


class DependencyFailedError(StokerError):
    """A job the job depended on ended dead, cancelled or expired, so the job never ran."""

    def __init__(self, job_id: int, dependency_id: int, dependency_status: str) -> None:
        super().__init__(f"job {job_id} depends on job {dependency_id}, which ended {dependency_status}")
        self.job_id = job_id
        self.dependency_id = dependency_id
        self.dependency_status = dependency_status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.dependency_id, self.dependency_status))


class RateLimitExceededError(StokerError):
    """A send that asked to fail rather than wait found its rate limit without a token.

    ``key`` is ``task:NAME`` or ``queue:NAME``; ``retry_after`` the seconds until a token.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(f"rate limit of {key} exceeded; retry in {retry_after:g} s")
        self.key = key
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.retry_after))


class CircuitBreakerOpenError(StokerError):
    """A send that asked to fail rather than wait found the task's circuit breaker open.

    ``open_until`` is the Unix time (seconds) after which a probe job may run.
    """

    def __init__(self, task_name: str, open_until: float) -> None:
        super().__init__(f"the circuit breaker of task {task_name} is open until {open_until:.3f}")
        self.task_name = task_name
        self.open_until = open_until

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.open_until))


class ScheduleNotFoundError(StokerError, KeyError):
    """No schedule has this id (or name)."""

    def __init__(self, schedule_id: int | str) -> None:
        super().__init__(schedule_id)
        self.schedule_id = schedule_id

    def __str__(self) -> str:
        return f"no schedule {self.schedule_id!r}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.schedule_id,))


class ScheduleCancelledError(StokerError):
    """Raised by a schedule source's ``pre_send`` to veto one fire of a schedule.

    The fire is skipped (the schedule goes on) and recorded with outcome
    ``vetoed`` and this error's message.
    """
