"""Tasks of the stoker benchmarks.

The database path comes from ``BENCH_DB``: the trial process (the caller) and a
worker started from the command line import this module and agree on it. A
stoker worker process imports it too, but never opens the database.
"""

from __future__ import annotations

import os

import bench_tasks_plain as plain

import stoker

queue = stoker.Queue(os.environ.get("BENCH_DB", "bench-stoker.db"))


@queue.task(max_retries=0)
def noop(value: int = 0) -> int:
    return plain.noop(value)


# No retry and no redelivery: the first timeout or crash is final, so that the
# caller sees the error of the first attempt.
@queue.task(timeout=1, max_retries=0, max_crashes=0)
def sleeper(path: str) -> None:
    plain.sleep_after_mark(path)


@queue.task(max_retries=0, max_crashes=0)
def crasher(path: str) -> None:
    plain.crash_after_mark(path)


@queue.task(max_retries=0)
def spin(iterations: int) -> float:
    return plain.spin(iterations)


@queue.task(max_retries=0)
def echo(data: bytes) -> bytes:
    return plain.echo(data)
