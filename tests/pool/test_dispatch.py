"""Claiming and the jobs sent ahead (``stoker.pool.dispatch``).

The policy first, as pure code (no process, no database); then the same
through a pool of real worker processes.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, read_ledger, wait_until, written
from stoker.pool import tunables
from stoker.pool.dispatch import (
    Dispatcher,
    HeldJobs,
    ahead_per_worker,
    claim_limit,
    jobs_ahead_for,
    jobs_to_ask_back,
    takes_job_ahead,
)

# --- the policy, as pure code ----------------------------------------------------------


@dataclass
class Started:
    """A running job, as ``takes_job_ahead`` reads it."""

    started: float
    cancel_at: float | None = None
    answer_by: float | None = None


@dataclass
class Busy:
    """A worker, as ``takes_job_ahead`` reads it."""

    running: Started | None
    last_job_s: float = 0.0
    typical_job_s: float | None = 0.0
    queued: list[object] = field(default_factory=list)
    killed_for: str | None = None
    retiring: bool = False
    tasks_done: int = 0


# Only differences of clock readings count; from zero they are exact, so a job
# that has run exactly JOB_AHEAD_MAX_WAIT is not taken for one a hair shorter.
NOW = 0.0


def busy_worker(running_for: float, last_job_s: float, typical_job_s: float | None = 0.0) -> Busy:
    return Busy(Started(NOW - running_for), last_job_s=last_job_s, typical_job_s=typical_job_s)


def takes(w: Busy, *, typical_job_s: float | None = None, max_tasks: int | None = None) -> bool:
    return takes_job_ahead(
        w,
        NOW,
        typical_job_s=typical_job_s,
        max_tasks_per_worker=max_tasks,
        memory_limited=False,
    )


def test_a_job_is_sent_ahead_only_to_a_worker_busy_with_short_jobs() -> None:
    limit = tunables.JOB_AHEAD_MAX_WAIT
    assert takes(busy_worker(0.0, 0.0))
    assert takes(busy_worker(limit / 2, limit / 2))
    # Its job has run long, or its last one did: the next job waits for the next worker free.
    assert not takes(busy_worker(limit, 0.0))
    assert not takes(busy_worker(0.0, limit))
    # Not busy, or already holding as many as its jobs' length allows.
    assert not takes(Busy(running=None))
    work, deepest = tunables.JOB_AHEAD_WORK, tunables.JOBS_AHEAD_MAX
    for typical_job_s, allowed in [
        (None, 1),  # Its jobs' length is not known yet.
        (0.0, deepest),
        (work / deepest, deepest),
        (work / 3, 3),
        (work, 1),
        (limit / 2, 1),
    ]:
        holding = busy_worker(0.0, 0.0, typical_job_s)
        for _ in range(allowed):
            assert takes(holding), (typical_job_s, len(holding.queued))
            holding.queued.append(object())
        assert not takes(holding), typical_job_s
    # About to be recycled, counting the jobs already in its pipe.
    assert takes(Busy(Started(NOW), tasks_done=1), max_tasks=3)
    assert not takes(Busy(Started(NOW), tasks_done=2), max_tasks=3)
    holding_one = Busy(Started(NOW), tasks_done=1, queued=[object()])
    assert not takes(holding_one, max_tasks=3)


def test_a_worker_that_may_be_killed_or_recycled_soon_gets_no_job_ahead() -> None:
    assert not takes(Busy(Started(NOW, cancel_at=NOW + 1)))
    assert not takes(Busy(Started(NOW, answer_by=NOW + 1)))
    assert not takes(Busy(Started(NOW), killed_for="timeout"))
    assert not takes(Busy(Started(NOW), retiring=True))
    assert not takes_job_ahead(
        Busy(Started(NOW)),
        NOW,
        typical_job_s=None,
        max_tasks_per_worker=None,
        memory_limited=True,
    )
    # A worker with no job ended yet runs what the pool's others ran.
    assert takes(Busy(Started(NOW), typical_job_s=None, queued=[object()]), typical_job_s=0.0)
    assert not takes(Busy(Started(NOW), typical_job_s=None, queued=[object()]), typical_job_s=None)


def test_how_many_jobs_wait_ahead_follows_the_typical_job_length() -> None:
    assert jobs_ahead_for(None) == 1
    assert jobs_ahead_for(0.0) == tunables.JOBS_AHEAD_MAX
    assert jobs_ahead_for(tunables.JOB_AHEAD_WORK / 2) == 2
    assert jobs_ahead_for(1.0) == 1
    assert ahead_per_worker(0, 0.0) == 0  # No prefetch: none ahead, however short the jobs.
    assert ahead_per_worker(3, None) == 3
    assert ahead_per_worker(1, 0.0) == tunables.JOBS_AHEAD_MAX


def test_an_idle_worker_gets_a_job_while_a_stopped_one_holds_more_than_the_budget() -> None:
    # Two slots: one worker is busy and holds JOBS_AHEAD_MAX jobs asked back
    # (it is stopped and has not answered), the other is idle.
    deepest = tunables.JOBS_AHEAD_MAX
    per_worker = ahead_per_worker(1, None)
    assert per_worker == 1  # No job has ended: their length is not known.
    assert claim_limit(processes=2, idle=1, busy=1, held_ahead=deepest, per_worker=per_worker) == 1
    assert claim_limit(processes=2, idle=0, busy=1, held_ahead=deepest, per_worker=per_worker) == 0
    # Short jobs: the budget per worker grows to JOBS_AHEAD_MAX.
    per_worker = ahead_per_worker(1, 0.0)
    assert claim_limit(processes=2, idle=0, busy=1, held_ahead=deepest, per_worker=per_worker) == deepest


def test_jobs_asked_back_for_idle_workers_are_the_last_of_the_longest_lines() -> None:
    a, b, c, d, e = "abcde"
    lines = [[a, b, c], [d], [e]]
    assert jobs_to_ask_back(lines, 1) == [[c], [], []]  # type: ignore[arg-type]
    # The first of the longest lines, when several are as long.
    assert jobs_to_ask_back(lines, 3) == [[c, b, a], [], []]  # type: ignore[arg-type]
    assert jobs_to_ask_back(lines, 4) == [[c, b, a], [d], []]  # type: ignore[arg-type]
    assert jobs_to_ask_back(lines, 10) == [[c, b, a], [d], [e]]  # type: ignore[arg-type]
    assert lines == [[a, b, c], [d], [e]]  # Not changed.
    assert jobs_to_ask_back([], 2) == []


@dataclass(frozen=True)
class Job:
    """A claimed job, as HeldJobs reads it."""

    id: int
    token: int = 1


def _ids(held: HeldJobs) -> list[int]:
    return [job.id for job in held]


def test_held_jobs_go_out_in_claim_order_and_come_back_before_the_others() -> None:
    held = HeldJobs()
    held.extend([Job(1), Job(2), Job(3), Job(4)])  # type: ignore[list-item]
    sent = [held.take(), held.take()]
    assert [(job.id, serial) for job, serial in sent] == [(1, 1), (2, 2)]  # type: ignore[union-attr]
    # Both come back from a worker's pipe, the later first: they go before the
    # jobs never sent, in claim order, and keep their serials.
    held.give_back(sent[1][0], sent[1][1])  # type: ignore[index]
    held.give_back(sent[0][0], sent[0][1])  # type: ignore[index]
    assert _ids(held) == [1, 2, 3, 4]
    assert [held.take() for _ in range(2)] == [(Job(1), 1), (Job(2), 2)]
    assert held.take() == (Job(3), 3)
    assert held.remove(4, 1) and not held.remove(4, 1)
    assert held.take() is None and not held


def test_a_held_job_is_marked_and_unmarked_by_commits_before_it_is_sent() -> None:
    held = HeldJobs()
    held.extend([Job(1), Job(2)])  # type: ignore[list-item]
    held.mark_held()
    marks = held.take_marks()
    assert marks == ([(1, 1), (2, 1)], [])
    held.marks_committed(*marks)
    # Marked in the database: it goes only once a commit unmarks it, and so do
    # the others held with it.
    assert held.take() is None
    assert held.marks_pending and held.take_marks() == ([], [(1, 1), (2, 1)])
    # That commit failed: the unmarks wait for the next one.
    held.restore_marks([], [(1, 1), (2, 1)])
    marks = held.take_marks()
    held.marks_committed(*marks)
    assert held.take() == (Job(1), 1)
    assert held.take() == (Job(2), 2)
    # A job whose mark was not committed yet goes at once, its mark forgotten.
    held.extend([Job(3)])  # type: ignore[list-item]
    held.mark_held()
    assert held.take() == (Job(3), 3)
    assert held.take_marks() == ([], [])
    # Released at a stop: none is left, nor any mark.
    held.extend([Job(4), Job(5)])  # type: ignore[list-item]
    held.mark_held()
    assert [job.id for job in held.take_all()] == [4, 5]
    assert not held and not held.marks_pending


def test_jobs_ahead_per_worker_follow_the_pool_of_a_supervisor(queue: stoker.Queue) -> None:
    supervisor = stoker.Supervisor(queue, processes=2)
    # No worker has started: no idle slot, and each slot's budget of jobs ahead.
    assert supervisor.dispatch.claim_limit() == 2
    assert stoker.Supervisor(queue, processes=2, prefetch=0).dispatch.claim_limit() == 0


# --- through a pool -------------------------------------------------------------------


def _start_blocker(queue: stoker.Queue, tmp_path: Path) -> tuple[stoker.Job, Path]:
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    wait_until(written(marker), what="the blocking job to start")
    return job, release


def test_a_job_claimed_ahead_is_cancelled_without_running(
    queue: stoker.Queue, tmp_path: Path, ledger: Path
) -> None:
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1):
        blocker, release = _start_blocker(queue, tmp_path)
        ahead = queue.get_task("record").delay(str(ledger), "ahead")
        # The only worker is busy, yet the job is claimed (leased) ahead of it.
        wait_until(lambda: ahead.status == "running", what="the job to be claimed ahead")
        assert ahead.cancel() == "requested"
        wait_until(lambda: ahead.status == "cancelled", what="the job claimed ahead to be cancelled")
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
    assert read_ledger(ledger) == []
    assert ahead.errors == []


def test_stopping_puts_the_jobs_claimed_ahead_back_without_a_failure(
    queue: stoker.Queue, tmp_path: Path
) -> None:
    handle = queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1)
    blocker, release = _start_blocker(queue, tmp_path)
    ahead = queue.get_task("add").delay(1, 2)
    wait_until(lambda: ahead.status == "running", what="the job to be claimed ahead")
    handle.stop(HANG_GUARD)
    # Both go back to pending: the running one was killed by the drain, the
    # one claimed ahead never started; neither counts a failed attempt.
    assert (blocker.status, ahead.status) == ("pending", "pending")
    assert ahead.errors == [] and blocker.errors == []
    release.touch()
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=0):
        assert ahead.result(timeout=HANG_GUARD) == 3
        assert blocker.result(timeout=HANG_GUARD) == "released"


# --- jobs sent ahead to a busy worker (JOB_AHEAD_MAX_WAIT) ------------------------------


def _sent_ahead(handle: stoker.SupervisorThread) -> dict[int, int]:
    """The jobs waiting in busy workers' pipes, in the order they run: job id -> worker pid."""
    return {queued.job.id: w.pid for w in list(handle.supervisor.workers.all) for queued in list(w.queued)}


def _short_jobs_go_deep(queue: stoker.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every job short enough for JOBS_AHEAD_MAX of them ahead, once one job has ended.

    The pool must be running: one job runs so that its worker's jobs have a
    known length.
    """
    monkeypatch.setattr(tunables, "JOB_AHEAD_WORK", HANG_GUARD)
    assert queue.get_task("add").delay(1, 2).result(timeout=HANG_GUARD) == 3


def test_a_job_sent_ahead_counts_its_hard_timeout_from_its_start(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tunables, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        blocker, release = _start_blocker(queue, tmp_path)
        # It runs 0.2 s of its 0.5 s timeout, once it has waited in the pipe for longer than that.
        quick = queue.get_task("sleeper").options(timeout=0.5).delay(str(tmp_path / "quick"), 0.2)
        wait_until(lambda: quick.id in _sent_ahead(handle), what="the job to be sent ahead")
        waited_from = time.monotonic()
        wait_until(lambda: time.monotonic() - waited_from > 0.8, what="its timeout to pass")
        assert quick.id in _sent_ahead(handle)
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        assert quick.result(timeout=HANG_GUARD) is None
    assert quick.errors == []


def test_a_job_sent_ahead_to_a_worker_that_dies_runs_on_another_without_an_attempt(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tunables, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    marker, release = tmp_path / "started", tmp_path / "release"
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        dying = queue.get_task("exit_when_released").delay(str(marker), str(release))
        wait_until(written(marker), what="the dying job to start")
        dying_pid = int(marker.read_text())
        ahead = [queue.get_task("add").delay(i, 2) for i in range(3)]
        wait_until(
            lambda: _sent_ahead(handle) == {job.id: dying_pid for job in ahead},
            what="the jobs to be sent ahead",
        )
        release.touch()
        with pytest.raises(stoker.WorkerLostError, match="exited with code 3"):
            dying.result(timeout=HANG_GUARD)
        assert [job.result(timeout=HANG_GUARD) for job in ahead] == [2, 3, 4]
    for job in ahead:
        record = job.record()
        assert (record.attempt, record.failures, record.crashes) == (1, 0, 0)
        assert job.errors == []


def test_a_job_sent_ahead_goes_back_when_the_job_before_it_runs_long(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for the test to see the jobs in the pipe first.
    monkeypatch.setattr(tunables, "JOB_AHEAD_MAX_WAIT", 1.0)
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        blocker, release = _start_blocker(queue, tmp_path)
        tags = [f"ahead {i}" for i in range(3)]
        ahead = [queue.get_task("record").delay(str(ledger), tag) for tag in tags]
        # Sent ahead to the blocker's worker, then asked back once the blocker
        # has run JOB_AHEAD_MAX_WAIT; they wait in memory, in their order, for
        # the next worker free.
        wait_until(lambda: list(_sent_ahead(handle)) == [job.id for job in ahead], what="the jobs sent ahead")
        wait_until(
            lambda: [job.id for job in handle.supervisor.dispatch.held] == [job.id for job in ahead],
            what="the jobs to come back from the busy worker",
        )
        assert _sent_ahead(handle) == {}
        assert [job.status for job in ahead] == ["running"] * 3 and blocker.status == "running"
        assert read_ledger(ledger) == []
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        assert [job.result(timeout=HANG_GUARD) for job in ahead] == tags
    assert [line.split()[:2] for line in read_ledger(ledger)] == [tag.split() for tag in tags]
    assert all(job.record().attempt == 1 and job.errors == [] for job in ahead)


@pytest.mark.parametrize("call", ["sleep", "read"])
def test_taking_back_a_job_sent_ahead_does_not_interrupt_the_running_tasks_c_calls(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    # A take-back reaches a worker while its task runs; a signal would cut
    # short a libc sleep (never restarted) and could fail a blocking read.
    monkeypatch.setattr(tunables, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    marker, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        if call == "sleep":
            running = queue.get_task("c_sleep").delay(str(marker), 3)
        else:
            running = queue.get_task("c_read").delay(str(marker), str(fifo))
        wait_until(written(marker), what="the C call to start")
        ahead = queue.get_task("add").delay(1, 2)
        wait_until(lambda: ahead.id in _sent_ahead(handle), what="the job to be sent ahead")
        assert ahead.cancel() == "requested"
        # Given back by the worker while its task is inside the C call.
        wait_until(lambda: ahead.status == "cancelled", what="the job sent ahead to be given back")
        assert running.status == "running"
        if call == "sleep":
            assert running.result(timeout=HANG_GUARD) == 0  # Not a second of the sleep left out.
        else:
            with open(fifo, "wb") as writer:
                writer.write(b"data")
            assert running.result(timeout=HANG_GUARD) == (4, 0)  # The data, not an interrupted read.
    assert ahead.errors == [] and running.errors == []


def test_short_jobs_wait_several_deep_in_a_busy_workers_pipe_and_run_in_order(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tunables, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    deepest = tunables.JOBS_AHEAD_MAX
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        blocker, release = _start_blocker(queue, tmp_path)
        tags = [f"ahead {i}" for i in range(deepest + 2)]
        jobs = [queue.get_task("record").delay(str(ledger), tag) for tag in tags]
        # JOBS_AHEAD_MAX of them wait in the pipe; the worker's budget of jobs
        # claimed ahead is spent, so the rest are not even claimed.
        wait_until(
            lambda: list(_sent_ahead(handle)) == [job.id for job in jobs[:deepest]],
            what="the jobs to be sent ahead",
        )
        assert [job.status for job in jobs[deepest:]] == ["pending", "pending"]
        # One in the middle of the line is cancelled without running; the line goes on.
        assert jobs[1].cancel() == "requested"
        wait_until(lambda: jobs[1].status == "cancelled", what="the job in the pipe to be cancelled")
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        kept = [job for job in jobs if job is not jobs[1]]
        assert [job.result(timeout=HANG_GUARD) for job in kept] == [
            job_tag for job_tag in tags if job_tag != tags[1]
        ]
    assert [" ".join(line.split()[:2]) for line in read_ledger(ledger)] == [t for t in tags if t != tags[1]]
    assert jobs[1].errors == []
    assert all(job.record().attempt == 1 for job in kept)


def test_short_jobs_claimed_for_busy_workers_all_go_to_their_pipes_in_the_turn_of_the_claim(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job left here after the turn that claimed it waits a turn more and
    # costs two writes (its held mark, then the unmark before it is sent).
    held_after_turn: list[int] = []
    claim_and_dispatch = Dispatcher.claim_and_dispatch

    def recording(self: Dispatcher, now: float) -> None:
        claim_and_dispatch(self, now)
        held_after_turn.append(len(self.held))

    monkeypatch.setattr(Dispatcher, "claim_and_dispatch", recording)
    monkeypatch.setattr(tunables, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    with queue.start_worker(processes=2, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        (tmp_path / "first").mkdir()
        (tmp_path / "second").mkdir()
        first, release_first = _start_blocker(queue, tmp_path / "first")
        second, release_second = _start_blocker(queue, tmp_path / "second")
        budget = 2 * tunables.JOBS_AHEAD_MAX
        held_after_turn.clear()
        jobs = queue.get_task("add").map([(i, 1) for i in range(budget)])
        wait_until(lambda: len(_sent_ahead(handle)) == budget, what="every job to be sent ahead")
        assert held_after_turn and max(held_after_turn) == 0
        # Evenly: each busy worker's pipe takes half.
        assert sorted(collections.Counter(_sent_ahead(handle).values()).values()) == [budget // 2] * 2
        release_first.touch()
        release_second.touch()
        assert [job.result(timeout=HANG_GUARD) for job in jobs] == [i + 1 for i in range(budget)]
        assert first.result(timeout=HANG_GUARD) == second.result(timeout=HANG_GUARD) == "released"
