"""Test mode: run a job to its end at once, in this process (see ``Queue.test_mode``).

The job goes through the same engine (an in-memory database with a manual
clock) and the same :class:`~stoker.pool.worker.Runner` as in a worker process, so
results, errors, retries, context, middlewares and hooks behave as they do in
production. A retry or a delayed job does not wait: the manual clock jumps to
its eta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._base.remote_errors import CapturedError, capture, fail_storably
from ..client.job import FINISHED, Job, Outcome
from ..client.task import TaskScope
from ..errors import RequeueLimitError, StokerError
from .worker import Runner

if TYPE_CHECKING:
    from .._core import Engine
    from ..client.queue import Queue

#: The lease a test-mode attempt holds; nothing reaps it, so it only has to be valid.
TEST_LEASE_MS = 3_600_000
OWNER = "test-mode"


def run_eagerly(queue: Queue, job: Job) -> Outcome:
    from .supervisor import MAX_REQUEUES

    engine = queue.engine
    requeues = 0
    while True:
        record = engine.get(job.id)
        if record.status in FINISHED:
            return job._outcome()
        if record.status == "scheduled":
            engine.advance_clock(max(0, record.eta_ms - engine.now_ms()))
        claimed = engine.claim([record.queue], 1, OWNER, TEST_LEASE_MS)
        if not claimed or claimed[0].id != job.id:
            raise StokerError(f"test mode could not run job {job.id}: another job of its queue is waiting")
        current = claimed[0]

        def report(message: tuple[Any, ...]) -> None:
            if message[0] == "progress":
                engine.set_progress(message[1], message[2], message[3])

        message = Runner(report, TaskScope.of(queue)).run(
            current.id, current.token, current.attempt, current.task_name, current.payload, current.labels
        )
        kind = message[0]
        if kind == "done":
            _, job_id, token, result, usage = message
            engine.complete(job_id, token, result, usage)
        elif kind == "failed":
            _, job_id, token, captured, retryable, usage = message
            _fail(engine, job_id, token, captured, retryable=retryable, usage=usage)
        elif kind == "cancelled":
            engine.finish_cancelled(current.id, current.token)
        elif kind == "requeue":
            requeues += 1
            if requeues <= MAX_REQUEUES:
                engine.requeue(current.id, current.token)
            else:
                error = RequeueLimitError(
                    f"job {current.id} asked to be requeued more than {MAX_REQUEUES} times",
                    job_id=current.id,
                    attempt=current.attempt,
                )
                _fail(
                    engine,
                    current.id,
                    current.token,
                    capture(error, queue.sealer.seal),
                    retryable=False,
                    usage=None,
                )


def _fail(
    engine: Engine, job_id: int, token: int, captured: CapturedError, *, retryable: bool, usage: str | None
) -> None:
    fail_storably(engine, job_id, token, "error", captured, OWNER, retryable, usage)
