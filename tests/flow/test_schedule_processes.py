"""Several processes on one database: schedule fires and unique sends happen exactly once.

Three ``stoker worker`` supervisors fire one interval schedule (every 20 ms,
missed fires caught up) while one of them is SIGKILLed mid-way; every fire
time must be accounted for exactly once: one fire record, one job. Three
sender processes send the same unique key at once; they must all get the one
same job.
"""

from __future__ import annotations

import itertools
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import stoker
from conftest import HANG_GUARD, ChildProcess, closing_all, read_ledger, wait_until

EVERY_MS = 20
FIRES = 300


@pytest.fixture
def processes() -> Iterator[list[ChildProcess]]:
    with closing_all(ChildProcess) as started:
        yield started


def _rows(db: str, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_three_supervisors_fire_each_time_exactly_once(
    queue: stoker.Queue, ledger: Path, processes: list[ChildProcess]
) -> None:
    schedule = queue.get_task("record").schedule_every(
        EVERY_MS / 1000, args=(str(ledger), "tick"), name="tick", missed="catch_up"
    )
    worker = ("-m", "stoker", "worker", "apps.tasks:queue", "-p", "1", "--lease", "2", "--drain-timeout", "5")
    for _ in range(3):
        processes.append(ChildProcess(Path(queue.path), *worker))
    wait_until(lambda: schedule.record().enqueued >= FIRES // 3, what="the first third of the fires")
    processes[0].process.send_signal(signal.SIGKILL)
    processes[0].process.wait(HANG_GUARD)
    wait_until(lambda: schedule.record().enqueued >= FIRES, what="all the fires")
    schedule.pause()

    fires = sorted(schedule.fires(limit=10_000), key=lambda fire: fire.fire_ms)
    assert len({fire.fire_ms for fire in fires}) == len(fires), "a fire time was recorded twice"
    assert {fire.outcome for fire in fires} == {"enqueued"}
    for earlier, later in itertools.pairwise(fires):
        # Each fire time follows the previous one, counting the fires it caught up.
        assert later.fire_ms == earlier.fire_ms + (earlier.missed + 1) * EVERY_MS, (earlier, later)
    job_ids = [fire.job_id for fire in fires]
    assert len(set(job_ids)) == len(job_ids), "one job per fire"
    stored = {row[0] for row in _rows(queue.path, "SELECT id FROM jobs WHERE task_name = 'record'")}
    assert stored == set(job_ids), "no job without its fire, no fire without its job"

    def all_finished() -> bool:
        statuses = {job.status for job in (queue.get_job(i) for i in stored if i is not None)}
        return statuses <= {"complete"}

    wait_until(all_finished, what="every fired job to complete")
    assert len(read_ledger(ledger)) >= len(stored)
    owners = {fire.owner for fire in fires}
    caught_up = sum(fire.missed for fire in fires)
    print(
        f"\n{len(fires)} fires ({caught_up} fire times caught up), {len(stored)} jobs, "
        f"{len(owners)} supervisors fired, 0 duplicates"
    )
    for process in processes[1:]:
        process.process.send_signal(signal.SIGTERM)
    for process in processes[1:]:
        assert process.process.wait(HANG_GUARD) == 0, process.output()


SENDER = """
import sys, time, pathlib
from apps import tasks
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
ids = {tasks.add.options(unique_key="the-one").delay(1, 2).id for _ in range(200)}
print(",".join(map(str, sorted(ids))))
"""


def test_concurrent_unique_sends_from_three_processes_share_one_job(
    queue: stoker.Queue, tmp_path: Path, processes: list[ChildProcess]
) -> None:
    go = tmp_path / "go"
    for _ in range(3):
        processes.append(ChildProcess(Path(queue.path), "-c", SENDER, str(go)))
    go.touch()
    outputs = []
    for process in processes:
        assert process.process.wait(HANG_GUARD) == 0
        outputs.append(process.output().strip().splitlines()[-1])
    assert len(set(outputs)) == 1 and "," not in outputs[0], outputs
    assert queue.stats()["pending"] == 1
    assert queue.get_job(int(outputs[0])).record().unique_key == "the-one"
