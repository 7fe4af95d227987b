"""Waiting for jobs: the waiters of this process, the results its supervisors
kept for them, and the pace of a wait that polls.

The supervisor (``pool/``) calls :func:`notify_outcomes` after it stored
outcomes, :func:`pool_failed` when its workers cannot start; ``Job.result``
and ``gather`` (``job.py``) wait here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..errors import InvalidOptionError, ResultTimeoutError

if TYPE_CHECKING:
    from .._core import Engine

#: Waiting for a result. A supervisor running in the caller's process wakes its
#: waiters as soon as it has stored outcomes (:func:`notify_outcomes`). A result stored by
#: another process is noticed through SQLite's change counter, one cheap read
#: that touches no table (a few microseconds): every RESULT_POLL_FIRST seconds
#: for the first RESULT_FIRST_PERIOD seconds of a wait, so a quick job's result
#: is in hand a fraction of a millisecond after it was stored; then every
#: RESULT_POLL_FAST seconds up to RESULT_FAST_PERIOD; then every
#: RESULT_POLL_SLOW seconds, so a long wait costs next to nothing. The job's
#: status is read only when the counter moved.
RESULT_POLL_FIRST = 0.0002
RESULT_FIRST_PERIOD = 0.1
RESULT_POLL_FAST = 0.001
RESULT_FAST_PERIOD = 5.0
RESULT_POLL_SLOW = 0.05
#: A synchronous wait on a database that a supervisor of this process serves is
#: woken by that supervisor as soon as it has stored the job's outcome
#: (:func:`notify_outcomes`), so it polls only as a backstop (an outcome stored
#: by a supervisor of another process): a fast poll there would take the GIL
#: from the supervisor thread for nothing.
RESULT_POLL_NOTIFIED = 0.005
#: The results that supervisors of this process stored last are kept, up to
#: this many bytes and this many jobs, so that ``result()`` of a job that
#: completed before it was called (results collected after a batch) reads
#: nothing back. Completion is final, so a kept result is always the job's.
#: More holds more memory; fewer sends more late readers to the database.
RECENT_RESULTS_BYTES = 8 << 20
RECENT_RESULTS_JOBS = 20_000


class Watchers:
    """Which threads of this process wait for which jobs.

    A supervisor in this process wakes exactly the waiters of the jobs whose
    outcomes it stored, so a waiter sleeps until its own job is done rather
    than waking at every commit. Jobs are keyed by id alone: a waiter of job 5
    of another database may be woken too, and then simply looks again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, set[threading.Event]] = {}

    def watch(self, job_ids: Iterable[int]) -> threading.Event:
        event = threading.Event()
        with self._lock:
            for job_id in job_ids:
                self._events.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_ids: Iterable[int], event: threading.Event) -> None:
        with self._lock:
            for job_id in job_ids:
                events = self._events.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._events[job_id]

    def notify(self, job_ids: Iterable[int] | None) -> None:
        with self._lock:
            if not self._events:
                return
            if job_ids is None:
                woken = {event for events in self._events.values() for event in events}
            else:
                woken = {event for job_id in job_ids for event in self._events.get(job_id, ())}
        for event in woken:
            event.set()


#: The waiters of this process.
WATCHERS = Watchers()


class RecentResults:
    """The result bytes of the jobs the supervisors of this process completed
    last, oldest dropped first (see ``RECENT_RESULTS_BYTES``)."""

    def __init__(self, max_bytes: int, max_jobs: int) -> None:
        self._lock = threading.Lock()
        self._results: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.max_jobs = max_jobs

    def add(self, database: str, results: Mapping[int, bytes]) -> None:
        with self._lock:
            for job_id, data in results.items():
                if len(data) > self.max_bytes:
                    continue
                self._results[database, job_id] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes or len(self._results) > self.max_jobs:
                _, dropped = self._results.popitem(last=False)
                self._bytes -= len(dropped)

    def get(self, database: str, job_id: int) -> bytes | None:
        with self._lock:
            return self._results.get((database, job_id))

    def forget(self, database: str) -> None:
        """Drop the results of ``database`` (its last supervisor here stopped)."""
        with self._lock:
            for key in [key for key in self._results if key[0] == database]:
                self._bytes -= len(self._results.pop(key))


#: The results the supervisors of this process stored last.
RECENT_RESULTS = RecentResults(RECENT_RESULTS_BYTES, RECENT_RESULTS_JOBS)


def notify_outcomes(
    job_ids: Iterable[int] | None = None, results: Mapping[int, bytes] | None = None, database: str = ""
) -> None:
    """Wake the waiters of this process whose jobs may have finished (all of them for ``None``).

    ``results``: the stored result bytes of the jobs among ``job_ids`` that
    completed, in the database ``database`` (its :func:`~stoker.client.local.local_key`),
    kept before the waiters wake, so they find them without reading the database.
    """
    if results and database:
        RECENT_RESULTS.add(database, results)
    WATCHERS.notify(job_ids)


def forget_results(database: str) -> None:
    """Drop the kept results of ``database``: no supervisor of this process serves it now."""
    RECENT_RESULTS.forget(database)


def wait_timeout(timeout: object) -> float | None:
    """The seconds a wait may last, None for ever.

    ``None`` and ``math.inf`` wait for ever; 0 looks once. A NaN, a negative
    number or anything else is refused with InvalidOptionError: a wait with
    such a deadline would never end (NaN compares false with every time) or
    means nothing.
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise InvalidOptionError(
            f"timeout must be None (wait for ever) or a number of seconds >= 0, got {timeout!r}"
        )
    return None if math.isinf(timeout) else float(timeout)


#: Why the last worker pool of this process over a database (its local_key)
#: could not start its workers, until another one starts: a wait for a job of
#: that database, with no supervisor of this process left to serve it, raises
#: it instead of waiting out its timeout for workers that will not come.
_POOL_FAILURES: dict[str, BaseException] = {}


def pool_failed(database: str, error: BaseException) -> None:
    """A pool over ``database`` stopped with ``error``: tell this process's waiters."""
    _POOL_FAILURES[database] = error
    WATCHERS.notify(None)


def forget_pool_failure(database: str) -> None:
    """A pool over ``database`` starts: its waiters wait for it again."""
    _POOL_FAILURES.pop(database, None)


def pool_failure(database: str) -> BaseException | None:
    """Why the last pool of this process over ``database`` stopped, if it failed (see :func:`pool_failed`)."""
    return _POOL_FAILURES.get(database) if _POOL_FAILURES else None


class Waiter:
    """Paces one wait: when to look again, and whether anything changed."""

    def __init__(
        self, engines: list[Engine], timeout: float | None, job_id: int, *, notified: bool = False
    ) -> None:
        timeout = wait_timeout(timeout)
        self.engines = engines
        self.notified = notified
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self.timeout = timeout
        self.job_id = job_id
        # A notified wait is woken by the supervisor that stores its outcome
        # and polls only as a backstop: its first look after a pause re-reads
        # the status, so the change counter need not be read before the wait.
        self.versions: list[int] | None = None if notified else self._read_versions()

    def _read_versions(self) -> list[int]:
        return [engine.data_version() for engine in self.engines]

    def pause(self) -> float:
        """Seconds to wait before looking again; ResultTimeoutError once past the deadline."""
        now = time.monotonic()
        elapsed = now - self.started
        if self.notified:
            pause = RESULT_POLL_NOTIFIED
        elif elapsed < RESULT_FIRST_PERIOD:
            pause = RESULT_POLL_FIRST
        elif elapsed < RESULT_FAST_PERIOD:
            pause = RESULT_POLL_FAST
        else:
            pause = RESULT_POLL_SLOW
        if self.deadline is None:
            return pause
        left = self.deadline - now
        if left <= 0:
            raise ResultTimeoutError(self.job_id, self.timeout if self.timeout is not None else 0.0)
        return min(pause, left)

    def changed(self) -> bool:
        """Whether any of the databases changed since the last look (True at a first look)."""
        versions = self._read_versions()
        moved = versions != self.versions
        self.versions = versions
        return moved
