"""Running the ``stoker`` command in the tests: in this process on a test's queue, or as its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stoker
from conftest import HANG_GUARD, TESTS
from stoker._core import NewJob
from stoker.cli import EXIT_OK

#: The app every test names: ``tests/apps/tasks.py`` (the ``cli`` fixture points it at the test's queue).
APP = "apps.tasks:queue"

#: ``cli(command, *args)``: the exit code, stdout and stderr of ``stoker COMMAND APP ARGS...``.
Run = Callable[..., tuple[int, str, str]]


def run_json(cli: Run, command: str, *args: str, expect: int = EXIT_OK) -> Any:
    code, out, err = cli(command, *args, "--json")
    assert code == expect, err
    return json.loads(out)


def run_all(queue: stoker.Queue) -> None:
    """Run every job of the queue to its end in a pool of two worker processes.

    Only for jobs that can run now: the pool waits for the eta of a delayed one.
    """
    queue.run_worker(processes=2, until_idle=True, install_signal_handlers=False)


def stored_job(queue: stoker.Queue, payload: bytes, **options: Any) -> int:
    """Enqueue a job of the ``add`` task with a payload of our own (and labels, say)."""
    (job_id,) = queue.engine.enqueue([NewJob("add", payload, **options)])
    return job_id


def python_path() -> str:
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


def stoker_command(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m stoker ARGS...`` as its own process, the apps' queues on ``db``."""
    return subprocess.run(
        [sys.executable, "-m", "stoker", *args],
        env=dict(os.environ, STOKER_TEST_DB=str(db), PYTHONPATH=python_path()),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
