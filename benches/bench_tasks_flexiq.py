"""Tasks of the flexiq benchmarks (the database path comes from ``BENCH_DB``).

Its prefork workers import this module by name (``bench_tasks_flexiq:queue``).
"""

from __future__ import annotations

import os

import bench_tasks_plain as plain
import flexiq

queue = flexiq.Queue(db_path=os.environ.get("BENCH_DB", "bench-flexiq.db"), workers=2)
# flexiq refuses payloads above 1 MiB by default; the large-payload scenario
# sends 10 MiB, so the limit is set off, as its documentation allows (0).
queue.max_payload_bytes = 0


@queue.task(max_retries=0)
def noop(value: int = 0) -> int:
    return plain.noop(value)


# flexiq's timeout is a whole number of seconds; no retry, so that the first
# attempt's outcome is final.
@queue.task(timeout=1, max_retries=0)
def sleeper(path: str) -> None:
    plain.sleep_after_mark(path)


@queue.task(max_retries=0)
def crasher(path: str) -> None:
    plain.crash_after_mark(path)


@queue.task(max_retries=0)
def spin(iterations: int) -> float:
    return plain.spin(iterations)


@queue.task(max_retries=0)
def echo(data: bytes) -> bytes:
    return plain.echo(data)
