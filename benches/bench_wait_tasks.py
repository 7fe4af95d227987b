"""The task and the timing middleware of ``benches/wait_cost.py``.

The database path comes from ``BENCH_DB`` and the log of store times from
``WAIT_LOG``: the caller and a ``stoker worker`` process import this module and
agree on both.
"""

from __future__ import annotations

import os
import time

import stoker


class StoreTimes(stoker.Middleware):
    """Appends ``job_id time`` when the supervisor has committed a job's outcome.

    ``post_save`` runs in the supervisor's process right after the commit, so
    this is the moment a result became readable.
    """

    def post_save(self, job_id: int, status: str) -> None:
        stored = time.time()
        path = os.environ.get("WAIT_LOG")
        if path:
            with open(path, "a") as log:
                log.write(f"{job_id} {stored:.6f}\n")


queue = stoker.Queue(os.environ.get("BENCH_DB", "bench-wait.db"), middlewares=[StoreTimes()])


@queue.task(max_retries=0)
def noop(value: int = 0) -> int:
    return value
