"""Another program writes the database while this one sends and waits.

The other writer is the standard ``sqlite3`` module, in this process (a second
copy of SQLite, whose POSIX locks stoker's own SQLite would not see without
``storage/sqlite_locks.rs``) or in another process, which holds its write
transaction for a while, commits, rolls back or is killed holding it. Every
send either is stored when it returns or raises ``StorageBusyError``; every
job that a send returned is there, and the process keeps seeing what others
commit.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import stoker
from apps import tasks as app
from conftest import HANG_GUARD, TESTS, wait_until

#: How long the other writer holds its transaction before it ends it. Only the
#: scenario needs it (a send comes while the lock is held); nothing waits on it.
HOLD = 0.3


def foreign_write(path: Path) -> sqlite3.Connection:
    """A connection of Python's own SQLite in this process, inside a write transaction."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("UPDATE jobs SET priority = priority")
    assert conn.in_transaction
    return conn


@contextmanager
def ended_later(end: Callable[[], None]) -> Iterator[None]:
    """``end`` runs on a timer thread ``HOLD`` seconds from now; joined on exit."""
    timer = threading.Timer(HOLD, end)
    timer.start()
    try:
        yield
    finally:
        timer.join(HANG_GUARD)


def all_stored(queue: stoker.Queue, jobs: list[stoker.Job]) -> list[str]:
    """The statuses of ``jobs`` as a fresh engine on the file reads them."""
    fresh = stoker.Queue(queue.path)
    return [fresh.get_job(job.id).status for job in jobs]


SENDS: dict[str, Callable[[stoker.Queue], list[stoker.Job]]] = {
    "delay": lambda q: [q.get_task("add").delay(1, 2)],
    "options": lambda q: [q.get_task("add").options(priority=3).delay(1, 2)],
    "map": lambda q: q.get_task("add").map([(i, i) for i in range(50)]),
}


@pytest.fixture
def seeded(queue: stoker.Queue) -> stoker.Queue:
    """The queue's database holds a job, so the other writer has a row to update."""
    queue.get_task("add").delay(0, 0)
    return queue


@pytest.mark.parametrize("send", sorted(SENDS))
@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_a_send_while_this_process_writes_through_another_sqlite_is_stored(
    seeded: stoker.Queue, send: str, end: str
) -> None:
    other = foreign_write(Path(seeded.path))
    with ended_later(getattr(other, end)):
        jobs = SENDS[send](seeded)
    other.close()
    assert all_stored(seeded, jobs) == ["pending"] * len(jobs)


def test_a_send_that_cannot_get_the_lock_raises_instead_of_returning(seeded: stoker.Queue) -> None:
    before = seeded.stats()
    other = foreign_write(Path(seeded.path))
    try:
        with pytest.raises(stoker.StorageBusyError):
            seeded.get_task("add").delay(1, 2)
    finally:
        other.rollback()
        other.close()
    assert seeded.stats() == before


def test_logged_sends_while_this_process_writes_through_another_sqlite_all_run(
    seeded: stoker.Queue, pool: stoker.SupervisorThread
) -> None:
    # A pool in this process: plain sends are appended to the send log and
    # stored by the pool's next transaction, which meets the other writer.
    add = seeded.get_task("add")
    other = foreign_write(Path(seeded.path))
    with ended_later(other.commit):
        jobs = [add.delay(i, 1) for i in range(200)]
        jobs += add.map([(i, 2) for i in range(50)])
    other.close()
    assert [job.result(timeout=HANG_GUARD) for job in jobs] == [i + 1 for i in range(200)] + [
        i + 2 for i in range(50)
    ]


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE jobs SET priority = priority")
print("locked", flush=True)
if sys.stdin.readline().strip() == "commit":
    conn.commit()
"""


@contextmanager
def other_process_holding_the_lock(path: Path) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            yield holder
        finally:
            holder.kill()
            holder.wait(HANG_GUARD)


def commit_holder(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("commit\n")
    holder.stdin.flush()


@pytest.mark.parametrize("send", sorted(SENDS))
@pytest.mark.parametrize("end", ["commit", "killed"])
def test_a_send_while_another_process_holds_the_write_lock_is_stored(
    seeded: stoker.Queue, send: str, end: str
) -> None:
    with other_process_holding_the_lock(Path(seeded.path)) as holder:
        ending = (
            (lambda: commit_holder(holder))
            if end == "commit"
            else (lambda: holder.send_signal(signal.SIGKILL))
        )
        with ended_later(ending):
            jobs = SENDS[send](seeded)
    assert all_stored(seeded, jobs) == ["pending"] * len(jobs)


def test_a_process_keeps_seeing_commits_after_another_sqlite_of_it_closed_the_file(
    tmp_path: Path,
) -> None:
    # Python's SQLite, the last to close the file by its own count, would
    # checkpoint and delete the -wal and -shm files under stoker's connection,
    # which from then on read a log nobody else writes to.
    db = tmp_path / "jobs.db"
    queue = stoker.Queue(db)
    queue.include(app.queue)
    job = queue.get_task("add").delay(2, 3)
    other = sqlite3.connect(db)
    other.execute("UPDATE jobs SET priority = priority WHERE id = ?", (job.id,))
    other.commit()
    other.close()
    second = stoker.Queue(db)
    worker = subprocess.Popen(
        [sys.executable, "-m", "stoker", "worker", "apps.tasks:queue", "-p", "1"],
        env={**os.environ, "STOKER_TEST_DB": str(db), "PYTHONPATH": str(TESTS)},
    )
    try:
        assert job.result(timeout=HANG_GUARD) == 5
        assert job.status == "complete"
        wait_until(lambda: second.get_job(job.id).status == "complete", what="the second queue to see it")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(HANG_GUARD)


FORKING_WRITER = """
import os, sys
import stoker
from apps import tasks as app
queue = stoker.Queue(sys.argv[1])
queue.include(app.queue)
add = queue.get_task("add")
add.delay(0, 0)
if os.fork() == 0:
    # A child that never execs: it holds every descriptor of its parent.
    sys.stdin.readline()
    os._exit(0)
print("forked", flush=True)
while True:
    add.map([(i, i) for i in range(200_000)])
"""


def write_lock_held(path: Path) -> bool:
    """Whether some process holds SQLite's WAL write lock on ``path`` (byte 120 of its -shm file)."""
    import fcntl
    import struct

    with open(f"{path}-shm", "rb+") as shm:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 120, 1, 0)
        answer = fcntl.fcntl(shm.fileno(), fcntl.F_OFD_GETLK, query)
        return struct.unpack("hhqqi", answer)[0] != fcntl.F_UNLCK


def test_a_lock_held_by_a_killed_process_is_not_kept_by_its_forked_child(tmp_path: Path) -> None:
    # Open file description locks belong to a description, which a forked
    # child shares: unless the child lets go of them at once, a lock its
    # parent held when it died would last as long as the child.
    db = tmp_path / "jobs.db"
    with subprocess.Popen(
        [sys.executable, "-c", FORKING_WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "STOKER_TEST_DB": str(db), "PYTHONPATH": str(TESTS)},
    ) as writer:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "forked"
        wait_until(lambda: write_lock_held(db), what="the parent to hold the write lock")
        writer.send_signal(signal.SIGKILL)
        writer.wait(HANG_GUARD)
        try:
            # The child is still alive, with its parent's descriptors.
            queue = stoker.Queue(db)
            queue.include(app.queue)
            job = queue.get_task("add").delay(2, 3)
            assert stoker.Queue(db).get_job(job.id).status == "pending"
        finally:
            writer.stdin.write("exit\n")
            writer.stdin.close()
