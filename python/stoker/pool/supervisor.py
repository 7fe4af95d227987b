"""The supervisor: claims jobs for a pool of worker processes and reports their outcomes.

Data flow (one supervisor per host; many may share one database)::

    ┌──── engine (Rust: SQLite or PostgreSQL) ────────┐
    │ claim · complete_many · fail · heartbeat · reap │
    └────────▲───────────────────────────┬────────────┘
             │ outcomes, leases          │ claimed jobs (idle slots, plus some ahead)
    ┌────────┴───────────────────────────▼────────────┐
    │ Supervisor (this module), one thread, one loop:  │
    │ waits on every worker pipe, every process        │
    │ sentinel and a wake-up pipe, with a timeout that │
    │ is the nearest deadline (hard timeout, heartbeat,│
    │ eta, drain, change poll)                         │
    └──┬─────────────┬─────────────┬──────────────────┘
       │ pipe        │ pipe        │ pipe (one per worker: a kill can only break its own)
    worker 1      worker 2      spare (started ahead, takes the slot a kill or crash frees)

Where each step lives:

- ``supervisor.py`` (this module): the loop alone, ``run`` → ``_turn`` →
  ``_wait`` (one poll over every pipe and sentinel until ``_next_deadline``),
  wake-ups, ``stop`` and the signals, and the routing of each worker message
  by its type;
- ``dispatch.py``: how many jobs to claim, which worker gets each, the jobs
  sent ahead and taken back (the policy is pure code; ``Dispatcher`` applies it);
- ``deadlines.py``: hard timeouts, cancels, memory limits, and the kills they end in;
- ``outcomes.py``: each worker message acted on by its type, and a message or
  a worker's death turned into its storage call; the outbox that keeps
  outcomes while storage fails;
- ``processes.py``: the worker processes (start, spare, retire, kill, how each
  ended, their memory) and the guardian;
- ``housekeeping.py``: heartbeat, registration, reaping, purge, schedule
  fires, the change poll and WAL compaction;
- ``protocol.py``: the messages; ``worker.py`` and ``runner.py``: the worker's side;
- ``tunables.py``: every constant named below, with its trade-off.

What the loop acts on, in order, each time it wakes:

- a message on a worker pipe: ``Ready``, ``Done`` (completions are batched into
  one transaction per wake-up), ``Failed`` (the retry policy is the engine's) or
  ``Dropped`` (a job sent ahead was taken back before it started, see below);
- a process sentinel: the worker died. If it was running a job, the attempt
  fails as a crash with a :class:`~stoker.errors.WorkerLostError` naming the
  exit code or signal; the slot goes to the spare and a new spare starts;
- a hard deadline: the worker and every process descending from it are
  killed (SIGKILL, or SIGTERM and SIGKILL after ``kill_grace``; see
  ``guardian.kill_tree``), the attempt fails with a
  :class:`~stoker.errors.TaskTimeoutError`;
- a cancel request (seen through the database's change counter, or the
  heartbeat): the worker is killed and the job ends cancelled;
- the heartbeat: every lease this supervisor holds is renewed, and expired
  leases of any supervisor are reaped; jobs past their expiry end expired, and
  results and error histories past their retention are purged (bounded);
- the next schedule fire: every due schedule is fired (its source asked
  first); the engine makes each fire enqueue exactly once across supervisors;
- SIGTERM/SIGINT (or :meth:`Supervisor.stop`): claiming stops, running jobs get
  ``drain_timeout`` seconds, the rest are killed and put back to pending
  without counting a failed attempt.

A busy worker is sent its next jobs ahead, while its current one runs: they
wait in the worker's pipe and start in turn the moment the job before them
ends, without waiting for this loop to read the outcome and answer (on a
saturated machine, that answer waits for a core). One waits there for jobs of
a few milliseconds or more; for shorter ones, as many as fit in
``JOB_AHEAD_WORK`` of the worker's typical job, so that each turn of this loop
stores and claims several jobs per worker in one commit. Until it starts, a
job is in the worker's ``queued`` line: its hard timeout starts when the
outcome of the job before it is read. A cancel, a stop, a job before it that
runs long, or a worker left idle with nothing else to run asks for it back
(a ``DROP_FRAME`` on the worker's second pipe, which a thread of the worker
reads while its task runs: no signal interrupts the task), and the worker
answers ``Dropped`` if it had not started it: no job
waits behind a long one while a worker is idle, and jobs given back go to the
next worker free in the order they were claimed. If the worker dies, the jobs
after the last outcome read never started and go to other workers without
counting an attempt.

Worker pipes are read and written without blocking (``channel.py``), so a
worker stopped half-way through a message holds up nothing. When the database
fails, outcomes are kept in order and stored once it works again; claims,
heartbeats and polls are retried after a backoff; after
``STORAGE_FAILURE_LIMIT`` seconds of failure the supervisor stops with that
error (its jobs run again when their leases expire).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import select
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._base.bounds import (
    MAX_MEMORY_MB,
    MAX_PREFETCH,
    MAX_PROCESSES,
    check_int,
    check_number,
    check_seconds,
)
from .._base.wakeup import WakeListener
from .._core import Engine
from ..client.local import LOCAL_SUPERVISORS, is_database_url, local_key
from ..client.registry import TaskScope
from ..client.waiting import forget_pool_failure, forget_results
from ..errors import StorageError
from ..flow import limits as flow
from . import tunables
from .deadlines import Deadlines
from .dispatch import Dispatcher
from .housekeeping import Housekeeping
from .outcomes import Outcomes, StorageOutbox
from .processes import Worker, WorkerProcesses
from .thread import SupervisorThread
from .worker import worker_setup_wanted

if TYPE_CHECKING:
    from ..client.queue import Queue

__all__ = ["Supervisor", "SupervisorThread"]

log = logging.getLogger("stoker.supervisor")


class Supervisor:
    """Runs the jobs of a queue in ``processes`` worker processes."""

    def __init__(
        self,
        queue: Queue,
        *,
        processes: int = 2,
        queues: list[str] | None = None,
        lease: float = tunables.DEFAULT_LEASE,
        drain_timeout: float = tunables.DEFAULT_DRAIN_TIMEOUT,
        kill_grace: float = 0.0,
        start_method: str | None = None,
        until_idle: bool = False,
        imports: list[str] | None = None,
        install_signal_handlers: bool | None = None,
        max_tasks_per_worker: int | None = None,
        max_worker_memory_mb: float | None = None,
        prefetch: int = tunables.DEFAULT_PREFETCH,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        adopt_orphans: bool = False,
    ) -> None:
        check_int("processes", processes, low=1, high=MAX_PROCESSES)
        if max_tasks_per_worker is not None:
            check_int("max_tasks_per_worker", max_tasks_per_worker, low=1)
        check_int("prefetch", prefetch, low=0, high=MAX_PREFETCH)
        if max_worker_memory_mb is not None:
            check_number("max_worker_memory_mb", max_worker_memory_mb, low=1, high=MAX_MEMORY_MB, unit="MiB")
        check_seconds("lease", lease, allow_zero=False)
        check_seconds("drain_timeout", drain_timeout, allow_zero=True)
        check_seconds("kill_grace", kill_grace, allow_zero=True)
        self.queue = queue
        self.processes = processes
        self.queues = (
            list(queues)
            if queues
            else sorted({t.options_.queue for t in queue.tasks.values()} or {"default"})
        )
        self.lease = float(lease)
        self.lease_ms = max(1, round(self.lease * 1000))
        self.drain_timeout = float(drain_timeout)
        self.kill_grace = float(kill_grace)
        self.until_idle = until_idle
        self.install_signal_handlers = install_signal_handlers
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory_mb = max_worker_memory_mb
        self.prefetch = prefetch
        modules = {t.func.__module__ for t in queue.tasks.values()} | set(imports or ())
        self.task_modules = sorted(modules - {"__main__", "__mp_main__"})
        self.task_scope = TaskScope.of(queue)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.workers = WorkerProcesses(
            start_method,
            processes=processes,
            task_modules=self.task_modules,
            task_scope=self.task_scope,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            max_worker_memory_mb=max_worker_memory_mb,
            adopt_orphans=adopt_orphans,
        )
        self._engine: Engine | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._listener: WakeListener | None = None
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.stop_requests = 0
        self.drain_deadline: float | None = None
        self.shutting_down = False
        self._remote = is_database_url(queue.path)
        self._engine_wake_fd: int | None = None
        # Names the database to the waiters the stored results are handed to.
        # Every ":memory:" database has the same name, so none is handed over.
        self.database_key = "" if queue.path == ":memory:" else local_key(queue.path)
        self.outbox = StorageOutbox(queue.path, self.limit_storage_wait)
        self.outcomes = Outcomes(self, self.database_key)
        self.dispatch = Dispatcher(self)
        self.deadlines = Deadlines(self)
        self.housekeeping = Housekeeping(self, remote=self._remote)
        self.started = self.workers.started
        """Set once every worker process has reported ready."""

    # --- public ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(
                self.queue.path, busy_timeout_ms=round(tunables.STORAGE_BUSY_TIMEOUT * 1000)
            )
        return self._engine

    @property
    def storage_failure_limit(self) -> float:
        """Seconds of failing storage after which the supervisor stops with the error."""
        return self.outbox.failure_limit

    @storage_failure_limit.setter
    def storage_failure_limit(self, seconds: float) -> None:
        self.outbox.failure_limit = seconds

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (spares included)."""
        return self.workers.pids()

    def notify(self, *, new_work: bool = False) -> None:
        """Wake the loop (thread-safe; used by this process's sends, cancels, schedules).

        A send (``new_work``) wakes it only when it believes nothing is
        runnable; otherwise it claims at its next turn anyway, and waking it
        would only take the GIL from the sender. It clears that belief before
        each claim, so a send committed after the claim began always wakes it.
        Any other change makes it look at the database (cancel requests,
        schedules) on its next turn.
        """
        if self._wake_w < 0 or (new_work and self.dispatch.want_claim):
            return
        try:
            os.write(self._wake_w, tunables.WAKE_NEW_WORK if new_work else tunables.WAKE_CHANGED)
        except (BlockingIOError, OSError):
            pass

    def stop(self) -> None:
        """Begin a graceful stop (thread- and signal-safe); a second call stops at once."""
        self.stop_requests += 1
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, tunables.WAKE_STOP)
        except (BlockingIOError, OSError):
            pass

    def run(self) -> None:
        """Supervise until stopped (or, with ``until_idle``, until no job is left)."""
        restore = self._install_signal_handlers()
        local = LOCAL_SUPERVISORS.setdefault(local_key(self.queue.path), weakref.WeakSet())
        local.add(self)
        if self.database_key:
            forget_pool_failure(self.database_key)
        send_log_open = False
        try:
            self.workers.open()
            if self._remote:
                # PostgreSQL: notifications reach every supervisor on every host.
                self._engine_wake_fd = self.engine.wake_fd()
                self.housekeeping.renew_registration(time.monotonic())
            elif self.queue.path != ":memory:":
                self._listener = WakeListener(self.queue.path)
            starts = self.housekeeping.prepare_starts_directory()
            self.workers.starts_directory = None if starts is None else str(starts)
            if worker_setup_wanted(self.task_modules):
                # A task module sets itself up in each worker with the secret
                # (the Executor's call task, registered there on a queue of its own).
                self.workers.queue_secret = self.queue.sealer.secret
            self.housekeeping.reap_expired()
            flow.push_limits(self.engine, list(self.queue.tasks.values()))
            # Single sends of this process are logged from now on, and this
            # loop's next transaction stores them (storage/sqlite_send_log.rs).
            self.engine.open_send_log()
            send_log_open = True
            self.workers.top_up(time.monotonic())
            self._loop()
        finally:
            local.discard(self)
            if not local and self.database_key:
                forget_results(self.database_key)
            if send_log_open:
                self.housekeeping.close_send_log()
            try:
                self._shutdown_workers()
                if self._remote:
                    self.housekeeping.deregister()
            finally:
                # Even if the shutdown failed half-way, the guardian kills what is left.
                self.workers.guardian.stop()
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                self._close_engine()
                unstored = bool(len(self.outbox) or self.outcomes.completions)
                self.housekeeping.remove_starts_directory(unstored=unstored)
                for signum, handler in restore:
                    signal.signal(signum, handler)
                # Mark the pipe closed before closing it, so that a late notify() from
                # another thread never writes to a file descriptor number reused since.
                wake_r, wake_w = self._wake_r, self._wake_w
                self._wake_r = self._wake_w = -1
                os.close(wake_r)
                os.close(wake_w)

    # --- the loop ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            try:
                if self._turn(now):
                    return
            except StorageError as error:
                self.outbox.on_error(error, now)
                if self.drain_deadline is not None and now >= self.drain_deadline:
                    # Stopping, and the database is still unusable at the deadline:
                    # what the stop cannot store is left to the leases.
                    self.deadlines.kill_busy_for_drain()
                    return
            self._wait(now)

    def _turn(self, now: float) -> bool:
        """One turn of the loop before waiting; True when the supervisor is done."""
        if self.stop_requests:
            self._set_drain_deadline(now)
        self.deadlines.enforce(now)
        if self.outbox.retry_at is not None:
            if now < self.outbox.retry_at:
                return False  # Storage failed a moment ago: only deadlines until the retry.
            self.outbox.retry_at = None
        self.outbox.flush()
        if not self.stop_requests:
            self.workers.top_up(now)
        if self.stop_requests:
            self.dispatch.flush_completions()
            self.dispatch.release_held()
            self.dispatch.drop_queued()
            # Set at the top of the turn, unless the stop came during it.
            drain_deadline = self._set_drain_deadline(now)
            if not self.workers.busy():
                return True
            if now >= drain_deadline:
                self.deadlines.kill_busy_for_drain()
                return True
        else:
            self.housekeeping.run_due(now)
            dispatch = self.dispatch
            if dispatch.next_wakeup is not None and now >= dispatch.next_wakeup:
                # An eta came (claim it), a lease ran out (reap it), a limit
                # refilled (claim) or a job expired.
                dispatch.next_wakeup = None
                dispatch.want_claim = True
                self.housekeeping.reap_expired()
                self.engine.expire_due(tunables.HOUSEKEEPING_BATCH)
            dispatch.claim_and_dispatch(now)
            if self.until_idle and dispatch.nothing_left():
                self.stop()
                return self._turn(now)
        self.outbox.on_success()
        return False

    def _wait(self, now: float) -> None:
        self.outcomes.wake_waiters()
        timeout = self._next_deadline(now) - now
        readable: set[int] = set()
        writable: set[int] = set()
        # One poll over every worker pipe (reads, and writes still pending),
        # every process sentinel and the wake-up pipe. A raw poll object is
        # built each time: it is a few C calls, where a selector's bookkeeping
        # costs more than the rest of a turn.
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._listener is not None:
            poller.register(self._listener.fd, select.POLLIN)
        if self._engine_wake_fd is not None:
            poller.register(self._engine_wake_fd, select.POLLIN)
        workers = self.workers.all
        for w in workers:
            events = 0 if w.channel.eof else select.POLLIN
            if w.channel.output_pending:
                events |= select.POLLOUT
            if events:
                poller.register(w.channel.fd, events)
            poller.register(w.sentinel, select.POLLIN)
        for fd, events in poller.poll(math.ceil(max(0.0, timeout) * 1000)):
            # Hang-ups and errors count as both, as the selectors module does:
            # the read or the write that follows reports what happened.
            if events & ~select.POLLOUT:
                readable.add(fd)
            if events & ~select.POLLIN:
                writable.add(fd)
        if self._wake_r in readable:
            self._on_wake_up(self._drain_wake_pipe())
        if self._listener is not None and self._listener.fd in readable:
            self._on_wake_up(self._listener.drain())
        if self._engine_wake_fd is not None and self._engine_wake_fd in readable:
            self.engine.drain_wakeups()
            self.housekeeping.next_poll = 0.0
        for w in list(workers):
            if w.channel.fd in writable:
                self._flush_output(w)
        # Messages first: a worker may have sent its result just before it died.
        for w in list(workers):
            if w.channel.fd in readable:
                self.outcomes.read(w)
        for w in list(workers):
            if w.sentinel in readable and w in workers:
                self.on_exit(w)
        if self.dispatch.yield_core:
            # The workers that reported have their next job in their pipes:
            # let the one whose core this loop was woken onto get on with it;
            # the loop goes on (the commit, the next claim) when a core is free
            # or at the scheduler's next turn, while the workers run.
            self.dispatch.yield_core = False
            os.sched_yield()
        # The completions just read are stored by the next turn, in the same
        # transaction as the claim of the next jobs.

    def _next_deadline(self, now: float) -> float:
        candidates = [now + 3600.0]
        if self.stop_requests:
            if self.drain_deadline is not None:
                candidates.append(self.drain_deadline)
        else:
            candidates.extend(self.housekeeping.deadlines())
            if self.dispatch.next_wakeup is not None:
                candidates.append(self.dispatch.next_wakeup)
            if self.workers.short():
                candidates.append(self.workers.start_not_before)
        if self.outbox.retry_at is not None:
            candidates.append(self.outbox.retry_at)
        candidates.extend(self.deadlines.upcoming())
        return min(candidates)

    def _drain_wake_pipe(self) -> bytes:
        received = b""
        try:
            while chunk := os.read(self._wake_r, 4096):
                received += chunk
        except BlockingIOError:
            pass
        return received

    def _on_wake_up(self, received: bytes) -> None:
        """New work means claim; anything else, look at the database on the next turn."""
        if tunables.WAKE_NEW_WORK in received:
            self.dispatch.want_claim = True
        if received.replace(tunables.WAKE_NEW_WORK, b""):
            self.housekeeping.next_poll = 0.0

    # --- stopping ------------------------------------------------------------------

    def _set_drain_deadline(self, now: float) -> float:
        """The drain deadline of a stop: ``drain_timeout`` after the first stop
        request, now after a second; storage waits are bounded by it from now on."""
        if self.drain_deadline is None:
            self.drain_deadline = now + (self.drain_timeout if self.stop_requests == 1 else 0.0)
        if self.stop_requests > 1:
            self.drain_deadline = min(self.drain_deadline, now)
        self.limit_storage_wait()
        return self.drain_deadline

    def limit_storage_wait(self) -> None:
        """While stopping, no write waits for a lock past the drain deadline and
        ``STOP_STORE_GRACE``, so that a stop honours its drain timeout even while
        another program holds the database's write lock."""
        if self.drain_deadline is None or self._engine is None:
            return
        left = self.drain_deadline + tunables.STOP_STORE_GRACE - time.monotonic()
        self._engine.set_busy_timeout(round(min(tunables.STORAGE_BUSY_TIMEOUT, max(0.0, left)) * 1000))

    def _shutdown_workers(self) -> None:
        self.shutting_down = True
        self.outbox.giving_up = True
        if self.drain_deadline is None:
            # Stopped without a drain (the loop failed): storing gets the grace alone.
            self.drain_deadline = time.monotonic()
        self.limit_storage_wait()
        self.workers.stop_all()
        for w in list(self.workers.all):
            if self._engine is not None:
                # What it said before it died: whether the job sent ahead started.
                self.outcomes.read(w)
            if w.running is not None and self._engine is not None:
                self.outcomes.killed_or_lost(w, w.running)
                w.running = None
            if self._engine is not None:
                self.dispatch.return_all_unstarted(w)
            w.close()
        self.workers.all.clear()
        self.workers.kill_orphans()
        self.outbox.retry_at = None
        self.dispatch.release_held()
        try:
            self.outbox.flush()
            self.dispatch.flush_completions()
        except StorageError as error:
            log.error(
                "%d outcome(s) could not be stored (%s); those jobs run again when their leases expire",
                len(self.outbox) + len(self.outcomes.completions),
                error,
            )

    def _close_engine(self) -> None:
        """Close this supervisor's connection: the last one to a SQLite file
        folds the write-ahead log into it and removes the -wal and -shm files."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        try:
            engine.close()
        except StorageError as error:
            log.warning("the database was not closed cleanly: %s", error)

    def _install_signal_handlers(self) -> list[tuple[int, Any]]:
        install = self.install_signal_handlers
        if install is None:
            install = threading.current_thread() is threading.main_thread()
        if not install:
            return []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stop()

        restore: list[tuple[int, Any]] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            restore.append((signum, signal.getsignal(signum)))
            signal.signal(signum, on_signal)
        return restore

    # --- worker deaths ------------------------------------------------------------------

    def _flush_output(self, w: Worker) -> None:
        try:
            w.channel.flush()
        except OSError:
            pass  # The worker is gone; its sentinel reports it.

    def on_exit(self, w: Worker) -> None:
        """``w`` exited (or was killed): settle the jobs it held, and start another."""
        self.outcomes.read(w)
        self.workers.remove(w)
        running, w.running = w.running, None
        self.dispatch.return_all_unstarted(w)
        if running is not None:
            self.outcomes.killed_or_lost(w, running)
            self.dispatch.want_claim = True
        elif not w.ready and w.killed_for is None and not w.retiring:
            self.workers.on_startup_failure(w)
        self.workers.kill_orphans()
        if not self.stop_requests:
            self.workers.top_up(time.monotonic())
