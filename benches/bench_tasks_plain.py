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
