"""stoker.Executor: a concurrent.futures.Executor whose calls are durable jobs."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stoker
from apps import executor_funcs as funcs
from conftest import HANG_GUARD, TESTS, wait_until
from stoker._base import signing
from stoker._core import Engine
from stoker.client.registry import REGISTRY
from stoker.executor import CALL_TASK_NAME, Executor, JobFuture, call

MakeExecutor = Callable[..., Executor]


@pytest.fixture
def make_executor() -> Iterator[MakeExecutor]:
    """Executors shut down (waiting for their calls) at the end of the test."""
    made: list[Executor] = []

    def make(*args: Any, **kwargs: Any) -> Executor:
        executor = Executor(*args, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


def start_blocker(executor: Executor, tmp_path: Path) -> tuple[concurrent.futures.Future[str], Path]:
    """Occupy a worker with a call that runs until the returned file is created."""
    marker, release = tmp_path / "started", tmp_path / "release"
    future = executor.submit(funcs.wait_for_file, str(marker), str(release))
    wait_until(marker.exists, what="the blocking call to start")
    return future, release


def test_a_worker_process_finds_the_call_task_once_it_imports_the_module(tmp_path: Path) -> None:
    script = (
        "import multiprocessing, os\n"
        "multiprocessing.current_process().name = 'stoker-worker-1'\n"
        "import stoker.executor\n"
        "from stoker.client.registry import REGISTRY\n"
        "task = REGISTRY[stoker.executor.CALL_TASK_NAME]\n"
        "assert task.func is stoker.executor.call, task\n"
        "assert not os.listdir('.'), 'a worker opened a database'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=HANG_GUARD)


def test_an_executor_registers_the_call_task_on_its_queue(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=1)
    assert executor.queue.tasks[CALL_TASK_NAME].func is call
    assert REGISTRY[CALL_TASK_NAME].func is call


def test_submit_and_map_give_results_in_order(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=2)
    future = executor.submit(funcs.add, 1, 2, scale=3)
    assert future.result(HANG_GUARD) == 9
    assert isinstance(future, JobFuture)
    assert future.job.status == "complete"
    assert list(executor.map(funcs.square, range(40))) == [x * x for x in range(40)]
    assert list(executor.map(funcs.add, range(10), range(10, 30))) == [2 * x + 10 for x in range(10)]
    assert list(executor.map(funcs.square, range(23), chunksize=5)) == [x * x for x in range(23)]
    assert list(executor.map(funcs.square, [])) == []
    futures = [executor.submit(funcs.square, x) for x in range(10)]
    done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=HANG_GUARD)}
    assert done == {x * x for x in range(10)}


def test_calls_run_in_worker_processes(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=2)
    pids = {executor.submit(funcs.pid).result(HANG_GUARD) for _ in range(4)}
    assert os.getpid() not in pids
    assert executor.pool is not None
    assert pids <= set(executor.pool.supervisor.worker_pids())


def test_lambdas_and_closures_travel_by_value(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=1)
    offset = 100

    def shifted(x: int) -> int:
        return x + offset

    assert executor.submit(lambda x: x * 3, 14).result(HANG_GUARD) == 42
    assert list(executor.map(shifted, [1, 2])) == [101, 102]


def test_exceptions_keep_their_type_and_fields(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=2)
    with pytest.raises(ValueError, match=r"^bad input$"):
        executor.submit(funcs.fail_value, "bad input").result(HANG_GUARD)
    error = executor.submit(funcs.fail_shape, (2, 2)).exception(HANG_GUARD)
    assert isinstance(error, funcs.ShapeError)
    assert (error.shape, error.expected) == ((2, 2), 3)
    assert isinstance(error.__cause__, stoker.RemoteTraceback)
    results = executor.map(funcs.fail_value, ["first", "second"])
    with pytest.raises(ValueError, match="first"):
        list(results)


def test_an_argument_that_cannot_be_pickled_fails_the_submit(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=1)
    with pytest.raises(stoker.SerializationError, match="'args'"):
        executor.submit(funcs.square, threading.Lock())


def test_map_timeout(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(processes=1)
    marker, release = tmp_path / "started", tmp_path / "release"
    results = executor.map(funcs.wait_for_file, [str(marker)], [str(release)], timeout=0)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    release.touch()


def test_a_call_past_its_timeout_is_killed(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=1, timeout=1)
    future = executor.submit(funcs.sleep, 600)
    with pytest.raises(stoker.TaskTimeoutError, match="hard timeout of 1 s"):
        future.result(HANG_GUARD)
    assert [e.kind for e in future.job.errors] == ["timeout"]
    assert executor.submit(funcs.square, 4).result(HANG_GUARD) == 16


def test_a_crash_fails_its_future_and_the_executor_goes_on(make_executor: MakeExecutor) -> None:
    executor = make_executor(processes=2)
    crashed = executor.submit(funcs.crash, 7)
    with pytest.raises(stoker.WorkerLostError, match="exited with code 7"):
        crashed.result(HANG_GUARD)
    assert crashed.job.record().attempt == 1
    assert list(executor.map(funcs.square, range(6))) == [0, 1, 4, 9, 16, 25]


def test_failed_calls_are_retried(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(processes=1, max_retries=1)
    ledger = tmp_path / "ledger"
    assert executor.submit(funcs.flaky, str(ledger), 1).result(HANG_GUARD) == 2


def test_future_cancel_cancels_a_pending_job(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(processes=1)
    blocker, release = start_blocker(executor, tmp_path)
    queued = executor.submit(funcs.square, 3)
    assert queued.cancel()
    assert queued.cancelled()
    assert isinstance(queued, JobFuture)
    assert queued.job.status == "cancelled"
    done, _ = concurrent.futures.wait([queued], timeout=HANG_GUARD)
    assert done == {queued}
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()

    wait_until(blocker.running, what="the blocking call to be seen running")
    assert not blocker.cancel()
    release.touch()
    assert blocker.result(HANG_GUARD) == "released"
    assert not blocker.cancel()


def test_shutdown_waits_and_then_refuses_new_calls(tmp_path: Path) -> None:
    executor = Executor(processes=2)
    futures = [executor.submit(funcs.square, x) for x in range(8)]
    pool = executor.pool
    database = Path(executor.queue.path)
    assert database.exists()
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [x * x for x in range(8)]
    assert pool is not None and not pool.is_alive()
    assert not database.exists()  # a temporary database goes with the executor
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(funcs.square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(funcs.square, [1])
    executor.shutdown()


def test_shutdown_before_any_call(tmp_path: Path) -> None:
    with Executor(path=tmp_path / "jobs.db") as executor:
        pass
    assert executor.pool is None
    with pytest.raises(RuntimeError):
        executor.submit(funcs.square, 1)


def test_shutdown_cancel_futures_cancels_the_calls_not_started(tmp_path: Path) -> None:
    executor = Executor(processes=1)
    blocker, release = start_blocker(executor, tmp_path)
    queued = [executor.submit(funcs.square, x) for x in range(3)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert {f.job.status for f in queued if isinstance(f, JobFuture)} == {"cancelled"}
    assert not blocker.done()
    release.touch()
    assert blocker.result(HANG_GUARD) == "released"
    executor.shutdown(wait=True)
    assert executor.pool is None


BROKEN_IN_WORKERS = """
import multiprocessing

if multiprocessing.current_process().name.startswith("stoker-worker"):
    raise ImportError("this module cannot be imported in a worker")
"""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_pool_that_cannot_start_breaks_the_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_in_workers.py").write_text(BROKEN_IN_WORKERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with Executor(path=tmp_path / "jobs.db", processes=1, imports=["broken_in_workers"]) as executor:
        future = executor.submit(funcs.square, 2)
        error = future.exception(HANG_GUARD)
        assert isinstance(error, concurrent.futures.BrokenExecutor)
        assert isinstance(error.__cause__, stoker.WorkerStartupError)
        assert "cannot be imported in a worker" in str(error.__cause__)
        with pytest.raises(concurrent.futures.BrokenExecutor):
            executor.submit(funcs.square, 3)


def test_a_named_database_keeps_the_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with Executor(path=path, processes=1) as executor:
        future = executor.submit(funcs.add, 20, 22)
        assert future.result(HANG_GUARD) == 42
    assert isinstance(future, JobFuture)
    reopened = stoker.Queue(path)
    job = reopened.get_job(future.job.id)
    assert job.record().task_name == CALL_TASK_NAME
    assert job.result() == 42


def test_an_executor_over_a_queue_of_tasks(queue: stoker.Queue) -> None:
    with Executor(queue, processes=1) as executor:
        assert CALL_TASK_NAME in queue.tasks
        assert executor.submit(funcs.square, 9).result(HANG_GUARD) == 81
        task_job = queue.get_task("add").delay(1, 2)
        assert task_job.result(HANG_GUARD) == 3  # the executor's pool serves the queue's tasks too
    assert Path(queue.path).exists()


def test_wrong_options(tmp_path: Path) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="processes"):
        Executor(processes=0)
    with pytest.raises(stoker.InvalidOptionError, match="timeout"):
        Executor(path=tmp_path / "a.db", timeout=-1)
    with pytest.raises(stoker.InvalidOptionError, match="not both"):
        Executor(stoker.Queue(tmp_path / "b.db"), path=tmp_path / "c.db")


def test_a_pipeline_written_for_any_executor(make_executor: MakeExecutor) -> None:
    def pipeline(executor: concurrent.futures.Executor) -> int:
        squares = list(executor.map(funcs.square, range(10)))
        return sum(executor.map(funcs.add, squares, squares))

    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        expected = pipeline(threads)
    assert pipeline(make_executor(processes=2)) == expected


def test_an_executor_on_a_signed_queue_runs_its_calls(tmp_path: Path) -> None:
    queue = stoker.Queue(tmp_path / "signed.db", secret="s3cret")
    with Executor(queue=queue, processes=1) as executor:
        assert executor.submit(funcs.square, 7).result(timeout=HANG_GUARD) == 49
        assert list(executor.map(funcs.square, [1, 2, 3], timeout=HANG_GUARD)) == [1, 4, 9]
    # What was stored, arguments and results, was sealed with the secret.
    record = Engine(str(tmp_path / "signed.db")).get(1)
    assert record.payload.startswith(signing.MAGIC)
    assert record.result is not None and record.result.startswith(signing.MAGIC)


# --- ProcessPoolExecutor's constructor ---------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs"), [((2,), {}), ((), {"max_workers": 2})])
def test_max_workers_as_process_pool_executor_takes_it(
    make_executor: MakeExecutor, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    executor = make_executor(*args, **kwargs)
    assert executor.submit(funcs.square, 6).result(HANG_GUARD) == 36
    assert executor.pool is not None and executor.pool.supervisor.processes == 2


def test_a_queue_as_the_first_argument_is_still_the_queue(queue: stoker.Queue) -> None:
    with Executor(queue, processes=1) as executor:
        assert executor.queue is queue
        assert executor.submit(funcs.square, 5).result(HANG_GUARD) == 25


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_mp_context_sets_the_start_method(make_executor: MakeExecutor, method: str) -> None:
    import multiprocessing

    executor = make_executor(1, multiprocessing.get_context(method))
    assert executor.submit(funcs.square, 3).result(HANG_GUARD) == 9
    assert executor.pool is not None
    assert executor.pool.supervisor.workers.context.get_start_method() == method


def test_a_fork_context_is_refused_with_the_reason() -> None:
    import multiprocessing

    with pytest.raises(stoker.InvalidOptionError, match=r"'fork' start method.*'spawn' or 'forkserver'"):
        Executor(2, multiprocessing.get_context("fork"))
    with pytest.raises(stoker.InvalidOptionError, match=r"mp_context must be a multiprocessing context \("):
        Executor(2, "spawn")


def test_the_initializer_runs_once_in_each_worker_process(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ledger = tmp_path / "initialized.txt"
    executor = make_executor(2, None, funcs.initialize, (str(ledger), "ready"))
    seen = [future.result(HANG_GUARD) for future in [executor.submit(funcs.initialized) for _ in range(8)]]
    assert {value for _, value in seen} == {"ready"}
    initialized = [int(line) for line in ledger.read_text().splitlines()]
    assert len(initialized) == len(set(initialized)), "once per process"
    assert {pid for pid, _ in seen} <= set(initialized)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_initializer_breaks_the_pool(make_executor: MakeExecutor) -> None:
    executor = make_executor(1, initializer=funcs.fail_to_initialize)
    error = executor.submit(funcs.square, 2).exception(HANG_GUARD)
    assert isinstance(error, concurrent.futures.BrokenExecutor)
    assert isinstance(error.__cause__, stoker.WorkerStartupError)
    assert "the initializer failed" in str(error.__cause__)


def test_max_tasks_per_child_recycles_worker_processes(make_executor: MakeExecutor) -> None:
    executor = make_executor(1, max_tasks_per_child=1)
    pids = [executor.submit(funcs.pid).result(HANG_GUARD) for _ in range(3)]
    assert len(set(pids)) == 3, pids


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_workers": 0}, "max_workers must be an int >= 1, got 0"),
        ({"max_workers": 2, "processes": 3}, "name the same thing"),
        ({"max_worker": 2}, "unknown option.*'max_worker'"),
        ({"initargs": (1,)}, "initargs without an initializer"),
        ({"initializer": "setup"}, "initializer must be callable"),
        ({"initializer": funcs.initialize, "initargs": (threading.Lock(),)}, "cannot be pickled"),
    ],
)
def test_wrong_constructor_options_fail_at_once(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(stoker.InvalidOptionError, match=match):
        Executor(**kwargs)


def test_shutdown_without_waiting_then_exit_deletes_the_temporary_database(tmp_path: Path) -> None:
    script = (
        "import stoker\n"
        "from apps import executor_funcs as funcs\n"
        "if __name__ == '__main__':\n"
        "    executor = stoker.Executor(1)\n"
        "    future = executor.submit(funcs.sleep, 0.2)\n"
        "    print(executor.queue.path, flush=True)\n"
        "    executor.shutdown(wait=False)\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    database = Path(result.stdout.strip())
    assert database.name == "executor.db"
    assert not database.parent.exists(), sorted(p.name for p in database.parent.iterdir())
