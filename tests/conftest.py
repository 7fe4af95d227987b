"""Shared fixtures: a queue on a fresh database, a running pool, polling helpers.

Task modules live in ``tests/apps``: worker processes import them by name, so
tasks are module-level functions. Each app module registers its tasks on a
module-level queue; a test copies them onto a queue over its own temporary
database with ``Queue.include``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# The app modules' own queues open this throwaway database when the test
# process imports them; tests send their jobs to their own database.
os.environ.setdefault("STOKER_TEST_DB", os.path.join(tempfile.mkdtemp(prefix="stoker-apps-"), "apps.db"))

import stoker  # noqa: E402
from apps import tasks as app  # noqa: E402

# Fixtures of the reliability tests (tests/reliability).
pytest_plugins = ["reliability.harness"]

T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress",
        action="store_true",
        default=False,
        help="run the reliability tests (tests/reliability) at their full sizes (make stress)",
    )


#: Upper bound on any wait in the tests. It only turns a hang into a failure;
#: no test asserts how fast something happens (benches/ does that).
HANG_GUARD = 60.0


def wait_until(predicate: Callable[[], T], *, timeout: float = HANG_GUARD, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@pytest.fixture
def queue(tmp_path: Path) -> stoker.Queue:
    """A queue over a fresh database with the tasks of ``apps.tasks``."""
    q = stoker.Queue(tmp_path / "jobs.db")
    q.include(app.queue)
    return q


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A file that tasks append a line to for every execution (O_APPEND)."""
    return tmp_path / "ledger.txt"


@pytest.fixture
def pool(queue: stoker.Queue) -> Iterator[stoker.SupervisorThread]:
    """Two worker processes supervised from a background thread."""
    handle = queue.start_worker(processes=2, drain_timeout=0.0, lease=30.0)
    assert handle.wait_started(HANG_GUARD), handle.error
    yield handle
    handle.stop(HANG_GUARD)
    assert not handle.is_alive()


def read_ledger(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text().splitlines()


def written(path: Path) -> Callable[[], str]:
    """A predicate for ``wait_until``: the file exists and has content (a task's pid, say)."""

    def check() -> str:
        try:
            return path.read_text()
        except FileNotFoundError:
            return ""

    return check
