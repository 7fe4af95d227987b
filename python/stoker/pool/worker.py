"""The worker process: runs one job at a time for its supervisor.

A worker is started by the supervisor with spawn or forkserver (never plain
fork: the supervisor is multi-threaded). It never opens the database; it only
talks to its supervisor over its own two pipes::

    supervisor ── Run, Stop ──▶ worker           (the message pipe; see protocol.py)
    supervisor ── DROP_FRAME ──▶ worker          (the drop pipe: give back a job sent ahead)
    supervisor ◀── Ready | StartupError | Progress | Done | Failed
                   | Cancelled | Requeue | Dropped ── worker

The attempt itself is run by ``runner.Runner``, which test mode uses too.

A busy worker may be sent its next ``Run`` while its current job runs; the
message waits in the pipe. ``seq`` numbers the runs sent to this worker, in
order, and jobs start in that order. A take-back of such a job (it was
cancelled, the supervisor stops, or another worker is idle) comes on a second
pipe, which a thread of the worker reads at any time, while a task runs too,
without a signal: the running task is never interrupted, not even in a
system call of its C code. The thread answers ``Dropped`` for a job that has
not started, and the main thread skips it when it comes to it; a take-back of
a job already started or finished is ignored.

Each worker is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process a
task starts stays in the worker's tree even if its parent dies (a
double-forked daemon) or it leaves the session (``setsid``), so every kill of
the worker (hard timeout, cancel, memory limit, drain, the supervisor's
death) reaches it (``guardian.kill_tree``). When a job ends, the processes
its task left running are killed before its outcome is sent, unless the task
has ``keep_children=True``; processes started by ``worker_startup`` handlers
and kept ones live until the worker exits, which kills everything left.

It also leads its own process group. It dies with its supervisor: the
supervisor's guardian process kills its tree (see ``guardian.py``); the
kernel stops it when its parent goes (``PR_SET_PDEATHSIG``: SIGSTOP when
the parent is the supervisor, so that its tree stays whole for the guardian
to kill, SIGKILL when it is the fork server); and an idle worker also exits
at end-of-file on its pipe. SIGUSR1 from the supervisor means "a cancel was
requested" (tasks with ``cancel_grace`` see it in ``ctx.check_cancelled()``);
tasks must leave it alone.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import pickle
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from .._base import serialization
from .._base.remote_errors import capture
from ..client.context import CancelFlag
from ..client.registry import REGISTRY, TaskScope
from .guardian import PR_SET_PDEATHSIG, become_subreaper, children, is_running, kill_descendants, prctl
from .protocol import DROP_FRAME, Dropped, Failed, Ready, Run, StartupError, Stop
from .runner import Runner, loaded_queues, sealer_of
from .start_marks import StartLog

log = logging.getLogger("stoker.worker")

#: Set-ups that a module of the layers above the pool (the Executor's) makes
#: in a worker process, once the task modules are imported: module name ->
#: a callable given the signing secret of the supervisor's queue. A module
#: registers its set-up when it is imported, in every process; the
#: supervisor hands its workers the secret only when one of its task modules
#: has a set-up (``worker_setup_wanted``), and a worker calls the set-ups of
#: its task modules.
WORKER_SETUPS: dict[str, Callable[[bytes | None], None]] = {}


def register_worker_setup(module: str, setup: Callable[[bytes | None], None]) -> None:
    """Call ``setup(secret)`` in each worker whose supervisor's tasks live in ``module``."""
    WORKER_SETUPS[module] = setup


def worker_setup_wanted(task_modules: list[str]) -> bool:
    """Whether the workers of a supervisor of these task modules need its queue's secret."""
    return any(module in WORKER_SETUPS for module in task_modules)


def _die_with_parent(supervisor_pid: int) -> None:
    """Ask the kernel to signal this process when its parent exits (Linux only).

    A parent that is the supervisor itself (spawn) stops it: killed there, it
    would leave its task's processes to init before the guardian could kill
    them; stopped, it keeps them in its tree, and the guardian kills it with
    them. A parent that is the fork server kills it: the fork server outlives
    the supervisor (every worker keeps it alive), so it only dies when it is
    killed, and a worker of a live supervisor must then end, not stop.
    """
    signum = signal.SIGSTOP if os.getppid() == supervisor_pid else signal.SIGKILL
    prctl(PR_SET_PDEATHSIG, signum)


def _supervisor_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _on_cancel_signal(signum: int, frame: FrameType | None) -> None:
    CancelFlag.requested = True


def _on_hangup(signum: int, frame: FrameType | None) -> None:
    """SIGHUP does not end a worker.

    When a spawn worker's parent, the supervisor, dies, the worker's process
    group is orphaned, and if the worker is stopped then (by its guardian,
    about to kill its tree), the kernel sends the group SIGHUP and SIGCONT:
    dying of it, the worker would hand its task's processes to init before the
    guardian could kill them. A handler, unlike SIG_IGN, is not inherited
    by the programs its tasks run.
    """


class _Inbox:
    """This worker's ends of its two pipes from the supervisor.

    Jobs and ``stop`` come on the message pipe, which only the main thread
    reads. Take-backs come on the drop pipe, which a thread reads as they
    come, while a task runs too: it needs the GIL for a few microseconds per
    take-back and never interrupts the task. Jobs start in the order of their
    ``seq``, so a job whose ``seq`` is after the last one started has not
    started: its take-back is answered ``dropped``, and the main thread
    skips the job when it reads it. Every message to the supervisor, from
    either thread, is written whole under one lock.
    """

    def __init__(self, conn: Connection, drops: Connection | None = None) -> None:
        self.conn = conn
        self._drops = drops
        self._sending = threading.Lock()
        self._starting = threading.Lock()
        self._last_started = 0
        self._given_back: set[int] = set()
        """The ``seq`` of jobs given back that the main thread has not read yet."""

    def read_drops_in_background(self) -> None:
        if self._drops is not None:
            threading.Thread(target=self._read_drops, name="stoker-drops", daemon=True).start()

    def receive(self) -> Run | Stop:
        message: Run | Stop = self.conn.recv()
        return message

    def send(self, message: tuple[Any, ...]) -> None:
        # Messages hold only plain values (see _channel.py): the standard
        # pickler takes them for less than the new ForkingPickler, with its
        # copy of the reducers, that Connection.send makes for each.
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with self._sending:
            self.conn.send_bytes(data)

    def start(self, seq: int) -> bool:
        """The main thread is about to start job ``seq``: False if it was given back."""
        with self._starting:
            if seq in self._given_back:
                self._given_back.discard(seq)
                return False
            self._last_started = seq
            return True

    def give_back(self, seq: int, job_id: int, token: int) -> bool:
        """A take-back of job ``seq``: answer ``dropped`` if it has not started."""
        with self._starting:
            if seq <= self._last_started or seq in self._given_back:
                return False  # Started (or finished) already: it runs to its end.
            self._given_back.add(seq)
        self.send(Dropped(job_id, token))
        return True

    def _read_drops(self) -> None:
        assert self._drops is not None
        fd = self._drops.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return  # The supervisor is gone; the main thread finds out.
            pending += chunk
            while len(pending) >= DROP_FRAME.size:
                seq, job_id, token = DROP_FRAME.unpack_from(pending)
                pending = pending[DROP_FRAME.size :]
                try:
                    self.give_back(seq, job_id, token)
                except OSError:
                    return


class _Leftovers:
    """The processes a task left running, killed when its job ends (unless it keeps them).

    Processes that were there before the job (started by ``worker_startup``
    handlers, or kept by an earlier job with ``keep_children``) are not the
    job's: they stay until the worker exits. A job that started no process
    costs one ``waitid`` call here, which finds no child.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.kept: frozenset[int] = frozenset()

    def keep_current(self) -> None:
        """Keep the children there are now (after start-up, after a job that keeps its own)."""
        self.kept = frozenset(pid for pid in children(self.pid) if is_running(pid))

    def after_job(self, task_name: str, scope: TaskScope | None) -> None:
        if not _has_children():
            self.kept = frozenset()
            return
        task = REGISTRY.find(task_name, scope)
        if task is not None and task.options_.keep_children:
            self.keep_current()
            return
        current = set(children(self.pid))
        self.kept = self.kept & current
        if current <= self.kept:
            return
        kill_descendants(self.pid, spare=self.kept)
        self.reap()

    def kill_all(self) -> None:
        """The worker exits: nothing it started outlives it."""
        kill_descendants(self.pid)
        self.kept = frozenset()
        self.reap()

    def reap(self) -> None:
        """Collect the children that exited, but for the kept ones (their owner may wait for them)."""
        for pid in children(self.pid):
            if pid not in self.kept and not is_running(pid):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def _has_children() -> bool:
    """Whether this process has any child, alive or exited, without collecting one."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def worker_main(
    conn: Connection,
    supervisor_pid: int,
    task_modules: list[str],
    queue_secret: bytes | None = None,
    scope: TaskScope | None = None,
    initializer: bytes | None = None,
    starts_directory: str | None = None,
    drops: Connection | None = None,
) -> None:
    """Entry point of a worker process.

    ``queue_secret`` is the signing secret of the supervisor's queue when one
    of its task modules registered a set-up (``register_worker_setup``: the
    Executor's call task is registered here, not by a module of the
    application that would carry the secret). ``scope`` says
    which tasks the supervisor's jobs name: task names are per database (see
    ``task.TaskRegistry``). ``initializer`` is the pickled ``(callable, args)``
    of the supervisor's ``initializer`` option, called once after the imports,
    before the ``worker_startup`` handlers; if it raises, the worker fails to
    start. Each job is recorded in ``starts_directory`` before it starts (see
    ``start_marks``). ``drops`` is the read end of the pipe of take-backs.
    """
    signal.signal(signal.SIGHUP, _on_hangup)
    os.setpgrp()
    # Before anything can start a process: orphans of this worker's tasks are
    # re-parented to it, and stay in its tree.
    become_subreaper()
    _die_with_parent(supervisor_pid)
    if not _supervisor_alive(supervisor_pid):
        os._exit(0)
    leftovers = _Leftovers()
    try:
        _serve(conn, drops, task_modules, queue_secret, leftovers, scope, initializer, starts_directory)
    finally:
        leftovers.kill_all()


def _serve(
    conn: Connection,
    drops: Connection | None,
    task_modules: list[str],
    queue_secret: bytes | None,
    leftovers: _Leftovers,
    scope: TaskScope | None,
    initializer: bytes | None,
    starts_directory: str | None,
) -> None:
    # Ctrl-C in a terminal reaches the supervisor's process group only; the
    # supervisor decides what happens to running jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_cancel_signal)
    try:
        for module in task_modules:
            importlib.import_module(module)
        for module in task_modules:
            setup = WORKER_SETUPS.get(module)
            if setup is not None:
                setup(queue_secret)
        if initializer is not None:
            initialize, initargs = serialization.loads(initializer)
            initialize(*initargs)
        for queue in loaded_queues():
            queue.run_event("worker_startup")
    except BaseException as exc:
        try:
            conn.send(StartupError(capture(exc)))
        finally:
            leftovers.kill_all()
            os._exit(1)
    # What start-up loaded (modules, the task's globals) lives as long as the
    # process: moved out of the collector's reach, it is not traversed again by
    # every full collection that the tasks' allocations trigger.
    gc.freeze()
    if _has_children():
        leftovers.keep_current()
    inbox = _Inbox(conn, drops)
    inbox.read_drops_in_background()
    try:
        inbox.send(Ready(os.getpid()))
    except OSError:
        return  # The supervisor went away while this worker started.
    runner = Runner(inbox.send, scope)
    start_log = None if starts_directory is None else StartLog(starts_directory)
    while True:
        try:
            message = inbox.receive()
        except (EOFError, OSError):
            return  # The supervisor is gone.
        if type(message) is Stop:
            for queue in loaded_queues():
                try:
                    queue.run_event("worker_shutdown")
                except Exception:
                    log.exception("a worker_shutdown handler failed")
            return
        if type(message) is not Run:
            continue
        job_id, token, attempt, task_name, payload, labels, seq = message
        if not inbox.start(seq):
            continue  # Given back before it started.
        if start_log is not None:
            start_log.started(job_id, token)
        try:
            outcome: tuple[Any, ...] = runner.run(job_id, token, attempt, task_name, payload, labels)
        except BaseException as exc:  # Raised outside the task's own frames: still the job's outcome.
            captured = capture(exc, sealer_of(REGISTRY.find(task_name, scope)))
            outcome = Failed(job_id, token, captured, True, None)
        leftovers.after_job(task_name, scope)
        try:
            inbox.send(outcome)
        except OSError:
            return  # The supervisor is gone.
