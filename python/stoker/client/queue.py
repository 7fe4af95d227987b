"""The user's entry point: a queue of jobs stored in one database."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import multiprocessing
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .._base import signing
from .._base.bounds import INT64_MAX, INT64_MIN, check_int
from .._base.serialization import dumps_call, dumps_positional_calls, positional_args
from .._base.signing import Sealer
from .._base.wakeup import CHANGED, NEW_WORK, WakeSender
from .._core import Engine
from ..errors import (
    InvalidOptionError,
    JobNotFoundError,
    SendError,
    StokerError,
    StorageError,
    UnknownTaskError,
)
from ..flow.limits import CircuitBreaker, FlowQueueMixin, as_circuit_breaker
from ..flow.schedule import ScheduleQueueMixin
from .events import (
    EVENTS,
    EventHandler,
    Hooks,
    Middleware,
    SendMessage,
    call_maybe_async,
    handler_name,
    worker_state,
)
from .job import AttemptError, Job, Outcome, retention_ended
from .task import (
    DEFAULT_CALL,
    DEFAULT_MAX_CRASHES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_RETRY_JITTER,
    REGISTRY,
    CallOptions,
    Task,
    TaskOptions,
    _check_labels,
    as_exception_types,
)

if TYPE_CHECKING:
    from .._core import JobRecord, NewJob
    from ..pool.supervisor import Supervisor, SupervisorThread

log = logging.getLogger("stoker.queue")

P = ParamSpec("P")
R = TypeVar("R")

#: The database file a ``Queue()`` uses when given no path: in the working directory.
DEFAULT_PATH = "stoker.db"

#: Worker processes are named with this prefix. A queue created while a worker
#: imports the user's module sees it and never opens the database: only the
#: supervisor writes storage.
WORKER_PROCESS_PREFIX = "stoker-worker"


#: Supervisors running in this process, by the real path of their database. A
#: send wakes them at once through their pipe; supervisors in other processes
#: are woken through their FIFOs (``_wakeup.py``).
LOCAL_SUPERVISORS: dict[str, weakref.WeakSet[Supervisor]] = {}


def is_database_url(path: str) -> bool:
    """Whether ``path`` names a PostgreSQL database rather than a SQLite file."""
    return path.startswith(("postgresql://", "postgres://"))


def local_key(path: str) -> str:
    """The key under which the supervisors of one database meet in a process:
    the resolved file path, or the URL as given."""
    return path if is_database_url(path) else os.path.realpath(path)


def database_path(path: object) -> str:
    """The path of a SQLite file, or a PostgreSQL URL, as the text the engine opens.

    A str, bytes or an ``os.PathLike`` of either; bytes are decoded as the
    file system does (``os.fsdecode``). SQLite and PostgreSQL take UTF-8
    names, so a path that is not valid UTF-8 is refused here, naming it.
    """
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidOptionError(
            "a Queue's path must be a str, bytes or os.PathLike (a file path or a "
            f"postgresql:// URL), got {path!r}"
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOptionError(
            f"a Queue's path must be valid UTF-8 (SQLite and PostgreSQL take UTF-8 names), got {path!r}"
        ) from None
    return text


def notify_local_supervisors(path: str, *, new_work: bool = False) -> None:
    """Wake the supervisors of this process that serve the database at ``path``."""
    for supervisor in LOCAL_SUPERVISORS.get(path, ()):
        supervisor.notify(new_work=new_work)


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


def in_worker_process() -> bool:
    """Whether this process is a stoker worker (its name is set before any import)."""
    return multiprocessing.current_process().name.startswith(WORKER_PROCESS_PREFIX)


#: The exit code of a worker process that met, while multiprocessing imported
#: the main module again in it, code that sends jobs, waits for results or
#: starts a pool (a main module without ``if __name__ == "__main__":``). The
#: supervisor takes it for that and fails at once with a
#: :class:`~stoker.errors.MainModuleNotGuardedError`, instead of starting
#: worker after worker. Any code other than 0, 1 and the signals' would do;
#: this one says nothing else in stoker.
MAIN_REIMPORT_EXIT_CODE = 86


def importing_main_again() -> bool:
    """Whether this is a stoker worker process still importing the main module.

    Under spawn and forkserver, multiprocessing runs the main module again (as
    ``__mp_main__``) in each new process before its target, and marks the
    process as inheriting meanwhile (its own check against starting processes
    there reads the same mark).
    """
    return in_worker_process() and bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def refuse_main_reimport(action: str) -> None:
    """End a worker process whose main module, imported again, tries to ``action``.

    Nothing it could do would help: a send or a pool started there would
    repeat, in every worker, what the caller did, and an error raised there
    only ends the process with the code of any failed start. So it says what
    is wrong on stderr and exits with :data:`MAIN_REIMPORT_EXIT_CODE`, which
    its supervisor reports to the caller at once.
    """
    if not importing_main_again():
        return
    where = "the main module"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            break
        frame = frame.f_back  # type: ignore[assignment]
    sys.stderr.write(
        f"stoker: {where} tries to {action} while worker process {multiprocessing.current_process().name} "
        "imports the main module again (the spawn and forkserver start methods import it in every "
        'worker process); put that code under `if __name__ == "__main__":`\n'
    )
    sys.stderr.flush()
    os._exit(MAIN_REIMPORT_EXIT_CODE)


class Queue(FlowQueueMixin, ScheduleQueueMixin):
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
        self._real_path = local_key(self.path)
        # Task names are per database (task.TaskRegistry); every ":memory:"
        # queue has a database of its own.
        self._registry_key = f":memory:#{id(self)}" if self.path == ":memory:" else self._real_path
        self._tasks: dict[str, Task[Any, Any]] = {}
        #: Signs and checks every pickle this queue stores or reads.
        self.sealer = Sealer(signing.as_secret(secret))
        #: Middlewares and hooks, run by the workers around each job.
        self.hooks = Hooks()
        for middleware in middlewares:
            self.add_middleware(middleware)
        self._event_handlers: dict[str, list[EventHandler]] = {event: [] for event in EVENTS}
        self._test_results: list[Outcome] | None = None
        self._engine_instance: Engine | None = None
        self._wake_sender: WakeSender | None = None
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

    def _same_database(self, other: Queue) -> bool:
        """Whether ``other`` stores its jobs in this database (a job id means the same job in both)."""
        if other is self:
            return True
        # Every ":memory:" queue has a database of its own.
        return self.path != ":memory:" and other.path != ":memory:" and other._real_path == self._real_path

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

    def _send_call(
        self,
        task: Task[Any, Any],
        options: TaskOptions,
        call: CallOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Job:
        return self._send_many([(task, options, call, args, kwargs)])[0]

    def _plain_template(self, task: Task[Any, Any]) -> NewJob | None:
        """The task's template for plain sends, when nothing here asks for per-call work.

        Middlewares see and may change each call, and test mode runs each
        job, so with either a plain send takes the general path.
        """
        if self.hooks.middlewares or self._test_results is not None:
            return None
        return task._plain_template()

    def _send_plain(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
        """``task.delay(*args, **kwargs)``: one job, committed before this returns.

        A plain send stores the task's template with this call's payload,
        which is the job the general path (``_send_many``) would build, without
        building it again for every call.
        """
        template = self._plain_template(task)
        if template is None:
            return self._send_many([(task, task.options_, DEFAULT_CALL, args, kwargs)])[0]
        return self._store_copies(template, [dumps_call(task.name, task.func, args, kwargs)])[0]

    def _send_plain_many(self, task: Task[Any, Any], calls: Iterable[tuple[Any, ...]]) -> list[Job]:
        """``task.map(calls)``: one job per call, all committed in one transaction."""
        template = self._plain_template(task)
        if template is None:
            return self._send_many(
                [
                    (task, task.options_, DEFAULT_CALL, positional_args(task.name, index, args), {})
                    for index, args in enumerate(calls)
                ]
            )
        return self._store_copies(template, dumps_positional_calls(task.name, task.func, calls))

    def _store_copies(self, template: NewJob, payloads: list[bytes]) -> list[Job]:
        """One job per payload, each a copy of ``template`` but for it, in one transaction."""
        if self.sealer.secret is not None:
            payloads = [self.sealer.seal(payload) for payload in payloads]
        ids = self.engine.enqueue_payloads(template, payloads)
        self._wake_supervisors()
        return [Job(self, job_id) for job_id in ids]

    def _send_many(
        self, calls: list[tuple[Task[Any, Any], TaskOptions, CallOptions, tuple[Any, ...], dict[str, Any]]]
    ) -> list[Job]:
        if len(calls) > 1 and self._uniform(calls):
            return self._send_uniform(calls)
        new_jobs = []
        for task, options, call, args, kwargs in calls:
            message = SendMessage(task.name, args, kwargs, dict(call.labels or {}))
            for middleware in self.hooks.middlewares:
                try:
                    middleware.pre_send(message)
                except Exception as error:
                    raise SendError(
                        task.name, f"middleware {handler_name(middleware)}.pre_send raised {error!r}"
                    ) from error
            if message.labels:
                _check_labels(message.labels)
            new_jobs.append(task._new_job(call, message.args, message.kwargs, options, message.labels))
        engine = self.engine
        private = engine if self._test_results is not None else None
        jobs = [Job(self, job_id, private) for job_id in engine.enqueue(new_jobs)]
        if self._test_results is not None:
            from ..pool.eager import run_eagerly

            for job in jobs:
                self._test_results.append(run_eagerly(self, job))
        else:
            self._wake_supervisors()
        for job in jobs:
            for middleware in self.hooks.middlewares:
                try:
                    middleware.post_send(job)
                except Exception:
                    log.exception(
                        "middleware %s.post_send raised for job %s", handler_name(middleware), job.id
                    )
        return jobs

    def _uniform(
        self, calls: list[tuple[Task[Any, Any], TaskOptions, CallOptions, tuple[Any, ...], dict[str, Any]]]
    ) -> bool:
        """Whether the calls differ only in their arguments, with nothing to do per call.

        Such a batch (``map``) is stored as copies of one job that differ
        only in their payload: no middleware, labels, uniqueness,
        dependencies or send-time limit check asks for per-call work.
        """
        task, options, call, _, _ = calls[0]
        if self.hooks.middlewares or self._test_results is not None:
            return False
        if call.labels or call.unique_key or call.depends_on or options.unique:
            return False
        if options.when_limited == "fail":
            return False
        return all(c[0] is task and c[1] is options and c[2] is call and not c[4] for c in calls)

    def _send_uniform(
        self, calls: list[tuple[Task[Any, Any], TaskOptions, CallOptions, tuple[Any, ...], dict[str, Any]]]
    ) -> list[Job]:
        task, options, call, _, _ = calls[0]
        template = task._new_job(call, (), {}, options, None)
        return self._store_copies(
            template, dumps_positional_calls(task.name, task.func, [c[3] for c in calls])
        )

    def _served_here(self) -> bool:
        """Whether a supervisor of this process serves this database (it wakes waiters)."""
        return bool(LOCAL_SUPERVISORS.get(self._real_path))

    def _wake_supervisors(self, *, new_work: bool = True) -> None:
        """Tell the supervisors of this database that there is something to act on.

        ``new_work``: jobs were sent (they claim); otherwise something else
        changed (a cancel request, a schedule: they look at the database).
        Supervisors of this process are woken through their pipe, the others
        through their FIFOs; both cost a write or two, so every send does it.
        """
        local = LOCAL_SUPERVISORS.get(self._real_path)
        if local:
            notify_local_supervisors(self._real_path, new_work=new_work)
        if self._test_results is not None or self.path == ":memory:":
            return
        if is_database_url(self.path):
            # PostgreSQL: the transaction's NOTIFY wakes the supervisors of every host.
            return
        if self._wake_sender is None:
            self._wake_sender = WakeSender(self.path)
        self._wake_sender.notify(NEW_WORK if new_work else CHANGED, skip_own_process=bool(local))

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
        if self._test_results is not None:
            raise StokerError("test_mode() is already active on this queue")
        saved = self._engine_instance
        self._engine_instance = Engine(":memory:", clock_ms=int(time.time() * 1000))
        results: list[Outcome] = []
        self._test_results = results
        try:
            yield results
        finally:
            self._test_results = None
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
        self._wake_supervisors()
        return job

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
