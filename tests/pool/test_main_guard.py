"""A main module without ``if __name__ == "__main__":`` fails at once, with an error naming the fix.

Worker processes start with spawn or forkserver, which import the main module
again in each of them: a script that sends jobs or starts a pool at import
would do it again in every worker. Each test runs such a script as the main
module of its own interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import HANG_GUARD

QUEUE_AND_TASK = """
import stoker

queue = stoker.Queue("jobs.db")


@queue.task()
def simulate(seed: int) -> int:
    return seed * 2
"""

START_WORKER = """
job = simulate.delay(21)
with queue.start_worker(processes=2, start_method=START_METHOD) as pool:
    print(job.result(timeout=TIMEOUT))
"""

RUN_WORKER = """
job = simulate.delay(21)
queue.run_worker(processes=1, until_idle=True, start_method=START_METHOD)
print(job.result(timeout=TIMEOUT))
"""

EXECUTOR = """
with stoker.Executor(1, START_CONTEXT) as executor:
    print(executor.submit(abs, -42).result(timeout=TIMEOUT))
"""


def run_script(
    tmp_path: Path, body: str, start_method: str, *, guarded: bool
) -> subprocess.CompletedProcess[str]:
    if guarded:
        body = 'if __name__ == "__main__":\n' + textwrap.indent(body.strip("\n"), "    ") + "\n"
    script = tmp_path / "app.py"
    script.write_text(
        QUEUE_AND_TASK
        + f"import multiprocessing\nSTART_METHOD = {start_method!r}\n"
        + f"START_CONTEXT = multiprocessing.get_context({start_method!r})\nTIMEOUT = {HANG_GUARD}\n"
        + body
    )
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=2 * HANG_GUARD,
        check=False,
    )


def unguarded_line(tmp_path: Path, statement: str) -> str:
    """``app.py:N`` of the first line of the script that starts with ``statement``."""
    lines = (tmp_path / "app.py").read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith(statement))
    return f"{tmp_path / 'app.py'}:{number}"


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_result_raises_the_missing_guard_at_once(tmp_path: Path, start_method: str) -> None:
    result = run_script(tmp_path, START_WORKER, start_method, guarded=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    # Raised by result(), not its timeout: the pool failed at the first worker.
    assert last.startswith("stoker.errors.MainModuleNotGuardedError: "), result.stderr
    assert f"importing {tmp_path / 'app.py'} again" in last
    assert 'put that code under `if __name__ == "__main__":`' in last
    assert "ResultTimeoutError" not in result.stderr
    # Each worker says which line of the main module did it.
    assert f"stoker: {unguarded_line(tmp_path, 'job = simulate.delay')} tries to send jobs" in result.stderr


def test_run_worker_raises_the_missing_guard(tmp_path: Path) -> None:
    # The send is guarded (by hand), so the pool's start is what the worker meets.
    body = RUN_WORKER.replace(
        "job = simulate.delay(21)\n",
        'if multiprocessing.current_process().name == "MainProcess":\n    job = simulate.delay(21)\n',
    )
    result = run_script(tmp_path, body, "forkserver", guarded=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("stoker.errors.MainModuleNotGuardedError: ")
    assert (
        f"stoker: {unguarded_line(tmp_path, 'queue.run_worker')} tries to start a worker pool"
        in result.stderr
    )


def test_an_executor_breaks_with_the_missing_guard(tmp_path: Path) -> None:
    result = run_script(tmp_path, EXECUTOR, "spawn", guarded=False)
    assert result.returncode != 0
    assert "concurrent.futures.process.BrokenProcessPool" not in result.stderr
    assert (
        "BrokenExecutor: the worker pool of this executor stopped: MainModuleNotGuardedError("
        in result.stderr
    )
    assert (
        f"stoker: {unguarded_line(tmp_path, 'with stoker.Executor')} tries to create an Executor"
        in result.stderr
    )


@pytest.mark.parametrize("body", [START_WORKER, RUN_WORKER, EXECUTOR])
def test_the_same_scripts_with_the_guard_run(tmp_path: Path, body: str) -> None:
    result = run_script(tmp_path, body, "forkserver", guarded=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "42"
