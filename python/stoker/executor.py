"""A :class:`concurrent.futures.Executor` over a stoker queue.

``stoker.Executor`` takes the place of a ``ProcessPoolExecutor`` in a pipeline::

    with stoker.Executor(4, timeout=600, max_retries=2) as pool:
        for result in pool.map(simulate, seeds):
            ...

and adds what stoker's queue gives: each call is a durable job (with
``path=``, it outlives the program), each attempt has a hard timeout (the
worker's process group is killed), failed attempts are retried, a worker that
crashes fails one future (:class:`~stoker.errors.WorkerLostError`) instead of
breaking the pool, and ``Future.cancel()`` kills a call that started.

The callable may be anything cloudpickle handles: a module-level function
(sent by reference: its module must be importable by the workers), a lambda
or a closure (sent by value). It is not a registered task: every call is sent
as a job of one generic task, :data:`CALL_TASK_NAME`, which unpickles the
callable and its arguments in the worker and calls it.

One background thread settles the futures: on each tick it reads the statuses
of every outstanding job in one query (only when the database changed since
the previous tick), then sets the result or the exception of the finished ones
(the task's own exception, as :meth:`Job.result` raises it).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures._base import CANCELLED, PENDING
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._core import Engine
from .client.job import FINISHED, Job
from .client.local import in_worker_process, refuse_main_reimport
from .client.queue import Queue
from .client.registry import REGISTRY
from .client.task import Task
from .errors import InvalidOptionError, JobCancelledError, JobNotFoundError, StokerError, StorageError
from .pool.worker import register_worker_setup

if TYPE_CHECKING:
    from .pool.thread import SupervisorThread

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("stoker.executor")

#: Worker processes of an Executor given neither ``max_workers`` nor
#: ``processes`` (the default of ``Queue.run_worker`` too). Unlike a
#: ProcessPoolExecutor's default (one per CPU), it does not grow with the
#: machine: each worker is a process with its own interpreter and memory.
DEFAULT_PROCESSES = 2

#: The name of the one task that runs every call submitted to an Executor.
CALL_TASK_NAME = "stoker.executor.call"

#: The settling thread reads the statuses of the outstanding jobs first after
#: this pause, then twice as long each time nothing finished, up to POLL_MAX.
POLL_MIN = 0.0005
POLL_MAX = 0.02
#: Even when the database's change counter says nothing changed, the statuses
#: are read at least this often.
POLL_FORCE = 1.0


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run one submitted call (in a worker process)."""
    return fn(*args, **kwargs)


def call_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Run a chunk of ``map`` calls in one job (``chunksize`` > 1)."""
    return [fn(*args) for args in chunk]


def register_call_task(
    queue: Queue, *, timeout: float | None = None, max_retries: int = 0, max_crashes: int = 0
) -> Task[Any, Any]:
    """Register the Executor's call task on ``queue`` and return it.

    An Executor does this itself. An application whose queue receives calls from
    an Executor in another program calls it too, so that ``stoker worker`` on
    that queue runs them.
    """
    task: Task[Any, Any] = queue.task(
        name=CALL_TASK_NAME, timeout=timeout, max_retries=max_retries, max_crashes=max_crashes
    )(call)
    return task


# A worker process finds the task of each job in REGISTRY, after importing the
# modules of its queue's tasks: this module, for the call task (its function
# lives here). So a worker must find the task registered once it has imported
# this module. The task is registered the ordinary way, on a Queue, because a
# worker reads more than the function from a registry entry (its queue's
# middlewares and hooks). A module-level Queue would open a database in the
# caller's process; in a worker process a Queue never opens its database, so
# the registration is done there only. In the caller, each Executor registers
# the task on its own queue (register_call_task), which is also what makes the
# queue's supervisors import this module. A queue of the application that
# registered it first (in a module the worker imported before) keeps it.
def register_in_worker(secret: bytes | None = None) -> None:
    """Register the call task in a worker process, unless a queue already did.

    The worker calls this after importing its queue's modules: this module
    may have been imported earlier (the fork server preloads stoker) in a
    process that was not a worker yet, so its import-time registration cannot
    be relied on. ``secret`` is the supervisor's queue's signing secret: the
    calls of an Executor on a signed queue are sealed with it.
    """
    task = REGISTRY.get(CALL_TASK_NAME)
    if task is None:
        register_call_task(Queue(secret=secret))
    elif secret is not None and not task.queue.sealer.signs:
        task.queue.sealer.secret = secret


# The worker calls it after importing its task modules, with the supervisor's
# queue's secret (this module names the pool, never the other way round).
register_worker_setup(__name__, register_in_worker)
if in_worker_process():
    register_in_worker()


class JobFuture(concurrent.futures.Future[Any]):
    """A future bound to one stoker job (``future.job``).

    ``cancel()`` cancels the job too. It succeeds while the future is not known
    to be running; a job that had just started is then killed by its supervisor.
    """

    def __init__(self, executor: Executor, job: Job) -> None:
        super().__init__()
        self.job = job
        self._executor = executor

    def __repr__(self) -> str:
        return f"<JobFuture job={self.job.id} {super().__repr__()[1:-1]}>"

    def cancel(self) -> bool:
        with self._condition:
            if self._state != PENDING:
                return super().cancel()
            outcome = self._executor._cancel_job(self.job)
        if outcome not in ("cancelled", "requested"):
            return False  # It finished already: the settling thread sets its outcome.
        cancelled = super().cancel()
        if cancelled:
            self._notify_cancelled()
        return cancelled

    def _notify_cancelled(self) -> None:
        # concurrent.futures.wait() and as_completed() learn of a cancellation
        # from set_running_or_notify_cancel(), which an executor calls once.
        with self._condition:
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()

    def _mark_running(self) -> None:
        with self._condition:
            if self._state == PENDING:
                self.set_running_or_notify_cancel()


#: Executors not shut down yet; the interpreter shuts them down at exit (like
#: the standard library's executors, it waits for their calls to finish).
_LIVE: weakref.WeakSet[Executor] = weakref.WeakSet()

#: Executors shut down without waiting whose settling thread has not finished
#: (held here, so that dropping the executor does not drop it): the
#: interpreter waits for them at exit, as for a ProcessPoolExecutor, so that
#: the pool stops and a temporary database is deleted. The settling thread is
#: a daemon, which the interpreter would otherwise stop mid-way.
_RELEASING: set[Executor] = set()
_RELEASING_LOCK = threading.Lock()


@atexit.register
def _shutdown_at_exit() -> None:
    for executor in list(_LIVE):
        executor.shutdown(wait=True)
    with _RELEASING_LOCK:
        releasing = list(_RELEASING)
    for executor in releasing:
        settler = executor._settler
        if settler is not None:
            settler.join()


def _start_method_of(mp_context: Any) -> str:
    """The start method of ``mp_context``; a clear error for one workers cannot use."""
    get_start_method = getattr(mp_context, "get_start_method", None)
    if not callable(get_start_method):
        raise InvalidOptionError(
            "mp_context must be a multiprocessing context (multiprocessing.get_context(...)), "
            f"got {mp_context!r}"
        )
    method = str(get_start_method())
    if method not in ("spawn", "forkserver"):
        raise InvalidOptionError(
            f"mp_context uses the {method!r} start method; stoker's worker processes start with 'spawn' "
            "or 'forkserver' (a fork of the supervisor's threaded process would copy its locks and its "
            "database handle): pass multiprocessing.get_context('forkserver') or ('spawn')"
        )
    return method


class Executor(concurrent.futures.Executor):
    """Runs calls in stoker worker processes, as jobs of a durable queue.

    The constructor takes ProcessPoolExecutor's: ``max_workers`` (positional,
    the number of worker processes; ``processes=`` is the same, default 2),
    ``mp_context`` (a ``spawn`` or ``forkserver`` context: stoker never forks
    its workers; ``fork`` is refused), ``initializer`` and ``initargs`` (called
    once in each worker process as it starts; if it raises, the worker fails
    to start and, as a ProcessPoolExecutor's, the pool breaks), and
    ``max_tasks_per_child`` (a worker process is replaced after that many jobs).
    A :class:`~stoker.Queue` given as the first argument is taken as ``queue``.

    ``queue`` is the queue to send the calls to; without one, ``path`` names the
    database, and without either the database is a temporary file that
    ``shutdown`` deletes. ``timeout`` is a hard limit per attempt in seconds
    (the future then raises :class:`~stoker.errors.TaskTimeoutError`),
    ``max_retries`` bounds the retries after an exception or a timeout, and
    ``max_crashes`` those after the worker process was lost (the future raises
    :class:`~stoker.errors.WorkerLostError`). The other keyword arguments go to
    the :class:`~stoker.Supervisor` (``drain_timeout``, ``kill_grace``,
    ``start_method``, ``lease``...), which starts on a background thread at the
    first ``submit`` and stops at ``shutdown``.
    """

    def __init__(
        self,
        max_workers: int | Queue | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        queue: Queue | None = None,
        path: str | os.PathLike[str] | None = None,
        processes: int | None = None,
        timeout: float | None = None,
        max_retries: int = 0,
        max_crashes: int = 0,
        **supervisor_options: Any,
    ) -> None:
        refuse_main_reimport("create an Executor")
        if isinstance(max_workers, Queue):
            if queue is not None:
                raise InvalidOptionError("give the queue once: as the first argument or as queue=")
            queue, max_workers = max_workers, None
        if queue is not None and not isinstance(queue, Queue):
            raise InvalidOptionError(f"queue must be a stoker.Queue, got {queue!r}")
        if queue is not None and path is not None:
            raise InvalidOptionError("give a queue or a path, not both")
        for option, value in (("max_workers", max_workers), ("processes", processes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidOptionError(f"{option} must be an int >= 1, got {value!r}")
        if max_workers is not None and processes is not None and max_workers != processes:
            raise InvalidOptionError(
                f"max_workers={max_workers} and processes={processes} name the same thing: give one"
            )
        processes = max_workers or processes or DEFAULT_PROCESSES
        if mp_context is not None:
            method = _start_method_of(mp_context)
            given = supervisor_options.get("start_method")
            if given is not None and given != method:
                raise InvalidOptionError(f"mp_context uses {method!r} but start_method={given!r}: give one")
            supervisor_options["start_method"] = method
        if max_tasks_per_child is not None:
            if "max_tasks_per_worker" in supervisor_options:
                raise InvalidOptionError(
                    "max_tasks_per_child and max_tasks_per_worker name the same thing: give one"
                )
            supervisor_options["max_tasks_per_worker"] = max_tasks_per_child
        if initializer is not None or initargs:
            supervisor_options["initializer"] = initializer
            supervisor_options["initargs"] = initargs
        self._temporary_dir: str | None = None
        if queue is None:
            if path is None:
                self._temporary_dir = tempfile.mkdtemp(prefix="stoker-executor-")
                path = os.path.join(self._temporary_dir, "executor.db")
            queue = Queue(path)
        self.queue = queue
        self._task = register_call_task(
            queue, timeout=timeout, max_retries=max_retries, max_crashes=max_crashes
        )
        self._processes = processes
        # No job is claimed ahead of a free worker: a call that has not started
        # stays pending, so Future.cancel() can always cancel it at once.
        self._supervisor_options = {"prefetch": 0, **supervisor_options}
        # A wrong option fails here, not at the first submit.
        self._check_supervisor_options()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._futures: dict[int, JobFuture] = {}
        self._pool: SupervisorThread | None = None
        self._settler: threading.Thread | None = None
        self._shutdown = False
        self._broken: BaseException | None = None
        _LIVE.add(self)

    def _check_supervisor_options(self) -> None:
        from .pool.processes import pickled_initializer
        from .pool.supervisor import Supervisor

        known = set(inspect.signature(Supervisor.__init__).parameters) - {"self", "queue", "processes"}
        unknown = sorted(set(self._supervisor_options) - known)
        if unknown:
            raise InvalidOptionError(
                f"Executor() got unknown option(s) {', '.join(map(repr, unknown))}; it takes "
                "ProcessPoolExecutor's (max_workers, mp_context, initializer, initargs, "
                "max_tasks_per_child), queue, path, processes, timeout, max_retries, max_crashes "
                f"and the supervisor's: {', '.join(sorted(known))}"
            )
        options = self._supervisor_options
        pickled_initializer(options.get("initializer"), options.get("initargs", ()))

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "broken" if self._broken else "open"
        return f"<stoker.Executor {self.queue.path!r} processes={self._processes} {state}>"

    @property
    def pool(self) -> SupervisorThread | None:
        """The supervisor of the worker processes, once the first call was submitted."""
        return self._pool

    # --- submitting ------------------------------------------------------------------

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Send ``fn(*args, **kwargs)`` to the worker pool; return its future."""
        with self._lock:
            self._check_open()
            self._start()
            job = self._task.delay(fn, args, kwargs)
            future = JobFuture(self, job)
            self._futures[job.id] = future
        self._wakeup.set()
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like :meth:`concurrent.futures.Executor.map`; the calls are sent in one transaction.

        With ``chunksize`` > 1, each job runs that many calls in a row (fewer,
        larger jobs: a timeout or a retry then applies to the whole chunk).
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables, strict=False))
        if chunksize == 1:
            futures = self._submit_many([(fn, args, {}) for args in calls])
        else:
            chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
            futures = self._submit_many([(call_chunk, (fn, chunk), {}) for chunk in chunks])

        def results() -> Iterator[Any]:
            try:
                futures.reverse()
                while futures:
                    future = futures.pop()
                    try:
                        if end_time is None:
                            value = future.result()
                        else:
                            value = future.result(end_time - time.monotonic())
                    except BaseException:
                        future.cancel()
                        raise
                    if chunksize == 1:
                        yield value
                    else:
                        yield from value
            finally:
                for future in futures:
                    future.cancel()

        return cast("Iterator[T]", results())

    def _submit_many(self, calls: list[tuple[Any, ...]]) -> list[JobFuture]:
        with self._lock:
            self._check_open()
            if not calls:
                return []
            self._start()
            futures = [JobFuture(self, job) for job in self._task.map(calls)]
            for future in futures:
                self._futures[future.job.id] = future
        self._wakeup.set()
        return futures

    def _check_open(self) -> None:
        if self._broken is not None:
            raise concurrent.futures.BrokenExecutor(
                f"the worker pool of this executor stopped: {self._broken!r}"
            ) from self._broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _start(self) -> None:
        """Start the worker pool and the settling thread (with the lock held)."""
        if self._pool is None:
            self._pool = self.queue.start_worker(self._processes, **self._supervisor_options)
        if self._settler is None:
            self._settler = threading.Thread(target=self._settle_loop, name="stoker-executor", daemon=True)
            self._settler.start()

    def _cancel_job(self, job: Job) -> str:
        return job.cancel()

    # --- shutting down ------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; with ``cancel_futures``, cancel those that have not started.

        With ``wait``, return once every call has finished, the worker processes
        have stopped, and a temporary database is deleted; without, that happens
        in the background.
        """
        with self._lock:
            self._shutdown = True
            outstanding = list(self._futures.values())
            settler = self._settler
        _LIVE.discard(self)
        if cancel_futures and outstanding:
            statuses = self.queue.engine.statuses([f.job.id for f in outstanding])
            for future, status in zip(outstanding, statuses, strict=True):
                if status in ("pending", "scheduled"):
                    future.cancel()
        self._wakeup.set()
        if settler is None:
            self._release()
        elif wait:
            settler.join()
        else:
            with _RELEASING_LOCK:
                if settler.is_alive():
                    _RELEASING.add(self)

    def _release(self) -> None:
        """Stop the worker pool and delete a temporary database."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir = None
        with _RELEASING_LOCK:
            _RELEASING.discard(self)

    # --- settling futures --------------------------------------------------------------

    def _settle_loop(self) -> None:
        engine = Engine(self.queue.path)
        version: int | None = None
        last_read = -float("inf")
        pause = POLL_MIN
        try:
            while True:
                with self._lock:
                    ids = list(self._futures)
                    if not ids and self._shutdown:
                        break
                if not ids:
                    self._wakeup.wait()
                    self._wakeup.clear()
                    pause = POLL_MIN
                    continue
                if self._pool is not None and not self._pool.is_alive():
                    self._break(self._pool.error or StokerError("the supervisor thread stopped"))
                    break
                now = time.monotonic()
                current = engine.data_version()
                progressed = False
                # The counter moves whenever another connection commits: the supervisor
                # finishing a job, a send, a cancel (this connection only reads).
                if current != version or now - last_read >= POLL_FORCE:
                    version, last_read = current, now
                    try:
                        progressed = self._settle(ids, engine.statuses(ids))
                    except JobNotFoundError as error:
                        self._settle_missing(error)
                        progressed = True
                    except StorageError as error:
                        log.warning("cannot read the statuses of the executor's jobs yet: %s", error)
                if progressed:
                    pause = POLL_MIN
                if self._wakeup.wait(pause):
                    self._wakeup.clear()
                    pause = POLL_MIN
                else:
                    pause = min(pause * 2, POLL_MAX)
        except Exception as error:
            log.exception("the executor stopped settling its futures")
            self._break(error)
        finally:
            self._release()

    def _settle(self, ids: list[int], statuses: list[str]) -> bool:
        finished: list[tuple[JobFuture, str]] = []
        with self._lock:
            for job_id, status in zip(ids, statuses, strict=True):
                future = self._futures[job_id]
                if status in FINISHED:
                    finished.append((future, status))
                    del self._futures[job_id]
                elif status == "running":
                    future._mark_running()
        for future, status in finished:
            _settle_future(future, status)
        return bool(finished)

    def _settle_missing(self, error: JobNotFoundError) -> None:
        with self._lock:
            future = self._futures.pop(error.job_id, None)
        if future is not None:
            _set_exception(future, error)

    def _break(self, error: BaseException) -> None:
        """The pool or the settling thread failed: every outstanding future fails with it."""
        broken = concurrent.futures.BrokenExecutor(f"the worker pool of this executor stopped: {error!r}")
        broken.__cause__ = error
        with self._lock:
            self._broken = error
            futures = list(self._futures.values())
            self._futures.clear()
        for future in futures:
            _set_exception(future, broken)


def _settle_future(future: JobFuture, status: str) -> None:
    if future.cancelled():
        future._notify_cancelled()
        return
    if status == "cancelled":
        if concurrent.futures.Future.cancel(future):
            future._notify_cancelled()
        else:
            _set_exception(future, JobCancelledError(future.job.id))
        return
    try:
        value = future.job.result()
    except BaseException as error:
        _set_exception(future, error)
    else:
        try:
            future.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass  # Cancelled meanwhile.


def _set_exception(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass  # Cancelled meanwhile.
