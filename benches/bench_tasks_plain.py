"""Plain module-level functions shared by every system's benchmark tasks."""

from __future__ import annotations

import json
import os
import time


def noop(value: int = 0) -> int:
    """Nothing to do: measures the cost of a round trip through the system."""
    return value


def _mark(path: str) -> None:
    """Write this process's pid and the current time to ``path`` (atomically)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "t": time.time()}, f)
    os.replace(tmp, path)


def sleep_after_mark(path: str, seconds: float = 60.0) -> None:
    """Record when and where it started, then sleep past any reasonable timeout."""
    _mark(path)
    time.sleep(seconds)


def crash_after_mark(path: str) -> None:
    """Record the time just before the process dies without cleanup."""
    _mark(path)
    os._exit(1)


def spin(iterations: int) -> float:
    """Pure Python work for ``iterations`` rounds; return the seconds it took in here.

    The caller sums these to know how much of the pool's time went into the
    tasks themselves rather than into moving them around.
    """
    start = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i * i % 7
    # Python does not skip a loop whose result is unused, so total needs no reader.
    del total
    return time.perf_counter() - start


def echo(data: bytes) -> bytes:
    """Send the argument back: a payload that crosses the system twice."""
    return data
