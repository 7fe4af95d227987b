"""The worker process: runs one job at a time for its supervisor.

A worker is started by the supervisor with spawn or forkserver (never plain
fork: the supervisor is multi-threaded). It never opens the database; it only
talks to its supervisor over its own two pipes::

    supervisor ── ("run", job_id, token, attempt, task_name, payload, labels, seq) ──▶ worker
    supervisor ── ("stop",) ──▶ worker (runs worker_shutdown handlers, exits)
    supervisor ── drop pipe: (seq, job_id, token) ──▶ worker (give back a job sent ahead, if not started)
    supervisor ◀── ("ready", pid) | ("startup_error", CapturedError)
                   | ("progress", job_id, token, json)            (any number, while running)
                   | ("done", job_id, token, result, usage)
                   | ("failed", job_id, token, CapturedError, retryable, usage)
                   | ("cancelled", job_id, token, usage)          (cooperative cancel)
                   | ("requeue", job_id, token)
                   | ("dropped", job_id, token)  ─────────────────── worker

A busy worker may be sent its next ``run`` while its current job runs; the
message waits in the pipe. ``seq`` numbers the runs sent to this worker, in
order, and jobs start in that order. A take-back of such a job (it was
cancelled, the supervisor stops, or another worker is idle) comes on a second
pipe, which a thread of the worker reads at any time, while a task runs too,
without a signal: the running task is never interrupted, not even in a
system call of its C code. The thread answers ``dropped`` for a job that has
not started, and the main thread skips it when it comes to it; a take-back of
a job already started or finished is ignored.

Each worker is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process a
task starts stays in the worker's tree even if its parent dies (a
double-forked daemon) or it leaves the session (``setsid``), so every kill of
the worker (hard timeout, cancel, memory limit, drain, the supervisor's
death) reaches it (``_guardian.kill_tree``). When a job ends, the processes
its task left running are killed before its outcome is sent, unless the task
has ``keep_children=True``; processes started by ``worker_startup`` handlers
and kept ones live until the worker exits, which kills everything left.

It also leads its own process group. It dies with its supervisor: the
supervisor's guardian process kills its tree (see ``_guardian.py``); the
kernel stops it when its parent goes (``PR_SET_PDEATHSIG``: SIGSTOP when
the parent is the supervisor, so that its tree stays whole for the guardian
to kill, SIGKILL when it is the fork server); and an idle worker also exits
at end-of-file on its pipe. SIGUSR1 from the supervisor means "a cancel was
requested" (tasks with ``cancel_grace`` see it in ``ctx.check_cancelled()``);
tasks must leave it alone.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import json
import logging
import os
import pickle
import signal
import struct
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._base import serialization
from .._base.remote_errors import CapturedError, capture
from .._base.usage import UsageMeter
from ..client import context
from ..client.context import CancelFlag, JobContext, RequeueRequested
from ..client.events import handler_name
from ..client.task import REGISTRY, TaskScope
from ..errors import (
    JobCancelledError,
    MiddlewareError,
    PluginTriggerError,
    RejectedError,
    SecurityError,
    SerializationError,
)
from .guardian import PR_SET_PDEATHSIG, become_subreaper, children, is_running, kill_descendants, prctl
from .start_marks import StartLog

if TYPE_CHECKING:
    from ..client.queue import Queue
    from ..client.task import Task

log = logging.getLogger("stoker.worker")

#: A take-back on the drop pipe: the job's ``seq`` (its place among the runs
#: sent to this worker), its id and its token.
DROP_FRAME = struct.Struct("!qqq")


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

    def receive(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = self.conn.recv()
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
        self.send(("dropped", job_id, token))
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


def loaded_queues() -> list[Queue]:
    """The queues whose tasks this process has registered."""
    return REGISTRY.queues()


def worker_main(
    conn: Connection,
    supervisor_pid: int,
    task_modules: list[str],
    executor_secret: bytes | None = None,
    scope: TaskScope | None = None,
    initializer: bytes | None = None,
    starts_directory: str | None = None,
    drops: Connection | None = None,
) -> None:
    """Entry point of a worker process.

    ``executor_secret`` is the signing secret of the supervisor's queue when
    it runs an Executor's calls (their task is registered here, not by a
    module of the application that would carry the secret). ``scope`` says
    which tasks the supervisor's jobs name: task names are per database (see
    ``task.TaskRegistry``). ``initializer`` is the pickled ``(callable, args)``
    of the supervisor's ``initializer`` option, called once after the imports,
    before the ``worker_startup`` handlers; if it raises, the worker fails to
    start. Each job is recorded in ``starts_directory`` before it starts (see
    ``_start_marks``). ``drops`` is the read end of the pipe of take-backs.
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
        _serve(conn, drops, task_modules, executor_secret, leftovers, scope, initializer, starts_directory)
    finally:
        leftovers.kill_all()


def _serve(
    conn: Connection,
    drops: Connection | None,
    task_modules: list[str],
    executor_secret: bytes | None,
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
        if "stoker.executor" in task_modules:
            from ..executor import register_in_worker

            register_in_worker(executor_secret)
        if initializer is not None:
            initialize, initargs = serialization.loads(initializer)
            initialize(*initargs)
        for queue in loaded_queues():
            queue.run_event("worker_startup")
    except BaseException as exc:
        try:
            conn.send(("startup_error", capture(exc)))
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
        inbox.send(("ready", os.getpid()))
    except OSError:
        return  # The supervisor went away while this worker started.
    runner = Runner(inbox.send, scope)
    start_log = None if starts_directory is None else StartLog(starts_directory)
    while True:
        try:
            message = inbox.receive()
        except (EOFError, OSError):
            return  # The supervisor is gone.
        kind = message[0]
        if kind == "stop":
            for queue in loaded_queues():
                try:
                    queue.run_event("worker_shutdown")
                except Exception:
                    log.exception("a worker_shutdown handler failed")
            return
        if kind != "run":
            continue
        _, job_id, token, attempt, task_name, payload, labels, seq = message
        if not inbox.start(seq):
            continue  # Given back before it started.
        if start_log is not None:
            start_log.started(job_id, token)
        try:
            outcome = runner.run(job_id, token, attempt, task_name, payload, labels)
        except BaseException as exc:  # Raised outside the task's own frames: still the job's outcome.
            outcome = (
                "failed",
                job_id,
                token,
                capture(exc, _sealer(REGISTRY.find(task_name, scope))),
                True,
                None,
            )
        leftovers.after_job(task_name, scope)
        try:
            inbox.send(outcome)
        except OSError:
            return  # The supervisor is gone.


class Runner:
    """Runs jobs in this process and describes each outcome as a message.

    Worker processes use it, and so does test mode, so that both run a task
    the same way: context, middlewares, hooks, plugin handlers, retry filters.
    """

    def __init__(self, report: Callable[[tuple[Any, ...]], None], scope: TaskScope | None = None) -> None:
        self._report = report
        self._scope = scope
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(
        self, job_id: int, token: int, attempt: int, task_name: str, payload: bytes, labels: str | None
    ) -> tuple[Any, ...]:
        CancelFlag.requested = False
        meter = UsageMeter()
        task = REGISTRY.find(task_name, self._scope)
        if task is None:
            unknown = REGISTRY.unknown(task_name, self._scope)
            return self._failed(job_id, token, unknown, meter, retryable=False, task=None)
        queue = task.queue
        try:
            args, kwargs = serialization.loads(queue.sealer.unseal(payload, job_id=job_id, what="payload"))
        except SecurityError as refused:
            return self._failed(job_id, token, refused, meter, retryable=False, task=task)
        except BaseException as exc:  # sys.exit() in a __reduce__ is a bad payload too.
            unpickling = SerializationError(
                f"the arguments of job {job_id} ({task_name}) cannot be unpickled: {exc!r}"
            )
            unpickling.__cause__ = exc
            return self._failed(job_id, token, unpickling, meter, retryable=False, task=task)
        ctx = JobContext(
            job_id=job_id,
            token=token,
            task_name=task_name,
            attempt=attempt,
            labels=json.loads(labels) if labels else {},
            soft_timeout=task.options_.soft_timeout,
            report=self._report,
        )
        entered = context.enter(ctx)
        try:
            value = self._execute(task, ctx, args, kwargs)
        except RequeueRequested:
            return ("requeue", job_id, token)
        except BaseException as exc:
            try:
                if isinstance(exc, JobCancelledError) and CancelFlag.requested:
                    return ("cancelled", job_id, token, meter.json())
                self._after_error(task, ctx, args, kwargs, exc)
                retryable = task.options_.should_retry(exc) and not isinstance(exc, RejectedError)
            except BaseException:
                # A hostile exception (a __class__ that raises, say) still ends
                # its attempt as an error, retried as the task's exceptions are.
                retryable = True
            return self._failed(job_id, token, exc, meter, retryable=retryable, task=task)
        finally:
            ctx.flush_progress()
            context.leave(entered)
        for hook in queue.hooks.on_success:
            _call_hook(hook, task_name, args, kwargs, value)
        if not task.options_.store_result:
            return ("done", job_id, token, None, meter.json())
        try:
            result = queue.sealer.seal(serialization.dumps(value))
        except BaseException as exc:  # sys.exit() in a __reduce__ is a bad result too.
            pickling = SerializationError(
                f"the result of job {job_id} ({task_name}) of type {type(value).__qualname__} "
                f"cannot be pickled: {exc!r}"
            )
            pickling.__cause__ = exc
            return self._failed(job_id, token, pickling, meter, retryable=True, task=task)
        if len(result) > serialization.STORED_VALUE_MAX_BYTES:
            too_large = SerializationError(
                f"the result of job {job_id} ({task_name}) is {len(result)} bytes pickled, more than "
                f"the {serialization.STORED_VALUE_MAX_BYTES} bytes stoker stores in one value"
            )
            return self._failed(job_id, token, too_large, meter, retryable=True, task=task)
        return ("done", job_id, token, result, meter.json())

    def _execute(
        self, task: Task[Any, Any], ctx: JobContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        queue = task.queue
        if task.context_parameter is not None:
            kwargs = {**kwargs, task.context_parameter: ctx}
        for middleware in queue.hooks.middlewares:
            _stage(middleware, "pre_execute", ctx, ctx, args, kwargs)
        try:
            value = task.func(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._event_loop().run_until_complete(value)
        except PluginTriggerError as trigger:
            value = self._plugin_result(task, trigger, args, kwargs)
        for middleware in queue.hooks.middlewares:
            _stage(middleware, "post_execute", ctx, ctx, value)
        return value

    def _plugin_result(
        self, task: Task[Any, Any], trigger: PluginTriggerError, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        for handler in task.queue.hooks.plugin_handlers:
            try:
                value = handler(trigger, task_name=task.name, args=args, kwargs=kwargs)
            except Exception as error:
                raise MiddlewareError(
                    f"plugin handler {handler_name(handler)} raised {error!r} for job {task.name}"
                ) from error
            if inspect.isawaitable(value):
                value = self._event_loop().run_until_complete(value)
            if value is not None:
                return value
        raise trigger

    def _after_error(
        self,
        task: Task[Any, Any],
        ctx: JobContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException,
    ) -> None:
        for middleware in task.queue.hooks.middlewares:
            try:
                middleware.on_error(ctx, exc)
            except Exception:
                log.exception(
                    "middleware %s.on_error raised for job %s", handler_name(middleware), ctx.job_id
                )
        for hook in task.queue.hooks.on_failure:
            _call_hook(hook, task.name, args, kwargs, exc)

    def _failed(
        self,
        job_id: int,
        token: int,
        exc: BaseException,
        meter: UsageMeter,
        *,
        retryable: bool,
        task: Task[Any, Any] | None,
    ) -> tuple[Any, ...]:
        captured: CapturedError = capture(exc, _sealer(task))
        return ("failed", job_id, token, captured, retryable, meter.json())

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop


def _sealer(task: Task[Any, Any] | None) -> Callable[[bytes], bytes] | None:
    """How the pickled exception of a job of ``task`` is signed (None: its queue does not sign)."""
    if task is not None:
        return task.queue.sealer.seal
    if any(queue.sealer.secret is not None for queue in loaded_queues()):
        return _unsignable
    return None


def _unsignable(data: bytes) -> bytes:
    """The task is unknown here, so is the secret its queue signs with: the
    error record is stored without its pickle rather than with an unsigned one."""
    raise SecurityError(None, "error record")


def _stage(middleware: object, stage: str, ctx: JobContext, *args: Any) -> None:
    """Run one middleware stage; a raise becomes a MiddlewareError naming it."""
    try:
        getattr(middleware, stage)(*args)
    except Exception as error:
        raise MiddlewareError(
            f"middleware {handler_name(middleware)}.{stage} raised {error!r} for job {ctx.job_id}",
            job_id=ctx.job_id,
            attempt=ctx.attempt,
        ) from error


def _call_hook(hook: Callable[..., Any], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("hook %s raised", handler_name(hook))
