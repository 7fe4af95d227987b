"""A pytest plugin for testing code that uses stoker.

Installed with stoker, it is loaded by pytest on its own (the ``pytest11``
entry point ``stoker``); otherwise load it with ``-p stoker.testing`` or
``pytest_plugins = ["stoker.testing"]`` in a ``conftest.py``. Its fixtures:

``stoker_queue_factory``
    ``make(*include)`` returns a :class:`~stoker.Queue` over a fresh database
    in the test's temporary directory, with the tasks of the given queues
    (:meth:`Queue.include`)::

        def test_report(stoker_queue_factory, stoker_pool_factory):
            queue = stoker_queue_factory(app.tasks.queue)
            stoker_pool_factory(queue, processes=2)
            job = queue.get_task("app.tasks.report").delay(2024)
            assert job.result(timeout=60) == ...

``stoker_pool_factory``
    ``start(queue, processes=2, **options)`` starts a worker pool for the queue
    on a background thread (:meth:`Queue.start_worker`), waits until every
    worker process is ready, and returns its :class:`~stoker.SupervisorThread`
    (a pool that cannot start raises its error, such as
    :class:`~stoker.WorkerStartupError`). Every pool it started is stopped when
    the test ends; a pool whose supervisor failed meanwhile fails the test
    there. Unless given, ``drain_timeout`` is 0: jobs still running at the end
    of the test are killed and put back at once.

The tasks must live in an importable module (not in the test file itself, if
the test file is not importable by the worker processes): workers import the
modules of the queue's tasks by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .client.queue import Queue
from .pool.thread import SupervisorThread

#: How long ``stoker_pool_factory`` waits for the worker processes to start,
#: and at teardown for the pool to stop. Only a hang reaches it.
POOL_TIMEOUT = 60.0


@pytest.fixture
def stoker_queue_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Queue]:
    """``make(*include)``: a Queue on a fresh temporary database with the tasks of ``include``."""

    def make(*include: Queue) -> Queue:
        directory: Path = tmp_path_factory.mktemp("stoker")
        queue = Queue(directory / "jobs.db")
        for other in include:
            queue.include(other)
        return queue

    return make


@pytest.fixture
def stoker_pool_factory() -> Iterator[Callable[..., SupervisorThread]]:
    """``start(queue, processes=2, **options)``: a started worker pool, stopped at teardown."""
    started: list[SupervisorThread] = []

    def start(queue: Queue, processes: int = 2, **options: Any) -> SupervisorThread:
        options.setdefault("drain_timeout", 0.0)
        options.setdefault("install_signal_handlers", False)
        handle = queue.start_worker(processes, **options)
        if not handle.wait_started(POOL_TIMEOUT) or handle.error is not None:
            handle.stop(POOL_TIMEOUT)
            if handle.error is not None:
                raise handle.error
            raise TimeoutError(f"the worker processes of {queue!r} did not start within {POOL_TIMEOUT:g} s")
        started.append(handle)
        return handle

    yield start

    problems: list[str] = []
    for handle in reversed(started):
        handle.stop(POOL_TIMEOUT)
        if handle.is_alive():
            problems.append(f"the pool of {handle.supervisor.queue!r} did not stop within {POOL_TIMEOUT:g} s")
        elif handle.error is not None:
            problems.append(f"the supervisor of {handle.supervisor.queue!r} failed: {handle.error!r}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
