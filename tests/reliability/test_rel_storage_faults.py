"""Storage faults: busy errors, errors after a commit and a full disk, at seeded
points. No job is left running without an expiring lease, and the supervisor
recovers (or stops with a clear error), losing nothing."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stoker
from conftest import HANG_GUARD, wait_until
from reliability.harness import Scale, SupervisorProcess, audit
from stoker._core import Engine

SEED = int(os.environ.get("STOKER_SEED", "19"))

#: Engine calls the supervisor makes that a fault may hit.
FAULTY = {
    "claim",
    "complete_many",
    "complete_and_claim",
    "fail",
    "requeue",
    "release",
    "finish_cancelled",
    "heartbeat",
    "reap_expired",
    "data_version",
    "cancel_requests",
    "next_wakeup_ms",
}


class FaultyEngine:
    """The supervisor's engine, failing at seeded points.

    A ``busy`` fault raises StorageBusyError before the call (nothing happened);
    an ``after-commit`` fault makes the call, then raises StorageError as if the
    answer had been lost (everything happened).
    """

    def __init__(self, engine: Engine, seed: int, rate: float) -> None:
        self._engine = engine
        self._rng = random.Random(seed)
        self._rate = rate
        self._lock = threading.Lock()
        self.enabled = True
        self.injected: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._engine, name)
        if name not in FAULTY:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                draw = self._rng.random() if self.enabled else 1.0
            if draw < self._rate / 2:
                self.injected[f"busy:{name}"] += 1
                raise stoker.StorageBusyError(f"injected: database is locked ({name})")
            value = attribute(*args, **kwargs)
            if draw < self._rate:
                self.injected[f"after-commit:{name}"] += 1
                raise stoker.StorageError(f"injected: disk I/O error after {name} committed")
            return value

        return call


def test_injected_busy_errors_and_errors_after_commit_lose_nothing(
    rqueue: stoker.Queue, tmp_path: Path, scale: Scale
) -> None:
    ledger = tmp_path / "ledger"
    count = scale(300, 5000)
    jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.002)] * count)
    supervisor = rqueue.supervisor(processes=2, lease=1.0, drain_timeout=0.0)
    faulty = FaultyEngine(Engine(rqueue.path), SEED, rate=0.05)
    supervisor._engine = faulty  # type: ignore[assignment]
    handle = stoker.SupervisorThread(supervisor)
    try:
        wait_until(
            lambda: sum(rqueue.stats()[s] for s in ("complete", "dead")) == count or not handle.is_alive(),
            timeout=HANG_GUARD * scale(1, 10),
            what="every job to finish",
        )
        assert handle.error is None, handle.error
    finally:
        faulty.enabled = False
        handle.stop(HANG_GUARD)
    assert not handle.is_alive()
    result = audit(rqueue.engine, [j.id for j in jobs], ledger)
    print(f"\ninjected {sum(faulty.injected.values())} faults {dict(faulty.injected)}; {result.summary()}")
    assert result.problems == [], result.problems[:20]
    assert sum(faulty.injected.values()) > 0
    assert rqueue.stats()["running"] == 0


def test_a_database_locked_past_the_busy_timeout_is_survived(
    rqueue: stoker.Queue, tmp_path: Path, scale: Scale
) -> None:
    """Another process holds the write lock for longer than the busy timeout (5 s)."""
    ledger, locked, release = tmp_path / "ledger", tmp_path / "locked", tmp_path / "release"
    work = rqueue.get_task("rel.work")
    first = work.map([(str(ledger),)] * 50)
    with rqueue.start_worker(processes=2, lease=30.0, drain_timeout=0.0) as handle:
        for job in first:
            job.wait(timeout=HANG_GUARD)
        # A job in flight while the lock is held: its completion must wait, not vanish.
        running = rqueue.get_task("rel.hold").delay(str(ledger), str(tmp_path / "started"), str(release))
        wait_until((tmp_path / "started").exists, what="the held job to start")
        holder = subprocess.Popen(
            [
                "python3",
                "-c",
                "import sqlite3, sys, time, pathlib\n"
                "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "db.execute('BEGIN IMMEDIATE')\n"
                "pathlib.Path(sys.argv[2]).touch()\n"
                "time.sleep(6.5)\n"
                "db.execute('ROLLBACK')\n",
                rqueue.path,
                str(locked),
            ]
        )
        wait_until(locked.exists, what="the lock to be taken")
        release.touch()  # The job finishes while the database is locked.
        assert holder.wait(HANG_GUARD) == 0
        running.wait(timeout=HANG_GUARD)
        second = work.map([(str(ledger),)] * 50)
        # Every one: two workers finish jobs out of the order they were sent.
        for job in second:
            job.wait(timeout=HANG_GUARD)
        assert handle.error is None and handle.is_alive()
    result = audit(rqueue.engine, [j.id for j in [*first, running, *second]], ledger)
    assert result.problems == [] and result.complete == 101


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (root can mount one; otherwise the test is skipped, saying why)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_nothing_and_the_supervisor_recovers(
    small_disk: Path, tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    db = small_disk / "jobs.db"
    ledger = tmp_path / "ledger"
    queue = stoker.Queue(db)
    from apps import reliability as rel

    queue.include(rel.queue)
    work = queue.get_task("rel.work")
    command = SupervisorProcess(db, "-p", "2", "--lease", "2", log=tmp_path / "supervisor.log")
    supervisors.append(command)
    # Something else takes most of the disk; then sends fill the rest, until one fails.
    filler = small_disk / "filler"
    # (The disk stays larger than SQLite's WAL before its automatic checkpoint,
    # about 4 MB, or the WAL alone could fill it and never be checkpointed.)
    filler.write_bytes(b"f" * 10 * 1024 * 1024)
    acknowledged: list[int] = []
    with pytest.raises(stoker.StorageError, match="full"):
        for _ in range(10_000):
            acknowledged.append(work.delay(str(ledger), 0.0, b"p" * 20_000).id)
    assert acknowledged
    # Whatever a send acknowledged is stored, whatever the disk says now.
    assert len(queue.engine.statuses(acknowledged)) == len(acknowledged)
    wait_until(lambda: "full" in command.output(), what="the supervisor to meet the full disk")
    # Room comes back, the way an operator makes some.
    filler.unlink()
    for job_id in acknowledged:
        queue.get_job(job_id).wait(timeout=HANG_GUARD)
    assert command.process.poll() is None, command.output()[-3000:]
    result = audit(queue.engine, acknowledged, ledger)
    print(f"\nfull disk: {len(acknowledged)} acknowledged sends; {result.summary()}")
    assert result.problems == [] and result.complete == len(acknowledged)
    assert queue.stats()["running"] == 0


# The supervisor's thread ends with the error (SupervisorThread re-raises it, as it should).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_supervisor_whose_storage_keeps_failing_stops_with_a_clear_error(
    rqueue: stoker.Queue, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.01)] * 40)
    supervisor = rqueue.supervisor(processes=2, lease=1.0, drain_timeout=0.0)
    supervisor.storage_failure_limit = 0.5
    faulty = FaultyEngine(Engine(rqueue.path), SEED, rate=0.0)
    supervisor._engine = faulty  # type: ignore[assignment]
    handle = stoker.SupervisorThread(supervisor)
    wait_until(lambda: rqueue.stats()["complete"] >= 5, what="some jobs to complete")
    faulty._rate = 2.0  # From now on every call fails, half before and half after committing.
    handle.join(HANG_GUARD)
    assert not handle.is_alive()
    assert isinstance(handle.error, stoker.StorageError)
    assert "kept failing" in str(handle.error) and "leases expire" in str(handle.error)
    # Every running job still has a lease that expires; another supervisor runs the rest.
    for job in jobs:
        record = job.record()
        assert record.status != "running" or record.lease_deadline_ms is not None
    with rqueue.start_worker(processes=2, lease=1.0, drain_timeout=0.0):
        for job in jobs:
            job.wait(timeout=HANG_GUARD)
    result = audit(rqueue.engine, [j.id for j in jobs], ledger)
    assert result.problems == [] and result.complete == len(jobs)
