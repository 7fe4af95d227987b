"""Jobs run through real worker processes: results, order, retries, kills, crashes, cancellation."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

import stoker
import stoker.supervisor as supervisor_module
from apps.tasks import QuotaError
from conftest import HANG_GUARD, read_ledger, wait_until, written


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
        files = [f.path for f in psutil.Process(pid).open_files()]
        assert not any(path.startswith(queue.path) for path in files), files


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
    """The jobs waiting in a busy worker's pipe: job id -> worker pid."""
    return {w.queued.job.id: w.pid for w in list(handle.supervisor._workers) if w.queued is not None}


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
        dying = queue.get_task("exit_when_released").delay(str(marker), str(release))
        wait_until(written(marker), what="the dying job to start")
        dying_pid = int(marker.read_text())
        ahead = queue.get_task("add").delay(1, 2)
        wait_until(lambda: _sent_ahead(handle).get(ahead.id) == dying_pid, what="the job to be sent ahead")
        release.touch()
        with pytest.raises(stoker.WorkerLostError, match="exited with code 3"):
            dying.result(timeout=HANG_GUARD)
        assert ahead.result(timeout=HANG_GUARD) == 3
    record = ahead.record()
    assert (record.attempt, record.failures, record.crashes) == (1, 0, 0)
    assert ahead.errors == []


def test_a_job_sent_ahead_goes_back_when_the_job_before_it_runs_long(
    queue: stoker.Queue, tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for the test to see the job in the pipe first.
    monkeypatch.setattr(supervisor_module, "JOB_AHEAD_MAX_WAIT", 1.0)
    marker, release = tmp_path / "started", tmp_path / "release"
    blocker = queue.get_task("wait_for_file").delay(str(marker), str(release))
    ahead = queue.get_task("record").delay(str(ledger), "ahead")
    with queue.start_worker(processes=1, drain_timeout=0.0, prefetch=1) as handle:
        # Claimed together: the blocker starts, the other job is sent ahead
        # to the same worker, then asked back once the blocker has run
        # JOB_AHEAD_MAX_WAIT; it waits in memory for the next worker free.
        wait_until(lambda: ahead.id in _sent_ahead(handle), what="the job to be sent ahead")
        wait_until(
            lambda: [job.id for job in handle.supervisor._claimed_ahead] == [ahead.id],
            what="the job to come back from the busy worker",
        )
        assert _sent_ahead(handle) == {}
        assert ahead.status == "running" and blocker.status == "running"
        assert read_ledger(ledger) == []
        release.touch()
        assert blocker.result(timeout=HANG_GUARD) == "released"
        assert ahead.result(timeout=HANG_GUARD) == "ahead"
    assert ahead.record().attempt == 1 and ahead.errors == []


def test_a_job_is_sent_ahead_only_to_a_worker_busy_with_short_jobs(queue: stoker.Queue) -> None:
    supervisor = stoker.Supervisor(queue, processes=1)
    now = time.monotonic()

    def busy_worker(running_for: float, last_job_s: float) -> Any:
        running = SimpleNamespace(started=now - running_for, cancel_at=None, answer_by=None)
        return SimpleNamespace(
            running=running, queued=None, killed_for=None, retiring=False, last_job_s=last_job_s
        )

    limit = supervisor_module.JOB_AHEAD_MAX_WAIT
    assert supervisor._takes_job_ahead(busy_worker(0.0, 0.0), now)
    assert supervisor._takes_job_ahead(busy_worker(limit / 2, limit / 2), now)
    # Its job has run long, or its last one did: the next job waits for the next worker free.
    assert not supervisor._takes_job_ahead(busy_worker(limit, 0.0), now)
    assert not supervisor._takes_job_ahead(busy_worker(0.0, limit), now)
    # Not busy, already holding one, or about to be recycled.
    assert not supervisor._takes_job_ahead(SimpleNamespace(running=None), now)
    holding = busy_worker(0.0, 0.0)
    holding.queued = object()
    assert not supervisor._takes_job_ahead(holding, now)
    recycled = stoker.Supervisor(queue, processes=1, max_tasks_per_worker=3)
    assert recycled._takes_job_ahead(SimpleNamespace(**vars(busy_worker(0.0, 0.0)), tasks_done=1), now)
    assert not recycled._takes_job_ahead(SimpleNamespace(**vars(busy_worker(0.0, 0.0)), tasks_done=2), now)


@pytest.mark.parametrize("second_finished", [True, False])
def test_a_job_sent_ahead_that_started_as_its_worker_was_killed_is_not_run_again_as_unstarted(
    queue: stoker.Queue, second_finished: bool
) -> None:
    # The worker was killed (a cancel) for its job just as that job ended and
    # the job sent ahead started: the kill's outcome stands for the first, and
    # the second is complete if it said so before the worker died, otherwise
    # back to pending as a started attempt, never given back as unstarted
    # (which would run the same attempt twice).
    first, second = (queue.get_task("add").delay(i, 1) for i in (1, 2))
    supervisor = stoker.Supervisor(queue, processes=1)
    a, b = sorted(
        supervisor.engine.claim(supervisor.queues, 2, supervisor.owner, 30_000), key=lambda job: job.id
    )
    now = time.monotonic()
    messages = [("done", a.id, a.token, stoker.serialization.dumps(2), None)]
    if second_finished:
        messages.append(("done", b.id, b.token, stoker.serialization.dumps(3), None))
    worker = SimpleNamespace(
        running=supervisor_module._Running(a, now, None, None),
        queued=supervisor_module._Running(b, now, None, None),
        killed_for="cancel",
        kill_at=None,
        tasks_done=0,
        retiring=False,
        ready=True,
        exited=False,
        pid=os.getpid(),
        last_job_s=0.0,
        usage_suffix="",
        process=SimpleNamespace(exitcode=-9, join=lambda timeout: None),
        channel=SimpleNamespace(receive=lambda: messages, close=lambda: None, eof=False),
    )
    supervisor._workers.append(worker)  # type: ignore[arg-type]
    # Driven by hand, not run: no worker process is started.
    supervisor._top_up_workers = lambda now: None  # type: ignore[method-assign]
    supervisor._on_exit(worker)  # type: ignore[arg-type]
    supervisor._flush_completions()
    assert first.status == "cancelled"
    record = second.record()
    if second_finished:
        assert (record.status, record.attempt) == ("complete", 1)
        assert second.result(timeout=HANG_GUARD) == 3
    else:
        # A started attempt that failed through no fault of its own: pending,
        # no failure or crash counted, and the next claim is attempt 2.
        assert (record.status, record.attempt, record.failures, record.crashes) == ("pending", 1, 0, 0)
    assert second.errors == []
