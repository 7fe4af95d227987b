"""Worker processes (``stoker.pool.processes``): how they start, end and are described."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

import stoker
from conftest import HANG_GUARD, TESTS, database_files, gone, read_ledger, wait_until
from stoker.pool.processes import describe_exit, pickled_initializer


def test_an_exit_is_described_by_its_code_or_its_signal() -> None:
    assert describe_exit(None) == "is still running"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL (exit code -9)"
    assert describe_exit(-200) == "was killed by signal 200 (exit code -200)"


def test_an_initializer_is_checked_and_pickled_once() -> None:
    assert pickled_initializer(None, ()) is None
    assert pickled_initializer(print, ("hello",)) is not None
    with pytest.raises(stoker.InvalidOptionError, match="initargs without an initializer"):
        pickled_initializer(None, (1,))
    with pytest.raises(stoker.InvalidOptionError, match="must be callable"):
        pickled_initializer(42, ())  # type: ignore[arg-type]
    with pytest.raises(stoker.InvalidOptionError, match="must be a tuple"):
        pickled_initializer(print, [1])  # type: ignore[arg-type]
    with pytest.raises(stoker.InvalidOptionError, match="cannot be pickled"):
        pickled_initializer(print, (threading.Lock(),))


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


def test_a_spare_worker_is_kept_ready(queue: stoker.Queue, pool: stoker.SupervisorThread) -> None:
    # Two slots plus one spare, so a killed worker's slot is taken without a process start.
    wait_until(lambda: len(pool.supervisor.worker_pids()) == 3, what="three worker processes")
    before = set(pool.supervisor.worker_pids())
    with pytest.raises(stoker.WorkerLostError):
        queue.get_task("kill_self").delay().result(timeout=HANG_GUARD)
    wait_until(lambda: len(pool.supervisor.worker_pids()) == 3, what="the spare to be replaced")
    assert len(before - set(pool.supervisor.worker_pids())) == 1


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
        wait_until(lambda pid=pid: gone(pid), what=f"worker {pid} to be gone")
