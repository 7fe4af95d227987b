"""No prefetch beyond free slots, priorities hold, and worker processes never hold the database."""

from __future__ import annotations

import os
import random
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import HANG_GUARD, wait_until
from reliability.harness import Scale, open_database_files, read_executions

SEED = int(os.environ.get("STOKER_SEED", "17"))


def test_short_jobs_start_at_once_beside_a_long_one_in_priority_order(
    rqueue: stoker.Queue, tmp_path: Path, scale: Scale
) -> None:
    ledger = tmp_path / "ledger"
    long_release, gate_release = tmp_path / "long-release", tmp_path / "gate-release"
    count = scale(100, 1000)
    rng = random.Random(SEED)
    hold, work = rqueue.get_task("rel.hold"), rqueue.get_task("rel.work")
    running_seen: list[int] = []
    # No job is claimed ahead of a free worker (prefetch=0): this test counts
    # slots exactly. Jobs claimed ahead are tested in tests/pool/test_dispatch.py.
    with rqueue.start_worker(processes=2, drain_timeout=0.0, prefetch=0) as handle:
        long_job = hold.delay(str(ledger), str(tmp_path / "long"), str(long_release))
        gate = hold.delay(str(ledger), str(tmp_path / "gate"), str(gate_release))
        wait_until(lambda: (tmp_path / "long").exists() and (tmp_path / "gate").exists(), what="both slots")
        # The spare worker is ready too, yet nothing more is claimed while both slots are busy.
        wait_until(lambda: len(handle.supervisor.worker_pids()) == 3, what="the spare worker")
        shorts = [work.options(priority=rng.randrange(-5, 6)).delay(str(ledger)) for _ in range(count)]
        assert rqueue.stats()["running"] == 2
        assert all(j.record().attempt == 0 for j in shorts)
        gate_release.touch()
        # The short jobs all run on the one free slot while the long job holds the other.
        for job in shorts:
            job.wait(timeout=HANG_GUARD)
            running_seen.append(rqueue.stats()["running"])
        assert long_job.status == "running"
        long_release.touch()
        long_job.wait(timeout=HANG_GUARD)
        assert handle.error is None
    assert max(running_seen) <= 2, "never more jobs running than slots"
    order = [e.job_id for e in read_executions(ledger) if e.job_id not in (long_job.id, gate.id)]
    expected = sorted(shorts, key=lambda j: (-j.record().priority, j.id))
    assert order == [j.id for j in expected]


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_no_worker_process_holds_a_database_handle(
    rqueue: stoker.Queue, tmp_path: Path, start_method: str
) -> None:
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    with rqueue.start_worker(processes=2, drain_timeout=0.0, start_method=start_method) as handle:
        rqueue.get_task("rel.work").map([(str(ledger),)] * 50)[-1].wait(timeout=HANG_GUARD)
        job = rqueue.get_task("rel.hold").delay(str(ledger), str(tmp_path / "started"), str(release))
        wait_until((tmp_path / "started").exists, what="a job to be running")
        # Every process below this one: workers (one of them running a job),
        # the spare, the guardian, the fork server.
        children = psutil.Process(os.getpid()).children(recursive=True)
        assert len(children) >= 4
        for child in children:
            assert open_database_files(child.pid, rqueue.path) == [], child.cmdline()
        release.touch()
        job.wait(timeout=HANG_GUARD)
        assert handle.error is None


def test_the_suite_runs_with_warnings_as_errors(request: pytest.FixtureRequest) -> None:
    assert "error" in request.config.getini("filterwarnings")
