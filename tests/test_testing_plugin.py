"""The pytest plugin ``stoker.testing``: its fixtures used here, and in a pytest run of its own."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest

import stoker
from apps import tasks as app
from conftest import HANG_GUARD

QueueFactory = Callable[..., stoker.Queue]
PoolFactory = Callable[..., stoker.SupervisorThread]

# The plugin itself is loaded by its pytest11 entry point, as in a user's project.
pytest_plugins = ["pytester"]


def test_queue_factory_gives_fresh_databases_with_the_included_tasks(
    stoker_queue_factory: QueueFactory,
) -> None:
    queue = stoker_queue_factory(app.queue)
    other = stoker_queue_factory()
    assert isinstance(queue, stoker.Queue)
    assert len({queue.path, other.path, app.queue.path}) == 3
    assert set(queue.tasks) == set(app.queue.tasks)
    assert other.tasks == {}
    assert queue.stats()["pending"] == 0


def test_pool_factory_starts_a_ready_pool(
    stoker_queue_factory: QueueFactory, stoker_pool_factory: PoolFactory
) -> None:
    queue = stoker_queue_factory(app.queue)
    pool = stoker_pool_factory(queue, processes=1)
    assert isinstance(pool, stoker.SupervisorThread)
    assert pool.is_alive() and pool.supervisor.started.is_set()
    assert pool.supervisor.processes == 1
    assert queue.get_task("add").delay(2, 3).result(timeout=HANG_GUARD) == 5


TASKS_MODULE = """
import multiprocessing
import os

import stoker

queue = stoker.Queue(os.path.join(os.path.dirname(os.path.abspath(__file__)), "module.db"))


@queue.task(name="double")
def double(x):
    return 2 * x
"""

BROKEN_TASKS_MODULE = """
import multiprocessing
import os

import stoker

if multiprocessing.current_process().name.startswith("stoker-worker"):
    raise RuntimeError("this module cannot be imported in a worker")

queue = stoker.Queue(os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken.db"))


@queue.task(name="never")
def never():
    return None
"""

TESTS_USING_THE_PLUGIN = """
import psutil
import pytest

import stoker
import brokentasks
import mytasks

pools = []


def test_runs_jobs(stoker_queue_factory, stoker_pool_factory):
    queue = stoker_queue_factory(mytasks.queue)
    pool = stoker_pool_factory(queue, processes=2)
    pools.append((pool, pool.supervisor.worker_pids()))
    jobs = [queue.get_task("double").delay(x) for x in range(5)]
    assert [job.result(timeout=60) for job in jobs] == [0, 2, 4, 6, 8]
    assert queue.path != mytasks.queue.path
    assert mytasks.queue.stats()["complete"] == 0


def test_the_pool_of_the_previous_test_was_stopped():
    ((pool, pids),) = pools
    assert not pool.is_alive()
    for pid in pids:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass


def test_a_pool_that_cannot_start_raises(stoker_queue_factory, stoker_pool_factory):
    queue = stoker_queue_factory(brokentasks.queue)
    with pytest.raises(stoker.WorkerStartupError, match="cannot be imported in a worker"):
        stoker_pool_factory(queue, processes=1)
"""


def test_the_plugin_in_a_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        mytasks=textwrap.dedent(TASKS_MODULE),
        brokentasks=textwrap.dedent(BROKEN_TASKS_MODULE),
        test_with_stoker=textwrap.dedent(TESTS_USING_THE_PLUGIN),
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        timeout=HANG_GUARD * 3,
    )
    result.assert_outcomes(passed=3)


def test_the_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["*stoker_queue_factory*", "*stoker_pool_factory*"])
