"""Every process a task starts ends with its job or its worker, however it tried to escape.

Each case starts a descendant of one kind (``apps.reliability.DESCENDANT_KINDS``:
a plain child, a ``setsid`` child, a double-forked daemon) and checks with
psutil that it is gone after the event: a hard timeout, a cancel, a memory
limit kill, the end of its job, a graceful stop (SIGTERM) of the supervisor,
a SIGKILL of the supervisor. How fast they go is measured in
``benches/reliability_orphans.py``; the tests only wait with a hang guard.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

import stoker
from apps.reliability import DESCENDANT_KINDS
from conftest import HANG_GUARD, gone, wait_until, written
from reliability.harness import SupervisorProcess, all_gone


def _started(marker: Path) -> tuple[int, int]:
    """``(worker pid, descendant pid)`` that the task wrote once its descendant started."""
    text = wait_until(written(marker), what="the task to start its descendant")
    worker, descendant = map(int, text.split())
    assert not gone(descendant)
    return worker, descendant


def _wait_gone(*pids: int) -> None:
    for pid in pids:
        wait_until(lambda pid=pid: gone(pid), what=f"process {pid} to end")


@pytest.fixture
def pool(rqueue: stoker.Queue) -> stoker.SupervisorThread:
    handle = rqueue.start_worker(processes=1, drain_timeout=0.0)
    assert handle.wait_started(HANG_GUARD), handle.error
    yield handle
    handle.stop(HANG_GUARD)


@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_a_hard_timeout_kills_every_descendant(
    rqueue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "started"
    task = rqueue.get_task("rel.leave_behind").options(timeout=4)
    job = task.delay(kind, str(marker), str(tmp_path / "never"))
    worker, descendant = _started(marker)
    with pytest.raises(stoker.TaskTimeoutError):
        job.result(timeout=HANG_GUARD)
    _wait_gone(worker, descendant)


@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_a_cancel_kills_every_descendant(
    rqueue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "started"
    job = rqueue.get_task("rel.leave_behind").delay(kind, str(marker), str(tmp_path / "never"))
    worker, descendant = _started(marker)
    assert job.cancel() == "requested"
    with pytest.raises(stoker.JobCancelledError):
        job.result(timeout=HANG_GUARD)
    _wait_gone(worker, descendant)


@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_a_memory_limit_kill_kills_every_descendant(
    rqueue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "started"
    job = rqueue.get_task("rel.leave_behind_and_hog").delay(kind, str(marker))
    with pytest.raises(stoker.MemoryLimitExceededError):
        job.result(timeout=HANG_GUARD)
    worker, descendant = map(int, marker.read_text().split())
    _wait_gone(worker, descendant)


@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_what_a_task_leaves_running_is_killed_when_its_job_ends(
    rqueue: stoker.Queue, pool: stoker.SupervisorThread, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "started"
    job = rqueue.get_task("rel.leave_behind").delay(kind, str(marker))
    descendant = job.result(timeout=HANG_GUARD)
    worker, written_pid = map(int, marker.read_text().split())
    assert written_pid == descendant
    _wait_gone(descendant)
    # The worker goes on with the next job.
    assert not gone(worker)
    assert rqueue.get_task("add").delay(2, 3).result(timeout=HANG_GUARD) == 5


@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_a_task_with_keep_children_keeps_them_until_its_worker_stops(
    rqueue: stoker.Queue, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "started"
    with rqueue.start_worker(processes=1, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        kept = rqueue.get_task("rel.keep_behind").delay(kind, str(marker)).result(timeout=HANG_GUARD)
        # Neither its own job's end nor the next jobs' ends kill it.
        for i in range(3):
            assert rqueue.get_task("add").delay(i, 1).result(timeout=HANG_GUARD) == i + 1
        assert not gone(kept)
    _wait_gone(kept)


def test_keep_children_must_be_a_bool(rqueue: stoker.Queue) -> None:
    with pytest.raises(stoker.InvalidOptionError, match="keep_children must be a bool, got 'yes'"):

        @rqueue.task(name="keep_children_not_a_bool", keep_children="yes")  # type: ignore[call-overload]
        def task() -> None: ...


def _supervisor_with_descendants(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], kind: str, start_method: str
) -> tuple[SupervisorProcess, list[psutil.Process]]:
    """A supervisor process running a job with a descendant, after a job that kept one.

    Returns it with every process that descends from it, and the two
    descendants of the tasks (which, escaped, would descend from it no more).
    """
    command = SupervisorProcess(
        Path(rqueue.path), "-p", "2", "--drain-timeout", "0", "--start-method", start_method
    )
    supervisors.append(command)
    kept = rqueue.get_task("rel.keep_behind").delay(kind, str(tmp_path / "kept"))
    kept_pid = kept.result(timeout=HANG_GUARD)
    rqueue.get_task("rel.leave_behind").delay(kind, str(tmp_path / "running"), str(tmp_path / "never"))
    _, running_pid = _started(tmp_path / "running")
    processes = command.descendants()
    for pid in (kept_pid, running_pid):
        if pid not in {p.pid for p in processes}:
            processes.append(psutil.Process(pid))
    # The guardian, two workers and a spare, the two descendants, and the
    # resource tracker and (forkserver) the fork server, which a daemon holding
    # their pipes would keep alive.
    assert len(processes) >= 6, processes
    helpers = {"multiprocessing.resource_tracker"} | (
        {"multiprocessing.forkserver"} if start_method == "forkserver" else set()
    )
    command_lines = " ".join(" ".join(p.cmdline()) for p in processes)
    assert all(helper in command_lines for helper in helpers), command_lines
    return command, processes


@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_after_a_graceful_stop_no_process_is_left(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], kind: str
) -> None:
    command, processes = _supervisor_with_descendants(rqueue, tmp_path, supervisors, kind, "forkserver")
    command.process.send_signal(signal.SIGTERM)
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    wait_until(lambda: all_gone(processes), what="every process of the stopped supervisor to end")


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_after_a_sigkill_of_the_supervisor_no_process_is_left(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], kind: str, start_method: str
) -> None:
    command, processes = _supervisor_with_descendants(rqueue, tmp_path, supervisors, kind, start_method)
    command.kill()
    wait_until(lambda: all_gone(processes), what="every process of the killed supervisor to end")


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize("kind", DESCENDANT_KINDS)
def test_what_a_crashed_workers_task_left_running_is_killed(
    rqueue: stoker.Queue, tmp_path: Path, supervisors: list[SupervisorProcess], kind: str, start_method: str
) -> None:
    # The worker dies on its own, so nothing of it kills its tree: its task's
    # descendants are re-parented to the supervisor's process (stoker worker
    # makes itself a subreaper), which kills them.
    marker = tmp_path / "started"
    command = SupervisorProcess(Path(rqueue.path), "-p", "1", "--start-method", start_method)
    supervisors.append(command)
    job = rqueue.get_task("rel.leave_behind_and_crash").delay(kind, str(marker))
    # Read without checking it is still alive: it may be killed at once.
    worker, descendant = map(int, wait_until(written(marker), what="the task to start it").split())
    with pytest.raises(stoker.WorkerLostError, match="exited with code 3"):
        job.result(timeout=HANG_GUARD)
    _wait_gone(worker, descendant)
    # The supervisor goes on: the next job runs.
    assert rqueue.get_task("rel.add").delay(2, 3).result(timeout=HANG_GUARD) == 5


def test_a_worker_that_crashes_is_seen_dead_while_a_daemon_it_forked_holds_its_pipes(
    rqueue: stoker.Queue, tmp_path: Path
) -> None:
    # With spawn, multiprocessing's sentinel of a worker is a pipe that a
    # process it forked without exec keeps open: the worker's death is seen
    # through a pidfd instead.
    marker = tmp_path / "started"
    handle = rqueue.start_worker(processes=1, start_method="spawn", drain_timeout=0.0)
    try:
        assert handle.wait_started(HANG_GUARD), handle.error
        job = rqueue.get_task("rel.leave_behind_and_crash").delay("daemon", str(marker))
        with pytest.raises(stoker.WorkerLostError, match="exited with code 3"):
            job.result(timeout=HANG_GUARD)
    finally:
        handle.stop(HANG_GUARD)
        # A pool in a program's own process does not adopt orphans: the
        # daemon of the crashed worker is this test's to end.
        if marker.exists():
            descendant = int(marker.read_text().split()[1])
            try:
                psutil.Process(descendant).kill()
            except psutil.NoSuchProcess:
                pass
