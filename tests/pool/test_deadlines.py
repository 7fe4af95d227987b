"""Hard timeouts, cancels and kills (``stoker.pool.deadlines``), through real worker processes."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

import stoker
from conftest import HANG_GUARD, gone, wait_until, written


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
    assert gone(worker_pid)
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
        wait_until(lambda pid=pid: gone(pid), what=f"process {pid} to die")


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
    wait_until(lambda: gone(worker_pid), what="the worker to die")
    assert job.record().attempt == 1
    assert queue.get_task("add").delay(1, 2).result(timeout=HANG_GUARD) == 3


@pytest.mark.parametrize("task", ["notes_sigterm", "ignores_sigterm"])
def test_kill_grace_sends_sigterm_first_then_sigkill(queue: stoker.Queue, tmp_path: Path, task: str) -> None:
    marker, note = tmp_path / "started", tmp_path / "note"
    args = (str(marker), str(note)) if task == "notes_sigterm" else (str(marker),)
    with queue.start_worker(processes=1, kill_grace=0.3, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD)
        job = queue.get_task(task).delay(*args)
        with pytest.raises(stoker.TaskTimeoutError):
            job.result(timeout=HANG_GUARD)
        assert gone(int(marker.read_text()))
    if task == "notes_sigterm":
        assert note.read_text() == "terminated"
    else:
        assert not note.exists()
