"""The supervisor as its own process (``stoker worker``): SIGKILL, recovery, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import HANG_GUARD, child_python_path, wait_until, written


class WorkerCommand:
    """``python -m stoker worker apps.tasks:queue`` on a test's database."""

    def __init__(self, db: Path, *extra: str) -> None:
        env = dict(os.environ, STOKER_TEST_DB=str(db), PYTHONPATH=child_python_path())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stoker", "worker", "apps.tasks:queue", "-p", "2", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def output(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.read().decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(HANG_GUARD)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def commands() -> Iterator[list[WorkerCommand]]:
    started: list[WorkerCommand] = []
    yield started
    for command in started:
        command.close()


def _all_gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_supervisor_sigkill_leaves_no_orphans_and_a_new_one_recovers_the_job(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    first = WorkerCommand(Path(queue.path), "--lease", "1")
    commands.append(first)
    wait_until(written(marker), what="the job to start")
    worker_pid = int(marker.read_text())
    descendants = first.descendants()
    assert worker_pid in {p.pid for p in descendants}

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(HANG_GUARD)
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")
    assert job.status == "running"

    release.touch()
    second = WorkerCommand(Path(queue.path), "--lease", "1")
    commands.append(second)
    assert job.result(timeout=HANG_GUARD) == "released"
    (error,) = job.errors
    assert error.kind == "lease_expired"
    assert error.type_name == "stoker.errors.LeaseExpiredError"
    assert job.record().attempt == 2


def test_sigterm_lets_running_jobs_finish(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    marker, release = tmp_path / "started", tmp_path / "release"
    job = queue.get_task("wait_for_file").delay(str(marker), str(release))
    waiting = queue.get_task("add").options(delay=3600).delay(1, 1)
    command = WorkerCommand(Path(queue.path), "--drain-timeout", "600")
    commands.append(command)
    wait_until(written(marker), what="the job to start")
    descendants = command.descendants()
    command.process.send_signal(signal.SIGTERM)
    release.touch()
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    assert job.status == "complete" and job.result() == "released"
    assert job.errors == []
    assert waiting.status == "scheduled"
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")


def test_sigterm_past_the_drain_timeout_requeues_without_a_failed_attempt(
    queue: stoker.Queue, tmp_path: Path, commands: list[WorkerCommand]
) -> None:
    marker = tmp_path / "started"
    job = queue.get_task("wait_for_file").delay(str(marker), str(tmp_path / "never"))
    command = WorkerCommand(Path(queue.path), "--drain-timeout", "0.2")
    commands.append(command)
    wait_until(written(marker), what="the job to start")
    descendants = command.descendants()
    command.process.send_signal(signal.SIGTERM)
    assert command.process.wait(HANG_GUARD) == 0, command.output()
    wait_until(lambda: _all_gone(descendants), what="every worker process to exit")
    record = job.record()
    assert record.status == "pending"
    assert (record.failures, record.crashes) == (0, 0)
    assert job.errors == []


def test_worker_command_names_a_bad_app(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stoker", "worker", "apps.tasks:nothing"],
        env=dict(os.environ, STOKER_TEST_DB=str(tmp_path / "x.db"), PYTHONPATH=child_python_path()),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode != 0
    assert "has no attribute 'nothing'" in result.stderr
