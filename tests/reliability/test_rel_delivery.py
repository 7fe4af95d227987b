"""Sending, claiming and draining: a sent job survives anything, several
supervisors claim each job exactly once, and a drain loses nothing."""

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
from conftest import HANG_GUARD, child_python_path, wait_until
from reliability.harness import Scale, SupervisorProcess, audit, read_executions

SEED = int(os.environ.get("STOKER_SEED", "13"))

SENDER = """
import sys, stoker
from apps import reliability as rel
queue = stoker.Queue(sys.argv[1]); queue.include(rel.queue)
work = queue.get_task("rel.work")
while True:
    job = work.delay(sys.argv[2])
    print(job.id, flush=True)
"""


def test_a_sent_job_survives_sigkill_of_everything(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], scale: Scale
) -> None:
    ledger = tmp_path / "ledger"
    rounds = scale(3, 20)
    rng = random.Random(SEED)
    acknowledged: list[int] = []
    for _ in range(rounds):
        command = SupervisorProcess(Path(rqueue.path), "-p", "2", "--lease", "1")
        supervisors.append(command)
        sender = subprocess.Popen(
            [sys.executable, "-c", SENDER, rqueue.path, str(ledger)],
            env=dict(os.environ, PYTHONPATH=child_python_path()),
            stdout=subprocess.PIPE,
        )
        assert sender.stdout is not None
        want = rng.randrange(50, 300)
        lines = []
        while len(lines) < want:
            line = sender.stdout.readline()
            assert line, "the sender stopped"
            lines.append(line)
        # Everything dies at once, mid-send and mid-run.
        sender.send_signal(signal.SIGKILL)
        command.kill()
        sender.wait(HANG_GUARD)
        sender.stdout.close()
        # Every id the sender was given back (delay() returned) is stored.
        acknowledged += [int(line) for line in lines]
        statuses = rqueue.engine.statuses(acknowledged)
        assert len(statuses) == len(acknowledged)
    with sqlite3.connect(rqueue.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # A restarted supervisor runs them all, including those the kills interrupted.
    final = SupervisorProcess(Path(rqueue.path), "-p", "2", "--lease", "1")
    supervisors.append(final)
    # Every stored job, the acknowledged ones and any stored just before its sender died, runs once.
    stored = list(range(1, sum(rqueue.stats().values()) + 1))
    assert set(acknowledged) <= set(stored)
    for job_id in stored:
        rqueue.get_job(job_id).wait(timeout=HANG_GUARD)
    result = audit(rqueue.engine, stored, ledger)
    print(f"\ndurable send: {len(acknowledged)} acknowledged sends over {rounds} kills; {result.summary()}")
    assert result.problems == []
    assert result.complete == len(stored)


def test_several_supervisors_claim_each_job_exactly_once(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], scale: Scale
) -> None:
    ledger = tmp_path / "ledger"
    count = scale(3000, 100_000)
    batch = 500
    work = rqueue.get_task("rel.work")
    for _ in range(3):
        supervisors.append(SupervisorProcess(Path(rqueue.path), "-p", "2"))
    # Every supervisor is up before the first send: one that started first could
    # otherwise drain thousands of short jobs before the others claim any.
    for command in supervisors:
        wait_until(lambda command=command: len(command.worker_pids()) >= 2, what="a supervisor's workers")
    jobs = work.map([(str(ledger),)] * batch)
    errors: list[BaseException] = []

    def send_the_rest() -> None:
        # The sender competes for the write lock with the three supervisors.
        try:
            while len(jobs) < count:
                jobs.extend(work.map([(str(ledger),)] * min(batch, count - len(jobs))))
        except BaseException as error:
            errors.append(error)

    sender = threading.Thread(target=send_the_rest)
    sender.start()
    sender.join(HANG_GUARD * scale(1, 20))
    assert not sender.is_alive() and errors == [], errors
    wait_until(
        lambda: rqueue.stats()["complete"] == count,
        timeout=HANG_GUARD * scale(1, 20),
        what=f"{count} jobs to complete",
    )
    # No worker died here: those alive now are all that ran a job.
    workers_of = [set(command.worker_pids()) for command in supervisors]
    for command in supervisors:
        command.process.send_signal(signal.SIGTERM)
    for command in supervisors:
        assert command.process.wait(HANG_GUARD) == 0, command.output()[-3000:]
        output = command.output()
        assert "locked" not in output and "Traceback" not in output, output[-3000:]
    executions = read_executions(ledger)
    assert len(executions) == count
    assert {(e.job_id, e.attempt) for e in executions} == {(j.id, 1) for j in jobs}
    # Each supervisor took part.
    owners = {e.pid for e in executions}
    assert owners <= set().union(*workers_of), (owners, workers_of)
    assert all(owners & workers for workers in workers_of), (owners, workers_of)
    print(f"\n{count} jobs over 3 supervisors, {len(owners)} worker processes: each claimed once")


def test_drain_finishes_running_jobs_and_requeues_the_rest_without_a_failure(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    ledger = tmp_path / "ledger"
    release_a, release_b = tmp_path / "release-a", tmp_path / "release-b"
    hold = rqueue.get_task("rel.hold")
    a = hold.delay(str(ledger), str(tmp_path / "a"), str(release_a))
    b = hold.delay(str(ledger), str(tmp_path / "b"), str(release_b))
    waiting = rqueue.get_task("rel.work").map([(str(ledger),)] * 10)
    command = SupervisorProcess(Path(rqueue.path), "-p", "2", "--drain-timeout", "3")
    supervisors.append(command)
    wait_until(lambda: (tmp_path / "a").exists() and (tmp_path / "b").exists(), what="both jobs to start")
    command.process.send_signal(signal.SIGTERM)
    # Claiming stops at SIGTERM, and the jobs claimed ahead (in memory, or
    # sent ahead to a busy worker) go back without starting.
    wait_until(lambda: all(j.status == "pending" for j in waiting), what="the jobs claimed ahead to go back")
    release_a.touch()  # A finishes within the drain timeout; B does not.
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    assert a.status == "complete" and a.errors == []
    record = b.record()
    assert (record.status, record.attempt, record.failures, record.crashes) == ("pending", 1, 0, 0)
    assert b.errors == []
    # None of the waiting jobs started, nor counts an attempt.
    assert [(j.record().attempt, j.status) for j in waiting] == [(0, "pending")] * 10
    assert {e.job_id for e in read_executions(ledger)} == {a.id}

    release_b.touch()
    supervisors.append(SupervisorProcess(Path(rqueue.path), "-p", "2"))
    for job in [b, *waiting]:
        job.wait(timeout=HANG_GUARD)
    result = audit(rqueue.engine, [a.id, b.id, *(j.id for j in waiting)], ledger)
    assert result.problems == [] and result.complete == 12
    assert b.record().attempt == 2
