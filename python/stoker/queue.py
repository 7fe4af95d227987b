"""The user's entry point: a queue of jobs stored in one database."""

from __future__ import annotations

import multiprocessing
import os
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._core import Engine, NewJob
from .errors import InvalidOptionError, StokerError, UnknownTaskError
from .flow import CircuitBreaker, FlowQueueMixin, as_circuit_breaker
from .job import AttemptError, Job
from .schedule import ScheduleQueueMixin
from .task import (
    DEFAULT_MAX_CRASHES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_RETRY_JITTER,
    REGISTRY,
    Task,
    TaskOptions,
    as_exception_types,
)

if TYPE_CHECKING:
    from ._core import JobRecord
    from .supervisor import Supervisor, SupervisorThread

P = ParamSpec("P")
R = TypeVar("R")

#: The database file a ``Queue()`` uses when given no path: in the working directory.
DEFAULT_PATH = "stoker.db"

#: Worker processes are named with this prefix. A queue created while a worker
#: imports the user's module sees it and never opens the database: only the
#: supervisor writes storage.
WORKER_PROCESS_PREFIX = "stoker-worker"


#: Supervisors running in this process, by the real path of their database. A
#: send wakes them at once; supervisors in other processes see the change at
#: their next change poll.
LOCAL_SUPERVISORS: dict[str, weakref.WeakSet[Supervisor]] = {}


def notify_local_supervisors(path: str) -> None:
    """Wake the supervisors of this process that serve the database at ``path``."""
    for supervisor in LOCAL_SUPERVISORS.get(path, ()):
        supervisor.notify()


def in_worker_process() -> bool:
    """Whether this process is a stoker worker (its name is set before any import)."""
    return multiprocessing.current_process().name.startswith(WORKER_PROCESS_PREFIX)


class Queue(FlowQueueMixin, ScheduleQueueMixin):
    """Jobs, their tasks, and the pool that runs them, over one database file.

    ``Queue("jobs.db")`` opens (or creates) the SQLite database; a file that is
    not a stoker database is refused here, with an error naming it.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH) -> None:
        self.path = os.fspath(path)
        self._real_path = os.path.realpath(self.path)
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._engine_instance: Engine | None = None
        if not in_worker_process():
            self._engine_instance = Engine(self.path)

    def __repr__(self) -> str:
        return f"<Queue {self.path!r}>"

    @property
    def _engine(self) -> Engine:
        if self._engine_instance is None:
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
        seconds: the worker is killed), ``result_ttl`` (seconds a result and the
        error history are kept). Flow control, enforced across every supervisor:
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
        self._tasks[name] = task
        REGISTRY[name] = task
        return task

    def include(self, other: Queue) -> None:
        """Register the tasks of another queue here too, with the same names and options.

        One module can define its tasks once and send them to other databases:
        ``Queue(tmp_path / "jobs.db").include(app.queue)`` in a test, say.
        """
        for name, task in other._tasks.items():
            self._tasks[name] = Task(self, task.func, task.options_)

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

    def _send(self, new_job: NewJob) -> Job:
        (job_id,) = self._engine.enqueue([new_job])
        if LOCAL_SUPERVISORS:
            notify_local_supervisors(self._real_path)
        return Job(self, job_id)

    def _send_many(self, new_jobs: list[NewJob]) -> list[Job]:
        jobs = [Job(self, job_id) for job_id in self._engine.enqueue(new_jobs)]
        if LOCAL_SUPERVISORS:
            notify_local_supervisors(self._real_path)
        return jobs

    # --- inspection --------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        """A handle on an existing job; ``JobNotFoundError`` (a ``KeyError``) if none."""
        self._engine.status(job_id)
        return Job(self, job_id)

    def stats(self) -> dict[str, int]:
        """Job counts by status (pending, scheduled, running, complete, dead, cancelled, expired, waiting)."""
        return self._engine.stats()

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Jobs that failed for good, most recent first, with their last error."""
        letters = []
        for record in self._engine.dead_letters(limit, offset):
            errors = self._engine.errors(record.id)
            last = AttemptError.from_record(errors[-1]) if errors else None
            letters.append(DeadLetter(Job(self, record.id), record, last))
        return letters

    def replay(self, job_id: int) -> Job:
        """Send a dead job again as a new job, with the same task, arguments and options."""
        return Job(self, self._engine.replay(job_id))

    # --- workers --------------------------------------------------------------

    def supervisor(self, processes: int = 2, **options: Any) -> Supervisor:
        """A supervisor of ``processes`` worker processes for this queue (see :class:`Supervisor`)."""
        from .supervisor import Supervisor

        return Supervisor(self, processes=processes, **options)

    def run_worker(self, processes: int = 2, **options: Any) -> None:
        """Run a worker pool in this process until SIGTERM/SIGINT (or idle, with ``until_idle=True``)."""
        self.supervisor(processes, **options).run()

    def start_worker(self, processes: int = 2, **options: Any) -> SupervisorThread:
        """Run a worker pool on a background thread; stop it with ``.stop()``."""
        from .supervisor import SupervisorThread

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
