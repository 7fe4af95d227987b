"""Jobs run through real worker processes: results, order, retries, kills, crashes, cancellation."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

import stoker
from apps.tasks import QuotaError
from conftest import HANG_GUARD, database_files, read_ledger, wait_until, written


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_result_comes_back(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    jobs = [queue.get_task("add").delay(i, i) for i in range(20)]
    assert [j.result(timeout=HANG_GUARD) for j in jobs] == [2 * i for i in range(20)]
    assert queue.stats()["complete"] == 20


def test_async_task(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    assert queue.get_task("async_add").delay(2, 5).result(timeout=HANG_GUARD) == 7


def test_workers_are_separate_processes_without_a_database_handle(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    queue.get_task("record").delay(str(ledger), "x").result(timeout=HANG_GUARD)
    (line,) = read_ledger(ledger)
    worker_pid = int(line.split()[1])
    assert worker_pid != os.getpid()
    assert worker_pid in pool.supervisor.worker_pids()
    for pid in pool.supervisor.worker_pids():
        files = {f.path for f in psutil.Process(pid).open_files()}
        assert files & database_files(queue.path) == set(), files


def test_priority_then_age(queue: stoker.Queue, ledger: Path) -> None:
    record = queue.get_task("record")
    sends = [(0, "low-1"), (5, "high-1"), (0, "low-2"), (9, "top"), (5, "high-2")]
    for priority, tag in sends:
        record.options(priority=priority).delay(str(ledger), tag)
    with queue.start_worker(processes=1, drain_timeout=0.0) as handle:
        wait_until(lambda: queue.stats()["complete"] == 5, what="five jobs")
        assert handle.error is None
    assert [line.split()[0] for line in read_ledger(ledger)] == ["top", "high-1", "high-2", "low-1", "low-2"]


def test_delayed_job_waits_for_its_eta(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    job = queue.get_task("add").options(delay=0.3).delay(1, 1)
    assert job.result(timeout=HANG_GUARD) == 2
    record = job.record()
    assert record.started_ms is not None
    assert record.started_ms >= record.eta_ms >= record.created_ms + 300


def test_retries_with_backoff_then_success(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("flaky").delay(str(ledger), 2)
    assert job.result(timeout=HANG_GUARD) == 3
    errors = job.errors
    assert [(e.attempt, e.kind, e.type_name) for e in errors] == [
        (1, "error", "builtins.ValueError"),
        (2, "error", "builtins.ValueError"),
    ]
    assert errors[0].message == "failure number 1"
    assert "raise ValueError" in errors[0].traceback
    # The second attempt waited at least the first backoff (50 ms, no jitter).
    assert (errors[1].failed_at - errors[0].failed_at).total_seconds() >= 0.05
    assert job.record().attempt == 3


def test_exhausted_retries_end_dead_then_replay(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("always_fails").delay(str(ledger))
    with pytest.raises(RuntimeError, match="this always fails") as info:
        job.result(timeout=HANG_GUARD)
    assert isinstance(info.value.__cause__, stoker.RemoteTraceback)
    assert job.status == "dead"
    assert len(read_ledger(ledger)) == 3
    assert [e.attempt for e in job.errors] == [1, 2, 3]
    (letter,) = queue.dead_letters()
    assert (
        letter.job == job and letter.error is not None and letter.error.type_name == "builtins.RuntimeError"
    )
    replayed = queue.replay(job.id)
    assert replayed.id != job.id
    assert replayed.record().replayed_from == job.id
    assert replayed.record().max_retries == job.record().max_retries
    with pytest.raises(RuntimeError):
        replayed.result(timeout=HANG_GUARD)
    assert len(read_ledger(ledger)) == 6


def test_dont_retry_on_goes_dead_at_once(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("not_retried").delay(str(ledger))
    with pytest.raises(KeyError):
        job.result(timeout=HANG_GUARD)
    assert len(read_ledger(ledger)) == 1


def test_custom_exception_comes_back_whole(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    with pytest.raises(QuotaError) as info:
        queue.get_task("quota").delay("ada", 3).result(timeout=HANG_GUARD)
    assert (info.value.user, info.value.limit) == ("ada", 3)
    assert "raise QuotaError" in info.value.__cause__.tb  # type: ignore[union-attr]


def test_cause_chain_crosses(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    with pytest.raises(RuntimeError) as info:
        queue.get_task("chained").delay().result(timeout=HANG_GUARD)
    assert isinstance(info.value.__cause__, KeyError)


def test_unpicklable_exception_comes_back_as_stand_in(
    queue: stoker.Queue, pool: stoker.SupervisorThread
) -> None:
    with pytest.raises(stoker.RemoteTaskError) as info:
        queue.get_task("unpicklable_error").delay().result(timeout=HANG_GUARD)
    assert info.value.type_name == "apps.tasks.Unpicklable"
    assert "it holds a lock" in str(info.value)
    assert "Unpicklable" in info.value.remote_traceback


def test_unpicklable_result_fails_the_attempt(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    with pytest.raises(stoker.SerializationError, match=r"result of job .* cannot be pickled"):
        queue.get_task("unpicklable_result").delay().result(timeout=HANG_GUARD)


def test_sys_exit_in_a_task_is_its_error_and_the_pool_survives(
    queue: stoker.Queue, pool: stoker.SupervisorThread
) -> None:
    with pytest.raises(SystemExit):
        queue.get_task("sys_exit").delay().result(timeout=HANG_GUARD)
    assert queue.get_task("add").delay(1, 1).result(timeout=HANG_GUARD) == 2


@pytest.mark.parametrize("task", ["sleeper", "blocked_in_c"])
def test_hard_timeout_kills_the_process_and_the_next_job_runs(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path, task: str
) -> None:
    marker = tmp_path / "started"
    args = (str(marker), 600) if task == "sleeper" else (str(marker),)
    job = queue.get_task(task).delay(*args)
    with pytest.raises(stoker.TaskTimeoutError) as info:
        job.result(timeout=HANG_GUARD)
    assert info.value.job_id == job.id
    assert "hard timeout of 1 s" in str(info.value)
    worker_pid = int(marker.read_text())
    assert _gone(worker_pid)
    assert worker_pid not in pool.supervisor.worker_pids()
    (error,) = job.errors
    assert (error.kind, error.type_name) == ("timeout", "stoker.errors.TaskTimeoutError")
    assert queue.get_task("add").delay(2, 2).result(timeout=HANG_GUARD) == 4


def test_hard_timeout_kills_the_tasks_children(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = queue.get_task("with_children").delay(str(marker))
    wait_until(lambda: marker.exists() and len(marker.read_text().split()) == 2, what="the task's child")
    worker_pid, child_pid = map(int, marker.read_text().split())
    grandchildren = wait_until(lambda: psutil.Process(child_pid).children(), what="the grandchild")
    with pytest.raises(stoker.TaskTimeoutError):
        job.result(timeout=HANG_GUARD)
    for pid in (worker_pid, child_pid, *(p.pid for p in grandchildren)):
        wait_until(lambda pid=pid: _gone(pid), what=f"process {pid} to die")


@pytest.mark.parametrize(
    ("task", "args", "expected"),
    [
        ("exit_code", (3,), "exited with code 3"),
        ("kill_self", (), "was killed by SIGKILL"),
        ("segfault", (), "was killed by SIGSEGV"),
    ],
)
def test_worker_death_is_a_worker_lost_error(
    queue: stoker.Queue, pool: stoker.SupervisorThread, task: str, args: tuple[object, ...], expected: str
) -> None:
    job = queue.get_task(task).delay(*args)
    with pytest.raises(stoker.WorkerLostError, match=expected) as info:
        job.result(timeout=HANG_GUARD)
    assert info.value.job_id == job.id
    (error,) = job.errors
    assert error.kind == "crash"
    assert queue.get_task("add").delay(3, 3).result(timeout=HANG_GUARD) == 6


def test_poison_job_ends_dead_after_its_crash_bound(
    queue: stoker.Queue, pool: stoker.SupervisorThread, ledger: Path
) -> None:
    job = queue.get_task("poison").delay(str(ledger))
    with pytest.raises(stoker.WorkerLostError, match="exited with code 9"):
        job.result(timeout=HANG_GUARD)
    # max_crashes=2: the first run and two redeliveries, although max_retries is 5.
    assert len(read_ledger(ledger)) == 3
    assert [e.kind for e in job.errors] == ["crash", "crash", "crash"]


def test_cancel_running_job_kills_its_worker(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = queue.get_task("wait_for_file").delay(str(marker), str(tmp_path / "never"))
    wait_until(written(marker), what="the job to start")
    worker_pid = int(marker.read_text())
    assert job.cancel() == "requested"
    with pytest.raises(stoker.JobCancelledError):
        job.result(timeout=HANG_GUARD)
    assert job.status == "cancelled"
    assert job.errors == []
    wait_until(lambda: _gone(worker_pid), what="the worker to die")
    assert job.record().attempt == 1
    assert queue.get_task("add").delay(1, 2).result(timeout=HANG_GUARD) == 3


def test_cancelled_pending_job_never_starts(queue: stoker.Queue, ledger: Path) -> None:
    job = queue.get_task("record").delay(str(ledger), "cancelled")
    other = queue.get_task("record").delay(str(ledger), "kept")
    assert job.cancel() == "cancelled"
    with queue.start_worker(processes=1, drain_timeout=0.0):
        assert other.result(timeout=HANG_GUARD) == "kept"
    assert [line.split()[0] for line in read_ledger(ledger)] == ["kept"]
    assert job.record().attempt == 0


def test_no_job_waits_behind_a_long_one(
    queue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    release = tmp_path / "release"
    long_job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    wait_until(written(marker), what="the long job to start")
    short = [queue.get_task("add").delay(i, 1) for i in range(10)]
    assert [j.result(timeout=HANG_GUARD) for j in short] == [i + 1 for i in range(10)]
    assert long_job.status == "running"
    release.touch()
    assert long_job.result(timeout=HANG_GUARD) == "released"


def test_until_idle_drains_and_returns(queue: stoker.Queue) -> None:
    jobs = [queue.get_task("add").delay(i, 0) for i in range(5)]
    queue.run_worker(processes=2, until_idle=True, install_signal_handlers=False)
    assert all(j.status == "complete" for j in jobs)


def test_a_spare_worker_is_kept_ready(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    # Two slots plus one spare, so a killed worker's slot is taken without a process start.
    wait_until(lambda: len(pool.supervisor.worker_pids()) == 3, what="three worker processes")
    before = set(pool.supervisor.worker_pids())
    with pytest.raises(stoker.WorkerLostError):
        queue.get_task("kill_self").delay().result(timeout=HANG_GUARD)
    wait_until(lambda: len(pool.supervisor.worker_pids()) == 3, what="the spare to be replaced")
    assert len(before - set(pool.supervisor.worker_pids())) == 1


@pytest.mark.parametrize("task", ["notes_sigterm", "ignores_sigterm"])
def test_kill_grace_sends_sigterm_first_then_sigkill(queue: stoker.Queue, tmp_path: Path, task: str) -> None:
    marker, note = tmp_path / "started", tmp_path / "note"
    args = (str(marker), str(note)) if task == "notes_sigterm" else (str(marker),)
    with queue.start_worker(processes=1, kill_grace=0.3, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD)
        job = queue.get_task(task).delay(*args)
        with pytest.raises(stoker.TaskTimeoutError):
            job.result(timeout=HANG_GUARD)
        assert _gone(int(marker.read_text()))
    if task == "notes_sigterm":
        assert note.read_text() == "terminated"
    else:
        assert not note.exists()


def test_a_pool_left_running_stops_at_interpreter_exit(tmp_path: Path) -> None:
    # Nobody calls stop(): the program must still exit, leaving no worker behind.
    script = tmp_path / "leave_running.py"
    script.write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.environ['TESTS'])\n"
        "import stoker\n"
        "from apps import tasks as app\n"
        "if __name__ == '__main__':\n"
        "    q = stoker.Queue(os.environ['DB'])\n"
        "    q.include(app.queue)\n"
        "    handle = q.start_worker(processes=2)\n"
        "    assert handle.wait_started(60)\n"
        "    print(' '.join(map(str, handle.supervisor.worker_pids())), flush=True)\n"
        "    q.get_task('add').delay(1, 2).result(timeout=60)\n"
    )
    import subprocess
    import sys

    from conftest import TESTS

    done = subprocess.run(
        [sys.executable, str(script)],
        env=dict(os.environ, TESTS=str(TESTS), DB=str(tmp_path / "left.db")),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for pid in map(int, done.stdout.split()):
        wait_until(lambda pid=pid: _gone(pid), what=f"worker {pid} to be gone")


@pytest.mark.parametrize("prefetch", [-1, 1.5, True, "1"])
def test_prefetch_must_be_a_count(queue: stoker.Queue, prefetch: object) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="prefetch"):
        stoker.Supervisor(queue, prefetch=prefetch)  # type: ignore[arg-type]
