"""Lossless recycling: with a fresh worker process for every task, jobs with
1 MB payloads all finish, each exactly once."""

from __future__ import annotations

from pathlib import Path

import stoker
from conftest import HANG_GUARD, wait_until
from reliability.harness import Scale, audit, read_executions


def test_recycling_after_every_task_loses_nothing(rqueue: stoker.Queue, tmp_path: Path, scale: Scale) -> None:
    ledger = tmp_path / "ledger"
    count = scale(100, 10_000)
    payload = b"r" * (1024 * 1024)
    jobs = rqueue.get_task("rel.work").map([(str(ledger), 0.0, payload)] * count)
    handle = rqueue.start_worker(processes=2, drain_timeout=0.0, max_tasks_per_worker=1)
    try:
        wait_until(
            lambda: rqueue.stats()["complete"] + rqueue.stats()["dead"] == count or not handle.is_alive(),
            timeout=HANG_GUARD * scale(1, 20),
            what="every job to finish",
        )
        assert handle.error is None
    finally:
        handle.stop(HANG_GUARD)
    result = audit(rqueue.engine, [j.id for j in jobs], ledger)
    assert result.problems == [] and result.complete == count
    assert all(j.result() == j.id + len(payload) for j in jobs[:10])
    # A fresh process for every task.
    assert len({e.pid for e in read_executions(ledger)}) == count
