"""Tasks the tests run through worker processes."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import stoker

queue = stoker.Queue(os.environ["STOKER_TEST_DB"])


def append(ledger: str | os.PathLike[str], line: str) -> None:
    """Append one line atomically (O_APPEND), whoever else writes the file."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def count_lines(ledger: str | os.PathLike[str]) -> int:
    path = Path(ledger)
    return len(path.read_text().splitlines()) if path.exists() else 0


class QuotaError(Exception):
    """A user exception whose constructor takes fields, not a message."""

    def __init__(self, user: str, *, limit: int) -> None:
        super().__init__(f"{user} is over the quota of {limit}")
        self.user = user
        self.limit = limit


class Unpicklable(Exception):
    """An exception holding a lock, which cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@queue.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@queue.task(name="record", max_retries=0)
def record(ledger: str, tag: str) -> str:
    append(ledger, f"{tag} {os.getpid()}")
    return tag


@queue.task(name="record_uncrashable", max_retries=0, max_crashes=0)
def record_uncrashable(ledger: str, tag: str) -> str:
    """``record``, dead at its first lost attempt."""
    append(ledger, f"{tag} {os.getpid()}")
    return tag


@queue.task(name="flaky", max_retries=3, retry_backoff=0.05, retry_backoff_max=0.2, retry_jitter=0.0)
def flaky(ledger: str, failures: int) -> int:
    """Fail with ValueError the first ``failures`` times, then return the attempt count."""
    append(ledger, "run")
    runs = count_lines(ledger)
    if runs <= failures:
        raise ValueError(f"failure number {runs}")
    return runs


@queue.task(name="always_fails", max_retries=2, retry_backoff=0.01, retry_backoff_max=0.05)
def always_fails(ledger: str) -> None:
    append(ledger, "run")
    raise RuntimeError("this always fails")


@queue.task(name="not_retried", max_retries=5, dont_retry_on=[KeyError], retry_backoff=0.01)
def not_retried(ledger: str) -> None:
    append(ledger, "run")
    raise KeyError("missing")


@queue.task(name="quota", max_retries=0)
def quota(user: str, limit: int) -> None:
    raise QuotaError(user, limit=limit)


@queue.task(name="chained", max_retries=0)
def chained() -> None:
    try:
        {}["key"]
    except KeyError as error:
        raise RuntimeError("lookup failed") from error


@queue.task(name="unpicklable_error", max_retries=0)
def unpicklable_error() -> None:
    raise Unpicklable("it holds a lock")


@queue.task(name="unpicklable_result", max_retries=0)
def unpicklable_result() -> threading.Lock:
    return threading.Lock()


@queue.task(name="sleeper", timeout=1.0, max_retries=0)
def sleeper(marker: str, seconds: float) -> None:
    """Say it started (the marker holds the pid), then sleep."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)


@queue.task(name="blocked_in_c", timeout=1.0, max_retries=0)
def blocked_in_c(marker: str) -> None:
    """Spin in the regex engine, in C code that holds the GIL, for far longer than the timeout."""
    Path(marker).write_text(str(os.getpid()))
    re.match(r"(a+)+$", "a" * 64 + "b")


@queue.task(name="with_children", timeout=1.0, max_retries=0)
def with_children(marker: str) -> None:
    """Start a child process (which starts its own child), record the pids, and sleep."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys,time; subprocess.Popen(['sleep','600']); time.sleep(600)",
        ]
    )
    Path(marker).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)


@queue.task(name="exit_code", max_retries=0, max_crashes=0)
def exit_code(code: int) -> None:
    os._exit(code)


@queue.task(name="kill_self", max_retries=0, max_crashes=0)
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@queue.task(name="segfault", max_retries=0, max_crashes=0)
def segfault() -> None:
    ctypes.string_at(0)


@queue.task(name="poison", max_retries=5, max_crashes=2, retry_backoff=0.01, retry_backoff_max=0.01)
def poison(ledger: str) -> None:
    append(ledger, "run")
    os._exit(9)


@queue.task(name="sys_exit", max_retries=0)
def sys_exit() -> None:
    sys.exit(4)


@queue.task(name="async_add")
async def async_add(a: int, b: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return a + b


@queue.task(name="wait_for_file", max_retries=0)
def wait_for_file(marker: str, release: str) -> str:
    """Say it started, then wait until the test creates ``release``."""
    Path(marker).write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.01)
    return "released"


@queue.task(name="exit_when_released", max_retries=0, max_crashes=0)
def exit_when_released(marker: str, release: str) -> None:
    """Say it started, wait until the test creates ``release``, then end the process (code 3)."""
    Path(marker).write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.01)
    os._exit(3)


@queue.task(name="ignores_sigterm", timeout=0.5, max_retries=0)
def ignores_sigterm(marker: str) -> None:
    """Ignore SIGTERM, say so, and sleep: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)


@queue.task(name="notes_sigterm", timeout=0.5, max_retries=0)
def notes_sigterm(marker: str, note: str) -> None:
    """On SIGTERM, write a note and exit: shows the grace period is given."""

    def on_term(signum: int, frame: object) -> None:
        Path(note).write_text("terminated")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    Path(marker).write_text(str(os.getpid()))
    time.sleep(600)


@queue.task(name="done_when_released", max_retries=0)
def done_when_released(marker: str, release: str, done: str) -> str:
    """Say it started, wait until the test creates ``release``, say it is done, and return."""
    Path(marker).write_text(str(os.getpid()))
    while not Path(release).exists():
        time.sleep(0.01)
    Path(done).write_text("done")
    return "released"


@queue.task(name="holds_the_gil", max_retries=0, max_crashes=0)
def holds_the_gil(marker: str) -> None:
    """Say it started, then spin in the regex engine, in C code that holds the GIL, until killed."""
    Path(marker).write_text(str(os.getpid()))
    re.match(r"(a+)+$", "a" * 64 + "b")


# --- C calls that a signal would cut short --------------------------------------------------


@queue.task(name="c_sleep", max_retries=0, max_crashes=0)
def c_sleep(marker: str, seconds: int) -> int:
    """Sleep in libc (``sleep(3)``, not retried after a signal); what it did not sleep (0: all of it)."""
    Path(marker).write_text(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.sleep(seconds))


@queue.task(name="c_read", max_retries=0, max_crashes=0)
def c_read(marker: str, fifo: str) -> tuple[int, int]:
    """Block in libc ``read(2)`` on a FIFO until the test writes to it: (bytes read, errno)."""
    fd = os.open(fifo, os.O_RDWR)  # Read-write: opening does not wait for a writer.
    try:
        Path(marker).write_text(str(os.getpid()))
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(64)
        got = int(libc.read(fd, buffer, 64))
        return got, ctypes.get_errno() if got < 0 else 0
    finally:
        os.close(fd)
