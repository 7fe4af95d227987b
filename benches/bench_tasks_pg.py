"""Tasks of the PostgreSQL benchmarks (``benches/postgres.py``).

The database (a PostgreSQL URL or a SQLite path) comes from ``BENCH_DB``, so the
benchmark and the ``stoker worker`` processes it starts agree on it.
"""

from __future__ import annotations

import os
import time

import stoker

queue = stoker.Queue(os.environ.get("BENCH_DB", "bench-pg.db"))


@queue.task(max_retries=0)
def noop() -> None:
    """Nothing: what is measured is the queue's own cost."""


@queue.task(max_retries=0)
def sleep_10ms() -> None:
    """Latency-bound work: what several supervisors can overlap."""
    time.sleep(0.01)


@queue.task(max_retries=0, max_crashes=3)
def sleep_long(seconds: float) -> None:
    """A job still running when its supervisor is killed."""
    time.sleep(seconds)
