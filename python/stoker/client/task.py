"""Tasks: decorated functions, and senders of their calls with per-call options.

``@queue.task(...)`` wraps a function in a :class:`Task`. Calling the task runs
the function here and now; ``task.delay(...)`` stores a job for the worker pool
(through ``send.py``); ``task.options(...)`` returns a :class:`Sender` that
overrides options for the calls it sends. The options themselves are in
``options.py``, the registry of every task in ``registry.py``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .._base.bounds import check_seconds, check_timestamp
from .._base.serialization import positional_args
from ..errors import InvalidOptionError
from ..flow.limits import check_when_limited
from ..flow.schedule import Schedulable
from .options import CallOptions, TaskOptions, check_labels
from .send import scheduled_job, send_call, send_calls, send_plain, send_plain_many

if TYPE_CHECKING:
    from .._core import NewJob
    from .job import Job
    from .queue import Queue

P = ParamSpec("P")
R = TypeVar("R")


class Task(Schedulable, Generic[P, R]):
    """A function registered with a :class:`~stoker.Queue`.

    Call it to run the function in this process; ``delay`` to run it in the
    worker pool.
    """

    def __init__(self, queue: Queue, func: Callable[P, R], options: TaskOptions) -> None:
        self.queue = queue
        self.func = func
        self.options_ = options
        self.__wrapped__ = func
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", options.name)
        self.__qualname__ = getattr(func, "__qualname__", options.name)
        self.__module__ = func.__module__
        self.context_parameter = _context_parameter(func)
        # The options the plain template was made from, and the template:
        # kept by send.plain_template, which alone reads and writes it.
        self._plain: tuple[TaskOptions, NewJob | None] | None = None

    @property
    def name(self) -> str:
        return self.options_.name

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options_.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Send one call to the worker pool and return its :class:`~stoker.Job`."""
        return send_plain(self, args, kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``delay`` for async code: the database write runs off the event loop."""
        return await asyncio.to_thread(send_call, self, self.options_, CallOptions(), args, kwargs)

    def options(
        self,
        *,
        priority: int | None = None,
        queue: str | None = None,
        delay: float | None = None,
        eta: float | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        unique: bool | None = None,
        unique_key: str | None = None,
        expires: float | None = None,
        depends_on: Iterable[Job] | None = None,
        when_limited: str | None = None,
        labels: dict[str, Any] | None = None,
    ) -> Sender[P, R]:
        """Override options for the calls sent through the returned :class:`Sender`.

        ``delay`` is in seconds from now; ``eta`` a Unix timestamp in seconds;
        ``labels`` (JSON-serialisable values) reach the task's context and the
        job's outcome.
        ``unique_key`` (or ``unique=True``: the task name and a hash of the
        arguments) returns the live job with that key instead of a new one;
        ``expires`` (seconds) ends a job not started by then as ``expired``;
        ``depends_on`` makes the job wait until those jobs complete;
        ``when_limited="fail"`` makes a send over a rate limit or an open
        breaker raise instead of waiting.
        """
        if labels is not None:
            check_labels(labels)
        if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
            raise InvalidOptionError(f"unique_key must be a non-empty str, got {unique_key!r}")
        if when_limited is not None:
            check_when_limited(when_limited)
        deps = tuple(depends_on or ())
        for dep in deps:
            if not hasattr(dep, "id") or not isinstance(dep.id, int) or not hasattr(dep, "queue"):
                raise InvalidOptionError(f"depends_on must hold Jobs, got {dep!r}")
            if not self.queue.database.same_as(dep.queue.database):
                # A dependency is stored as a job id of this database: the id
                # of a job of another one would name an unrelated job here.
                raise InvalidOptionError(
                    f"depends_on: job {dep.id} is a job of {dep.queue.path!r}, not of "
                    f"{self.queue.path!r}, the database of task {self.name!r}; a job can only "
                    "depend on jobs of its own database"
                )
        call = CallOptions(
            priority,
            queue,
            delay,
            eta,
            timeout,
            max_retries,
            labels=labels,
            unique_key=unique_key,
            depends_on=deps,
        )
        merged = replace(
            self.options_,
            priority=self.options_.priority if priority is None else priority,
            queue=self.options_.queue if queue is None else queue,
            timeout=self.options_.timeout if timeout is None else timeout,
            max_retries=self.options_.max_retries if max_retries is None else max_retries,
            unique=self.options_.unique if unique is None else unique,
            expires=self.options_.expires if expires is None else expires,
            when_limited=self.options_.when_limited if when_limited is None else when_limited,
        ).validated()
        if delay is not None:
            check_seconds("delay", delay, allow_zero=True)
        if eta is not None:
            check_timestamp("eta", eta)
        if delay is not None and eta is not None:
            raise InvalidOptionError("give delay or eta, not both")
        return Sender(self, merged, call)

    def map(self, calls: list[tuple[Any, ...]]) -> list[Job]:
        """Send many calls (each a tuple of positional arguments) in one transaction."""
        return send_plain_many(self, calls)

    def _scheduled(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Queue, NewJob, dict[str, Any] | None]:
        return _scheduled(self, self.options_, CallOptions(), args, kwargs)


class Sender(Schedulable, Generic[P, R]):
    """Sends calls of a task with per-call options (see :meth:`Task.options`)."""

    def __init__(self, task: Task[P, R], options: TaskOptions, call: CallOptions) -> None:
        self.task = task
        self._options = options
        self._call = call

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Send one call with this sender's options."""
        return send_call(self.task, self._options, self._call, args, kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``delay`` for async code."""
        return await asyncio.to_thread(send_call, self.task, self._options, self._call, args, kwargs)

    def map(self, calls: list[tuple[Any, ...]]) -> list[Job]:
        """Send many calls with this sender's options in one transaction."""
        return send_calls(
            self.task.queue,
            [
                (self.task, self._options, self._call, positional_args(self.task.name, index, a), {})
                for index, a in enumerate(calls)
            ],
        )

    def _scheduled(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Queue, NewJob, dict[str, Any] | None]:
        return _scheduled(self.task, self._options, self._call, args, kwargs)


def _scheduled(
    task: Task[Any, Any],
    options: TaskOptions,
    call: CallOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Queue, NewJob, dict[str, Any] | None]:
    """The queue, job and labels of a schedule of ``task`` with these options."""
    if call.delay is not None or call.eta is not None or call.depends_on:
        raise InvalidOptionError("delay, eta and depends_on do not apply to a schedule")
    return task.queue, scheduled_job(task, options, call, args, kwargs), call.labels


def _context_parameter(func: Callable[..., Any]) -> str | None:
    """The name of the parameter annotated ``JobContext``, if the task asks for its context."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    for parameter in parameters:
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if name.rsplit(".", 1)[-1] == "JobContext":
            return parameter.name
    return None
