"""Other programs write the database while jobs are sent and run.

Two foreign writers work throughout: Python's own ``sqlite3`` module in this
process (a second copy of SQLite, which opens, writes and closes the file over
and over: its close would have deleted the -wal and -shm files under stoker's
connection), and another process that holds its write transaction for a
while, commits or rolls back, and is SIGKILLed holding it from time to time.
Jobs are sent every way (single sends through the send log of the pool in
this process, per-call options, batches) and run by that pool and by a
supervisor of another process. No send that returned is lost, every job ends
with one outcome, and this process sees every completion.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import stoker
from conftest import HANG_GUARD
from reliability.harness import Scale, SupervisorProcess, audit

SEED = int(os.environ.get("STOKER_SEED", "23"))

#: A writer of another process: write transactions of up to 20 ms, committed
#: or rolled back, one after another, until it is killed. (The pauses are the
#: scenario, not a synchronisation.)
FOREIGN_PROCESS = """
import random, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
rng = random.Random(int(sys.argv[2]))
print("started", flush=True)
while True:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE jobs SET priority = priority WHERE id = ?", (rng.randrange(1, 1000),))
    time.sleep(rng.random() * 0.02)
    conn.execute("COMMIT" if rng.random() < 0.5 else "ROLLBACK")
    time.sleep(rng.random() * 0.005)
"""


def start_foreign_process(path: str, seed: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", FOREIGN_PROCESS, path, str(seed)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(HANG_GUARD)
    if process.stdout is not None:
        process.stdout.close()


class ForeignThread(threading.Thread):
    """Python's SQLite in this process: short write transactions, and the
    connection closed and opened again every few of them."""

    def __init__(self, path: str, seed: int) -> None:
        super().__init__(name="foreign-sqlite", daemon=True)
        self.path = path
        self.rng = random.Random(seed)
        self.finish = threading.Event()
        self.transactions = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.finish.is_set():
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                for _ in range(self.rng.randrange(1, 5)):
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "UPDATE jobs SET priority = priority WHERE id = ?", (self.rng.randrange(1, 1000),)
                    )
                    self.finish.wait(self.rng.random() * 0.01)
                    conn.execute("COMMIT" if self.rng.random() < 0.5 else "ROLLBACK")
                    self.transactions += 1
                conn.close()
        except BaseException as error:
            self.errors.append(error)


def test_sends_and_runs_lose_nothing_while_other_programs_write(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], scale: Scale
) -> None:
    rng = random.Random(SEED)
    ledger = str(tmp_path / "ledger")
    work = rqueue.get_task("rel.work")
    count = scale(600, 20_000)
    jobs = [work.delay(ledger)]  # A row for the foreign writers to update.
    foreign_thread = ForeignThread(rqueue.path, SEED)
    foreign_thread.start()
    foreign = start_foreign_process(rqueue.path, SEED)
    foreign_kills = 0
    supervisors.append(SupervisorProcess(Path(rqueue.path), "-p", "1", "--lease", "2"))
    pool = rqueue.start_worker(processes=2, lease=2.0, drain_timeout=0.0)
    try:
        assert pool.wait_started(HANG_GUARD), pool.error
        while len(jobs) < count:
            way = rng.randrange(3)
            if way == 0:
                jobs += [work.delay(ledger) for _ in range(rng.randrange(1, 40))]
            elif way == 1:
                jobs.append(work.options(priority=rng.randrange(3)).delay(ledger))
            else:
                jobs += work.map([(ledger,)] * rng.randrange(1, 100))
            if rng.random() < 0.05:
                # Killed whatever it was doing, perhaps holding the write lock.
                kill(foreign)
                foreign_kills += 1
                foreign = start_foreign_process(rqueue.path, SEED + foreign_kills)
        for job in jobs:
            job.wait(timeout=HANG_GUARD * scale(1, 10))
    finally:
        foreign_thread.finish.set()
        foreign_thread.join(HANG_GUARD)
        kill(foreign)
        pool.stop(HANG_GUARD)
    assert foreign_thread.errors == []
    with sqlite3.connect(rqueue.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # A fresh engine on the file agrees with what this process saw.
    fresh = stoker.Queue(rqueue.path)
    assert {fresh.get_job(job.id).status for job in jobs} == {"complete"}
    result = audit(rqueue.engine, [job.id for job in jobs], Path(ledger))
    print(
        f"\nforeign writers: {len(jobs)} jobs, {foreign_thread.transactions} transactions of "
        f"Python's SQLite here, {foreign_kills} kills of the other writer; {result.summary()}"
    )
    assert result.problems == []
    assert result.complete == len(jobs)
