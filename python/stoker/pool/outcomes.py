"""Outcomes: what a worker's message (or its death) becomes in storage.

- :class:`OutcomeWriter` is the one place that turns an outcome into its
  storage call: a failure with its error record, a cancel, a release, a
  re-queue, and a requested re-queue with its bound (``MAX_REQUEUES``).
  Test mode calls it directly (:func:`store`); the supervisor calls it
  through its outbox.
- :class:`Outcomes` is the supervisor's side: it reads each worker message
  and acts on it by its type (``Done`` is batched, to be stored with the next
  claim in one commit; ``Ready`` and ``Dropped`` go to the worker processes and
  the dispatcher), turns a
  killed or lost worker's job into its outcome (timeout, memory, cancel,
  crash, or back to pending), and wakes this process's waiters of what it stored.
- :class:`StorageOutbox` keeps the outcomes to store, in order, while the
  database fails, and retries them with a backoff; it stops the supervisor
  once storage has failed for ``STORAGE_FAILURE_LIMIT`` seconds.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._base import serialization
from .._base.remote_errors import CapturedError, fail_storably, qualified_name, storable, storable_text
from .._core import Engine
from ..client.context import PROGRESS_MAX_CHARS
from ..client.events import handler_name
from ..client.waiting import notify_outcomes
from ..errors import (
    MemoryLimitExceededError,
    RequeueLimitError,
    SerializationError,
    StorageError,
    TaskTimeoutError,
    WorkerLostError,
)
from . import tunables
from .channel import ProtocolError
from .guardian import kill_tree
from .processes import Running, Worker, describe_exit
from .protocol import Cancelled, Done, Dropped, Failed, Outcome, Progress, Ready, Requeue, StartupError

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("stoker.supervisor")

#: A completion, as the engine stores it: job id, token, result, usage JSON.
Completion = tuple[int, int, bytes | None, str | None]


def supervisor_error(error: BaseException) -> CapturedError:
    """An error raised by the supervisor itself, stored like a task's error.

    It is stored without a pickle: the caller rebuilds stoker's own errors from
    their type name and message (``remote_errors.rebuild``), so there is no
    pickle to sign on a signed queue, nor one a forger could swap.
    """
    return CapturedError(
        exc_type=qualified_name(type(error)),
        message=str(error),
        traceback=f"{qualified_name(type(error))}: {error}\n",
        exc_pickle=None,
    )


class OutcomeWriter:
    """Stores one outcome of an attempt; ``post_save`` is told of each stored (job id, status)."""

    def __init__(self, engine: Callable[[], Engine], post_save: Callable[[int, str], None]) -> None:
        self._engine = engine
        self._post_save = post_save

    def complete(self, job_id: int, token: int, result: bytes | None, usage: str | None) -> None:
        """One completion alone (test mode; the supervisor stores them in batches, with its claim)."""
        if self._engine().complete(job_id, token, result, usage):
            self._post_save(job_id, "complete")
        else:
            log.warning("the outcome of job %s (token %s) was stale and was refused", job_id, token)

    def fail(
        self,
        job_id: int,
        token: int,
        kind: str,
        captured: CapturedError,
        worker: str,
        *,
        retryable: bool,
        usage: str | None,
    ) -> None:
        outcome = fail_storably(self._engine(), job_id, token, kind, captured, worker, retryable, usage)
        if outcome == "stale":
            log.warning("the failure of job %s (token %s) was stale and was refused", job_id, token)
        else:
            self._post_save(job_id, "scheduled" if outcome == "retry" else outcome)

    def finish_cancelled(self, job_id: int, token: int) -> None:
        if self._engine().finish_cancelled(job_id, token):
            self._post_save(job_id, "cancelled")
        else:
            log.warning("job %s was cancelled but its token %s was stale", job_id, token)

    def release(self, job_id: int, token: int) -> None:
        if not self._engine().release(job_id, token):
            log.warning("job %s could not be released: its token %s was stale", job_id, token)

    def requeue(self, job_id: int, token: int) -> None:
        if not self._engine().requeue(job_id, token):
            log.warning("job %s could not be re-queued: its token %s was stale", job_id, token)

    def requeue_on_request(self, job_id: int, token: int, worker: str) -> None:
        """``ctx.requeue()``: back to pending, or failed once the job asked MAX_REQUEUES times."""
        engine = self._engine()
        record = engine.get(job_id)
        requeues = record.attempt - 1 - record.failures - record.crashes
        if requeues < tunables.MAX_REQUEUES:
            engine.requeue(job_id, token)
            self._post_save(job_id, "pending")
            return
        error = RequeueLimitError(
            f"job {job_id} ({record.task_name}) asked to be requeued more than {tunables.MAX_REQUEUES} times",
            job_id=job_id,
            attempt=record.attempt,
        )
        self.fail(job_id, token, "error", supervisor_error(error), worker, retryable=False, usage=None)


def store(writer: OutcomeWriter, outcome: Outcome, worker: str) -> None:
    """Store the outcome a Runner answered, at once (test mode)."""
    if type(outcome) is Done:
        writer.complete(outcome.job_id, outcome.token, outcome.result, outcome.usage)
    elif type(outcome) is Failed:
        writer.fail(
            outcome.job_id,
            outcome.token,
            "error",
            outcome.error,
            worker,
            retryable=outcome.retryable,
            usage=outcome.usage,
        )
    elif type(outcome) is Cancelled:
        writer.finish_cancelled(outcome.job_id, outcome.token)
    elif type(outcome) is Requeue:
        writer.requeue_on_request(outcome.job_id, outcome.token, worker)


class StorageOutbox:
    """Outcomes to store, in order; kept, and retried after a backoff, while storage fails."""

    def __init__(self, path: str, before_each: Callable[[], None]) -> None:
        self._path = path
        self._before_each = before_each
        """Called before each store (bounds the lock wait of a stop)."""
        self._reports: deque[tuple[str, Callable[[], None]]] = deque()
        self.failure_limit = tunables.STORAGE_FAILURE_LIMIT
        self._failing_since: float | None = None
        self.retry_at: float | None = None
        """When storage is tried again after a failure (None: it works)."""
        self._backoff = tunables.STORAGE_RETRY_MIN
        self.giving_up = False
        """Stopping for good: a failure no longer stops the supervisor (it is stopping)."""

    def __len__(self) -> int:
        return len(self._reports)

    @property
    def retrying(self) -> bool:
        return self.retry_at is not None

    def store(self, what: str, report: Callable[[], None]) -> None:
        """Store an outcome now, or keep it (in order) until storage works again."""
        self._reports.append((what, report))
        try:
            self.flush()
        except StorageError as error:
            self.on_error(error, time.monotonic())

    def flush(self) -> None:
        while self._reports:
            what, report = self._reports[0]
            self._before_each()
            try:
                report()
            except StorageError:
                raise  # Kept, in order, for the retry.
            except Exception:
                # Not the storage failing but this one outcome: retrying it would
                # stop every outcome behind it. The job stays leased to this
                # supervisor until its lease expires, and then runs again.
                log.exception("%s could not be stored and was dropped", what)
            self._reports.popleft()

    def on_error(self, error: StorageError, now: float) -> None:
        """Retry later; stop with the error once storage has failed for too long."""
        if self._failing_since is None:
            self._failing_since = now
            log.warning("the database failed (%s); retrying", error)
        failing_for = now - self._failing_since
        if failing_for >= self.failure_limit and not self.giving_up:
            raise StorageError(
                f"stopping: the database {self._path!r} kept failing for {failing_for:.0f} s "
                f"(last error: {error}); the jobs this supervisor was running will run again "
                "when their leases expire"
            ) from error
        self.retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, tunables.STORAGE_RETRY_MAX)

    def on_success(self) -> None:
        if self._failing_since is not None:
            log.warning("the database works again")
        self._failing_since = None
        self._backoff = tunables.STORAGE_RETRY_MIN


class Outcomes:
    """The supervisor's outcomes: worker messages and worker deaths, to storage and to waiters."""

    def __init__(self, supervisor: Supervisor, database_key: str) -> None:
        self.sup = supervisor
        self.outbox = supervisor.outbox
        self.writer = OutcomeWriter(lambda: supervisor.engine, self.post_save)
        self.completions: list[Completion] = []
        """Completions read since the last commit; stored with the next claim."""
        self._stored: list[int] = []
        """Jobs whose outcomes were stored since the loop last woke their waiters."""
        self._stored_results: dict[int, bytes] = {}
        """The result bytes of the completions among ``_stored``, for their waiters in this process."""
        self._results_not_kept: set[int] = set()
        """Completions whose result has a retention (``result_ttl``): not kept
        for this process's waiters, who read it from the database, which
        knows when it expires."""
        self.database_key = database_key
        """Names the database to the waiters the stored results are handed to
        (every ":memory:" database has the same name, so none is handed over)."""
        self._on_message: dict[type, Callable[[Worker, Any], None]] = {
            Done: self.on_done,
            Failed: self.on_failed,
            Cancelled: self.on_cancelled,
            Requeue: self.on_requeue,
            Progress: self.on_progress,
            Dropped: self._on_dropped,
            Ready: self._on_ready,
            StartupError: self._on_startup_error,
        }
        """What each worker message does, by its type (protocol.py)."""

    def worker_name(self, pid: int) -> str:
        return f"{self.sup.owner}/{pid}"

    # --- worker messages ----------------------------------------------------------------

    def read(self, w: Worker) -> None:
        """Act on every message that came from ``w``, in order."""
        if w.exited:
            return
        try:
            messages = w.channel.receive()
        except ProtocolError as error:
            # Nothing more can be understood from this worker: treat it as lost.
            log.error("worker process %s sent a broken message (%s); killing it", w.pid, error)
            w.channel.eof = True
            self.sup.workers.kill_tree(w)
            return
        # An end-of-file is reported by the process sentinel, as the worker's death.
        on_message = self._on_message
        for message in messages:
            if w.exited:
                return
            try:
                on_message[type(message)](w, message)
            except StorageError:
                raise
            except Exception as error:
                # A message of the wrong type or shape: nothing more from this
                # worker can be trusted; its death reports its job as lost.
                log.error(
                    "worker process %s sent a message stoker cannot act on (%r); killing it", w.pid, error
                )
                w.channel.eof = True
                kill_tree(w.pid)
                return

    def _on_ready(self, w: Worker, message: Ready) -> None:
        self.sup.workers.on_ready(w)
        self.sup.dispatch.want_claim = True

    def _on_startup_error(self, w: Worker, message: StartupError) -> None:
        w.startup_error = storable(message.error)

    def _on_dropped(self, w: Worker, message: Dropped) -> None:
        self.sup.dispatch.on_dropped(w, message.job_id, message.token)

    def on_done(self, w: Worker, message: Done) -> None:
        job_id, token, result, usage = message
        running = w.running
        if not self.sup.dispatch.finish_running(w, job_id, token):
            return
        if result is not None and (
            type(result) is not bytes or len(result) > serialization.STORED_VALUE_MAX_BYTES
        ):
            self._refuse_result(job_id, token, result, w.pid)
            return
        options = running.options if running is not None else None
        if options is not None and options.result_ttl is not None:
            # Read back from the database, which knows when it expires.
            self._results_not_kept.add(job_id)
        self.completions.append((job_id, token, result, self._with_worker(usage, w)))

    def on_failed(self, w: Worker, message: Failed) -> None:
        job_id, token, captured, retryable, usage = message
        if self.sup.dispatch.finish_running(w, job_id, token):
            self.fail_later(
                job_id,
                token,
                "error",
                captured,
                w.pid,
                retryable=retryable,
                usage=self._with_worker(usage, w),
            )

    def on_cancelled(self, w: Worker, message: Cancelled) -> None:
        if self.sup.dispatch.finish_running(w, message.job_id, message.token):
            self.cancel_later(message.job_id, message.token)

    def on_requeue(self, w: Worker, message: Requeue) -> None:
        job_id, token = message
        if self.sup.dispatch.finish_running(w, job_id, token):
            worker = self.worker_name(w.pid)
            self.outbox.store(
                f"re-queue job {job_id}",
                functools.partial(self.writer.requeue_on_request, job_id, token, worker),
            )

    def on_progress(self, w: Worker, message: Progress) -> None:
        job_id, token, progress = message
        if w.running is not None and w.running.job.id == job_id and w.running.job.token == token:
            try:
                if type(progress) is not str or len(progress) > PROGRESS_MAX_CHARS:
                    raise ValueError(f"a {type(progress).__qualname__} of {len(progress)} characters")
                self.sup.engine.set_progress(job_id, token, storable_text(progress))
            except Exception as error:
                # Progress is advisory: a later report replaces a lost one.
                log.warning("the progress of job %s was not stored: %s", job_id, error)

    def _refuse_result(self, job_id: int, token: int, result: object, pid: int) -> None:
        """A result the database cannot take: the attempt fails instead, saying why."""
        size = f"{len(result)} bytes" if isinstance(result, bytes) else f"a {type(result).__qualname__}"
        error = SerializationError(
            f"the result of job {job_id} could not be stored: it is {size}, and stoker stores "
            f"bytes of at most {serialization.STORED_VALUE_MAX_BYTES}"
        )
        self.fail_later(job_id, token, "error", supervisor_error(error), pid)

    def _with_worker(self, usage: str | None, w: Worker) -> str | None:
        """The attempt's usage with the worker that ran it, as ``owner/pid``."""
        if usage is None or type(usage) is not str or not usage.isascii():
            return None  # The worker's meter writes ASCII JSON; anything else is not its.
        # Spliced into the worker's JSON object instead of parsed and dumped
        # again: this runs once per job.
        head = usage.rstrip()
        if not head.endswith("}") or head.rstrip("} \n").endswith("{"):
            try:
                values = json.loads(usage)
            except ValueError:
                return None
            if not isinstance(values, dict):
                return None
            values["worker"] = self.worker_name(w.pid)
            return json.dumps(values)
        if not w.usage_suffix:
            w.usage_suffix = f', "worker": {json.dumps(self.worker_name(w.pid))}}}'
        return head[:-1] + w.usage_suffix

    # --- through the outbox ---------------------------------------------------------------

    def fail_later(
        self,
        job_id: int,
        token: int,
        kind: str,
        captured: CapturedError,
        pid: int,
        *,
        retryable: bool = True,
        usage: str | None = None,
    ) -> None:
        worker = self.worker_name(pid)
        self.outbox.store(
            f"the failure of job {job_id}",
            functools.partial(
                self.writer.fail, job_id, token, kind, captured, worker, retryable=retryable, usage=usage
            ),
        )

    def cancel_later(self, job_id: int, token: int) -> None:
        self.outbox.store(
            f"cancel job {job_id}", functools.partial(self.writer.finish_cancelled, job_id, token)
        )

    def release_later(self, job_id: int, token: int) -> None:
        self.outbox.store(f"release job {job_id}", functools.partial(self.writer.release, job_id, token))

    def requeue_later(self, job_id: int, token: int) -> None:
        self.outbox.store(f"re-queue job {job_id}", functools.partial(self.writer.requeue, job_id, token))

    def killed_or_lost(self, w: Worker, running: Running) -> None:
        """The outcome of a job whose worker was killed, or died, while it ran."""
        job = running.job
        usage = json.dumps(
            {
                "wall_s": round(time.monotonic() - running.started, 6),
                "peak_rss_kib": running.peak_rss_kib or None,
                "worker": self.worker_name(w.pid),
            }
        )
        if running.condemned or w.killed_for in ("drain", "shutdown"):
            # Killed through no fault of its own (a condemned job was killed
            # for the job before it): back to pending, no failure counted.
            self.requeue_later(job.id, job.token)
        elif w.killed_for == "memory":
            limit = running.options.memory_limit_mb if running.options else None
            error: BaseException = MemoryLimitExceededError(
                f"job {job.id} ({job.task_name}) attempt {job.attempt} used "
                f"{running.peak_rss_kib / 1024:.0f} MiB, over its memory limit of {limit:g} MiB; "
                f"its worker process {w.pid} was killed",
                job_id=job.id,
                attempt=job.attempt,
            )
            self.fail_later(job.id, job.token, "error", supervisor_error(error), w.pid, usage=usage)
        elif w.killed_for == "timeout":
            timeout_s = (job.timeout_ms or 0) / 1000
            error = TaskTimeoutError(
                f"job {job.id} ({job.task_name}) attempt {job.attempt} ran past its hard timeout of "
                f"{timeout_s:g} s; its worker process {w.pid} was killed",
                job_id=job.id,
                attempt=job.attempt,
            )
            self.fail_later(job.id, job.token, "timeout", supervisor_error(error), w.pid, usage=usage)
        elif w.killed_for == "cancel":
            self.cancel_later(job.id, job.token)
        else:
            exitcode = w.process.exitcode
            suffix = " (possibly by the out-of-memory killer)" if exitcode == -signal.SIGKILL else ""
            error = WorkerLostError(
                f"the worker process {w.pid} running job {job.id} ({job.task_name}) attempt {job.attempt} "
                f"{describe_exit(exitcode)}{suffix}",
                job_id=job.id,
                attempt=job.attempt,
            )
            self.fail_later(job.id, job.token, "crash", supervisor_error(error), w.pid, usage=usage)

    # --- completions, stored in batches -----------------------------------------------------

    def take_completions(self) -> list[Completion]:
        batch, self.completions = self.completions, []
        return batch

    def restore_completions(self, batch: list[Completion]) -> None:
        """Storing ``batch`` failed: it goes first in the next try."""
        self.completions = batch + self.completions

    def completions_stored(self, batch: list[Completion], applied: list[bool]) -> None:
        for (job_id, token, result, _), ok in zip(batch, applied, strict=True):
            kept = job_id not in self._results_not_kept
            if not kept:
                self._results_not_kept.discard(job_id)
            if ok:
                if result is not None and self.database_key and kept:
                    self._stored_results[job_id] = result
                self.post_save(job_id, "complete")
            else:
                log.warning("the outcome of job %s (token %s) was stale and was refused", job_id, token)

    def post_save(self, job_id: int, status: str) -> None:
        self._stored.append(job_id)
        for middleware in self.sup.queue.hooks.middlewares:
            try:
                middleware.post_save(job_id, status)
            except Exception:
                log.exception("middleware %s.post_save raised for job %s", handler_name(middleware), job_id)

    def wake_waiters(self) -> None:
        """The waiters in this process of the jobs whose outcomes the last turn stored
        (completions, failures, kills) look now instead of at their next poll; no other waiter wakes."""
        if self._stored:
            notify_outcomes(self._stored, self._stored_results, self.database_key)
            self._stored = []
            self._stored_results = {}
