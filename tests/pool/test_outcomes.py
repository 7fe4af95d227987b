"""Outcomes (``stoker.pool.outcomes``): a worker's message, or its death, turned into storage.

The supervisor is driven by hand here, with no loop running and no worker
process of its own: a worker stands in as a real process that has ended and
its real pipe, on which the test writes what the worker said.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, read_ledger
from stoker._base import serialization
from stoker.pool import tunables
from stoker.pool.channel import Channel
from stoker.pool.outcomes import OutcomeWriter, StorageOutbox, store, supervisor_error
from stoker.pool.processes import Running, Worker
from stoker.pool.protocol import Done, Dropped, Failed, Requeue


@pytest.fixture
def dead_process() -> Iterator[BaseProcess]:
    """A process killed by SIGKILL, as a worker killed for its job is."""
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(HANG_GUARD,))
    process.start()
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(HANG_GUARD)
    yield process
    process.close()


def _worker(process: BaseProcess, messages: list[tuple[object, ...]]) -> tuple[Worker, Connection]:
    """A worker handle whose pipe holds ``messages``, as sent by the worker before it ended."""
    ours, theirs = multiprocessing.Pipe(duplex=True)
    for message in messages:
        theirs.send(message)
    return Worker(process, Channel(ours)), theirs


def _by_hand(queue: stoker.Queue) -> stoker.Supervisor:
    supervisor = stoker.Supervisor(queue, processes=1)
    supervisor.workers.start_not_before = math.inf  # No worker process starts.
    return supervisor


@pytest.mark.parametrize("outcomes_sent", [1, 2, 3])
def test_jobs_sent_ahead_that_started_as_their_worker_was_killed_are_not_run_again_as_unstarted(
    queue: stoker.Queue, dead_process: BaseProcess, outcomes_sent: int
) -> None:
    # The worker was killed (a cancel) for its job just as that job ended, and
    # it went on through the jobs sent ahead to it: the kill's outcome stands
    # for the first; a job whose outcome the worker sent before it died is
    # complete; the one it was running is back to pending as a started
    # attempt, never given back as unstarted (which would run the same
    # attempt twice); the ones after it never started.
    jobs = [queue.get_task("add").delay(i, 1) for i in range(3)]
    supervisor = _by_hand(queue)
    claimed = sorted(
        supervisor.engine.claim(supervisor.queues, 3, supervisor.owner, 30_000), key=lambda job: job.id
    )
    now = time.monotonic()
    messages = [
        Done(job.id, job.token, serialization.dumps(i + 1), None)
        for i, job in enumerate(claimed[:outcomes_sent])
    ]
    worker, theirs = _worker(dead_process, messages)
    worker.ready = True
    worker.killed_for = "cancel"
    worker.running = Running(claimed[0], now, None, None)
    worker.queued.extend(Running(job, now, None, None) for job in claimed[1:])
    supervisor.workers.all.append(worker)
    supervisor.on_exit(worker)
    supervisor.dispatch.flush_completions()
    theirs.close()
    assert jobs[0].status == "cancelled"
    for i, job in enumerate(jobs[1:], start=1):
        record = job.record()
        if i < outcomes_sent:
            assert (record.status, record.attempt) == ("complete", 1)
            assert job.result(timeout=HANG_GUARD) == i + 1
        elif i == outcomes_sent:
            # A started attempt that failed through no fault of its own:
            # pending, no failure or crash counted, and the next claim is attempt 2.
            assert (record.status, record.attempt, record.failures, record.crashes) == ("pending", 1, 0, 0)
        else:
            # Never started: still claimed by this supervisor, the next to run.
            assert record.status == "running"
            assert [held.id for held in supervisor.dispatch.held] == [job.id]
        assert job.errors == []
    assert len(supervisor.dispatch.held) == (1 if outcomes_sent < 2 else 0)


def test_a_job_given_back_after_it_was_counted_as_started_hands_the_slot_to_the_next_in_the_pipe(
    queue: stoker.Queue, dead_process: BaseProcess
) -> None:
    # The job before it ended and the loop counted the first job sent ahead as
    # started, but the worker had given it back (a cancel): the worker went
    # on to the next one in its pipe, which is now the running one.
    jobs = [queue.get_task("add").delay(i, 1) for i in range(3)]
    supervisor = _by_hand(queue)
    first, cancelled, last = sorted(
        supervisor.engine.claim(supervisor.queues, 3, supervisor.owner, 30_000), key=lambda job: job.id
    )
    now = time.monotonic()
    worker, theirs = _worker(
        dead_process,
        [Done(first.id, first.token, serialization.dumps(1), None), Dropped(cancelled.id, cancelled.token)],
    )
    worker.ready = True
    worker.running = Running(first, now, None, None)
    worker.queued.extend(
        [Running(cancelled, now, None, None, dropping="cancel"), Running(last, now, None, None)]
    )
    supervisor.workers.all.append(worker)
    supervisor.outcomes.read(worker)
    supervisor.dispatch.flush_completions()
    assert worker.running is not None and worker.running.job.id == last.id
    assert not worker.queued
    assert [job.status for job in jobs] == ["complete", "cancelled", "running"]
    assert jobs[1].errors == []
    theirs.close()
    worker.close()


def test_a_message_that_is_no_protocol_message_kills_its_worker(queue: stoker.Queue) -> None:
    # A plain tuple where a Done was expected: nothing more from that worker is trusted.
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(HANG_GUARD,))
    process.start()
    supervisor = _by_hand(queue)
    worker, theirs = _worker(process, [("done", 1, 1, None, None)])
    supervisor.workers.all.append(worker)
    supervisor.outcomes.read(worker)
    process.join(HANG_GUARD)
    assert process.exitcode == -signal.SIGKILL and worker.channel.eof
    theirs.close()
    worker.close()
    process.close()


# --- through a pool ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "args", "expected"),
    [
        ("exit_code", (3,), "exited with code 3"),
        ("kill_self", (), "was killed by SIGKILL"),
        ("segfault", (), "was killed by SIGSEGV"),
    ],
)
def test_worker_death_is_a_worker_lost_error(
    queue: stoker.Queue, pool: stoker.SupervisorThread, task: str, args: tuple[object, ...], expected: str
) -> None:
    job = queue.get_task(task).delay(*args)
    with pytest.raises(stoker.WorkerLostError, match=expected) as info:
        job.result(timeout=HANG_GUARD)
    assert info.value.job_id == job.id
    (error,) = job.errors
    assert error.kind == "crash"
    assert queue.get_task("add").delay(3, 3).result(timeout=HANG_GUARD) == 6


def test_poison_job_ends_dead_after_its_crash_bound(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("poison").delay(str(ledger))
    with pytest.raises(stoker.WorkerLostError, match="exited with code 9"):
        job.result(timeout=HANG_GUARD)
    # max_crashes=2: the first run and two redeliveries, although max_retries is 5.
    assert len(read_ledger(ledger)) == 3
    assert [e.kind for e in job.errors] == ["crash", "crash", "crash"]


def test_unpicklable_result_fails_the_attempt(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    with pytest.raises(stoker.SerializationError, match=r"result of job .* cannot be pickled"):
        queue.get_task("unpicklable_result").delay().result(timeout=HANG_GUARD)


# --- the writer, shared with test mode ------------------------------------------------------


def test_the_writer_stores_each_outcome_and_bounds_requested_requeues(queue: stoker.Queue) -> None:
    saved: list[tuple[int, str]] = []
    writer = OutcomeWriter(lambda: queue.engine, lambda job_id, status: saved.append((job_id, status)))
    job = queue.get_task("add").delay(1, 2)
    for attempt in range(1, tunables.MAX_REQUEUES + 2):
        (claimed,) = queue.engine.claim([job.record().queue], 1, "test", 30_000)
        assert claimed.attempt == attempt
        store(writer, Requeue(claimed.id, claimed.token), "test/1")
    # The last request was one too many: the attempt failed, and is not retried.
    assert [status for _, status in saved] == ["pending"] * tunables.MAX_REQUEUES + ["dead"]
    with pytest.raises(stoker.RequeueLimitError, match="requeued more than"):
        job.result(timeout=0)
    other = queue.get_task("add").delay(2, 2)
    (claimed,) = queue.engine.claim([other.record().queue], 1, "test", 30_000)
    error = supervisor_error(ValueError("bad"))
    store(writer, Failed(claimed.id, claimed.token, error, False, None), "test/1")
    assert other.status == "dead"
    # A stale outcome changes nothing and reports no save.
    store(writer, Done(claimed.id, claimed.token, None, None), "test/1")
    assert saved[-1] == (other.id, "dead")


# --- the outbox ----------------------------------------------------------------------------


def test_the_outbox_keeps_outcomes_in_order_while_storage_fails_and_then_stores_them() -> None:
    stored: list[str] = []
    failing = [True]

    def report(name: str) -> None:
        if failing[0]:
            raise stoker.StorageBusyError("locked")
        stored.append(name)

    outbox = StorageOutbox("jobs.db", lambda: None)
    outbox.store("first", lambda: report("first"))
    outbox.store("second", lambda: report("second"))
    assert stored == [] and len(outbox) == 2 and outbox.retrying
    failing[0] = False
    outbox.retry_at = None
    outbox.flush()
    outbox.on_success()
    assert stored == ["first", "second"] and len(outbox) == 0


def test_an_outcome_that_fails_for_itself_is_dropped_and_the_others_go_on() -> None:
    stored: list[str] = []

    def broken() -> None:
        raise ValueError("not the storage")

    outbox = StorageOutbox("jobs.db", lambda: None)
    outbox.store("broken", broken)
    outbox.store("next", lambda: stored.append("next"))
    assert stored == ["next"] and len(outbox) == 0 and not outbox.retrying


def test_the_outbox_backs_off_and_gives_up_after_the_failure_limit() -> None:
    outbox = StorageOutbox("jobs.db", lambda: None)
    outbox.failure_limit = 10.0
    error = stoker.StorageError("disk I/O error")
    outbox.on_error(error, 100.0)
    first = outbox.retry_at
    outbox.on_error(error, 101.0)
    assert first is not None and outbox.retry_at is not None
    assert outbox.retry_at - 101.0 == pytest.approx(2 * (first - 100.0))  # Doubling.
    with pytest.raises(stoker.StorageError, match="kept failing for 10 s"):
        outbox.on_error(error, 110.0)
    outbox.giving_up = True  # Stopping anyway: no second error.
    outbox.on_error(error, 120.0)
