"""The record of the jobs a supervisor's workers started (``stoker.pool.start_marks``):
which expired jobs of a dead supervisor are known never to have started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from stoker.pool.start_marks import RECORD, StartLog, never_started, owner_directory


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def owner(pid: int, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}:{pid}:abc123"


def record(directory: Path, worker_pid: int, *jobs: tuple[int, int]) -> None:
    with open(directory / str(worker_pid), "ab") as file:
        for job in jobs:
            file.write(RECORD.pack(*job))


def test_the_jobs_no_worker_of_a_dead_supervisor_recorded_never_started(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    dead = owner(dead_pid())
    directory = owner_directory(db, dead)
    assert directory is not None
    directory.mkdir(parents=True)
    record(directory, dead_pid(), (1, 1), (2, 3))
    record(directory, dead_pid())  # A worker that started nothing.
    unstarted, judged = never_started(db, [(1, 1, dead), (2, 2, dead), (2, 3, dead), (4, 1, dead)])
    # Job 2's attempt 2 was not recorded (attempt 3 was): only tokens count.
    assert unstarted == [(2, 2), (4, 1)]
    assert judged == [(dead, directory)]


def test_nothing_is_judged_while_a_process_of_the_owner_may_still_start_a_job(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    alive_supervisor = owner(os.getpid())
    dead = owner(dead_pid())
    for name in (alive_supervisor, dead):
        directory = owner_directory(db, name)
        assert directory is not None
        directory.mkdir(parents=True)
    # The supervisor is gone, but one of its workers (this process) is alive.
    dead_directory = owner_directory(db, dead)
    assert dead_directory is not None
    StartLog(str(dead_directory)).started(7, 1)
    assert never_started(db, [(1, 1, alive_supervisor), (2, 1, dead)]) == ([], [])


def test_an_owner_of_another_host_or_without_a_record_is_not_judged(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    elsewhere = owner(dead_pid(), host=socket.gethostname() + "-other")
    directory = owner_directory(db, elsewhere)
    assert directory is not None
    directory.mkdir(parents=True)
    unrecorded = owner(dead_pid())
    assert never_started(db, [(1, 1, elsewhere), (2, 1, unrecorded)]) == ([], [])
    # PostgreSQL databases have no directory beside them.
    assert owner_directory("postgresql://host/db", unrecorded) is None


def test_a_record_cut_short_leaves_the_owner_unjudged(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    dead = owner(dead_pid())
    directory = owner_directory(db, dead)
    assert directory is not None
    directory.mkdir(parents=True)
    (directory / str(dead_pid())).write_bytes(RECORD.pack(1, 1) + b"\x02\x00")
    assert never_started(db, [(2, 1, dead)]) == ([], [])
