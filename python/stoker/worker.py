"""The worker process: runs one job at a time for its supervisor.

A worker is started by the supervisor with spawn or forkserver (never plain
fork: the supervisor is multi-threaded). It never opens the database; it only
talks to its supervisor over its own pipe::

    supervisor ── ("run", job_id, token, attempt, task_name, payload) ──▶ worker
    supervisor ◀── ("ready", pid) | ("done", job_id, token, result)
                   | ("failed", job_id, token, CapturedError, retryable)
                   | ("startup_error", CapturedError) ──────────────────── worker

It leads its own process group, so that a hard kill (``killpg``) also takes
the processes the task started. It dies with its supervisor: the supervisor's
guardian process kills its group (see ``_guardian.py``), the kernel sends it
SIGKILL when its parent goes (``PR_SET_PDEATHSIG``), and an idle worker also
exits at end-of-file on its pipe.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import inspect
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from . import serialization
from .errors import SerializationError, UnknownTaskError
from .remote_errors import CapturedError, capture
from .task import REGISTRY

_PR_SET_PDEATHSIG = 1

#: (job_id, attempt) of the job this process is running, or None between jobs.
_current_job: tuple[int, int] | None = None


def current_job() -> tuple[int, int] | None:
    """``(job_id, attempt)`` of the job running in this worker process, or None outside a job."""
    return _current_job


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _supervisor_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_main(conn: Connection, supervisor_pid: int, task_modules: list[str]) -> None:
    """Entry point of a worker process."""
    os.setpgrp()
    _die_with_parent()
    if not _supervisor_alive(supervisor_pid):
        os._exit(0)
    # Ctrl-C in a terminal reaches the supervisor's process group only; the
    # supervisor decides what happens to running jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for module in task_modules:
            importlib.import_module(module)
    except BaseException as exc:
        try:
            conn.send(("startup_error", capture(exc)))
        finally:
            os._exit(1)
    try:
        conn.send(("ready", os.getpid()))
    except OSError:
        os._exit(0)  # The supervisor went away while this worker started.
    runner = _Runner()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # The supervisor is gone.
        if message[0] == "stop":
            return
        _, job_id, token, attempt, task_name, payload = message
        conn.send(runner.run(job_id, token, attempt, task_name, payload))


class _Runner:
    """Runs jobs in this process; keeps one event loop for async tasks."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, job_id: int, token: int, attempt: int, task_name: str, payload: bytes) -> tuple[Any, ...]:
        global _current_job
        _current_job = (job_id, attempt)
        try:
            return self._run(job_id, token, attempt, task_name, payload)
        finally:
            _current_job = None

    def _run(self, job_id: int, token: int, attempt: int, task_name: str, payload: bytes) -> tuple[Any, ...]:
        task = REGISTRY.get(task_name)
        if task is None:
            return self._failed(job_id, token, UnknownTaskError(task_name), retryable=False)
        try:
            args, kwargs = serialization.loads(payload)
        except BaseException as exc:  # sys.exit() in a __reduce__ is a bad payload too.
            error = SerializationError(
                f"the arguments of job {job_id} ({task_name}) cannot be unpickled: {exc!r}"
            )
            error.__cause__ = exc
            return self._failed(job_id, token, error, retryable=False)
        try:
            value = task.func(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._event_loop().run_until_complete(value)
        except BaseException as exc:
            return self._failed(job_id, token, exc, retryable=task.options_.should_retry(exc))
        try:
            result = serialization.dumps(value)
        except BaseException as exc:  # sys.exit() in a __reduce__ is a bad result too.
            error = SerializationError(
                f"the result of job {job_id} ({task_name}) of type {type(value).__qualname__} "
                f"cannot be pickled: {exc!r}"
            )
            error.__cause__ = exc
            return self._failed(job_id, token, error, retryable=True)
        return ("done", job_id, token, result)

    def _failed(self, job_id: int, token: int, exc: BaseException, *, retryable: bool) -> tuple[Any, ...]:
        captured: CapturedError = capture(exc)
        return ("failed", job_id, token, captured, retryable)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop
