"""Nothing is lost or doubled when worker processes and supervisors are killed or stopped.

Jobs log ``job_id attempt pid`` to a ledger as their last action; the audit
(``harness.audit``) checks that every job ended complete with exactly one
successful execution, or dead with its whole attempt history, and that the
ledger holds more than one execution of a job only for attempts that failed as
lost (a killed worker or an expired lease).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, wait_until
from reliability.harness import (
    Scale,
    SupervisorProcess,
    all_gone,
    audit,
    signal_quietly,
    worker_pids_under,
)

SEED = int(os.environ.get("STOKER_SEED", "7"))


def _finished(queue: stoker.Queue) -> int:
    stats = queue.stats()
    return stats["complete"] + stats["dead"] + stats["cancelled"]


def _wait_finished(queue: stoker.Queue, count: int, guard: float) -> None:
    wait_until(lambda: _finished(queue) >= count, timeout=guard, what=f"{count} finished jobs")


def test_nothing_lost_under_worker_and_supervisor_sigkills(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], scale: Scale
) -> None:
    jobs_count = scale(1000, 10_000)
    worker_kills = scale(10, 50)
    supervisor_kills = scale(2, 3)
    guard = HANG_GUARD * scale(1, 20)
    ledger = tmp_path / "ledger"
    rng = random.Random(SEED)
    jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.004)] * jobs_count)

    events = [(rng.randrange(jobs_count // 20, jobs_count * 9 // 10), "worker") for _ in range(worker_kills)]
    events += [
        (rng.randrange(jobs_count // 10, jobs_count * 9 // 10), "supervisor") for _ in range(supervisor_kills)
    ]
    events.sort()

    def start() -> SupervisorProcess:
        command = SupervisorProcess(Path(rqueue.path), "-p", "2", "--lease", "1")
        supervisors.append(command)
        return command

    current = start()
    killed_workers = 0
    for threshold, kind in events:
        _wait_finished(rqueue, threshold, guard)
        if kind == "worker":
            pids = wait_until(current.worker_pids, timeout=guard, what="a worker process")
            if signal_quietly(rng.choice(pids), signal.SIGKILL):
                killed_workers += 1
        else:
            descendants = current.kill()
            wait_until(lambda d=descendants: all_gone(d), timeout=guard, what="the old workers to go")
            current = start()
    _wait_finished(rqueue, jobs_count, guard)

    result = audit(rqueue.engine, [j.id for j in jobs], ledger)
    print(f"\nsigkills: {killed_workers} workers, {supervisor_kills} supervisors; {result.summary()}")
    assert result.problems == [], result.problems[:20]
    assert result.complete + result.dead == jobs_count
    # The kills landed: supervisors always hold running jobs when killed here.
    assert result.lost_attempts >= 1


def test_nothing_lost_or_doubled_under_sigstop_and_sigcont_of_workers(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], scale: Scale
) -> None:
    jobs_count = scale(300, 10_000)
    stops = scale(5, 50)
    guard = HANG_GUARD * scale(1, 20)
    ledger = tmp_path / "ledger"
    rng = random.Random(SEED)
    jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.004)] * jobs_count)
    thresholds = sorted(rng.randrange(jobs_count // 20, jobs_count * 8 // 10) for _ in range(stops))
    command = SupervisorProcess(Path(rqueue.path), "-p", "2", "--lease", "1")
    supervisors.append(command)

    for threshold in thresholds:
        _wait_finished(rqueue, threshold, guard)
        pids = wait_until(command.worker_pids, timeout=guard, what="a worker process")
        victim = rng.choice(pids)
        if not signal_quietly(victim, signal.SIGSTOP):
            continue
        # The other worker keeps the queue moving while this one is stopped.
        before = _finished(rqueue)
        _wait_finished(rqueue, min(jobs_count, before + rng.randrange(1, 10)), guard)
        signal_quietly(victim, signal.SIGCONT)
    _wait_finished(rqueue, jobs_count, guard)

    result = audit(rqueue.engine, [j.id for j in jobs], ledger)
    print(f"\nsigstops: {stops}; {result.summary()}")
    assert result.problems == [], result.problems[:20]
    # Nothing was killed, so every job ran exactly once.
    assert (result.complete, result.executions, result.lost_attempts) == (jobs_count, jobs_count, 0)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_worker_kills_in_process_pool(
    rqueue: stoker.Queue, tmp_path: Path, scale: Scale, start_method: str
) -> None:
    """The same with a supervisor on a thread, killing workers as they run (both start methods)."""
    jobs_count = scale(200, 2000)
    kills = scale(5, 50)
    ledger = tmp_path / "ledger"
    rng = random.Random(SEED)
    jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.004)] * jobs_count)
    thresholds = sorted(rng.randrange(jobs_count // 20, jobs_count * 9 // 10) for _ in range(kills))
    with rqueue.start_worker(processes=2, drain_timeout=0.0, start_method=start_method) as handle:
        for threshold in thresholds:
            _wait_finished(rqueue, threshold, HANG_GUARD)
            pids = wait_until(handle.supervisor.worker_pids, what="a worker process")
            signal_quietly(rng.choice(pids), signal.SIGKILL)
        _wait_finished(rqueue, jobs_count, HANG_GUARD * scale(1, 10))
        assert handle.error is None
    result = audit(rqueue.engine, [j.id for j in jobs], ledger)
    assert result.problems == [], result.problems[:20]
    assert result.complete + result.dead == jobs_count
    assert worker_pids_under(os.getpid()) == []


def test_workers_killed_while_starting_do_not_stop_the_supervisor(
    rqueue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL from outside before a worker is ready is not a start-up failure of the task modules."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("STOKER_TEST_START_GATE", str(gate))
    supervisor = rqueue.supervisor(
        processes=1, drain_timeout=0.0, start_method="spawn", imports=["apps.slow_start"]
    )
    handle = stoker.SupervisorThread(supervisor)
    try:
        killed: set[int] = set()
        while len(killed) < 4:  # More than the limit of start-up failures in a row (3).
            pids = wait_until(lambda: set(supervisor.worker_pids()) - killed, what="a starting worker")
            pid = min(pids)
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        gate.touch()
        assert rqueue.get_task("rel.add").delay(2, 2).result(timeout=HANG_GUARD) == 4
        assert handle.error is None and handle.is_alive()
    finally:
        gate.touch()
        handle.stop(HANG_GUARD)
    assert not handle.is_alive()
