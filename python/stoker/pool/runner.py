"""One attempt of a job, run in this process: the Runner.

Worker processes use it (``worker.py``), and so does test mode (``eager.py``),
so that both run a task the same way: its context, middlewares, hooks, plugin
handlers and retry filters. It answers each attempt with its outcome, one of
the messages of ``protocol.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._base import serialization
from .._base.remote_errors import CapturedError, capture
from .._base.usage import UsageMeter
from ..client import context
from ..client.context import CancelFlag, JobContext, RequeueRequested
from ..client.events import handler_name
from ..client.registry import REGISTRY, TaskScope
from ..errors import (
    JobCancelledError,
    MiddlewareError,
    PluginTriggerError,
    RejectedError,
    SecurityError,
    SerializationError,
)
from .protocol import Cancelled, Done, Failed, Outcome, Progress, Requeue

if TYPE_CHECKING:
    from ..client.queue import Queue
    from ..client.task import Task

log = logging.getLogger("stoker.worker")


def loaded_queues() -> list[Queue]:
    """The queues whose tasks this process has registered."""
    return REGISTRY.queues()


class Runner:
    """Runs jobs in this process and describes each outcome as a message.

    Worker processes use it, and so does test mode, so that both run a task
    the same way: context, middlewares, hooks, plugin handlers, retry filters.
    """

    def __init__(self, report: Callable[[tuple[Any, ...]], None], scope: TaskScope | None = None) -> None:
        self._report = report
        """Where the messages a job sends while it runs go (``Progress``)."""
        self._scope = scope
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(
        self, job_id: int, token: int, attempt: int, task_name: str, payload: bytes, labels: str | None
    ) -> Outcome:
        """Run one attempt; its outcome, as the message that reports it."""
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
            report=self._relay,
        )
        entered = context.enter(ctx)
        try:
            value = self._execute(task, ctx, args, kwargs)
        except RequeueRequested:
            return Requeue(job_id, token)
        except BaseException as exc:
            try:
                if isinstance(exc, JobCancelledError) and CancelFlag.requested:
                    return Cancelled(job_id, token, meter.json())
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
            return Done(job_id, token, None, meter.json())
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
        return Done(job_id, token, result, meter.json())

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
    ) -> Failed:
        captured: CapturedError = capture(exc, sealer_of(task))
        return Failed(job_id, token, captured, retryable, meter.json())

    def _relay(self, message: tuple[Any, ...]) -> None:
        """A report of the job's context (``ctx.progress()``), as a protocol message.

        The context speaks in tagged tuples (``("progress", job_id, token,
        json)``); anything else it sends goes on as it is, and the supervisor
        refuses it as a message it cannot act on.
        """
        if len(message) == 4 and message[0] == "progress":
            self._report(Progress(message[1], message[2], message[3]))
        else:
            self._report(message)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop


def sealer_of(task: Task[Any, Any] | None) -> Callable[[bytes], bytes] | None:
    """How the pickled exception of a job of ``task`` is signed (None: its queue does not sign)."""
    if task is not None:
        return task.queue.sealer.seal
    if any(queue.sealer.signs for queue in loaded_queues()):
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
