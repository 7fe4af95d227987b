"""Plain functions (not tasks) that the tests submit to a stoker.Executor."""

from __future__ import annotations

import os
import time
from pathlib import Path


class ShapeError(Exception):
    """An exception whose constructor takes fields, not a message."""

    def __init__(self, shape: tuple[int, ...], *, expected: int) -> None:
        super().__init__(f"shape {shape} has not {expected} dimensions")
        self.shape = shape
        self.expected = expected


def square(x: int) -> int:
    return x * x


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def pid() -> int:
    return os.getpid()


def fail_value(message: str) -> None:
    raise ValueError(message)


def fail_shape(shape: tuple[int, ...]) -> None:
    raise ShapeError(shape, expected=3)


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def crash(code: int) -> None:
    os._exit(code)


def wait_for_file(marker: str, release: str) -> str:
    """Say it started (the marker holds the pid), then wait until ``release`` exists."""
    Path(marker).write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.01)
    return "released"


def flaky(ledger: str, failures: int) -> int:
    """Fail the first ``failures`` runs (counted in the ledger), then return the run count."""
    with open(ledger, "a") as f:
        f.write("run\n")
    runs = len(Path(ledger).read_text().splitlines())
    if runs <= failures:
        raise RuntimeError(f"failure number {runs}")
    return runs


#: Set in each worker process by ``initialize`` (an Executor's initializer).
initialized_with: object = None


def initialize(ledger: str, value: object) -> None:
    """An initializer: note this process in ``ledger`` (one line per call) and keep ``value``."""
    global initialized_with
    with open(ledger, "a") as f:
        f.write(f"{os.getpid()}\n")
    initialized_with = value


def initialized() -> tuple[int, object]:
    """This worker's pid and what its initializer kept."""
    return os.getpid(), initialized_with


def fail_to_initialize() -> None:
    raise RuntimeError("the initializer failed")
