"""Tasks of the huey benchmarks (the database path comes from ``BENCH_DB``).

Its consumer imports this module by name (``bench_tasks_huey.huey``).
"""

from __future__ import annotations

import os

import bench_tasks_plain as plain
from huey import SqliteHuey

# stoker runs SQLite in WAL mode with synchronous=NORMAL, which skips the fsync
# at every commit. huey's only setting that skips it is fsync=False
# (synchronous=OFF, WAL mode by default), slightly less durable, in its favour.
huey = SqliteHuey(name="bench", filename=os.environ.get("BENCH_DB", "bench-huey.db"), fsync=False)


@huey.task()
def noop(value: int = 0) -> int:
    return plain.noop(value)


# huey's timeout is a SIGALRM in the worker that raises TaskTimeout inside the
# task; huey retries nothing unless told to, so the first outcome is final.
@huey.task(timeout=1)
def sleeper(path: str) -> None:
    plain.sleep_after_mark(path)


@huey.task()
def crasher(path: str) -> None:
    plain.crash_after_mark(path)


@huey.task()
def spin(iterations: int) -> float:
    return plain.spin(iterations)


@huey.task()
def echo(data: bytes) -> bytes:
    return plain.echo(data)
