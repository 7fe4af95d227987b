"""Exact cancellation: a pending job never starts, a running one is killed and not
retried, and a cancel racing a completion ends in exactly one of the two."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, wait_until
from reliability.harness import Scale, read_executions

SEED = int(os.environ.get("STOKER_SEED", "11"))


def test_cancelled_pending_jobs_never_start(rqueue: stoker.Queue, tmp_path: Path, scale: Scale) -> None:
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    count = scale(100, 1000)
    rng = random.Random(SEED)
    # prefetch=0: with both slots held, no job is claimed ahead, so every job
    # sent now stays pending until the release (a job claimed ahead answers
    # cancel() with "requested": tests/pool/test_dispatch.py).
    with rqueue.start_worker(processes=2, drain_timeout=0.0, prefetch=0) as handle:
        # Both slots are held, so every job sent now stays pending until the release.
        holds = [
            rqueue.get_task("rel.hold").delay(str(ledger), str(tmp_path / f"hold-{i}"), str(release))
            for i in range(2)
        ]
        wait_until(lambda: all((tmp_path / f"hold-{i}").exists() for i in range(2)), what="both slots held")
        jobs = rqueue.get_task("rel.work").map([(str(ledger),)] * count)
        cancelled = set(rng.sample([j.id for j in jobs], count // 2))
        for job in jobs:
            if job.id in cancelled:
                assert job.cancel() == "cancelled"
        release.touch()
        for job in jobs + holds:
            job.wait(timeout=HANG_GUARD)
        assert handle.error is None
    ran = {e.job_id for e in read_executions(ledger)}
    for job in jobs:
        record = job.record()
        if job.id in cancelled:
            assert (record.status, record.attempt) == ("cancelled", 0)
            assert job.id not in ran
        else:
            assert record.status == "complete" and job.id in ran


def test_a_cancelled_running_job_is_killed_and_not_retried(rqueue: stoker.Queue, tmp_path: Path) -> None:
    ledger, markers = tmp_path / "ledger", tmp_path / "markers"
    markers.mkdir()
    with rqueue.start_worker(processes=1, drain_timeout=0.0) as handle:
        job = rqueue.get_task("rel.cancellable").delay(str(ledger), str(markers))
        wait_until((markers / "attempt-1").exists, what="the job to start")
        worker_pid = int((markers / "attempt-1").read_text())
        assert job.cancel() == "requested"
        with pytest.raises(stoker.JobCancelledError):
            job.result(timeout=HANG_GUARD)
        wait_until(lambda: worker_pid not in handle.supervisor.worker_pids(), what="the worker to be killed")
        # The pool goes on, and the cancelled job is never run again (max_retries and max_crashes are 3).
        assert (
            rqueue.get_task("rel.add").map([(i, 1) for i in range(20)])[-1].result(timeout=HANG_GUARD) == 20
        )
    record = job.record()
    assert (record.status, record.attempt, record.failures, record.crashes) == ("cancelled", 1, 0, 0)
    assert job.errors == []
    assert sorted(p.name for p in markers.iterdir()) == ["attempt-1"]


def test_cancel_racing_completion_ends_in_exactly_one_outcome(
    rqueue: stoker.Queue, tmp_path: Path, scale: Scale
) -> None:
    ledger = tmp_path / "ledger"
    count = scale(300, 1000)
    rng = random.Random(SEED)
    outcomes: dict[int, str] = {}
    with rqueue.start_worker(processes=2, drain_timeout=0.0) as handle:
        jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.002)] * count)
        order = list(jobs)
        rng.shuffle(order)
        for job in order:
            # Cancels land on pending, running and finished jobs alike.
            end = time.monotonic() + rng.random() * 0.002
            while time.monotonic() < end:
                pass
            outcomes[job.id] = job.cancel()
        # None stalls: every job finishes.
        for job in jobs:
            job.wait(timeout=HANG_GUARD)
        assert handle.error is None
    runs: dict[int, list[int]] = {}
    for execution in read_executions(ledger):
        runs.setdefault(execution.job_id, []).append(execution.attempt)
    tally = {"complete": 0, "cancelled": 0}
    for job in jobs:
        record = job.record()
        said = outcomes[job.id]
        assert record.status in ("complete", "cancelled"), (job.id, record.status)
        tally[record.status] += 1
        assert job.errors == [] and (record.failures, record.crashes) == (0, 0)
        if said == "cancelled":
            assert (record.status, record.attempt, runs.get(job.id)) == ("cancelled", 0, None)
        elif said == "requested":
            # It ran once; the kill or the completion won, not both.
            assert record.attempt == 1 and len(runs.get(job.id, [])) <= 1
            if record.status == "complete":
                assert runs[job.id] == [1] and job.result() == job.id
        else:
            assert said == "complete" == record.status and runs[job.id] == [1]
    print(f"\n{count} cancel races: {tally}; cancel() said {sorted(set(outcomes.values()))}")
