"""Test mode: run a job to its end at once, in this process (see ``Queue.test_mode``).

The job goes through the same engine (an in-memory database with a manual
clock), the same :class:`~stoker.pool.runner.Runner` as in a worker process and
the same outcome writer as the supervisor's (``outcomes.store``), so results,
errors, retries, requeues, context, middlewares and hooks behave as they do in
production. A retry or a delayed job does not wait: the manual clock jumps to
its eta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..client.job import FINISHED, Job, Outcome
from ..client.registry import TaskScope
from ..errors import StokerError
from .outcomes import OutcomeWriter, store
from .protocol import Progress
from .runner import Runner

if TYPE_CHECKING:
    from ..client.queue import Queue

#: The lease a test-mode attempt holds; nothing reaps it, so it only has to be valid.
TEST_LEASE_MS = 3_600_000
OWNER = "test-mode"


def _saved(job_id: int, status: str) -> None:
    """Test mode wakes no waiter: the caller reads the outcome when the job ends."""


def run_eagerly(queue: Queue, job: Job) -> Outcome:
    engine = queue.engine
    writer = OutcomeWriter(lambda: engine, _saved)

    def report(message: tuple[Any, ...]) -> None:
        if type(message) is Progress:
            engine.set_progress(message.job_id, message.token, message.progress)

    runner = Runner(report, TaskScope.of(queue))
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
        outcome = runner.run(
            current.id, current.token, current.attempt, current.task_name, current.payload, current.labels
        )
        store(writer, outcome, OWNER)
