"""The user's entry point: a queue of jobs stored in one database.

:class:`Queue` is a facade. It registers tasks (``options.py``,
``registry.py``, ``task.py``) and holds what the other layers use of it:
``engine``, ``sealer``, ``hooks`` and ``database`` (``local.py``). Sending is
``send.py``, job handles ``job.py``, limits and schedules ``flow/``; the pool
(``start_worker``, ``run_worker``) and test mode are started from here.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .._base import signing
from .._base.bounds import INT64_MAX, INT64_MIN, check_int
from .._base.signing import Sealer
from .._core import Engine
from ..errors import InvalidOptionError, JobNotFoundError, StokerError, StorageError, UnknownTaskError
from ..flow import limits as _limits
from ..flow import schedule as _schedule
from ..flow.limits import CircuitBreaker, as_circuit_breaker
from .events import EVENTS, EventHandler, Hooks, Middleware, call_maybe_async, worker_state
from .job import AttemptError, Job, Outcome, retention_ended

# The names imported as themselves are re-exported: the pool and the executor
# import them from here.
from .local import Database, database_path, in_worker_process, refuse_main_reimport
from .options import (
    DEFAULT_MAX_CRASHES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_RETRY_JITTER,
    TaskOptions,
    as_exception_types,
)
from .registry import REGISTRY
from .task import Task

if TYPE_CHECKING:
    from .._core import JobRecord, LimitState
    from ..flow.schedule import Schedule, ScheduleSource
    from ..pool.supervisor import Supervisor, SupervisorThread

log = logging.getLogger("stoker.queue")

P = ParamSpec("P")
R = TypeVar("R")

#: The database file a ``Queue()`` uses when given no path: in the working directory.
DEFAULT_PATH = "stoker.db"

#: The queues of this process whose database is open: closed at exit, so that
#: the last connection to a SQLite file folds the write-ahead log into it and
#: removes the -wal and -shm files, and sends still in this process's send log
#: are stored.
_OPEN_QUEUES: weakref.WeakSet[Queue] = weakref.WeakSet()


def _close_queues_at_exit() -> None:
    for queue in list(_OPEN_QUEUES):
        try:
            queue.close()
        except StorageError as error:
            # The log stays; logged sends are stored by the next opener.
            log.warning("the database %r was not closed cleanly at exit: %s", queue.path, error)


# Registered at import, so it runs after the exit hooks of the pools and
# executors started later (atexit runs hooks last registered first).
atexit.register(_close_queues_at_exit)


class Queue:
    """Jobs, their tasks, and the pool that runs them, over one database.

    ``Queue("jobs.db")`` opens (or creates) the SQLite database; a file that is
    not a stoker database is refused here, with an error naming it. The path
    may be a str, bytes or an ``os.PathLike`` (``pathlib.Path``).
    ``Queue("postgresql://user@host/db")`` uses a PostgreSQL database instead,
    shared by the supervisors of many hosts.
    """

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes] = DEFAULT_PATH,
        *,
        secret: str | bytes | None = None,
        middlewares: Iterable[Middleware] = (),
    ) -> None:
        self.path = database_path(path)
        #: This process's side of the database: where its supervisors meet,
        #: how a send wakes them, test mode's outcomes.
        self.database = Database(self.path, id(self))
        self._tasks: dict[str, Task[Any, Any]] = {}
        #: Signs and checks every pickle this queue stores or reads.
        self.sealer = Sealer(signing.as_secret(secret))
        #: Middlewares and hooks, run by the workers around each job.
        self.hooks = Hooks()
        for middleware in middlewares:
            self.add_middleware(middleware)
        self._event_handlers: dict[str, list[EventHandler]] = {event: [] for event in EVENTS}
        self._engine_instance: Engine | None = None
        if not in_worker_process():
            self._engine_instance = Engine(self.path)
            _OPEN_QUEUES.add(self)

    def __repr__(self) -> str:
        return f"<Queue {self.path!r}>"

    def close(self) -> None:
        """Close this queue's connection to the database; later calls on it raise ``StorageError``.

        Sends this process logged are stored first. The last connection to a
        SQLite file folds the write-ahead log into it and removes the ``-wal``
        and ``-shm`` files. Every queue still open is closed at exit; closing
        twice does nothing. A pool serving the database keeps its own
        connection.
        """
        _OPEN_QUEUES.discard(self)
        if self._engine_instance is not None:
            self._engine_instance.close()

    @property
    def engine(self) -> Engine:
        if self._engine_instance is None:
            refuse_main_reimport("send jobs or read them")
            raise StokerError(
                "worker processes do not open the database; send jobs from the caller "
                "or from the supervisor's process"
            )
        return self._engine_instance

    # --- tasks ---------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_crashes: int = DEFAULT_MAX_CRASHES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        retry_jitter: float = DEFAULT_RETRY_JITTER,
        retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
        dont_retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
        timeout: float | None = None,
        result_ttl: float | None = None,
        soft_timeout: float | None = None,
        cancel_grace: float = 0.0,
        memory_limit_mb: float | None = None,
        store_result: bool = True,
        keep_children: bool = False,
        rate_limit: str | None = None,
        concurrency: int | None = None,
        circuit_breaker: CircuitBreaker | tuple[int, float, float] | None = None,
        when_limited: str = "wait",
        unique: bool = False,
        expires: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, func: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Register a function as a task of this queue (``@queue.task`` or ``@queue.task(...)``).

        Options: ``name`` (default ``module.qualname``), ``queue``, ``priority``
        (higher runs first), ``max_retries`` (after exceptions and timeouts),
        ``max_crashes`` (after the worker was lost), ``retry_backoff`` and
        ``retry_backoff_max`` (seconds), ``retry_jitter`` (0 to 1), ``retry_on``
        and ``dont_retry_on`` (exception classes), ``timeout`` (hard limit in
        seconds: the worker is killed), ``result_ttl`` (seconds a result is kept),
        ``soft_timeout`` (seconds, checked by ``ctx.check_timeout()``),
        ``cancel_grace`` (seconds a running task is told of a cancel before it
        is killed; 0 kills at once), ``memory_limit_mb`` (the worker is killed
        past it: :class:`~stoker.errors.MemoryLimitExceededError`),
        ``store_result`` (False: the job keeps no result), ``keep_children``
        (True: processes the task started and left running are not killed
        when its job ends, only when its worker exits). Flow control, enforced
        across every supervisor:
        ``rate_limit`` ("10/s", "100/m"), ``concurrency`` (running at once),
        ``circuit_breaker`` (:class:`~stoker.CircuitBreaker`), ``when_limited``
        ("wait", or "fail" to make sends raise), ``unique`` (a second send of the
        same arguments while the first is live returns it), ``expires`` (seconds
        until a job not started ends expired).
        """
        if func is not None:
            return self._register(func, options)

        def decorate(f: Callable[P, R]) -> Task[P, R]:
            return self._register(f, options)

        return decorate

    def _register(self, func: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        if not callable(func):
            raise InvalidOptionError(f"@task decorates a function, got {func!r}")
        known = set(TaskOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidOptionError(f"unknown task option(s): {', '.join(unknown)}")
        options = dict(options)
        options["retry_on"] = as_exception_types("retry_on", options.get("retry_on"))
        options["dont_retry_on"] = as_exception_types("dont_retry_on", options.get("dont_retry_on"))
        options["circuit_breaker"] = as_circuit_breaker(options.get("circuit_breaker"))
        name = options.pop("name", None) or default_task_name(func)
        task_options = TaskOptions(name=name, **options).validated()
        task: Task[Any, Any] = Task(self, func, task_options)
        REGISTRY.register(task)
        self._tasks[name] = task
        return task

    def include(self, other: Queue) -> None:
        """Register the tasks of another queue here too, with their options and extensions.

        One module can define its tasks (and their middlewares, event
        handlers, hooks and plugin handlers) once and send them to other
        databases: ``Queue(tmp_path / "jobs.db").include(app.queue)`` in a test.
        """
        for name, task in other._tasks.items():
            copy: Task[Any, Any] = Task(self, task.func, task.options_)
            # Registered for this database too: its workers then run the
            # task with this queue's secret and extensions.
            REGISTRY.register(copy)
            self._tasks[name] = copy
        self.hooks.middlewares.extend(m for m in other.hooks.middlewares if m not in self.hooks.middlewares)
        for event, handlers in other._event_handlers.items():
            self._event_handlers[event].extend(h for h in handlers if h not in self._event_handlers[event])
        for mine, theirs in (
            (self.hooks.on_success, other.hooks.on_success),
            (self.hooks.on_failure, other.hooks.on_failure),
            (self.hooks.plugin_handlers, other.hooks.plugin_handlers),
        ):
            mine.extend(h for h in theirs if h not in mine)

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks by name."""
        return dict(self._tasks)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``; ``UnknownTaskError`` if none."""
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(name) from None

    # --- sending ------------------------------------------------------------------

    def send(self, task_name: str, *args: Any, **kwargs: Any) -> Job:
        """Send a call of a task by its name (it must be registered here)."""
        return self.get_task(task_name).delay(*args, **kwargs)

    async def send_async(self, task_name: str, *args: Any, **kwargs: Any) -> Job:
        """``send`` for async code."""
        return await self.get_task(task_name).delay_async(*args, **kwargs)

    # --- middlewares, hooks, plugins ---------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a :class:`~stoker.client.events.Middleware`; they run in the order added."""
        if not isinstance(middleware, Middleware):
            raise InvalidOptionError(f"middlewares must be stoker.Middleware instances, got {middleware!r}")
        self.hooks.middlewares.append(middleware)

    @property
    def middlewares(self) -> list[Middleware]:
        return list(self.hooks.middlewares)

    def on_success(
        self, hook: Callable[[str, tuple[Any, ...], dict[str, Any], Any], Any]
    ) -> Callable[..., Any]:
        """Register ``hook(task_name, args, kwargs, result)``; it runs in the worker after a success."""
        self.hooks.on_success.append(hook)
        return hook

    def on_failure(
        self, hook: Callable[[str, tuple[Any, ...], dict[str, Any], BaseException], Any]
    ) -> Callable[..., Any]:
        """Register ``hook(task_name, args, kwargs, error)``; it runs in the worker after a failed attempt."""
        self.hooks.on_failure.append(hook)
        return hook

    def on_plugin_trigger(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``handler(error, *, task_name, args, kwargs)`` for ``ctx.plugin_error()``.

        Handlers run in the worker in the order registered; the first that
        returns something other than None supplies the job's result. With
        none, the :class:`~stoker.errors.PluginTriggerError` stands.
        """
        self.hooks.plugin_handlers.append(handler)
        return handler

    # --- events -------------------------------------------------------------------------

    def on_event(self, *events: str) -> Callable[[EventHandler], EventHandler]:
        """Decorator: ``@queue.on_event("worker_startup", ...)`` (see :mod:`stoker.client.events`)."""
        if not events:
            raise InvalidOptionError("on_event() needs at least one event name")

        def register(handler: EventHandler) -> EventHandler:
            for event in events:
                self.add_event_handler(event, handler)
            return handler

        return register

    def with_event_handlers(self, event: str, *handlers: EventHandler) -> Queue:
        """Add handlers for ``event`` and return the queue, for chaining."""
        for handler in handlers:
            self.add_event_handler(event, handler)
        return self

    def add_event_handler(self, event: str, handler: EventHandler) -> None:
        """Run ``handler(state)`` at ``event`` (see ``stoker.client.events``)."""
        if event not in self._event_handlers:
            raise InvalidOptionError(f"event must be one of {', '.join(EVENTS)}, got {event!r}")
        if not callable(handler):
            raise InvalidOptionError(f"an event handler must be callable, got {handler!r}")
        self._event_handlers[event].append(handler)

    def add_event_handlers(self, handlers: dict[str, EventHandler | Iterable[EventHandler]]) -> None:
        """Register many handlers at once: ``{event: handler or [handlers]}``."""
        for event, value in handlers.items():
            for handler in [value] if callable(value) else list(value):
                self.add_event_handler(event, handler)

    def run_event(self, event: str) -> None:
        """Run the handlers of ``event`` with this process's state, in order; the first error propagates."""
        for handler in self._event_handlers[event]:
            call_maybe_async(handler, worker_state())

    async def run_event_async(self, event: str) -> None:
        """``run_event`` from async code: async handlers are awaited on the running loop."""
        for handler in self._event_handlers[event]:
            value = handler(worker_state())
            if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                await value

    def startup(self) -> None:
        """Run the client_startup handlers (``with queue:`` does it for you)."""
        self.run_event("client_startup")

    def shutdown(self) -> None:
        """Run the client_shutdown handlers."""
        self.run_event("client_shutdown")

    def __enter__(self) -> Queue:  # noqa: PYI034 - a Queue is not meant to be subclassed
        self.startup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> Queue:  # noqa: PYI034 - as __enter__
        await self.run_event_async("client_startup")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.run_event_async("client_shutdown")

    # --- test mode -------------------------------------------------------------------------

    @contextmanager
    def test_mode(self) -> Iterator[list[Outcome]]:
        """Run every job sent inside the block at once, in this process, for unit tests.

        Jobs go to a private in-memory database, and run through the same
        code as in a worker (context, middlewares, hooks, retry filters; a
        retry runs at once, its backoff skipped by a manual clock). The list
        yielded gets one :class:`~stoker.client.job.Outcome` per job sent. Hard
        timeouts, crashes and memory limits need a real worker process and
        are not enforced here.
        """
        if self.database.test_outcomes is not None:
            raise StokerError("test_mode() is already active on this queue")
        saved = self._engine_instance
        self._engine_instance = Engine(":memory:", clock_ms=int(time.time() * 1000))
        results: list[Outcome] = []
        self.database.test_outcomes = results
        try:
            yield results
        finally:
            self.database.test_outcomes = None
            self._engine_instance = saved

    # --- inspection --------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        """A handle on an existing job; ``JobNotFoundError`` (a ``KeyError``) if none."""
        self.engine.status(_stored_id(job_id))
        return Job(self, job_id)

    def stats(self) -> dict[str, int]:
        """Job counts by status (pending, scheduled, running, complete, dead, cancelled, expired, waiting)."""
        return self.engine.stats()

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Jobs that failed for good, most recent first, with their last error."""
        letters = []
        check_int("limit", limit, low=0)
        check_int("offset", offset, low=0)
        now_ms = self.engine.now_ms()
        for record in self.engine.dead_letters(limit, offset):
            errors = self.engine.errors(record.id)
            if retention_ended(record, now_ms) is not None:
                errors = []  # Expired (result_ttl), whether purged yet or not.
            last = AttemptError.from_record(errors[-1], self) if errors else None
            letters.append(DeadLetter(Job(self, record.id), record, last))
        return letters

    def replay(self, job_id: int) -> Job:
        """Send a dead job again as a new job, with the same task, arguments and options."""
        job = Job(self, self.engine.replay(_stored_id(job_id)))
        self.database.wake()
        return job

    # --- flow control and schedules (flow/limits.py, flow/schedule.py) ---------------------

    def set_queue_rate_limit(self, queue_name: str, rate_limit: str | None) -> None:
        """Limit how fast the jobs of one queue start, across all tasks (None removes the limit).

        Stored in the database: it holds for every supervisor until changed.
        """
        _limits.set_queue_rate_limit(self.engine, queue_name, rate_limit)

    def limits(self) -> list[LimitState]:
        """Every stored limit (``task:NAME``, ``queue:NAME``) with its tokens, running jobs and breaker."""
        return self.engine.limits()

    def breakers(self) -> dict[str, str]:
        """The circuit breaker state of each task that has one: closed, open or half_open."""
        return _limits.breakers(self.engine.limits())

    def schedules(self) -> list[Schedule]:
        """Every schedule, by id (each handle holds the row it was listed with)."""
        return _schedule.schedules(self)

    def get_schedule(self, schedule: int | str) -> Schedule:
        """A schedule by id or name; ``ScheduleNotFoundError`` (a ``KeyError``) if none."""
        return _schedule.get_schedule(self, schedule)

    def add_schedule_source(self, name: str, source: ScheduleSource | Callable[[Schedule], None]) -> None:
        """Register a source (an object with ``pre_send(schedule)``, or a callable) under ``name``."""
        _schedule.add_source(name, source)

    # --- workers --------------------------------------------------------------

    def supervisor(self, processes: int = 2, **options: Any) -> Supervisor:
        """A supervisor of ``processes`` worker processes for this queue (see :class:`Supervisor`)."""
        refuse_main_reimport("start a worker pool")
        from ..pool.supervisor import Supervisor

        return Supervisor(self, processes=processes, **options)

    def run_worker(self, processes: int = 2, **options: Any) -> None:
        """Run a worker pool in this process until SIGTERM/SIGINT (or idle, with ``until_idle=True``)."""
        self.supervisor(processes, **options).run()

    def start_worker(self, processes: int = 2, **options: Any) -> SupervisorThread:
        """Run a worker pool on a background thread; stop it with ``.stop()``."""
        from ..pool.supervisor import SupervisorThread

        return SupervisorThread(self.supervisor(processes, **options))


class DeadLetter:
    """A dead job with its last error."""

    __slots__ = ("error", "job", "record")

    def __init__(self, job: Job, record: JobRecord, error: AttemptError | None) -> None:
        self.job = job
        self.record = record
        self.error = error

    @property
    def task_name(self) -> str:
        return self.record.task_name

    def __repr__(self) -> str:
        error = f"{self.error.type_name}: {self.error.message}" if self.error else "no error"
        return f"<DeadLetter job={self.job.id} task={self.task_name} {error}>"


def default_task_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function; a script's module is always ``__main__``."""
    module = getattr(func, "__module__", None) or "__main__"
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


def _stored_id(job_id: int) -> int:
    """``job_id``, or JobNotFoundError for an int no stored job can have (ids are 64-bit)."""
    if isinstance(job_id, int) and not INT64_MIN <= job_id <= INT64_MAX:
        raise JobNotFoundError(job_id)
    return job_id


def labels_of(text: str | None) -> dict[str, Any]:
    """Labels stored as JSON text, as a dict."""
    return json.loads(text) if text else {}
