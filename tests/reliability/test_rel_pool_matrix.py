"""The pool never breaks: a task, its arguments or its result that crash, exit, raise
or fail to pickle fail that one job only; the next jobs all succeed.

The matrix follows loky's crash cases and CPython's test_deadlock: an error,
``sys.exit`` or a segfault at pickling or unpickling of an argument or a result,
errors from ``__setstate__``, and the same in the task itself, under spawn and
forkserver.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import stoker
from apps import reliability as rel
from apps.reliability import SetstateTrap, Trap
from conftest import HANG_GUARD, child_python_path
from reliability.harness import Scale, worker_pids_under


@pytest.fixture(scope="module", params=["spawn", "forkserver"])
def matrix_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[stoker.Queue, stoker.SupervisorThread]]:
    queue = stoker.Queue(tmp_path_factory.mktemp(f"matrix-{request.param}") / "jobs.db")
    queue.include(rel.queue)
    handle = queue.start_worker(processes=2, drain_timeout=0.0, start_method=request.param)
    assert handle.wait_started(HANG_GUARD), handle.error
    yield queue, handle
    # After the whole matrix, a long run of ordinary jobs still succeeds.
    count = 1000
    jobs = queue.get_task("rel.add").map([(i, 1) for i in range(count)])
    assert [j.result(timeout=HANG_GUARD) for j in jobs] == [i + 1 for i in range(count)]
    handle.stop(HANG_GUARD)
    assert handle.error is None
    assert not handle.is_alive()
    assert worker_pids_under(os.getpid()) == []


def _next_jobs_succeed(queue: stoker.Queue, count: int) -> None:
    jobs = queue.get_task("rel.add").map([(i, i) for i in range(count)])
    assert [j.result(timeout=HANG_GUARD) for j in jobs] == [2 * i for i in range(count)]


def _dead_with(job: stoker.Job, error: type[BaseException], match: str | None) -> None:
    with pytest.raises(error, match=match):
        job.result(timeout=HANG_GUARD)
    assert job.status == "dead"


UNPICKLABLE_RESULT = r"result of job \d+ \(rel.make\) of type Trap cannot be pickled"

# --- (case name, how the job is sent, what the caller must see) ----------------------------------

Check = Callable[[stoker.Queue, Path], None]


def _arg_pickle_raise(queue: stoker.Queue, tmp: Path) -> None:
    before = queue.stats()
    with pytest.raises(stoker.SerializationError, match=r"argument 0 \('value'\) of type Trap"):
        queue.get_task("rel.echo").delay(Trap("pickle", "raise"))
    assert queue.stats() == before, "nothing was stored"


def _arg_pickle_exit(queue: stoker.Queue, tmp: Path) -> None:
    before = queue.stats()
    with pytest.raises(SystemExit):
        queue.get_task("rel.echo").delay(Trap("pickle", "exit"))
    assert queue.stats() == before, "nothing was stored"


def _arg_unpickle_raise(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.echo").delay(Trap("unpickle", "raise"))
    _dead_with(job, stoker.SerializationError, r"arguments of job \d+ \(rel.echo\) cannot be unpickled")
    assert len(job.errors) == 1, "a payload that cannot be unpickled is not retried"


def _arg_unpickle_exit(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.echo").delay(Trap("unpickle", "exit"))
    _dead_with(job, stoker.SerializationError, r"arguments of job \d+ \(rel.echo\) cannot be unpickled")


def _arg_unpickle_crash(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.echo").delay(Trap("unpickle", "crash"))
    _dead_with(job, stoker.WorkerLostError, "SIGSEGV")


def _arg_setstate_raise(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.echo").delay(SetstateTrap())
    _dead_with(job, stoker.SerializationError, "__setstate__ refuses")


def _result_pickle_raise(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.make").delay("pickle", "raise")
    _dead_with(job, stoker.SerializationError, UNPICKLABLE_RESULT)


def _result_pickle_exit(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.make").delay("pickle", "exit")
    _dead_with(job, stoker.SerializationError, UNPICKLABLE_RESULT)


def _result_pickle_crash(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.make").delay("pickle", "crash")
    _dead_with(job, stoker.WorkerLostError, "SIGSEGV")


def _result_unpickle_raise(queue: stoker.Queue, tmp: Path) -> None:
    # The supervisor stores the result's bytes without unpickling them; only the caller does.
    job = queue.get_task("rel.make").delay("unpickle", "raise")
    with pytest.raises(
        (ValueError, stoker.SerializationError, stoker.ResultGetError), match="refuses to be unpickled"
    ):
        job.result(timeout=HANG_GUARD)
    assert job.status == "complete"


def _result_unpickle_exit(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.make").delay("unpickle", "exit")
    with pytest.raises((SystemExit, stoker.SerializationError)):
        job.result(timeout=HANG_GUARD)
    assert job.status == "complete"


def _result_setstate_raise(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.make").delay("unpickle", "setstate")
    with pytest.raises(
        (RuntimeError, stoker.SerializationError, stoker.ResultGetError), match="__setstate__ refuses"
    ):
        job.result(timeout=HANG_GUARD)
    assert job.status == "complete"


def _result_unpickle_crashes_the_caller(queue: stoker.Queue, tmp: Path) -> None:
    job = queue.get_task("rel.make").delay("unpickle", "crash")
    job.wait(timeout=HANG_GUARD)
    assert job.status == "complete"
    # A caller in its own process reads the result and segfaults; the pool does not notice.
    script = (
        "import sys, stoker; from apps import reliability as rel; "
        f"q = stoker.Queue({queue.path!r}); q.include(rel.queue); "
        f"q.get_job({job.id}).result(timeout=60)"
    )
    caller = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, PYTHONPATH=child_python_path(), PYTHONFAULTHANDLER=""),
        capture_output=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert caller.returncode == -11, caller.stderr.decode(errors="replace")[-2000:]


def _task(how: str, error: type[BaseException], match: str | None) -> Check:
    def check(queue: stoker.Queue, tmp: Path) -> None:
        job = queue.get_task("rel.misbehave").delay(how)
        _dead_with(job, error, match)

    return check


CASES: dict[str, Check] = {
    "argument-pickle-raise": _arg_pickle_raise,
    "argument-pickle-exit": _arg_pickle_exit,
    "argument-unpickle-raise": _arg_unpickle_raise,
    "argument-unpickle-exit": _arg_unpickle_exit,
    "argument-unpickle-crash": _arg_unpickle_crash,
    "argument-setstate-raise": _arg_setstate_raise,
    "result-pickle-raise": _result_pickle_raise,
    "result-pickle-exit": _result_pickle_exit,
    "result-pickle-crash": _result_pickle_crash,
    "result-unpickle-raise": _result_unpickle_raise,
    "result-unpickle-exit": _result_unpickle_exit,
    "result-setstate-raise": _result_setstate_raise,
    "result-unpickle-crashes-the-caller": _result_unpickle_crashes_the_caller,
    "task-raise": _task("raise", LookupError, "raised in the task"),
    "task-sys-exit": _task("exit", SystemExit, "3"),
    "task-os-exit": _task("os_exit", stoker.WorkerLostError, "exited with code 3"),
    "task-segfault": _task("crash", stoker.WorkerLostError, "SIGSEGV"),
    "task-keyboard-interrupt": _task("interrupt", KeyboardInterrupt, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_the_bad_job_fails(
    matrix_pool: tuple[stoker.Queue, stoker.SupervisorThread], tmp_path: Path, scale: Scale, case: str
) -> None:
    queue, handle = matrix_pool
    CASES[case](queue, tmp_path)
    _next_jobs_succeed(queue, scale(20, 1000))
    assert handle.error is None and handle.is_alive()
