"""Jobs run through real worker processes: results, order, retries, kills, crashes, cancellation."""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

import stoker
import stoker.pool.supervisor as supervisor_module
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


def _start_blocker(queue: stoker.Queue, tmp_path: Path) -> tuple[stoker.Job, Path]:
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    wait_until(written(marker), what="the blocking job to start")
    return job, release


def test_a_job_claimed_ahead_is_cancelled_without_running(
    queue: stoker.Queue, tmp_path: Path, ledger: Path
) -> None:
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1):
        blocker, release = _start_blocker(queue, tmp_path)
        ahead = queue.get_task("record").delay(str(ledger), "ahead")
        # The only worker is busy, yet the job is claimed (leased) ahead of it.
        wait_until(lambda: ahead.status == "running", what="the job to be claimed ahead")
        assert ahead.cancel() == "requested"
        wait_until(lambda: ahead.status == "cancelled", what="the job claimed ahead to be cancelled")
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
    assert read_ledger(ledger) == []
    assert ahead.errors == []


def test_stopping_puts_the_jobs_claimed_ahead_back_without_a_failure(
    queue: stoker.Queue, tmp_path: Path
) -> None:
    handle = queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1)
    blocker, release = _start_blocker(queue, tmp_path)
    ahead = queue.get_task("add").delay(1, 2)
    wait_until(lambda: ahead.status == "running", what="the job to be claimed ahead")
    handle.stop(HANG_GUARD)
    # Both go back to pending: the running one was killed by the drain, the
    # one claimed ahead never started; neither counts a failed attempt.
    assert (blocker.status, ahead.status) == ("pending", "pending")
    assert ahead.errors == [] and blocker.errors == []
    release.touch()
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=0):
        assert ahead.result(timeout=HANG_GUARD) == 3
        assert blocker.result(timeout=HANG_GUARD) == "released"


@pytest.mark.parametrize("prefetch", [-1, 1.5, True, "1"])
def test_prefetch_must_be_a_count(queue: stoker.Queue, prefetch: object) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="prefetch"):
        stoker.Supervisor(queue, prefetch=prefetch)  # type: ignore[arg-type]


# --- jobs sent ahead to a busy worker (supervisor.py: JOB_AHEAD_MAX_WAIT) ---------------


def _sent_ahead(handle: stoker.SupervisorThread) -> dict[int, int]:
    """The jobs waiting in busy workers' pipes, in the order they run: job id -> worker pid."""
    return {queued.job.id: w.pid for w in list(handle.supervisor._workers) for queued in list(w.queued)}


def _short_jobs_go_deep(queue: stoker.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every job short enough for JOBS_AHEAD_MAX of them ahead, once one job has ended.

    The pool must be running: one job runs so that its worker's jobs have a
    known length.
    """
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_WORK", HANG_GUARD)
    assert queue.get_task("add").delay(1, 2).result(timeout=HANG_GUARD) == 3


def test_a_job_sent_ahead_counts_its_hard_timeout_from_its_start(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        blocker, release = _start_blocker(queue, tmp_path)
        # It runs 0.2 s of its 0.5 s timeout, once it has waited in the pipe for longer than that.
        quick = queue.get_task("sleeper").options(timeout=0.5).delay(str(tmp_path / "quick"), 0.2)
        wait_until(lambda: quick.id in _sent_ahead(handle), what="the job to be sent ahead")
        waited_from = time.monotonic()
        wait_until(lambda: time.monotonic() - waited_from > 0.8, what="its timeout to pass")
        assert quick.id in _sent_ahead(handle)
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        assert quick.result(timeout=HANG_GUARD) is None
    assert quick.errors == []


def test_a_job_sent_ahead_to_a_worker_that_dies_runs_on_another_without_an_attempt(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    marker, release = tmp_path / "started", tmp_path / "release"
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        dying = queue.get_task("exit_when_released").delay(str(marker), str(release))
        wait_until(written(marker), what="the dying job to start")
        dying_pid = int(marker.read_text())
        ahead = [queue.get_task("add").delay(i, 2) for i in range(3)]
        wait_until(
            lambda: _sent_ahead(handle) == {job.id: dying_pid for job in ahead},
            what="the jobs to be sent ahead",
        )
        release.touch()
        with pytest.raises(stoker.WorkerLostError, match="exited with code 3"):
            dying.result(timeout=HANG_GUARD)
        assert [job.result(timeout=HANG_GUARD) for job in ahead] == [2, 3, 4]
    for job in ahead:
        record = job.record()
        assert (record.attempt, record.failures, record.crashes) == (1, 0, 0)
        assert job.errors == []


def test_a_job_sent_ahead_goes_back_when_the_job_before_it_runs_long(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for the test to see the jobs in the pipe first.
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_MAX_WAIT", 1.0)
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        blocker, release = _start_blocker(queue, tmp_path)
        tags = [f"ahead {i}" for i in range(3)]
        ahead = [queue.get_task("record").delay(str(ledger), tag) for tag in tags]
        # Sent ahead to the blocker's worker, then asked back once the blocker
        # has run JOB_AHEAD_MAX_WAIT; they wait in memory, in their order, for
        # the next worker free.
        wait_until(lambda: list(_sent_ahead(handle)) == [job.id for job in ahead], what="the jobs sent ahead")
        wait_until(
            lambda: [job.id for job in handle.supervisor._claimed_ahead] == [job.id for job in ahead],
            what="the jobs to come back from the busy worker",
        )
        assert _sent_ahead(handle) == {}
        assert [job.status for job in ahead] == ["running"] * 3 and blocker.status == "running"
        assert read_ledger(ledger) == []
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        assert [job.result(timeout=HANG_GUARD) for job in ahead] == tags
    assert [line.split()[:2] for line in read_ledger(ledger)] == [tag.split() for tag in tags]
    assert all(job.record().attempt == 1 and job.errors == [] for job in ahead)


@pytest.mark.parametrize("call", ["sleep", "read"])
def test_taking_back_a_job_sent_ahead_does_not_interrupt_the_running_tasks_c_calls(
    queue: stoker.Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    # A take-back reaches a worker while its task runs; a signal would cut
    # short a libc sleep (never restarted) and could fail a blocking read.
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    marker, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        if call == "sleep":
            running = queue.get_task("c_sleep").delay(str(marker), 3)
        else:
            running = queue.get_task("c_read").delay(str(marker), str(fifo))
        wait_until(written(marker), what="the C call to start")
        ahead = queue.get_task("add").delay(1, 2)
        wait_until(lambda: ahead.id in _sent_ahead(handle), what="the job to be sent ahead")
        assert ahead.cancel() == "requested"
        # Given back by the worker while its task is inside the C call.
        wait_until(lambda: ahead.status == "cancelled", what="the job sent ahead to be given back")
        assert running.status == "running"
        if call == "sleep":
            assert running.result(timeout=HANG_GUARD) == 0  # Not a second of the sleep left out.
        else:
            with open(fifo, "wb") as writer:
                writer.write(b"data")
            assert running.result(timeout=HANG_GUARD) == (4, 0)  # The data, not an interrupted read.
    assert ahead.errors == [] and running.errors == []


def test_short_jobs_wait_several_deep_in_a_busy_workers_pipe_and_run_in_order(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_MAX_WAIT", HANG_GUARD)
    deepest = supervisor_module.JOBS_AHEAD_MAX
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        _short_jobs_go_deep(queue, monkeypatch)
        blocker, release = _start_blocker(queue, tmp_path)
        tags = [f"ahead {i}" for i in range(deepest + 2)]
        jobs = [queue.get_task("record").delay(str(ledger), tag) for tag in tags]
        # JOBS_AHEAD_MAX of them wait in the pipe; the worker's budget of jobs
        # claimed ahead is spent, so the rest are not even claimed.
        wait_until(
            lambda: list(_sent_ahead(handle)) == [job.id for job in jobs[:deepest]],
            what="the jobs to be sent ahead",
        )
        assert [job.status for job in jobs[deepest:]] == ["pending", "pending"]
        # One in the middle of the line is cancelled without running; the line goes on.
        assert jobs[1].cancel() == "requested"
        wait_until(lambda: jobs[1].status == "cancelled", what="the job in the pipe to be cancelled")
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        kept = [job for job in jobs if job is not jobs[1]]
        assert [job.result(timeout=HANG_GUARD) for job in kept] == [
            job_tag for job_tag in tags if job_tag != tags[1]
        ]
    assert [" ".join(line.split()[:2]) for line in read_ledger(ledger)] == [t for t in tags if t != tags[1]]
    assert jobs[1].errors == []
    assert all(job.record().attempt == 1 for job in kept)


def test_a_job_is_sent_ahead_only_to_a_worker_busy_with_short_jobs(queue: stoker.Queue) -> None:
    supervisor = stoker.Supervisor(queue, processes=1)
    # Only differences of clock readings count; from zero they are exact, so a job
    # that has run exactly JOB_AHEAD_MAX_WAIT is not taken for one a hair shorter.
    now = 0.0

    def busy_worker(running_for: float, last_job_s: float, typical_job_s: float | None = 0.0) -> Any:
        running = SimpleNamespace(started=now - running_for, cancel_at=None, answer_by=None)
        return SimpleNamespace(
            running=running,
            queued=deque(),
            killed_for=None,
            retiring=False,
            last_job_s=last_job_s,
            typical_job_s=typical_job_s,
        )

    limit = supervisor_module.JOB_AHEAD_MAX_WAIT
    assert supervisor._takes_job_ahead(busy_worker(0.0, 0.0), now)
    assert supervisor._takes_job_ahead(busy_worker(limit / 2, limit / 2), now)
    # Its job has run long, or its last one did: the next job waits for the next worker free.
    assert not supervisor._takes_job_ahead(busy_worker(limit, 0.0), now)
    assert not supervisor._takes_job_ahead(busy_worker(0.0, limit), now)
    # Not busy, or already holding as many as its jobs' length allows.
    assert not supervisor._takes_job_ahead(SimpleNamespace(running=None), now)
    work, deepest = supervisor_module.JOB_AHEAD_WORK, supervisor_module.JOBS_AHEAD_MAX
    for typical_job_s, allowed in [
        (None, 1),  # Its jobs' length is not known yet.
        (0.0, deepest),
        (work / deepest, deepest),
        (work / 3, 3),
        (work, 1),
        (limit / 2, 1),
    ]:
        holding = busy_worker(0.0, 0.0, typical_job_s)
        for _ in range(allowed):
            assert supervisor._takes_job_ahead(holding, now), (typical_job_s, len(holding.queued))
            holding.queued.append(object())
        assert not supervisor._takes_job_ahead(holding, now), typical_job_s
    # About to be recycled, counting the jobs already in its pipe.
    recycled = stoker.Supervisor(queue, processes=1, max_tasks_per_worker=3)
    assert recycled._takes_job_ahead(SimpleNamespace(**vars(busy_worker(0.0, 0.0)), tasks_done=1), now)
    assert not recycled._takes_job_ahead(SimpleNamespace(**vars(busy_worker(0.0, 0.0)), tasks_done=2), now)
    holding_one = SimpleNamespace(**vars(busy_worker(0.0, 0.0)), tasks_done=1)
    holding_one.queued.append(object())
    assert not recycled._takes_job_ahead(holding_one, now)


def test_an_idle_worker_gets_a_job_while_a_stopped_one_holds_more_than_the_budget(
    queue: stoker.Queue,
) -> None:
    supervisor = stoker.Supervisor(queue, processes=2)
    assert supervisor._ahead_per_worker() == 1  # No job has ended: their length is not known.
    stopped = SimpleNamespace(
        running=object(),
        queued=deque(SimpleNamespace(dropping="move") for _ in range(supervisor_module.JOBS_AHEAD_MAX)),
        ready=True,
        killed_for=None,
        exited=False,
        retiring=False,
    )
    idle = SimpleNamespace(
        running=None, queued=deque(), ready=True, killed_for=None, exited=False, retiring=False
    )
    supervisor._workers.extend([stopped, idle])  # type: ignore[list-item]
    assert supervisor._claim_limit() == 1
    supervisor._workers.remove(idle)  # type: ignore[arg-type]
    assert supervisor._claim_limit() == 0
    # Short jobs: the budget per worker grows to JOBS_AHEAD_MAX; without prefetch, none ahead.
    supervisor._typical_job_s = 0.0
    assert supervisor._ahead_per_worker() == supervisor_module.JOBS_AHEAD_MAX
    assert supervisor._claim_limit() == supervisor_module.JOBS_AHEAD_MAX
    assert stoker.Supervisor(queue, processes=2, prefetch=0)._ahead_per_worker() == 0


@pytest.mark.parametrize("outcomes_sent", [1, 2, 3])
def test_jobs_sent_ahead_that_started_as_their_worker_was_killed_are_not_run_again_as_unstarted(
    queue: stoker.Queue, outcomes_sent: int
) -> None:
    # The worker was killed (a cancel) for its job just as that job ended, and
    # it went on through the jobs sent ahead to it: the kill's outcome stands
    # for the first; a job whose outcome the worker sent before it died is
    # complete; the one it was running is back to pending as a started
    # attempt, never given back as unstarted (which would run the same
    # attempt twice); the ones after it never started.
    jobs = [queue.get_task("add").delay(i, 1) for i in range(3)]
    supervisor = stoker.Supervisor(queue, processes=1)
    claimed = sorted(
        supervisor.engine.claim(supervisor.queues, 3, supervisor.owner, 30_000), key=lambda job: job.id
    )
    now = time.monotonic()
    messages = [
        ("done", job.id, job.token, stoker._base.serialization.dumps(i + 1), None)
        for i, job in enumerate(claimed[:outcomes_sent])
    ]
    worker = SimpleNamespace(
        running=supervisor_module._Running(claimed[0], now, None, None),
        queued=deque(supervisor_module._Running(job, now, None, None) for job in claimed[1:]),
        killed_for="cancel",
        kill_at=None,
        tasks_done=0,
        retiring=False,
        ready=True,
        exited=False,
        pid=os.getpid(),
        last_job_s=0.0,
        typical_job_s=None,
        usage_suffix="",
        process=SimpleNamespace(exitcode=-9, join=lambda timeout: None),
        channel=SimpleNamespace(receive=lambda: messages, close=lambda: None, eof=False),
        close=lambda: None,
    )
    supervisor._workers.append(worker)  # type: ignore[arg-type]
    # Driven by hand, not run: no worker process is started.
    supervisor._top_up_workers = lambda now: None  # type: ignore[method-assign]
    supervisor._on_exit(worker)  # type: ignore[arg-type]
    supervisor._flush_completions()
    assert jobs[0].status == "cancelled"
    for i, job in enumerate(jobs[1:], start=1):
        record = job.record()
        if i < outcomes_sent:
            assert (record.status, record.attempt) == ("complete", 1)
            assert job.result(timeout=HANG_GUARD) == i + 1
        elif i == outcomes_sent:
            # A started attempt that failed through no fault of its own:
            # pending, no failure or crash counted, and the next claim is attempt 2.
            assert (record.status, record.attempt, record.failures, record.crashes) == ("pending", 1, 0, 0)
        else:
            # Never started: still claimed by this supervisor, the next to run.
            assert record.status == "running"
            assert [held.id for held in supervisor._claimed_ahead] == [job.id]
        assert job.errors == []
    if outcomes_sent < 2:
        assert len(supervisor._claimed_ahead) == 1
    else:
        assert not supervisor._claimed_ahead


def test_a_job_given_back_after_it_was_counted_as_started_hands_the_slot_to_the_next_in_the_pipe(
    queue: stoker.Queue,
) -> None:
    # The job before it ended and the loop counted the first job sent ahead as
    # started, but the worker had given it back (a cancel): the worker went
    # on to the next one in its pipe, which is now the running one.
    jobs = [queue.get_task("add").delay(i, 1) for i in range(3)]
    supervisor = stoker.Supervisor(queue, processes=1)
    first, cancelled, last = sorted(
        supervisor.engine.claim(supervisor.queues, 3, supervisor.owner, 30_000), key=lambda job: job.id
    )
    now = time.monotonic()
    messages = [
        ("done", first.id, first.token, stoker._base.serialization.dumps(1), None),
        ("dropped", cancelled.id, cancelled.token),
    ]
    worker = SimpleNamespace(
        running=supervisor_module._Running(first, now, None, None),
        queued=deque(
            [
                supervisor_module._Running(cancelled, now, None, None, dropping="cancel"),
                supervisor_module._Running(last, now, None, None),
            ]
        ),
        killed_for=None,
        tasks_done=0,
        retiring=False,
        exited=False,
        pid=os.getpid(),
        last_job_s=0.0,
        typical_job_s=None,
        usage_suffix="",
        channel=SimpleNamespace(receive=lambda: messages),
    )
    supervisor._workers.append(worker)  # type: ignore[arg-type]
    supervisor._read_messages(worker)  # type: ignore[arg-type]
    supervisor._flush_completions()
    assert worker.running is not None and worker.running.job.id == last.id
    assert not worker.queued
    assert [job.status for job in jobs] == ["complete", "cancelled", "running"]
    assert jobs[1].errors == []
