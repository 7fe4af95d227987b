"""Handles on stored jobs: status, result, error history, cancellation, and
``gather``. How a wait is paced and woken is ``waiting.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from .._base import serialization
from .._base.remote_errors import Unseal, rebuild
from ..errors import (
    DependencyFailedError,
    JobCancelledError,
    JobExpiredError,
    MaxRetriesExceededError,
    NoResultError,
    ResultExpiredError,
    ResultGetError,
    ResultNotReadyError,
    ResultTimeoutError,
    StokerError,
)
from .waiting import RECENT_RESULTS, WATCHERS, Waiter, pool_failure, wait_timeout

# Re-exported: the pool imports these from here.

if TYPE_CHECKING:
    from .._core import Engine, ErrorRecord, JobRecord
    from .queue import Queue

#: Statuses after which a job never changes again.
FINISHED = frozenset({"complete", "dead", "cancelled", "expired"})


def retention_ended(record: JobRecord, now_ms: int) -> int | None:
    """When the result and error history of a finished job expired (``result_ttl``), if they have.

    Judged on the engine's clock (the database server's, on PostgreSQL), from
    the row's own finish time and retention, so every process agrees on the
    moment, whether the purge that deletes them (every supervisor's
    heartbeat) has run yet or not, and however long ago it did.
    """
    if record.result_ttl_ms is None or record.finished_ms is None:
        return None
    if record.status not in ("complete", "dead"):
        return None
    expires_ms = record.finished_ms + record.result_ttl_ms
    return expires_ms if now_ms >= expires_ms else None


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
    """The qualified name of the exception's type (``apps.tasks.QuotaError``); also ``type``."""
    message: str
    traceback: str
    failed_at: datetime
    worker: str
    _exc_pickle: bytes | None
    _unseal: Unseal | None = field(default=None, repr=False, compare=False)
    """Checks the pickle's signature first, on a signed queue (``Queue.sealer``)."""

    @classmethod
    def from_record(cls, record: ErrorRecord, queue: Queue | None = None) -> AttemptError:
        """The attempt of ``record``; ``queue`` checks its pickle's signature if it signs."""
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
            _unseal=queue.sealer.unseal if queue is not None and queue.sealer.signs else None,
        )

    @property
    def type(self) -> str:
        """The same as :attr:`type_name`: the qualified name of the exception's type."""
        return self.type_name

    def exception(self) -> BaseException:
        """The exception of this attempt, rebuilt (see :mod:`stoker._base.remote_errors`).

        On a signed queue, a pickle without the right signature raises
        :class:`~stoker.errors.SecurityError` (naming the job and the attempt)
        and is never unpickled.
        """
        return rebuild(
            exc_type=self.type_name,
            message=self.message,
            traceback_text=self.traceback,
            exc_pickle=self._exc_pickle,
            job_id=self.job_id,
            attempt=self.attempt,
            unseal=self._unseal,
        )


class Progress(NamedTuple):
    """The latest progress a running task reported."""

    current: float
    total: float | None
    message: str | None


@dataclass(frozen=True)
class Outcome:
    """Everything known about a finished job: its value or error, and what it cost."""

    job_id: int
    task_name: str
    status: str
    """complete, dead or cancelled."""
    value: Any
    """The return value (None for a failure, or a task that stores no result)."""
    error: BaseException | None
    """The error the caller would get from ``Job.result()``, or None."""
    attempts: int
    labels: dict[str, Any]
    worker: str | None
    """``owner/pid`` of the worker that ran the last attempt, when known."""
    execution_time: float | None
    """Wall-clock seconds of the last attempt."""
    usage: dict[str, Any] = field(default_factory=dict)
    """Resources of the last attempt: wall_s, cpu_user_s, cpu_system_s, peak_rss_kib."""
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> Outcome:
        """Raise the job's error, if it has one; otherwise return self."""
        if self.error is not None:
            raise self.error
        return self


class Job:
    """A handle on one stored job. Cheap to create; every property reads storage."""

    __slots__ = ("_store", "id", "queue")

    def __init__(self, queue: Queue, job_id: int, engine: Engine | None = None) -> None:
        self.queue = queue
        self.id = job_id
        # Test mode hands out jobs of its private database; they keep reading it.
        self._store = engine

    @property
    def _engine(self) -> Engine:
        return self._store if self._store is not None else self.queue.engine

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.queue is self.queue

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def status(self) -> str:
        """pending, scheduled, running, complete, dead, cancelled, expired or waiting (for dependencies)."""
        return self._engine.status(self.id)

    def done(self) -> bool:
        """Whether the job has finished (complete, dead, cancelled or expired)."""
        return self.status in FINISHED

    ready = done

    async def ready_async(self) -> bool:
        """``ready`` for async code."""
        return await asyncio.to_thread(self.done)

    @property
    def progress(self) -> Progress | None:
        """The latest progress its running attempt reported (None before any)."""
        text = self.record().progress
        if text is None:
            return None
        current, total, message = json.loads(text)
        return Progress(current, total, message)

    @property
    def labels(self) -> dict[str, Any]:
        """The labels the job was sent with."""
        text = self.record().labels
        return json.loads(text) if text else {}

    def record(self) -> JobRecord:
        """The job's stored row."""
        return self._engine.get(self.id)

    @property
    def errors(self) -> list[AttemptError]:
        """The error history: one entry per failed attempt, oldest first (none once it expired)."""
        records = self._engine.errors(self.id)
        if records and retention_ended(self.record(), self._engine.now_ms()) is not None:
            return []
        return [AttemptError.from_record(r, self.queue) for r in records]

    def cancel(self) -> str:
        """Cancel the job.

        A job that has not started never will ("cancelled"); a running one has
        its worker killed by its supervisor ("requested"); a finished one is left
        as it is, and its status is returned.
        """
        outcome = self._engine.cancel(self.id)
        if outcome == "requested" and self._store is None:
            # The supervisor running it kills it now rather than at its next poll.
            self.queue.database.wake(new_work=False)
        return outcome

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job finishes; return its final status."""
        return self._wait(timeout)[0]

    def _kept_result(self) -> bytes | None:
        """The result bytes a supervisor of this process stored for this job, if it kept them."""
        return None if self._store is not None else RECENT_RESULTS.get(self.queue.database.key, self.id)

    def _raise_pool_failure(self) -> None:
        """The worker pool of this process for this database could not start: say why."""
        failure = pool_failure(self.queue.database.key)
        if failure is not None and self._store is None and not self.queue.database.served_here():
            raise type(failure)(str(failure)) from failure

    def _wait(self, timeout: float | None) -> tuple[str, bytes | None]:
        """Wait for the job to finish: its status, and its result bytes if a
        supervisor of this process stored and kept them (see ``notify_outcomes``)."""
        timeout = wait_timeout(timeout)  # Refused even when the result is at hand.
        kept = self._kept_result()
        if kept is not None:
            return "complete", kept
        engine = self._engine
        notified = self._store is None and self.queue.database.served_here()
        # Watched before the first look, so an outcome stored right after it
        # still wakes this wait.
        waiter = Waiter([engine], timeout, self.id, notified=notified)
        woken = WATCHERS.watch((self.id,))
        try:
            status = engine.status(self.id)
            while status not in FINISHED:
                self._raise_pool_failure()
                pause = waiter.pause()
                if woken.wait(pause):
                    woken.clear()
                    kept = self._kept_result()
                    if kept is not None:
                        return "complete", kept
                    status = engine.status(self.id)
                elif waiter.changed():
                    status = engine.status(self.id)
        finally:
            WATCHERS.unwatch((self.id,), woken)
        return status, None

    async def wait_async(self, timeout: float | None = None) -> str:
        """``wait`` for async code: polls without blocking the event loop."""
        engine = self._engine
        waiter = Waiter([engine], timeout, self.id)
        status = engine.status(self.id)
        while status not in FINISHED:
            await asyncio.sleep(waiter.pause())
            if waiter.changed():
                status = engine.status(self.id)
        return status

    async def result_async(self, timeout: float | None = None, *, original: bool = True) -> Any:
        """``result`` for async code."""
        await self.wait_async(timeout)
        return self._finished_result(original)

    async def outcome_async(self, timeout: float | None = None) -> Outcome:
        """``outcome`` for async code."""
        await self.wait_async(timeout)
        return self._outcome()

    def outcome(self, timeout: float | None = None) -> Outcome:
        """Wait for the job and return its full :class:`Outcome` (never raises the task's error)."""
        self.wait(timeout)
        return self._outcome()

    def result_now(self, *, original: bool = True) -> Any:
        """The result if the job has finished; :class:`ResultNotReadyError` if not."""
        status = self.status
        if status not in FINISHED:
            raise ResultNotReadyError(self.id, status)
        return self._finished_result(original)

    def _outcome(self) -> Outcome:
        record = self.record()
        usage = json.loads(record.usage) if record.usage else {}
        value: Any = None
        error: BaseException | None = None
        try:
            value = self._finished_result(True, record)
        except NoResultError:
            value = None
        except BaseException as exc:
            error = exc
        return Outcome(
            job_id=self.id,
            task_name=record.task_name,
            status=record.status,
            value=value,
            error=error,
            attempts=record.attempt,
            labels=json.loads(record.labels) if record.labels else {},
            worker=usage.get("worker"),
            execution_time=usage.get("wall_s"),
            usage=usage,
            finished_at=_datetime(record.finished_ms),
        )

    def result(self, timeout: float | None = None, *, original: bool = True) -> Any:
        """Wait for the job and return its value, or raise its error.

        A job that failed for good raises its last error: the task's own
        exception type with its attributes (or a stand-in that keeps its type
        name, message and traceback), the remote traceback as ``__cause__``. A
        cancelled job raises :class:`~stoker.errors.JobCancelledError`, an
        expired one :class:`~stoker.errors.JobExpiredError`, one whose
        dependency failed :class:`~stoker.errors.DependencyFailedError`; waiting
        past ``timeout`` raises :class:`~stoker.errors.ResultTimeoutError`.

        With ``original=False``, a job that failed after retries raises
        :class:`~stoker.errors.MaxRetriesExceededError` with the last error as
        its ``__cause__``. A task with ``store_result=False`` raises
        :class:`~stoker.errors.NoResultError` once complete.
        """
        # A job whose result a supervisor of this process stored and kept costs
        # no read (see notify_outcomes); any other finished job costs a status
        # read and a read of its row.
        _, kept = self._wait(timeout)
        if kept is not None:
            return self._load_result(kept)
        # Not kept here: the row holds the outcome.
        return self._finished_result(original, self.record())

    def _finished_result(self, original: bool, record: JobRecord | None = None) -> Any:
        if record is None:
            kept = self._kept_result()
            if kept is not None:
                return self._load_result(kept)
            record = self.record()
        if record.status == "cancelled":
            raise JobCancelledError(self.id)
        if record.status == "expired":
            raise JobExpiredError(self.id)
        expired_ms = retention_ended(record, self._engine.now_ms())
        if expired_ms is not None and not (
            record.status == "complete" and record.result is None and self._stores_no_result(record)
        ):
            raise ResultExpiredError(self.id, expired_ms)
        if record.status == "dead":
            raise self._last_error(original, record.attempt)
        if record.result is None:
            raise NoResultError(self.id)
        return self._load_result(record.result)

    def _stores_no_result(self, record: JobRecord) -> bool:
        """Whether the job's task, as registered here, stores no result (``store_result=False``)."""
        task = self.queue.tasks.get(record.task_name)
        return task is not None and not task.options_.store_result

    def _load_result(self, stored: bytes) -> Any:
        """The value of a complete job's stored result bytes."""
        data = self.queue.sealer.unseal(stored, job_id=self.id, what="result")
        try:
            return serialization.loads(data)
        except Exception as error:
            raise ResultGetError(self.id, f"it cannot be unpickled here: {error!r}") from error

    def _last_error(self, original: bool = True, attempts: int = 0) -> BaseException:
        errors = self._engine.errors(self.id)
        if not errors:
            return StokerError(f"job {self.id} is dead without an error record")
        if errors[-1].kind == "dependency":
            for dep_id, dep_status in self._engine.dependencies(self.id):
                if dep_status in ("dead", "cancelled", "expired"):
                    return DependencyFailedError(self.id, dep_id, dep_status)
        last = AttemptError.from_record(errors[-1], self.queue).exception()
        if original or len(errors) < 2:
            return last
        wrapped = MaxRetriesExceededError(
            f"job {self.id} failed {len(errors)} times; the last error: {type(last).__name__}: {last}",
            job_id=self.id,
            attempt=attempts,
        )
        wrapped.__cause__ = last
        return wrapped

    def dependencies(self) -> list[tuple[Job, str]]:
        """The jobs this job depends on, with their statuses, in the order given."""
        return [
            (Job(self.queue, dep_id, self._store), status)
            for dep_id, status in self._engine.dependencies(self.id)
        ]


def gather(
    jobs: Sequence[Job], timeout: float | None = None, *, return_exceptions: bool = False
) -> list[Any]:
    """Wait for many jobs; return their results in order, or raise the first error (in order).

    One status read per queue per poll, whatever the number of jobs. With
    ``return_exceptions=True`` errors are returned in place of results.
    """
    notified = all(job._store is None and job.queue.database.served_here() for job in jobs)
    waiter = _gather_waiter(jobs, timeout, notified=notified)
    job_ids = [job.id for job in jobs]
    woken = WATCHERS.watch(job_ids)
    try:
        while not _all_finished(jobs):
            pause = _gather_pause(waiter, jobs)
            while True:
                if woken.wait(pause):
                    woken.clear()
                    break
                if waiter.changed():
                    break
                pause = _gather_pause(waiter, jobs)
    finally:
        WATCHERS.unwatch(job_ids, woken)
    return _collect(jobs, return_exceptions)


async def gather_async(
    jobs: Sequence[Job], timeout: float | None = None, *, return_exceptions: bool = False
) -> list[Any]:
    """``gather`` for async code."""
    waiter = _gather_waiter(jobs, timeout)
    while not _all_finished(jobs):
        await asyncio.sleep(_gather_pause(waiter, jobs))
        while not waiter.changed():
            await asyncio.sleep(_gather_pause(waiter, jobs))
    return _collect(jobs, return_exceptions)


def _gather_waiter(jobs: Sequence[Job], timeout: float | None, *, notified: bool = False) -> Waiter:
    engines: dict[int, Engine] = {}
    for job in jobs:
        engines.setdefault(id(job._engine), job._engine)
    return Waiter(list(engines.values()), timeout, jobs[0].id if jobs else 0, notified=notified)


def _gather_pause(waiter: Waiter, jobs: Sequence[Job]) -> float:
    try:
        return waiter.pause()
    except ResultTimeoutError:
        pending = next(j for j in jobs if j.status not in FINISHED)
        raise ResultTimeoutError(pending.id, waiter.timeout if waiter.timeout is not None else 0.0) from None


def _all_finished(jobs: Iterable[Job]) -> bool:
    by_engine: dict[int, tuple[Engine, list[int]]] = {}
    for job in jobs:
        engine = job._engine
        by_engine.setdefault(id(engine), (engine, []))[1].append(job.id)
    for engine, ids in by_engine.values():
        if any(status not in FINISHED for status in engine.statuses(ids)):
            return False
    return True


def _collect(jobs: Sequence[Job], return_exceptions: bool) -> list[Any]:
    results: list[Any] = []
    for job in jobs:
        try:
            results.append(job._finished_result(True))
        except Exception as error:
            if not return_exceptions:
                raise
            results.append(error)
    return results
