"""Tasks: decorated functions, their options, and per-call overrides.

``@queue.task(...)`` wraps a function in a :class:`Task`. Calling the task runs
the function here and now; ``task.delay(...)`` stores a job for the worker pool;
``task.options(...)`` returns a :class:`Sender` that overrides options for the
calls it sends.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from .._base.bounds import (
    INT64_MIN,
    MAX_MEMORY_MB,
    check_int,
    check_number,
    check_seconds,
    check_timestamp,
)
from .._base.serialization import dumps_call, positional_args
from .._core import NewJob
from ..errors import InvalidOptionError, TaskRegisteredTwiceError, UnknownTaskError
from ..flow.limits import (
    CircuitBreaker,
    check_when_limited,
    ensure_limits_pushed,
    unique_key_of,
    validate_flow_options,
)
from ..flow.schedule import Schedulable

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue

P = ParamSpec("P")
R = TypeVar("R")

ExceptionTypes = tuple[type[BaseException], ...]

#: Default bound on retries after an exception or a timeout.
DEFAULT_MAX_RETRIES = 3
#: Default bound on redeliveries after the worker was lost (crash, kill,
#: expired lease). Kept low on purpose: a job that crashes its worker is most
#: likely to crash the next one too, and each crash costs a process start.
DEFAULT_MAX_CRASHES = 1
#: Default delay before the first retry; it doubles with every failure.
DEFAULT_RETRY_BACKOFF = 1.0
#: Default upper bound of the retry delay.
DEFAULT_RETRY_BACKOFF_MAX = 300.0
#: Default random reduction of each retry delay (0.2 = up to 20% shorter), so
#: that jobs which failed together do not all retry at the same instant.
DEFAULT_RETRY_JITTER = 0.2


@dataclass(frozen=True)
class TaskOptions:
    """How the jobs of a task are queued, retried and limited."""

    name: str
    queue: str = "default"
    priority: int = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    max_crashes: int = DEFAULT_MAX_CRASHES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: float = DEFAULT_RETRY_JITTER
    retry_on: ExceptionTypes = ()
    dont_retry_on: ExceptionTypes = ()
    timeout: float | None = None
    result_ttl: float | None = None
    soft_timeout: float | None = None
    cancel_grace: float = 0.0
    memory_limit_mb: float | None = None
    store_result: bool = True
    keep_children: bool = False
    """Leave the processes the task started running when its job ends (they
    end with the worker); by default they are killed before the outcome is sent."""
    # Flow control (see flow.py): enforced by the engine across all supervisors.
    rate_limit: str | None = None
    concurrency: int | None = None
    circuit_breaker: CircuitBreaker | None = None
    when_limited: str = "wait"
    unique: bool = False
    expires: float | None = None

    def validated(self) -> TaskOptions:
        """Return self, or raise InvalidOptionError naming the first wrong option and its range.

        The ranges are the engine's (see ``_bounds.py``): a value it cannot
        store is refused here, at the decorator or ``options()`` that gave it,
        rather than at every send.
        """
        _check_name("name", self.name)
        _check_name("queue", self.queue)
        check_int("priority", self.priority, low=INT64_MIN)
        check_int("max_retries", self.max_retries, low=0)
        check_int("max_crashes", self.max_crashes, low=0)
        for option in ("retry_backoff", "retry_backoff_max"):
            check_seconds(option, getattr(self, option), allow_zero=True)
        if self.retry_backoff > self.retry_backoff_max:
            raise InvalidOptionError(
                f"retry_backoff ({self.retry_backoff!r}) exceeds "
                f"retry_backoff_max ({self.retry_backoff_max!r})"
            )
        check_number("retry_jitter", self.retry_jitter, low=0, high=1)
        if self.timeout is not None:
            check_seconds("timeout", self.timeout, allow_zero=False)
        if self.result_ttl is not None:
            check_seconds("result_ttl", self.result_ttl, allow_zero=True)
        if self.soft_timeout is not None:
            check_seconds("soft_timeout", self.soft_timeout, allow_zero=False)
        check_seconds("cancel_grace", self.cancel_grace, allow_zero=True)
        if self.memory_limit_mb is not None:
            check_number("memory_limit_mb", self.memory_limit_mb, low=1, high=MAX_MEMORY_MB, unit="MiB")
        if not isinstance(self.store_result, bool):
            raise InvalidOptionError(f"store_result must be a bool, got {self.store_result!r}")
        if not isinstance(self.keep_children, bool):
            raise InvalidOptionError(f"keep_children must be a bool, got {self.keep_children!r}")
        for option in ("retry_on", "dont_retry_on"):
            for cls in getattr(self, option):
                if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                    raise InvalidOptionError(f"{option} must hold exception classes, got {cls!r}")
        if self.expires is not None:
            check_seconds("expires", self.expires, allow_zero=False)
        validate_flow_options(self)
        return self

    def should_retry(self, exc: BaseException) -> bool:
        """Whether this exception may be retried (the retry count aside)."""
        if self.dont_retry_on and isinstance(exc, self.dont_retry_on):
            return False
        if self.retry_on:
            return isinstance(exc, self.retry_on)
        return True


def _check_name(option: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(f"{option} must be a non-empty str, got {value!r}")


def as_exception_types(option: str, value: object) -> ExceptionTypes:
    """Accept one exception class or an iterable of them."""
    if value is None:
        return ()
    if isinstance(value, type):
        return (value,)
    try:
        return tuple(cast("Iterable[type[BaseException]]", value))
    except TypeError:
        raise InvalidOptionError(
            f"{option} must be an exception class or a list of them, got {value!r}"
        ) from None


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


@dataclass(frozen=True)
class CallOptions:
    """Per-call overrides: where and when one call runs."""

    priority: int | None = None
    queue: str | None = None
    delay: float | None = None
    eta: float | None = None
    timeout: float | None = None
    max_retries: int | None = None
    labels: dict[str, Any] | None = None
    """Reach the task's context and the job's outcome (and label a schedule made with these options)."""
    unique_key: str | None = None
    depends_on: tuple[Job, ...] = ()


#: The call options of a plain send (``delay``, ``map``): nothing overridden.
#: Frozen and empty, so every plain send shares it.
DEFAULT_CALL = CallOptions()


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
        # The options the plain template was made from, and the template.
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
        return self.queue._send_plain(self, args, kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``delay`` for async code: the database write runs off the event loop."""
        return await asyncio.to_thread(
            self.queue._send_call, self, self.options_, CallOptions(), args, kwargs
        )

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
            _check_labels(labels)
        if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
            raise InvalidOptionError(f"unique_key must be a non-empty str, got {unique_key!r}")
        if when_limited is not None:
            check_when_limited(when_limited)
        deps = tuple(depends_on or ())
        for dep in deps:
            if not hasattr(dep, "id") or not isinstance(dep.id, int) or not hasattr(dep, "queue"):
                raise InvalidOptionError(f"depends_on must hold Jobs, got {dep!r}")
            if not self.queue._same_database(dep.queue):
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
        return self.queue._send_plain_many(self, calls)

    def _plain_template(self) -> NewJob | None:
        """The job a plain send of this task stores, but for its payload.

        None when such a send has work to do per call (a uniqueness key from
        the arguments, a rate-limit check at send). The template is made once
        per options object: every plain send would build the same one.
        """
        cached = self._plain
        if cached is None or cached[0] is not self.options_:
            options = self.options_
            template = None
            if not options.unique and options.when_limited != "fail":
                template = self._new_job(DEFAULT_CALL, (), {}, options, None)
            cached = self._plain = (options, template)
        return cached[1]

    def _new_job(
        self,
        call: CallOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions | None = None,
        labels: dict[str, Any] | None = None,
    ) -> NewJob:
        opts = options or self.options_
        arguments = dumps_call(self.name, self.func, args, kwargs)
        # The uniqueness key hashes the arguments, not the signed bytes.
        unique_key = call.unique_key or (unique_key_of(opts.name, arguments) if opts.unique else None)
        payload = self.queue.sealer.seal(arguments)
        if opts.when_limited == "fail":
            ensure_limits_pushed(self.queue, self)
        return NewJob(
            opts.name,
            payload,
            queue=opts.queue,
            priority=opts.priority,
            max_retries=opts.max_retries,
            max_crashes=opts.max_crashes,
            backoff_base_ms=round(opts.retry_backoff * 1000),
            backoff_cap_ms=round(opts.retry_backoff_max * 1000),
            jitter=float(opts.retry_jitter),
            timeout_ms=_ms(opts.timeout),
            delay_ms=_ms(call.delay) or 0,
            eta_ms=_ms(call.eta),
            result_ttl_ms=_ms(opts.result_ttl),
            labels=json.dumps(labels, sort_keys=True) if labels else None,
            unique_key=unique_key,
            expires_after_ms=_ms(opts.expires),
            depends_on=[job.id for job in call.depends_on],
            fail_when_limited=opts.when_limited == "fail",
        )

    def _schedule_parts(self) -> tuple[Task[Any, Any], TaskOptions, CallOptions]:
        return self, self.options_, CallOptions()


class Sender(Schedulable, Generic[P, R]):
    """Sends calls of a task with per-call options (see :meth:`Task.options`)."""

    def __init__(self, task: Task[P, R], options: TaskOptions, call: CallOptions) -> None:
        self.task = task
        self._options = options
        self._call = call

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Send one call with this sender's options."""
        return self.task.queue._send_call(self.task, self._options, self._call, args, kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``delay`` for async code."""
        return await asyncio.to_thread(
            self.task.queue._send_call, self.task, self._options, self._call, args, kwargs
        )

    def map(self, calls: list[tuple[Any, ...]]) -> list[Job]:
        """Send many calls with this sender's options in one transaction."""
        return self.task.queue._send_many(
            [
                (self.task, self._options, self._call, positional_args(self.task.name, index, a), {})
                for index, a in enumerate(calls)
            ]
        )

    def _schedule_parts(self) -> tuple[Task[Any, Any], TaskOptions, CallOptions]:
        return self.task, self._options, self._call


def _check_labels(labels: object) -> None:
    if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
        raise InvalidOptionError(f"labels must be a dict with str keys, got {labels!r}")
    try:
        json.dumps(labels)
    except (TypeError, ValueError) as error:
        raise InvalidOptionError(f"labels must be JSON-serialisable: {error}") from None


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


def function_id(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, the same in a script and in its workers (``__mp_main__``)."""
    module = getattr(func, "__module__", None) or "?"
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


@dataclass(frozen=True)
class TaskScope:
    """Which tasks a supervisor's jobs name: what its workers look a task up by.

    ``database`` is the supervisor's queue's ``_registry_key``; ``functions``
    the function (:func:`function_id`) of each task of that queue, by name,
    which finds the task in a worker even when no queue of that database was
    made there (a test's ``Queue(path).include(app.queue)``: the worker
    imports only ``app``).
    """

    database: str
    functions: dict[str, str]

    @classmethod
    def of(cls, queue: Queue) -> TaskScope:
        return cls(queue._registry_key, {name: function_id(t.func) for name, t in queue.tasks.items()})


class TaskRegistry(Mapping[str, "Task[Any, Any]"]):
    """Every task registered in this process, by database and by name.

    Task names are per database: queues of different databases may each have
    a task ``t``, and they may be different functions. Within one database a
    name means one function, whichever queue object registered it: a job's
    row names its task only, and a worker of that database finds the task by
    that name among the tasks of its supervisor's database (:class:`TaskScope`).

    As a mapping, it holds the task registered last under each name, of any
    database. It keeps those alive; the tasks of each database are held
    weakly, so a queue dropped (an Executor's temporary one, say) does not
    stay in memory, with its database connection, for ever.
    """

    def __init__(self) -> None:
        self._by_database: dict[str, weakref.WeakValueDictionary[str, Task[Any, Any]]] = {}
        self._latest: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> None:
        """Add ``task``; TaskRegisteredTwiceError if its database has another function under its name."""
        tasks = self._by_database.setdefault(task.queue._registry_key, weakref.WeakValueDictionary())
        existing = tasks.get(task.name)
        if existing is not None and function_id(existing.func) != function_id(task.func):
            raise TaskRegisteredTwiceError(
                task.name, function_id(existing.func), function_id(task.func), database=existing.queue.path
            )
        tasks[task.name] = task
        self._latest[task.name] = task

    def find(self, name: str, scope: TaskScope | None = None) -> Task[Any, Any] | None:
        """The task of the jobs named ``name`` of ``scope``'s supervisor; None if there is none here.

        First a task of the supervisor's database; then one of any database
        that is the function the supervisor's queue registered under that
        name; without a scope (or a name the supervisor's queue does not
        have), the task of that name if every database here means the same
        function by it.
        """
        function = None
        if scope is not None:
            tasks = self._by_database.get(scope.database)
            task = tasks.get(name) if tasks is not None else None
            if task is not None:
                return task
            function = scope.functions.get(name)
        latest = self._latest.get(name)
        if function is not None:
            if latest is not None and function_id(latest.func) == function:
                return latest
            return next((t for t in self._named(name) if function_id(t.func) == function), None)
        if len({function_id(t.func) for t in self._named(name)}) > 1:
            return None
        return latest

    def unknown(self, name: str, scope: TaskScope | None = None) -> UnknownTaskError:
        """The error for a job whose task :meth:`find` does not find, saying why."""
        functions = sorted({function_id(t.func) for t in self._named(name)})
        if len(functions) > 1:
            where = f" and by none of this worker's database ({scope.database})" if scope else ""
            return UnknownTaskError(
                name,
                f"task {name!r} is registered here by queues of other databases, as different "
                f"functions ({', '.join(functions)}){where}: register it on a queue of this database",
            )
        return UnknownTaskError(name)

    def queues(self) -> list[Queue]:
        """The queues of the registered tasks, each once, in the order their databases came."""
        queues: list[Queue] = []
        for task in [*(t for tasks in self._by_database.values() for t in tasks.values()), *self.values()]:
            if all(task.queue is not q for q in queues):
                queues.append(task.queue)
        return queues

    def _named(self, name: str) -> list[Task[Any, Any]]:
        """The tasks of every database registered under ``name``."""
        return [task for tasks in self._by_database.values() if (task := tasks.get(name)) is not None]

    def __getitem__(self, name: str) -> Task[Any, Any]:
        return self._latest[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


#: Every task registered in this process. A worker process looks the task of
#: each job up here, by its name and its supervisor's TaskScope, after
#: importing the modules that define them.
REGISTRY = TaskRegistry()
