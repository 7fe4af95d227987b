"""The worker process: runs one job at a time for its supervisor.

A worker is started by the supervisor with spawn or forkserver (never plain
fork: the supervisor is multi-threaded). It never opens the database; it only
talks to its supervisor over its own pipe::

    supervisor ── ("run", job_id, token, attempt, task_name, payload, labels) ──▶ worker
    supervisor ── ("drop", job_id, token) ──▶ worker (give back a job sent ahead, if not started)
    supervisor ── ("stop",) ──▶ worker (runs worker_shutdown handlers, exits)
    supervisor ◀── ("ready", pid) | ("startup_error", CapturedError)
                   | ("progress", job_id, token, json)            (any number, while running)
                   | ("done", job_id, token, result, usage)
                   | ("failed", job_id, token, CapturedError, retryable, usage)
                   | ("cancelled", job_id, token, usage)          (cooperative cancel)
                   | ("requeue", job_id, token)
                   | ("dropped", job_id, token)  ─────────────────── worker

A busy worker may be sent its next ``run`` while its current job runs; the
message waits in the pipe. A ``drop`` asks for such a job back (it was
cancelled, the supervisor stops, or another worker is idle): SIGUSR2 follows
it, and the handler reads the pipe between two bytecodes of the running task
and answers ``dropped`` for a job it has not started. Before it starts a job,
the worker also reads whatever else has arrived, so a drop is seen even when
the signal was not handled (a task inside a long C call). A ``drop`` of a job
already started or finished is ignored.

It leads its own process group, so that a hard kill (``killpg``) also takes
the processes the task started. It dies with its supervisor: the supervisor's
guardian process kills its group (see ``_guardian.py``), the kernel sends it
SIGKILL when its parent goes (``PR_SET_PDEATHSIG``), and an idle worker also
exits at end-of-file on its pipe. SIGUSR1 from the supervisor means "a cancel
was requested" (tasks with ``cancel_grace`` see it in ``ctx.check_cancelled()``);
SIGUSR2 means "read your pipe" (a drop); tasks must leave both signals alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib
import inspect
import json
import logging
import os
import pickle
import select
import signal
import sys
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import context, serialization
from ._start_marks import StartLog
from .context import CancelFlag, JobContext, RequeueRequested
from .errors import (
    JobCancelledError,
    MiddlewareError,
    PluginTriggerError,
    RejectedError,
    SecurityError,
    SerializationError,
)
from .events import handler_name
from .remote_errors import CapturedError, capture
from .task import REGISTRY, TaskScope
from .usage import UsageMeter

if TYPE_CHECKING:
    from .queue import Queue
    from .task import Task

log = logging.getLogger("stoker.worker")

_PR_SET_PDEATHSIG = 1


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


def _on_cancel_signal(signum: int, frame: FrameType | None) -> None:
    CancelFlag.requested = True


class _Inbox:
    """This worker's end of its pipe, shared by the loop and the SIGUSR2 handler.

    The handler runs between two bytecodes of whatever the main thread does,
    possibly in the middle of a send or a receive of the loop: it then only
    notes that it must look, and the loop looks when that send or receive is
    over, so messages are never interleaved.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.backlog: deque[tuple[Any, ...]] = deque()
        """Messages read ahead of the loop (while looking for drops), in the order they came."""
        self._arrived = select.poll()
        self._arrived.register(conn.fileno(), select.POLLIN)
        self._in_pipe_call = False
        self._look_again = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._in_pipe_call:
            self._look_again = True
            return
        try:
            self.answer_drops()
        except (EOFError, OSError):
            pass  # The supervisor is gone; the loop finds out.

    def receive(self) -> tuple[Any, ...]:
        if self.backlog:
            return self.backlog.popleft()
        self._in_pipe_call = True
        try:
            message: tuple[Any, ...] = self.conn.recv()
        finally:
            self._in_pipe_call = False
        self._after_pipe_call()
        return message

    def send(self, message: tuple[Any, ...]) -> None:
        self._in_pipe_call = True
        try:
            self._write(message)
        finally:
            self._in_pipe_call = False
        self._after_pipe_call()

    def _write(self, message: tuple[Any, ...]) -> None:
        # Messages hold only plain values (see _channel.py): the standard
        # pickler takes them for less than the new ForkingPickler, with its
        # copy of the reducers, that Connection.send makes for each.
        self.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def _after_pipe_call(self) -> None:
        if self._look_again:
            self.answer_drops()

    def answer_drops(self) -> None:
        """Read what has arrived; give back every job that a drop asks for and that is still waiting."""
        self._look_again = False
        self._in_pipe_call = True
        try:
            while self._arrived.poll(0):
                self.backlog.append(self.conn.recv())
            for message in [m for m in self.backlog if m[0] == "drop"]:
                _, job_id, token = message
                waiting = [m for m in self.backlog if m[0] == "run" and m[1] == job_id and m[2] == token]
                self.backlog.remove(message)
                if waiting:
                    self.backlog.remove(waiting[0])
                    self._write(("dropped", job_id, token))
        finally:
            self._in_pipe_call = False


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
    ``_start_marks``).
    """
    os.setpgrp()
    _die_with_parent()
    if not _supervisor_alive(supervisor_pid):
        os._exit(0)
    # Ctrl-C in a terminal reaches the supervisor's process group only; the
    # supervisor decides what happens to running jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_cancel_signal)
    try:
        for module in task_modules:
            importlib.import_module(module)
        if "stoker.executor" in task_modules:
            from .executor import register_in_worker

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
            os._exit(1)
    # What start-up loaded (modules, the task's globals) lives as long as the
    # process: moved out of the collector's reach, it is not traversed again by
    # every full collection that the tasks' allocations trigger.
    gc.freeze()
    # Before "ready": the supervisor may signal a worker from then on.
    inbox = _Inbox(conn)
    signal.signal(signal.SIGUSR2, inbox.on_signal)
    # A task blocked in a system call of C code is not interrupted by it (the
    # call restarts); the handler runs when the task is back in Python.
    signal.siginterrupt(signal.SIGUSR2, False)
    try:
        conn.send(("ready", os.getpid()))
    except OSError:
        os._exit(0)  # The supervisor went away while this worker started.
    runner = Runner(inbox.send, scope)
    start_log = None if starts_directory is None else StartLog(starts_directory)
    while True:
        try:
            message = inbox.receive()
            kind = message[0]
            if kind == "run":
                # A drop of this job sent while it waited in the pipe is in
                # the pipe by now, even if its signal was missed: look first.
                inbox.backlog.appendleft(message)
                inbox.answer_drops()
                if not inbox.backlog or inbox.backlog[0] is not message:
                    continue  # Given back.
                inbox.backlog.popleft()
        except (EOFError, OSError):
            return  # The supervisor is gone.
        if kind == "stop":
            for queue in loaded_queues():
                try:
                    queue.run_event("worker_shutdown")
                except Exception:
                    log.exception("a worker_shutdown handler failed")
            return
        if kind == "drop":
            continue  # Of a job that already ran: nothing to give back.
        _, job_id, token, attempt, task_name, payload, labels = message
        if start_log is not None:
            start_log.started(job_id, token)
        try:
            outcome = runner.run(job_id, token, attempt, task_name, payload, labels)
        except BaseException as exc:  # Raised outside the task's own frames: still the job's outcome.
            outcome = ("failed", job_id, token, capture(exc, _sealer(REGISTRY.get(task_name))), True, None)
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
            args, kwargs = serialization.loads(queue._unseal(payload, job_id=job_id, what="payload"))
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
        for hook in queue._success_hooks:
            _call_hook(hook, task_name, args, kwargs, value)
        if not task.options_.store_result:
            return ("done", job_id, token, None, meter.json())
        try:
            result = queue._seal(serialization.dumps(value))
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
        for middleware in queue._middlewares:
            _stage(middleware, "pre_execute", ctx, ctx, args, kwargs)
        try:
            value = task.func(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._event_loop().run_until_complete(value)
        except PluginTriggerError as trigger:
            value = self._plugin_result(task, trigger, args, kwargs)
        for middleware in queue._middlewares:
            _stage(middleware, "post_execute", ctx, ctx, value)
        return value

    def _plugin_result(
        self, task: Task[Any, Any], trigger: PluginTriggerError, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        for handler in task.queue._plugin_handlers:
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
        for middleware in task.queue._middlewares:
            try:
                middleware.on_error(ctx, exc)
            except Exception:
                log.exception(
                    "middleware %s.on_error raised for job %s", handler_name(middleware), ctx.job_id
                )
        for hook in task.queue._failure_hooks:
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
        return task.queue._seal
    if any(queue._secret is not None for queue in loaded_queues()):
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
