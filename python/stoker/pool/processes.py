"""The worker processes of a supervisor: start, spare, retire, kill, and how each ended.

:class:`WorkerProcesses` holds the handles (:class:`Worker`) of one
supervisor's workers, spares included, and the guardian process that kills
them all if the supervisor dies (``guardian.py``). It knows processes, not
jobs: what a worker was running when it died is for the dispatcher and the
outcomes to settle.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from .._base import serialization
from .._base.remote_errors import CapturedError
from .._core import ClaimedJob
from ..client.events import handler_name
from ..client.local import MAIN_REIMPORT_EXIT_CODE, WORKER_PROCESS_PREFIX
from ..client.options import TaskOptions
from ..client.registry import TaskScope
from ..errors import InvalidOptionError, MainModuleNotGuardedError, WorkerStartupError
from . import tunables
from .channel import Channel
from .guardian import become_subreaper, children, kill_tree, live_descendants
from .protocol import Stop
from .worker import worker_main

log = logging.getLogger("stoker.supervisor")


@dataclass
class Running:
    """A job on a worker: running, or sent ahead and waiting in its pipe (``Worker.queued``)."""

    job: ClaimedJob
    started: float
    deadline: float | None
    options: TaskOptions | None
    peak_rss_kib: int = 0
    cancel_at: float | None = None
    """When a cooperatively cancelled job's worker is killed if it has not stopped."""
    dropping: str | None = None
    """A job sent ahead that was asked back (``drop``): why, ``cancel``, ``release`` or ``move``."""
    answer_by: float | None = None
    """When a job asked back for a cancel, but started meanwhile, is cancelled as a running one."""
    serial: int = 0
    """Its place in the order jobs left the held line (claim order), kept if it is given back."""
    condemned: bool = False
    """Sent ahead, it started after its worker was killed for the job before it: its
    outcome counts if it comes, and if the worker dies first it goes back to pending."""
    seq: int = 0
    """Its place among the runs sent to its worker (the worker starts them in that order)."""


@dataclass
class Worker:
    """One worker process, its pipes, and the jobs it holds."""

    process: BaseProcess
    channel: Channel
    ready: bool = False
    running: Running | None = None
    queued: deque[Running] = field(default_factory=deque)
    """The jobs sent ahead while ``running`` runs, in the order the worker runs them."""
    killed_for: str | None = None
    """Why the supervisor killed it: timeout, cancel, memory, drain or shutdown."""
    kill_at: float | None = None
    """When SIGKILL follows the SIGTERM already sent (kill_grace)."""
    startup_error: CapturedError | None = None
    exited: bool = field(default=False)
    tasks_done: int = 0
    retiring: bool = False
    """Told to stop after its last task (recycling); it takes no more jobs."""
    pid: int = field(init=False)
    sentinel: int = field(init=False)
    """Readable once the process has exited: a pidfd where the kernel has them."""
    pidfd: int | None = field(init=False, default=None)
    last_job_s: float = 0.0
    """How long its last job ran, as the supervisor's loop saw it."""
    typical_job_s: float | None = None
    """A running average of how long its jobs ran (None before its first)."""
    usage_suffix: str = field(init=False, default="")
    """``, "worker": "owner/pid"}``: what ends the usage JSON of its attempts."""
    runs_sent: int = 0
    """How many ``Run`` messages it was sent: the ``seq`` of the last one."""

    def __post_init__(self) -> None:
        # Read once: the process's pid never changes, and it is asked for on
        # every message.
        assert self.process.pid is not None
        self.pid = self.process.pid
        # multiprocessing's sentinel is a pipe that the process holds open, and
        # so does every process it forked without exec (a task's daemon): one
        # of those would hide the worker's death for as long as it lives. A
        # pidfd is readable the moment the worker itself exits.
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                self.pidfd = pidfd_open(self.pid)
            except OSError:
                self.pidfd = None
        # Read once too: the property checks that the process object is
        # still open every time, and the loop polls it on every wake-up.
        self.sentinel = self.process.sentinel if self.pidfd is None else self.pidfd

    def close(self) -> None:
        """Close its pipes and its pidfd (it has exited, and its end is handled)."""
        self.channel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def pickled_initializer(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> bytes | None:
    """``(initializer, initargs)`` pickled once, for every worker process to call at its start."""
    if initializer is None:
        if initargs:
            raise InvalidOptionError(f"initargs without an initializer: {initargs!r}")
        return None
    if not callable(initializer):
        raise InvalidOptionError(f"initializer must be callable, got {initializer!r}")
    if not isinstance(initargs, tuple):
        raise InvalidOptionError(f"initargs must be a tuple, got {initargs!r}")
    try:
        return serialization.dumps((initializer, initargs))
    except Exception as error:
        raise InvalidOptionError(
            f"the initializer {handler_name(initializer)} or its initargs cannot be pickled: {error}"
        ) from error


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, naming the signal if a signal killed it."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a worker and its descendants (``setsid`` and orphaned ones too), in KiB.

    0 if it is gone.
    """
    try:
        total = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
    for descendant in live_descendants(pid):
        try:
            total += psutil.Process(descendant).memory_info().rss
        except psutil.Error:
            pass
    return int(total) // 1024


def multiprocessing_helpers() -> set[int]:
    """The pids of multiprocessing's fork server and resource tracker of this process, where running."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None),
        getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None),
    }
    return {pid for pid in pids if isinstance(pid, int)}


class Guardian:
    """The process that kills the workers if the supervisor dies (see ``guardian.py``)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
        self._process = subprocess.Popen(
            [sys.executable, script], stdin=subprocess.PIPE, close_fds=True, start_new_session=True
        )

    def tell(self, line: str) -> None:
        """``+pid``: a worker to kill if the supervisor dies; ``-pid``: that worker is gone."""
        if self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.write(line.encode() + b"\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            log.error("the guardian process is gone; workers may outlive a crash of this supervisor")
            self._process = None

    def stop(self) -> None:
        guardian, self._process = self._process, None
        if guardian is None:
            return
        if guardian.stdin is not None:
            try:
                guardian.stdin.close()
            except OSError:
                pass
        try:
            guardian.wait(tunables.KILL_REAP_WAIT)
        except subprocess.TimeoutExpired:
            guardian.kill()
            guardian.wait()


class WorkerProcesses:
    """The worker processes of one supervisor, ``processes`` of them plus the spares."""

    def __init__(
        self,
        start_method: str | None,
        *,
        processes: int,
        task_modules: list[str],
        task_scope: TaskScope,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_worker: int | None,
        max_worker_memory_mb: float | None,
        adopt_orphans: bool,
    ) -> None:
        if start_method is None:
            start_method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        if start_method not in ("spawn", "forkserver"):
            raise InvalidOptionError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} "
                "(plain fork is unsafe in a threaded supervisor)"
            )
        self.initializer = pickled_initializer(initializer, initargs)
        if not isinstance(adopt_orphans, bool):
            raise InvalidOptionError(f"adopt_orphans must be a bool, got {adopt_orphans!r}")
        self.context: BaseContext = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server must not import __main__ (its default): the user's
            # module may open the database, and a handle must never be forked.
            self.context.set_forkserver_preload(["stoker.pool.worker"])
        self.processes = processes
        self.task_modules = task_modules
        self.task_scope = task_scope
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory_mb = max_worker_memory_mb
        self.adopt_orphans = adopt_orphans
        """Make this process a child subreaper, and kill what a worker that died
        on its own left running (``kill_orphans``): for a process that runs the
        supervisor alone, as ``stoker worker`` does. Off in a program's own
        process, whose other children it must not touch."""
        self.queue_secret: bytes | None = None
        """The queue's signing secret, for workers whose task modules set
        themselves up with it (``worker.worker_setup_wanted``)."""
        self.starts_directory: str | None = None
        self.all: list[Worker] = []
        """Every live worker, spares included, in the order they started."""
        self.guardian = Guardian()
        self.started = threading.Event()
        """Set once every worker process has reported ready."""
        self._children_before: set[int] = set()
        self._startup_failures = 0
        self.start_not_before = 0.0
        """No worker starts before this (the back-off after failed starts)."""
        self._serial = 0

    # --- views -------------------------------------------------------------------------

    def busy(self) -> list[Worker]:
        return [w for w in self.all if w.running is not None]

    def idle(self) -> list[Worker]:
        """Ready for a job, running none, and neither killed nor retiring (inline: read at every turn)."""
        return [
            w
            for w in self.all
            if w.ready and w.running is None and w.killed_for is None and not w.exited and not w.retiring
        ]

    def pids(self) -> list[int]:
        return [w.pid for w in self.all if not w.exited]

    def short(self) -> bool:
        """Fewer than ``processes`` plus the spares: one more starts at ``start_not_before``."""
        return len(self.all) < self.processes + tunables.SPARE_WORKERS

    # --- starting ----------------------------------------------------------------------

    def open(self) -> None:
        """Before the first start: the guardian, and (``adopt_orphans``) this process as a subreaper."""
        self.guardian.start()
        if self.adopt_orphans and become_subreaper():
            self._children_before = set(children(os.getpid()))
        else:
            self.adopt_orphans = False

    def top_up(self, now: float) -> None:
        """Start workers until there are ``processes`` plus the spares (after any start-up back-off)."""
        while self.short() and now >= self.start_not_before:
            self.start_one()

    def start_one(self) -> None:
        self._serial += 1
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        drops_read, drops_write = self.context.Pipe(duplex=False)
        process = self.context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                child_conn,
                os.getpid(),
                self.task_modules,
                self.queue_secret,
                self.task_scope,
                self.initializer,
                self.starts_directory,
                drops_read,
            ),
            name=f"{WORKER_PROCESS_PREFIX}-{self._serial}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        drops_read.close()
        self.guardian.tell(f"+{process.pid}")
        self.all.append(Worker(process, Channel(parent_conn, drops_write)))

    def on_ready(self, w: Worker) -> None:
        w.ready = True
        self._startup_failures = 0
        if len([x for x in self.all if x.ready]) >= self.processes:
            self.started.set()

    def on_startup_failure(self, w: Worker) -> None:
        """A worker ended before it was ready: back off, and give up after STARTUP_FAILURE_LIMIT in a row."""
        if w.startup_error is None and w.process.exitcode == MAIN_REIMPORT_EXIT_CODE:
            # Every worker would do the same: the main module is at fault, not the start.
            main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
            raise MainModuleNotGuardedError(
                f"worker process {w.pid} stopped while importing {main} again: that module sends jobs, "
                "waits for results or starts a worker pool when it is imported, and worker processes "
                f"({self.context.get_start_method()}) import the main module again in each of them; "
                'put that code under `if __name__ == "__main__":` (the worker\'s stderr names the line)'
            )
        if w.startup_error is None and w.process.exitcode == -signal.SIGKILL:
            # Killed from outside (an operator, the out-of-memory killer) while it
            # started: not a sign that workers cannot start, so it is not counted.
            log.warning("worker process %s was killed (SIGKILL) before it was ready; starting another", w.pid)
            return
        self._startup_failures += 1
        cause = w.startup_error
        detail = (
            f"{cause.exc_type}: {cause.message}\n{cause.traceback}"
            if cause
            else f"it {describe_exit(w.process.exitcode)}"
        )
        log.error("worker process %s failed to start: %s", w.pid, detail)
        backoff = min(
            tunables.STARTUP_BACKOFF_MAX, tunables.STARTUP_BACKOFF * 2 ** (self._startup_failures - 1)
        )
        self.start_not_before = time.monotonic() + backoff
        if self._startup_failures >= tunables.STARTUP_FAILURE_LIMIT:
            raise WorkerStartupError(
                f"{self._startup_failures} worker processes in a row failed to start; the last one: {detail}"
            )

    # --- recycling ---------------------------------------------------------------------

    def should_recycle(self, w: Worker) -> bool:
        if self.max_tasks_per_worker is not None and w.tasks_done >= self.max_tasks_per_worker:
            return True
        if self.max_worker_memory_mb is not None:
            return tree_rss_kib(w.pid) > self.max_worker_memory_mb * 1024
        return False

    def retire(self, w: Worker) -> None:
        """Let an idle worker exit gracefully; the spare takes its slot and a new spare starts."""
        w.retiring = True
        try:
            w.channel.send(Stop())
        except (BrokenPipeError, OSError):
            pass  # Its sentinel reports the exit either way.

    # --- ends --------------------------------------------------------------------------

    def kill_tree(self, w: Worker) -> None:
        """SIGKILL a worker and every process descending from it (``setsid`` and orphaned ones too).

        It takes a millisecond or two (a few reads of /proc); the worker is
        stopped first, so nothing of its tree escapes meanwhile.
        """
        if w.process.exitcode is None:
            kill_tree(w.pid)

    def remove(self, w: Worker) -> None:
        """``w`` exited: reap it, and forget it (its jobs are settled by the caller)."""
        w.process.join(tunables.KILL_REAP_WAIT)
        w.exited = True
        self.guardian.tell(f"-{w.pid}")
        self.all.remove(w)
        w.close()

    def kill_orphans(self) -> None:
        """Kill what a worker that died on its own (a segfault, an OOM kill,
        ``os._exit``) left running: with this process a subreaper, its task's
        orphans were re-parented here. Every child that is not a worker, the
        guardian, multiprocessing's fork server or resource tracker, or one this
        process had before it started supervising, is one of them."""
        if not self.adopt_orphans:
            return
        known = self._children_before | {w.pid for w in self.all} | multiprocessing_helpers()
        if self.guardian.pid is not None:
            known.add(self.guardian.pid)
        for pid in children(os.getpid()):
            if pid in known:
                continue
            kill_tree(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def stop_all(self) -> None:
        """The end of a stop: running workers are killed, idle ones told to exit; all are reaped."""
        for w in self.all:
            if w.running is not None and not w.exited:
                self.kill_tree(w)
                w.killed_for = w.killed_for or "shutdown"
            else:
                try:
                    w.channel.send(Stop())
                except OSError:
                    pass
        deadline = time.monotonic() + tunables.KILL_REAP_WAIT
        for w in list(self.all):
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                self.kill_tree(w)
                w.process.join(tunables.KILL_REAP_WAIT)
            if w.process.exitcode is not None:
                self.guardian.tell(f"-{w.pid}")
