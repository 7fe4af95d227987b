"""The supervisor as its own process (``stoker worker``): SIGKILL, recovery, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import (
    HANG_GUARD,
    ChildProcess,
    child_python_path,
    closing_all,
    read_ledger,
    wait_until,
    written,
)


class WorkerCommand(ChildProcess):
    """``python -m stoker worker apps.tasks:queue -p 2`` on a test's database."""

    def __init__(self, db: Path, *extra: str) -> None:
        super().__init__(db, "-m", "stoker", "worker", "apps.tasks:queue", "-p", "2", *extra)


@pytest.fixture
def commands() -> Iterator[list[WorkerCommand]]:
    with closing_all(WorkerCommand) as started:
        yield started


def _all_gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_supervisor_sigkill_leaves_no_orphans_and_a_new_one_recovers_the_job(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    first = WorkerCommand(Path(queue.path), "--lease", "1")
    commands.append(first)
    wait_until(written(marker), what="the job to start")
    worker_pid = int(marker.read_text())
    descendants = first.descendants()
    assert worker_pid in {p.pid for p in descendants}

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(HANG_GUARD)
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")
    assert job.status == "running"

    release.touch()
    second = WorkerCommand(Path(queue.path), "--lease", "1")
    commands.append(second)
    assert job.result(timeout=HANG_GUARD) == "released"
    (error,) = job.errors
    assert error.kind == "lease_expired"
    assert error.type_name == "stoker.errors.LeaseExpiredError"
    assert job.record().attempt == 2


def _held_in_database(db: Path, job_id: int) -> bool:
    """Whether the job is running and marked held by its supervisor, as a fresh connection reads it."""
    with closing(sqlite3.connect(db)) as conn:
        (status, held) = conn.execute("SELECT status, held FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return bool(status == 2 and held == 1)


def _sigkill_with_a_job_ahead(
    db: Path,
    commands: list[WorkerCommand],
    ledger: Path,
    long: stoker.Job,
    ahead: stoker.Job,
    marker: Path,
    claimed: Callable[[], bool],
    what: str,
) -> None:
    """Run ``long`` (it writes ``marker``) on one worker with ``ahead`` claimed behind it,
    SIGKILL the supervisor once ``claimed()``, and check that another one runs ``ahead``
    once, uncounted, and that the long job's lost lease counts (max_crashes=0: dead)."""
    first = WorkerCommand(db, "-p", "1", "--lease", "1")
    commands.append(first)
    wait_until(written(marker), what="the long job to start")
    wait_until(claimed, what=what)
    descendants = first.descendants()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(HANG_GUARD)
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")
    assert read_ledger(ledger) == [], "the job claimed ahead never ran"

    second = WorkerCommand(db, "-p", "1", "--lease", "1")
    commands.append(second)
    assert ahead.result(timeout=HANG_GUARD) == "ahead"
    record = ahead.record()
    assert (record.status, record.crashes, record.failures) == ("complete", 0, 0)
    assert ahead.errors == []
    assert len(read_ledger(ledger)) == 1
    wait_until(lambda: long.status == "dead", what="the long job's lease to be reaped")
    assert [error.kind for error in long.errors] == ["lease_expired"]


def test_a_job_claimed_ahead_never_started_goes_back_uncounted_after_a_supervisor_sigkill(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, commands: list[WorkerCommand]
) -> None:
    marker, release = tmp_path / "started", tmp_path / "release"
    # One worker: the long job keeps it busy; the next one is claimed ahead for
    # it, taken back from its pipe once the long job has run JOB_AHEAD_MAX_WAIT,
    # and held by the supervisor, which marks it so in the database.
    long = queue.get_task("exit_when_released").delay(str(marker), str(release))  # max_crashes=0
    ahead = queue.get_task("record_uncrashable").delay(str(ledger), "ahead")  # max_crashes=0
    db = Path(queue.path)
    _sigkill_with_a_job_ahead(
        db,
        commands,
        ledger,
        long,
        ahead,
        marker,
        lambda: _held_in_database(db, ahead.id),
        "the next job to be held by the supervisor",
    )


def test_a_job_in_a_busy_workers_pipe_goes_back_uncounted_after_a_supervisor_sigkill(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, commands: list[WorkerCommand]
) -> None:
    marker = tmp_path / "started"
    # Sent together: the first starts on the one worker, the second is sent
    # ahead into its pipe. The first holds the GIL in C code, so the worker
    # can answer no request to give the second back: it stays in the pipe.
    long = queue.get_task("holds_the_gil").delay(str(marker))  # max_crashes=0
    ahead = queue.get_task("record_uncrashable").delay(str(ledger), "ahead")  # max_crashes=0
    _sigkill_with_a_job_ahead(
        Path(queue.path),
        commands,
        ledger,
        long,
        ahead,
        marker,
        lambda: ahead.status == "running",
        "the next job to be claimed",
    )


def test_sigterm_lets_running_jobs_finish(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    waiting = queue.get_task("add").options(delay=3600).delay(1, 1)
    command = WorkerCommand(Path(queue.path), "--drain-timeout", "600")
    commands.append(command)
    wait_until(written(marker), what="the job to start")
    descendants = command.descendants()
    command.process.send_signal(signal.SIGTERM)
    release.touch()
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    assert job.status == "complete" and job.result() == "released"
    assert job.errors == []
    assert waiting.status == "scheduled"
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")


def test_sigterm_past_the_drain_timeout_requeues_without_a_failed_attempt(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    marker = tmp_path / "started"
    job = queue.get_task("wait_for_file").delay(str(marker), str(tmp_path / "never"))
    command = WorkerCommand(Path(queue.path), "--drain-timeout", "0.2")
    commands.append(command)
    wait_until(written(marker), what="the job to start")
    descendants = command.descendants()
    command.process.send_signal(signal.SIGTERM)
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")
    record = job.record()
    assert record.status == "pending"
    assert (record.failures, record.crashes) == (0, 0)
    assert job.errors == []


def test_worker_command_names_a_bad_app(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "worker", "apps.tasks:nothing"],
        env=dict(os.environ, STOKER_TEST_DB=str(tmp_path / "x.db"), PYTHONPATH=child_python_path()),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode != 0
    assert "has no attribute 'nothing'" in result.stderr


HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
"""


def test_sigterm_while_another_program_holds_the_write_lock_stops_by_the_drain_timeout(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    started, release, done = tmp_path / "started", tmp_path / "release", tmp_path / "done"
    finished = queue.get_task("done_when_released").delay(str(started), str(release), str(done))
    running = queue.get_task("wait_for_file").delay(str(tmp_path / "running"), str(tmp_path / "never"))
    command = WorkerCommand(Path(queue.path), "--drain-timeout", "0.2", "--lease", "2")
    commands.append(command)
    wait_until(written(started), what="the first job to start")
    wait_until(written(tmp_path / "running"), what="the second job to start")
    descendants = command.descendants()
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, queue.path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        # One outcome the supervisor cannot store while the lock is held, and
        # one job still running when it is told to stop.
        release.touch()
        wait_until(written(done), what="the first job to end")
        command.process.send_signal(signal.SIGTERM)
        # A clean stop by its drain timeout, while the lock is still held: not
        # the storage failure limit (60 s) running out, which exits with an error.
        assert command.process.wait(HANG_GUARD) == 0, command.output()
        assert holder.poll() is None
        wait_until(lambda: _all_gone(descendants), what="every worker process to exit")
        holder.stdin.write("done\n")
        holder.stdin.close()
        holder.wait(HANG_GUARD)
    # What it could not store is the leases': both jobs run again, once.
    second = WorkerCommand(Path(queue.path), "--lease", "2")
    commands.append(second)
    (tmp_path / "never").touch()
    assert finished.result(timeout=HANG_GUARD) == "released"
    assert running.result(timeout=HANG_GUARD) == "released"
    assert [error.kind for error in finished.errors] == ["lease_expired"]
    assert [error.kind for error in running.errors] == ["lease_expired"]


def test_a_clean_stop_folds_the_log_into_the_database_file_and_removes_it(
    tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    db = tmp_path / "jobs.db"
    sender = stoker.Queue(db)
    from apps import tasks as app

    sender.include(app.queue)
    command = WorkerCommand(db)
    commands.append(command)
    jobs = sender.get_task("add").map([(i, i) for i in range(300)])
    assert [job.result(timeout=HANG_GUARD) for job in jobs] == [2 * i for i in range(300)]
    sender.close()
    command.process.send_signal(signal.SIGTERM)
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    assert not (tmp_path / "jobs.db-wal").exists()
    assert not (tmp_path / "jobs.db-shm").exists()
    # Every commit is in the file itself: a copy of it alone has them all.
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    assert stoker.Queue(copy).stats().get("complete") == 300
