"""Waiting for jobs (``client/waiting.py``): waking the waiters of this process,
only those of the jobs that finished, and the timeouts a wait accepts."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, wait_until
from stoker.client import waiting
from stoker.client.job import Job
from stoker.client.waiting import (
    RECENT_RESULTS,
    WATCHERS,
    RecentResults,
    Watchers,
    forget_results,
    notify_outcomes,
)


def test_a_notification_wakes_only_the_waiters_of_its_jobs() -> None:
    watchers = Watchers()
    first = watchers.watch([1])
    both = watchers.watch([1, 2])
    other = watchers.watch([3])

    watchers.notify([2])

    assert both.is_set()
    assert not first.is_set()
    assert not other.is_set()


def test_a_notification_without_jobs_wakes_every_waiter() -> None:
    watchers = Watchers()
    events = [watchers.watch([job_id]) for job_id in (1, 2, 3)]

    watchers.notify(None)

    assert all(event.is_set() for event in events)


def test_a_waiter_that_stopped_watching_is_not_woken() -> None:
    watchers = Watchers()
    gone = watchers.watch([1, 2])
    staying = watchers.watch([2])
    watchers.unwatch([1, 2], gone)

    watchers.notify([1, 2])

    assert not gone.is_set()
    assert staying.is_set()
    # Nothing is kept for jobs nobody waits for any more.
    watchers.unwatch([2], staying)
    assert watchers._events == {}


def test_results_handed_over_are_keyed_by_database_and_job() -> None:
    waiter = WATCHERS.watch([1])
    other_job = WATCHERS.watch([2])
    try:
        notify_outcomes([1, 2], {1: b"value"}, "/db/a")

        assert waiter.is_set()
        assert RECENT_RESULTS.get("/db/a", 1) == b"value"
        assert RECENT_RESULTS.get("/db/b", 1) is None, "only a waiter of the same database finds it"
        # Job 2 completed without a result to hand over: its waiter looks itself.
        assert other_job.is_set()
        assert RECENT_RESULTS.get("/db/a", 2) is None
    finally:
        WATCHERS.unwatch([1], waiter)
        WATCHERS.unwatch([2], other_job)
        forget_results("/db/a")


def test_a_result_stored_by_this_process_reaches_its_waiter_without_a_read(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backstop poll of a notified wait could see the job finished between
    # the supervisor's commit and its wake-up, and read the row: a correct
    # result, but not the path under test. It waits out the test here.
    monkeypatch.setattr(waiting, "RESULT_POLL_NOTIFIED", HANG_GUARD)
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.tasks["wait_for_file"].delay(str(marker), str(release))
    rows_read: list[int] = []
    read_row = Job.record
    monkeypatch.setattr(Job, "record", lambda self: rows_read.append(self.id) or read_row(self))
    outcome: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: outcome.update(value=job.result(timeout=HANG_GUARD)))
    waiter.start()
    wait_until(lambda: job.id in WATCHERS._events, what="the waiter watching the job")
    wait_until(marker.exists, what="the job running")
    release.touch()
    waiter.join(HANG_GUARD)

    assert outcome == {"value": "released"}
    assert rows_read == [], "the value came with the wake-up, not from the job's row"
    # A later result() finds the value this process's supervisor kept.
    assert job.result() == "released"
    assert rows_read == []
    # Once no supervisor of this process serves the database, the kept
    # results are dropped and the row is read.
    pool.stop(HANG_GUARD)
    assert job.result() == "released"
    assert rows_read == [job.id]


def test_kept_results_drop_the_oldest_past_their_bounds() -> None:
    kept = RecentResults(max_bytes=10, max_jobs=3)
    kept.add("a", {1: b"1234", 2: b"5678"})
    kept.add("a", {3: b"90ab"})
    # 12 bytes: the oldest goes.
    assert kept.get("a", 1) is None
    assert (kept.get("a", 2), kept.get("a", 3)) == (b"5678", b"90ab")
    kept.add("b", {1: b"x", 2: b"y"})
    # Four jobs: the oldest goes again; the other database's job 1 is its own.
    assert kept.get("a", 2) is None
    assert kept.get("b", 1) == b"x"
    kept.add("a", {9: b"far too large"})
    assert kept.get("a", 9) is None, "a value above the byte bound is not kept"
    kept.forget("b")
    assert (kept.get("b", 1), kept.get("b", 2)) == (None, None)
    assert kept.get("a", 3) == b"90ab"


# --- the timeout of a wait ------------------------------------------------------------------


def _returns_in_time(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` on a thread: the error it raised, or None; fail if it waits past HANG_GUARD."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert outcome, f"still waiting after {HANG_GUARD} s"
    return outcome[0]


@pytest.mark.parametrize("timeout", [math.nan, -1, -math.inf, "10", True])
def test_a_wait_with_a_timeout_that_means_nothing_is_refused(queue: stoker.Queue, timeout: object) -> None:
    pending = queue.get_task("add").delay(1, 2)
    waits: list[Callable[[], object]] = [
        lambda: pending.result(timeout=timeout),  # type: ignore[arg-type]
        lambda: pending.wait(timeout=timeout),  # type: ignore[arg-type]
        lambda: pending.outcome(timeout=timeout),  # type: ignore[arg-type]
        lambda: stoker.gather([pending], timeout=timeout),  # type: ignore[arg-type]
        lambda: asyncio.run(pending.result_async(timeout=timeout)),  # type: ignore[arg-type]
        lambda: asyncio.run(stoker.gather_async([pending], timeout=timeout)),  # type: ignore[arg-type]
    ]
    for wait in waits:
        error = _returns_in_time(wait)
        assert isinstance(error, stoker.InvalidOptionError), error
        assert "timeout must be None (wait for ever) or a number of seconds >= 0" in str(error)


def test_a_finished_job_refuses_a_nan_timeout_too(queue: stoker.Queue) -> None:
    job = queue.get_task("add").delay(1, 2)
    queue.run_worker(processes=1, until_idle=True, install_signal_handlers=False)
    with pytest.raises(stoker.InvalidOptionError, match="timeout"):
        job.result(timeout=math.nan)
    with pytest.raises(stoker.InvalidOptionError, match="timeout"):
        stoker.gather([job], timeout=math.nan)
    # None and an infinite timeout both wait for ever; 0 looks once.
    assert job.result(timeout=None) == job.result(timeout=math.inf) == job.result(timeout=0) == 3
    assert stoker.gather([job], timeout=math.inf) == [3]


def test_a_zero_timeout_looks_once(queue: stoker.Queue) -> None:
    pending = queue.get_task("add").delay(1, 2)
    with pytest.raises(stoker.ResultTimeoutError):
        pending.result(timeout=0)
