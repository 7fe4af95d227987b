"""Shared fixtures: a queue on a fresh database, a running pool, polling helpers.

Task modules live in ``tests/apps``: worker processes import them by name, so
tasks are module-level functions. Each app module registers its tasks on a
module-level queue; a test copies them onto a queue over its own temporary
database with ``Queue.include``.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psutil
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


def child_python_path() -> str:
    """PYTHONPATH for a Python process a test starts: the test apps, and the stoker under test.

    The stoker under test is the one this process imported, which may be a
    source tree on PYTHONPATH rather than the installed package.
    """
    source = str(Path(stoker.__file__).resolve().parent.parent)
    return os.pathsep.join([str(TESTS), source])


#: Upper bound on any wait in the tests. It only turns a hang into a failure;
#: no test asserts how fast something happens (benches/ does that).
HANG_GUARD = 60.0


class ChildProcess:
    """``python ARGS`` on a test's database, running the stoker under test; ``close()`` kills and reaps it.

    Its output goes to a pipe, or with ``log`` to that file (read while it runs).
    """

    def __init__(self, db: Path, *args: str, log: Path | None = None) -> None:
        env = dict(os.environ, STOKER_TEST_DB=str(db), PYTHONPATH=child_python_path())
        self.log_path = log
        self._log = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdout=self._log if self._log is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        """Its output so far (from a file), or all of it once it has ended (from a pipe)."""
        if self._log is not None and self.log_path is not None:
            self._log.flush()
            return self.log_path.read_text(errors="replace")
        assert self.process.stdout is not None
        return self.process.stdout.read().decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(HANG_GUARD)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._log is not None:
            self._log.close()


C = TypeVar("C", bound=ChildProcess)


@contextmanager
def closing_all(kind: type[C]) -> Iterator[list[C]]:
    """A list for the child processes a test starts; each is closed at the end."""
    started: list[C] = []
    try:
        yield started
    finally:
        for child in started:
            child.close()


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


def database_files(db: str | os.PathLike[str]) -> set[str]:
    """The files of a SQLite database, resolved: the main file, -wal, -shm and -journal.

    Files beside them (the wake-up FIFOs, the record of the jobs workers
    started) are not the database: a worker may hold those.
    """
    real = os.path.realpath(db)
    return {real, f"{real}-wal", f"{real}-shm", f"{real}-journal"}


#: An int no 64-bit field of the engine can hold.
HUGE_INT = 10**30


def noop(x: int = 0) -> int:
    """A task body for tests that only register or send (``queue.task(...)(noop)``)."""
    return x


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


@pytest.fixture
def pqueue(tmp_path: Path) -> stoker.Queue:
    """A queue of its own database with the tasks of ``apps.poison`` (results and
    errors that break pickling or rebuilding)."""
    from apps import poison

    q = stoker.Queue(tmp_path / "jobs.db")
    q.include(poison.queue)
    return q


@pytest.fixture
def ppool(pqueue: stoker.Queue) -> Iterator[stoker.SupervisorThread]:
    """A pool of one worker on ``pqueue``, with the default lease (its heartbeat,
    which purges expired results, comes 10 s apart)."""
    handle = pqueue.start_worker(processes=1, drain_timeout=0.0)
    assert handle.wait_started(HANG_GUARD), handle.error
    yield handle
    handle.stop(HANG_GUARD)
    assert handle.error is None


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


# --- PostgreSQL -------------------------------------------------------------------
#
# Tests that need PostgreSQL read the server's URL from STOKER_PG_URL (`make
# test` starts a throwaway server) and work in a fresh schema each. Without
# the variable they are skipped, unless STOKER_REQUIRE_PG=1, when they fail.


def pg_url() -> str | None:
    """The test server's URL; skips (or fails, when required) without one."""
    url = os.environ.get("STOKER_PG_URL")
    if url:
        return url
    if os.environ.get("STOKER_REQUIRE_PG") == "1":
        pytest.fail("STOKER_REQUIRE_PG=1 but STOKER_PG_URL is not set: PostgreSQL tests cannot run")
    pytest.skip("set STOKER_PG_URL to run the PostgreSQL tests")
    return None


def psql_binary() -> str:
    found = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))), None)
    if found is None:
        pytest.fail("psql is needed for the PostgreSQL tests (apt-get install postgresql-client)")
    return found


def psql(url: str, sql: str) -> str:
    """Run ``sql`` with psql against ``url``; its unaligned output."""
    done = subprocess.run(
        [psql_binary(), url, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"psql failed ({sql!r}): {done.stderr.strip()}")
    return done.stdout.strip()


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``schema`` first in the search path of its connections."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-c%20search_path%3D{schema}"


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh empty schema in the test database, as a URL; dropped afterwards."""
    base = pg_url()
    assert base is not None
    name = f"py_{os.getpid()}_{secrets.token_hex(4)}"
    psql(base, f"CREATE SCHEMA {name}")
    try:
        yield with_schema(base, name)
    finally:
        psql(base, f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The URL of a fresh schema in the PostgreSQL test database."""
    with pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each backend: a SQLite file path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
        return
    with pg_schema() as url:
        yield url


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
