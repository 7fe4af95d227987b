"""No process a task starts outlives its job or its supervisor, however it escapes.

Jobs start a descendant each (a plain child, a ``setsid`` child or a
double-forked daemon: ``apps.reliability.DESCENDANT_KINDS``), and end in one
of three ways: they return (the descendant is left behind), they run past
their hard timeout, or the test cancels them while they run. Meanwhile the
supervisor is SIGKILLed and replaced, and at the end stopped with SIGTERM.
After each supervisor's death, and at the end, every process it or its tasks
started is gone, and the audit finds every job finished with exactly one
outcome (``harness.audit``).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import psutil
import pytest

import stoker
from apps.reliability import DESCENDANT_KINDS
from conftest import HANG_GUARD, wait_until
from reliability.harness import Scale, SupervisorProcess, all_gone, audit

SEED = int(os.environ.get("STOKER_SEED", "7"))
#: The hard timeout of the jobs meant to run past it.
TIMEOUT = 0.5


class Descendants:
    """The descendants the tasks wrote down, followed as psutil processes (which tell a reused pid)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read_lines = 0
        self.processes: list[psutil.Process] = []
        self.started: list[tuple[int, int]] = []
        """(job id, attempt) of every attempt that started its descendant, in order."""

    def read_new(self) -> list[tuple[int, int]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        new = []
        for line in lines[self.read_lines :]:
            if not line.endswith(("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")):
                break  # Written half-way: read again next time.
            job_id, attempt, _worker, pid = map(int, line.split())
            self.read_lines += 1
            try:
                self.processes.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass  # Gone already (its job ended).
            new.append((job_id, attempt))
        self.started.extend(new)
        return new


def test_no_descendant_survives_timeouts_cancels_and_supervisor_kills(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], scale: Scale
) -> None:
    jobs_count = scale(24, 600)
    supervisor_kills = scale(1, 5)
    guard = HANG_GUARD * scale(1, 10)
    rng = random.Random(SEED)
    ledger, descendants = tmp_path / "ledger", Descendants(tmp_path / "descendants")
    fates = {}
    jobs = []
    for i in range(jobs_count):
        fate = rng.choice(["end", "end", "timeout", "cancel"])
        kind = DESCENDANT_KINDS[i % len(DESCENDANT_KINDS)]
        task = rqueue.get_task("rel.escape")
        if fate == "timeout":
            task = task.options(timeout=TIMEOUT)
        job = task.delay(kind, fate, str(descendants.path), str(ledger))
        fates[job.id] = fate
        jobs.append(job)
    by_id = {job.id: job for job in jobs}

    def start() -> SupervisorProcess:
        command = SupervisorProcess(Path(rqueue.path), "-p", "4", "--lease", "2", "--drain-timeout", "0")
        supervisors.append(command)
        return command

    def finished() -> int:
        stats = rqueue.stats()
        return int(stats["complete"] + stats["dead"] + stats["cancelled"])

    def cancel_started_then_count(target: int) -> bool:
        for job_id, _attempt in descendants.read_new():
            if fates[job_id] == "cancel":
                by_id[job_id].cancel()
        return finished() >= target

    thresholds = sorted(rng.randrange(jobs_count // 5, jobs_count * 4 // 5) for _ in range(supervisor_kills))
    current = start()
    for threshold in thresholds:
        wait_until(lambda t=threshold: cancel_started_then_count(t), timeout=guard, what=f"{threshold} jobs")
        descendants.read_new()
        everything = current.kill() + descendants.processes
        wait_until(
            lambda e=everything: all_gone(e), timeout=guard, what="the killed supervisor's processes to go"
        )
        current = start()
    wait_until(lambda: cancel_started_then_count(jobs_count), timeout=guard, what="every job to finish")
    descendants.read_new()
    everything = current.descendants() + descendants.processes
    current.process.send_signal(signal.SIGTERM)
    assert current.process.wait(guard) == 0, current.output()
    wait_until(lambda: all_gone(everything), timeout=guard, what="the stopped supervisor's processes to go")

    result = audit(rqueue.engine, [job.id for job in jobs], ledger, allow_cancelled=True)
    print(
        f"\n{len(descendants.started)} attempts started a descendant, "
        f"{supervisor_kills} supervisor kills; {result.summary()}"
    )
    assert result.problems == [], result.problems[:20]
    ended = {job.id: job.status for job in jobs}
    expected = {"end": "complete", "timeout": "dead", "cancel": "cancelled"}
    wrong = {
        job_id: (fates[job_id], status)
        for job_id, status in ended.items()
        if status != expected[fates[job_id]]
    }
    assert wrong == {}
    for job in jobs:
        if fates[job.id] == "timeout":
            assert job.errors[-1].kind == "timeout", (job.id, job.errors)
    # Every job ran, and every attempt that ran started its descendant.
    assert {job_id for job_id, _ in descendants.started} == set(fates)


@pytest.fixture(autouse=True)
def _no_leftover_descendants(tmp_path: Path) -> None:
    """Whatever the outcome, kill what the test's tasks left (a failure must not leave processes)."""
    yield
    left = Descendants(tmp_path / "descendants")
    left.read_new()
    for process in left.processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
