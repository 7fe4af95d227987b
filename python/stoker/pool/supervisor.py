"""The supervisor: claims jobs for a pool of worker processes and reports their outcomes.

Data flow (one supervisor per host; many may share one database)::

    ┌──────────── engine (Rust, SQLite) ─────────────┐
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

What the loop acts on, in order, each time it wakes:

- a message on a worker pipe: ``ready``, ``done`` (completions are batched into
  one transaction per wake-up), ``failed`` (the retry policy is the engine's) or
  ``dropped`` (a job sent ahead was taken back before it started, see below);
- a process sentinel: the worker died. If it was running a job, the attempt
  fails as a crash with a :class:`~stoker.errors.WorkerLostError` naming the
  exit code or signal; the slot goes to the spare and a new spare starts;
- a hard deadline: the worker and every process descending from it are
  killed (SIGKILL, or SIGTERM and SIGKILL after ``kill_grace``; see
  ``_guardian.kill_tree``), the attempt fails with a
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
(a ``drop`` on the worker's second pipe, which a thread of the worker reads
while its task runs: no signal interrupts the task), and the worker answers
``dropped`` if it had not started it: no job
waits behind a long one while a worker is idle, and jobs given back go to the
next worker free in the order they were claimed. If the worker dies, the jobs
after the last outcome read never started and go to other workers without
counting an attempt.

Worker pipes are read and written without blocking (``_channel.py``), so a
worker stopped half-way through a message holds up nothing. When the database
fails, outcomes are kept in order and stored once it works again; claims,
heartbeats and polls are retried after a backoff; after
``STORAGE_FAILURE_LIMIT`` seconds of failure the supervisor stops with that
error (its jobs run again when their leases expire).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import multiprocessing
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from .._base import serialization
from .._base import wakeup as wakeup
from .._base.bounds import (
    MAX_MEMORY_MB,
    MAX_PREFETCH,
    MAX_PROCESSES,
    check_int,
    check_number,
    check_seconds,
)
from .._base.remote_errors import CapturedError, fail_storably, qualified_name, storable, storable_text
from .._base.wakeup import WakeListener
from .._core import ClaimedJob, Engine
from ..client.context import PROGRESS_MAX_CHARS
from ..client.events import handler_name
from ..client.job import forget_pool_failure, forget_results, notify_outcomes, pool_failed
from ..client.queue import (
    LOCAL_SUPERVISORS,
    MAIN_REIMPORT_EXIT_CODE,
    WORKER_PROCESS_PREFIX,
    is_database_url,
    local_key,
)
from ..client.task import REGISTRY, TaskOptions, TaskScope
from ..errors import (
    InvalidOptionError,
    MainModuleNotGuardedError,
    MemoryLimitExceededError,
    RequeueLimitError,
    SerializationError,
    StorageError,
    TaskTimeoutError,
    WorkerLostError,
    WorkerStartupError,
)
from ..flow import limits as flow
from ..flow import schedule
from .channel import Channel, ProtocolError
from .guardian import become_subreaper, children, kill_tree, live_descendants, signal_tree
from .start_marks import never_started, owner_directory
from .start_marks import remove as remove_starts
from .worker import DROP_FRAME, worker_main

if TYPE_CHECKING:
    from ..client.queue import Queue

log = logging.getLogger("stoker.supervisor")

#: How long a claimed job's lease lasts without a heartbeat. A supervisor that
#: dies is noticed by the others this long after its last heartbeat: shorter
#: recovers jobs sooner, longer tolerates a supervisor that stalls (swap, a
#: stopped VM) without its jobs being run twice.
DEFAULT_LEASE = 30.0
#: Leases are renewed when a third of their length has passed, so two missed
#: heartbeats in a row still do not lose them.
HEARTBEAT_FRACTION = 1 / 3
#: How often the supervisor checks whether another process changed the database
#: (a job sent, a cancel request) while it is otherwise idle. Senders wake
#: supervisors at once (through a pipe in the same process, a FIFO from
#: another one: ``_wakeup.py``), so this poll is only the backstop for a
#: change made without a wake-up (a raw engine, a lost FIFO): lower values
#: bound that delay tighter, at the cost of more idle wake-ups.
CHANGE_POLL_INTERVAL = 0.05
#: The same check on PostgreSQL, where notifications wake the supervisor and
#: the check is only the backstop for a lost notification or a listener that
#: is reconnecting: a job can wait this long at worst. Each check is a round
#: trip to the server, from every supervisor.
REMOTE_CHANGE_POLL_INTERVAL = 1.0
#: On PostgreSQL, each supervisor registers itself for this long and renews
#: the registration every REGISTRATION_RENEW_INTERVAL; when a supervisor
#: stops renewing (killed, stopped, cut off), the others reap its running
#: jobs as lost once the registration ends, well before their job leases do.
#: Shorter recovers sooner; longer tolerates longer stalls (a stopped VM, a
#: long pause of the network) before jobs run twice. Judged by the database's
#: clock, so host clocks do not matter.
REGISTRATION_LEASE = 5.0
#: How often the registration is renewed and expired ones are reaped: the
#: jobs of a lost supervisor run again within REGISTRATION_LEASE plus this.
REGISTRATION_RENEW_INTERVAL = 1.0
#: What a wake-up byte (on the pipe from this process, or a FIFO from another)
#: says: jobs were sent (claim), or something else changed (look at the
#: database: cancel requests, schedules). Defined in ``_wakeup``.
WAKE_NEW_WORK = wakeup.NEW_WORK
WAKE_CHANGED = wakeup.CHANGED
WAKE_STOP = b"s"
#: Jobs claimed ahead for each worker process, beyond the ones running (the
#: ``prefetch`` option; while jobs are short, more: see JOB_AHEAD_WORK). They
#: wait in the pipes of busy workers, which start them the moment their
#: current job ends, or in memory.
#: The finished job and the next claim are stored together in one commit:
#: without them, every worker waits for a commit between two jobs. A
#: job claimed ahead is leased and heartbeated like a running one, so until it
#: starts it shows as ``running`` and ``cancel()`` answers ``requested`` (it
#: then ends cancelled without running); if the supervisor dies, it runs again
#: after its lease with that attempt counted as lost. More of them would hold
#: more jobs away from other supervisors and delay a higher-priority job sent
#: meanwhile.
DEFAULT_PREFETCH = 1
#: How long after a job sent ahead has started (the outcome of the job before
#: it was read) the supervisor waits for the worker's answer to a ``drop`` of
#: it (a cancel of the job while it waited in the pipe) before cancelling it
#: as a running job. The worker answers within microseconds when it dropped
#: the job; when the answer is late the job is cancelled as a running one,
#: which is also right if it had not started.
DROP_ANSWER_WAIT = 0.1
#: A job is sent ahead to a busy worker only while every slot is busy, that
#: worker's job has run less than this and its job before took less than
#: this; it is asked back once the job before it has run this long: a job
#: waits in a pipe behind a long one for this long at most, then goes to the
#: next worker free. Longer keeps the gain between jobs of this length (the
#: next job starts without waiting for the supervisor) at the cost of longer
#: waits behind long jobs; each job asked back costs two pipe messages and a
#: moment of the GIL in the worker, so workers whose jobs run long get none ahead.
JOB_AHEAD_MAX_WAIT = 0.1
#: Short jobs get more than one job ahead: as many as fit in JOB_AHEAD_WORK
#: seconds of the worker's typical job, up to JOBS_AHEAD_MAX, and the supervisor
#: claims that many per worker when it is above ``prefetch``. When jobs take
#: less time than one turn of this loop (a commit and a few pipe messages),
#: one job ahead runs out before the loop answers and the worker waits; with
#: several, each turn stores and claims several jobs per worker in one
#: commit, most of whose cost is fixed (about 45 µs, against about 10 µs per
#: job: benches/commit_cost.py) and shared by every job it holds. A larger
#: budget keeps more jobs away from other supervisors and from an idle
#: worker (they are asked back after JOB_AHEAD_MAX_WAIT at most) and delays
#: a higher-priority job sent meanwhile by up to that much work.
JOB_AHEAD_WORK = 0.002
JOBS_AHEAD_MAX = 8
#: The weight of the last job in the running average of job lengths that sets
#: how many jobs go ahead. Job lengths are seen from this loop: outcomes read
#: in one wake-up make the later jobs look instant, so one job alone must not
#: decide; a smaller weight follows a change of workload more slowly.
JOB_LENGTH_SMOOTHING = 0.25
#: After reading the outcome of a job that ran at least this long, the loop
#: gives up its core once (``sched_yield``) before storing it. A worker's
#: message wakes the loop onto that worker's core, where the loop's turn
#: (reading, a commit, waking the caller) would hold up the worker's next job,
#: which is already in its pipe; after the yield, the turn waits for a free
#: core or the scheduler's next turn, while the workers run. On an idle
#: machine the yield returns at once. Jobs shorter than this do not yield:
#: then the loop's turn, not the workers, bounds the rate of jobs.
YIELD_AFTER_JOB_OF = 0.001
#: The write-ahead log (``jobs.db-wal``) only shrinks when, at one moment, no
#: reader uses it; with many processes reading (supervisors, result waiters)
#: that moment may never come and the log grows without bound. Past
#: WAL_COMPACT_BYTES the supervisor truncates it, waiting at most
#: WAL_COMPACT_WAIT_MS for readers (new writers wait meanwhile: a longer wait
#: succeeds more often and stalls sends longer); it looks every
#: WAL_CHECK_INTERVAL seconds, a stat() call.
WAL_COMPACT_BYTES = 64 * 2**20
WAL_COMPACT_WAIT_MS = 20
WAL_CHECK_INTERVAL = 1.0
#: Time running jobs get to finish after SIGTERM before they are killed and re-queued.
DEFAULT_DRAIN_TIMEOUT = 30.0
#: After SIGKILL, how long to wait for the kernel to reap the process before
#: reporting the outcome anyway (it is normally a millisecond or less).
KILL_REAP_WAIT = 5.0
#: Worker processes started ahead of need. One spare lets the slot freed by a
#: kill or a crash take its next job at once instead of after a process start.
SPARE_WORKERS = 1
#: Consecutive worker start-up failures after which the supervisor gives up.
STARTUP_FAILURE_LIMIT = 5
#: After a worker fails to start, the next start waits this long, doubling
#: with each further failure up to STARTUP_BACKOFF_MAX: a broken start-up
#: handler must not keep the machine busy starting interpreters.
STARTUP_BACKOFF = 0.1
STARTUP_BACKOFF_MAX = 5.0
#: How often the memory of workers running a job with a memory limit is read.
#: Shorter catches a fast-growing task sooner; each read costs a few /proc reads.
MEMORY_POLL_INTERVAL = 0.05
#: How many times one job may ask to be requeued (``ctx.requeue()``) before
#: the request fails the attempt instead, so a job cannot loop forever.
MAX_REQUEUES = 3
#: Jobs expired, and finished jobs purged past their retention, per heartbeat.
HOUSEKEEPING_BATCH = 1000
#: Expired leases reaped per call (the engine's default).
REAP_BATCH = 100
#: How long the database may keep failing (locked past the busy timeout, disk
#: full, I/O errors) before the supervisor stops with that error. Until then it
#: keeps its jobs' outcomes in memory and retries, first after
#: STORAGE_RETRY_MIN seconds, doubling up to STORAGE_RETRY_MAX. Running jobs
#: always keep a lease deadline in storage, so whatever a supervisor that stops
#: could not store is run again after the lease.
STORAGE_FAILURE_LIMIT = 60.0
#: How long a write waits for another writer's lock (the engine's busy timeout)
#: while the supervisor runs. Longer rides out longer transactions of other
#: writers; a write waiting holds up this loop (deadlines, kills) meanwhile.
STORAGE_BUSY_TIMEOUT = 5.0
#: After the drain deadline of a stop, how long storing what the stop produced
#: (outcomes, re-queues of killed jobs, logged sends) may still wait for another
#: writer's lock. Past it the stop ends anyway: what was not stored runs again
#: when its lease expires, and logged sends stay in the send log for the next
#: opener. Longer loses fewer re-queues to lease expiry; shorter stops sooner.
STOP_STORE_GRACE = 1.0
STORAGE_RETRY_MIN = 0.01
STORAGE_RETRY_MAX = 1.0


def _pickled_initializer(
    initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> bytes | None:
    """``(initializer, initargs)`` pickled once, for every worker process to call at its start."""
    if initializer is None:
        if initargs:
            raise InvalidOptionError(f"initargs without an initializer: {initargs!r}")
        return None
    if not callable(initializer):
        raise InvalidOptionError(f"initializer must be callable, got {initializer!r}")
    if not isinstance(initargs, tuple):
        raise InvalidOptionError(f"initargs must be a tuple, got {initargs!r}")
    try:
        return serialization.dumps((initializer, initargs))
    except Exception as error:
        raise InvalidOptionError(
            f"the initializer {handler_name(initializer)} or its initargs cannot be pickled: {error}"
        ) from error


def jobs_ahead_for(typical_job_s: float | None) -> int:
    """How many jobs may wait in the pipe of a worker whose jobs take ``typical_job_s``."""
    if typical_job_s is None:
        return 1  # Its jobs' length is not known yet.
    if typical_job_s * JOBS_AHEAD_MAX <= JOB_AHEAD_WORK:
        return JOBS_AHEAD_MAX
    return max(1, int(JOB_AHEAD_WORK / typical_job_s))


def _average(average: float | None, value: float) -> float:
    return value if average is None else average + (value - average) * JOB_LENGTH_SMOOTHING


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, naming the signal if a signal killed it."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


@dataclass
class _Running:
    job: ClaimedJob
    started: float
    deadline: float | None
    options: TaskOptions | None
    peak_rss_kib: int = 0
    cancel_at: float | None = None
    """When a cooperatively cancelled job's worker is killed if it has not stopped."""
    dropping: str | None = None
    """A job sent ahead that was asked back (``drop``): why, ``cancel`` or ``release``."""
    answer_by: float | None = None
    """When a job asked back for a cancel, but started meanwhile, is cancelled as a running one."""
    serial: int = 0
    """Its place in the order jobs left ``_claimed_ahead`` (claim order), kept if it is given back."""
    condemned: bool = False
    """Sent ahead, it started after its worker was killed for the job before it: its
    outcome counts if it comes, and if the worker dies first it goes back to pending."""
    seq: int = 0
    """Its place among the runs sent to its worker (the worker starts them in that order)."""


@dataclass
class _Worker:
    process: BaseProcess
    channel: Channel
    ready: bool = False
    running: _Running | None = None
    queued: deque[_Running] = field(default_factory=deque)
    """The jobs sent ahead while ``running`` runs, in the order the worker runs them."""
    killed_for: str | None = None
    """Why the supervisor killed it: timeout, cancel, drain or shutdown."""
    kill_at: float | None = None
    """When SIGKILL follows the SIGTERM already sent (kill_grace)."""
    startup_error: CapturedError | None = None
    exited: bool = field(default=False)
    tasks_done: int = 0
    retiring: bool = False
    """Told to stop after its last task (recycling); it takes no more jobs."""
    pid: int = field(init=False)
    sentinel: int = field(init=False)
    """Readable once the process has exited: a pidfd where the kernel has them."""
    pidfd: int | None = field(init=False, default=None)
    last_job_s: float = 0.0
    """How long its last job ran, as this loop saw it."""
    typical_job_s: float | None = None
    """A running average of how long its jobs ran (None before its first)."""
    usage_suffix: str = field(init=False, default="")
    """``, "worker": "owner/pid"}``: what ends the usage JSON of its attempts."""
    runs_sent: int = 0
    """How many ``run`` messages it was sent: the ``seq`` of the last one."""

    def __post_init__(self) -> None:
        # Read once: the process's pid never changes, and it is asked for on
        # every message.
        assert self.process.pid is not None
        self.pid = self.process.pid
        # multiprocessing's sentinel is a pipe that the process holds open, and
        # so does every process it forked without exec (a task's daemon): one
        # of those would hide the worker's death for as long as it lives. A
        # pidfd is readable the moment the worker itself exits.
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                self.pidfd = pidfd_open(self.pid)
            except OSError:
                self.pidfd = None
        # Read once too: the property checks that the process object is
        # still open every time, and the loop polls it on every wake-up.
        self.sentinel = self.process.sentinel if self.pidfd is None else self.pidfd

    def close(self) -> None:
        """Close its pipes and its pidfd (it has exited, and its end is handled)."""
        self.channel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Supervisor:
    """Runs the jobs of a queue in ``processes`` worker processes."""

    def __init__(
        self,
        queue: Queue,
        *,
        processes: int = 2,
        queues: list[str] | None = None,
        lease: float = DEFAULT_LEASE,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        kill_grace: float = 0.0,
        start_method: str | None = None,
        until_idle: bool = False,
        imports: list[str] | None = None,
        install_signal_handlers: bool | None = None,
        max_tasks_per_worker: int | None = None,
        max_worker_memory_mb: float | None = None,
        prefetch: int = DEFAULT_PREFETCH,
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
        if start_method is None:
            start_method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        if start_method not in ("spawn", "forkserver"):
            raise InvalidOptionError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} "
                "(plain fork is unsafe in a threaded supervisor)"
            )
        self._initializer = _pickled_initializer(initializer, initargs)
        self.queue = queue
        self.processes = processes
        self.queues = (
            list(queues)
            if queues
            else sorted({t.options_.queue for t in queue.tasks.values()} or {"default"})
        )
        self.lease = float(lease)
        self.drain_timeout = float(drain_timeout)
        self.kill_grace = float(kill_grace)
        self.until_idle = until_idle
        self.install_signal_handlers = install_signal_handlers
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_worker_memory_mb = max_worker_memory_mb
        self.prefetch = prefetch
        if not isinstance(adopt_orphans, bool):
            raise InvalidOptionError(f"adopt_orphans must be a bool, got {adopt_orphans!r}")
        self.adopt_orphans = adopt_orphans
        """Make this process a child subreaper, and kill what a worker that died
        on its own left running (``_kill_orphans``): for a process that runs the
        supervisor alone, as ``stoker worker`` does. Off in a program's own
        process, whose other children it must not touch."""
        self._children_before: set[int] = set()
        modules = {t.func.__module__ for t in queue.tasks.values()} | set(imports or ())
        self.task_modules = sorted(modules - {"__main__", "__mp_main__"})
        self._task_scope = TaskScope.of(queue)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._starts_directory: Path | None = None
        """Where this supervisor's workers record the jobs they start (``_start_marks``)."""
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server must not import __main__ (its default): the user's
            # module may open the database, and a handle must never be forked.
            self._context.set_forkserver_preload(["stoker.pool.worker"])
        self._engine: Engine | None = None
        self._guardian: subprocess.Popen[bytes] | None = None
        self._workers: list[_Worker] = []
        self._wake_r, self._wake_w = os.pipe()
        self._listener: WakeListener | None = None
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_requests = 0
        self._drain_deadline: float | None = None
        self._want_claim = True
        self._data_version = -1
        self._next_heartbeat = 0.0
        self._next_poll = 0.0
        self._remote = is_database_url(queue.path)
        self._change_poll_interval = REMOTE_CHANGE_POLL_INTERVAL if self._remote else CHANGE_POLL_INTERVAL
        self._next_registration = 0.0
        self._engine_wake_fd: int | None = None
        self._next_wakeup: float | None = None
        self._completions: list[tuple[int, int, bytes | None, str | None]] = []
        self._stored_outcomes: list[int] = []
        self._stored_results: dict[int, bytes] = {}
        """The result bytes of the completions among ``_stored_outcomes``, for
        their waiters in this process."""
        self._results_not_kept: set[int] = set()
        """Completions whose result has a retention (``result_ttl``): not kept
        for this process's waiters, who read it from the database, which
        knows when it expires."""
        # Names the database to the waiters the stored results are handed to.
        # Every ":memory:" database has the same name, so none is handed over.
        self._database_key = "" if queue.path == ":memory:" else local_key(queue.path)
        """Jobs whose outcomes were stored since the loop last woke their waiters."""
        self._claimed_ahead: deque[ClaimedJob] = deque()
        """Jobs claimed (leased to this supervisor) that no worker has started yet."""
        self._dispatch_serial = 0
        self._given_back: dict[int, int] = {}
        """The jobs in ``_claimed_ahead`` given back from a worker's pipe: id -> serial."""
        self._held_marked: set[int] = set()
        """Jobs in ``_claimed_ahead`` whose held mark is committed: sent to no worker, so if
        this supervisor dies the lease reaper gives them back with no crash counted. Such
        a job goes to a worker only once its unmark is committed (``_to_unmark``), so a
        mark is never left on a job that may have run."""
        self._to_mark: dict[int, int] = {}
        """Jobs held in ``_claimed_ahead`` (id -> token) to mark with the next commit."""
        self._to_unmark: dict[int, int] = {}
        """Marked jobs (id -> token) to unmark with the next commit, so they can be sent."""
        self._next_fire = 0.0
        self._next_wal_check = 0.0
        self._reports: deque[tuple[str, Callable[[], None]]] = deque()
        """Outcomes (failures, cancellations, re-queues) to store, in order; kept while storage fails."""
        self.storage_failure_limit = STORAGE_FAILURE_LIMIT
        self._storage_failing_since: float | None = None
        self._storage_retry_at: float | None = None
        self._storage_backoff = STORAGE_RETRY_MIN
        self._shutting_down = False
        self._startup_failures = 0
        self._start_not_before = 0.0
        self._next_memory_poll = 0.0
        self._worker_serial = 0
        self._yield_core = False
        """Give up the core once after this wake-up's reading (YIELD_AFTER_JOB_OF)."""
        self._typical_job_s: float | None = None
        """A running average of how long jobs ran, on every worker (sets how many are claimed ahead)."""
        self.started = threading.Event()
        """Set once every worker process has reported ready."""

    # --- public ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.queue.path, busy_timeout_ms=round(STORAGE_BUSY_TIMEOUT * 1000))
        return self._engine

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (spares included)."""
        return [w.pid for w in self._workers if not w.exited]

    def notify(self, *, new_work: bool = False) -> None:
        """Wake the loop (thread-safe; used by this process's sends, cancels, schedules).

        A send (``new_work``) wakes it only when it believes nothing is
        runnable; otherwise it claims at its next turn anyway, and waking it
        would only take the GIL from the sender. It clears that belief before
        each claim, so a send committed after the claim began always wakes it.
        Any other change makes it look at the database (cancel requests,
        schedules) on its next turn.
        """
        if self._wake_w < 0 or (new_work and self._want_claim):
            return
        try:
            os.write(self._wake_w, WAKE_NEW_WORK if new_work else WAKE_CHANGED)
        except (BlockingIOError, OSError):
            pass

    def stop(self) -> None:
        """Begin a graceful stop (thread- and signal-safe); a second call stops at once."""
        self._stop_requests += 1
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, WAKE_STOP)
        except (BlockingIOError, OSError):
            pass

    def run(self) -> None:
        """Supervise until stopped (or, with ``until_idle``, until no job is left)."""
        restore = self._install_signal_handlers()
        local = LOCAL_SUPERVISORS.setdefault(local_key(self.queue.path), weakref.WeakSet())
        local.add(self)
        if self._database_key:
            forget_pool_failure(self._database_key)
        send_log_open = False
        try:
            self._start_guardian()
            if self._remote:
                # PostgreSQL: notifications reach every supervisor on every host.
                self._engine_wake_fd = self.engine.wake_fd()
                self._renew_registration(time.monotonic())
            elif self.queue.path != ":memory:":
                self._listener = WakeListener(self.queue.path)
            self._starts_directory = self._prepare_starts_directory()
            if self.adopt_orphans and become_subreaper():
                self._children_before = set(children(os.getpid()))
            else:
                self.adopt_orphans = False
            self._reap_expired()
            flow.push_limits(self.engine, list(self.queue.tasks.values()))
            # Single sends of this process are logged from now on, and this
            # loop's next transaction stores them (storage/sqlite_send_log.rs).
            self.engine.open_send_log()
            send_log_open = True
            self._top_up_workers(time.monotonic())
            self._loop()
        finally:
            local.discard(self)
            if not local and self._database_key:
                forget_results(self._database_key)
            if send_log_open:
                self._close_send_log()
            try:
                self._shutdown_workers()
                if self._remote:
                    self._deregister()
            finally:
                # Even if the shutdown failed half-way, the guardian kills what is left.
                self._stop_guardian()
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                self._close_engine()
                self._remove_starts_directory()
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
                self._on_storage_error(error, now)
                if self._drain_deadline is not None and now >= self._drain_deadline:
                    # Stopping, and the database is still unusable at the deadline:
                    # what the stop cannot store is left to the leases.
                    self._kill_busy_for_drain()
                    return
            self._wait(now)

    def _set_drain_deadline(self, now: float) -> float:
        """The drain deadline of a stop: ``drain_timeout`` after the first stop
        request, now after a second; storage waits are bounded by it from now on."""
        if self._drain_deadline is None:
            self._drain_deadline = now + (self.drain_timeout if self._stop_requests == 1 else 0.0)
        if self._stop_requests > 1:
            self._drain_deadline = min(self._drain_deadline, now)
        self._limit_storage_wait(now)
        return self._drain_deadline

    def _limit_storage_wait(self, now: float) -> None:
        """While stopping, no write waits for a lock past the drain deadline and
        ``STOP_STORE_GRACE``, so that a stop honours its drain timeout even while
        another program holds the database's write lock."""
        if self._drain_deadline is None or self._engine is None:
            return
        left = self._drain_deadline + STOP_STORE_GRACE - now
        self._engine.set_busy_timeout(round(min(STORAGE_BUSY_TIMEOUT, max(0.0, left)) * 1000))

    # --- leases of dead supervisors ---------------------------------------------------

    def _prepare_starts_directory(self) -> Path | None:
        directory = owner_directory(self.queue.path, self.owner)
        if directory is None:
            return None
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # Without it, a job of this supervisor's that never started counts
            # as lost if the supervisor dies: what it always did.
            log.warning("cannot record the jobs this supervisor's workers start (%s): %s", directory, error)
            return None
        return directory

    def _remove_starts_directory(self) -> None:
        """At the end of a stop: the record of what the workers started is kept
        only while some outcome was left unstored, for the reaper of those leases."""
        if self._starts_directory is not None and not (self._reports or self._completions):
            remove_starts(self._starts_directory)

    def _reap_expired(self) -> list[tuple[int, str]]:
        """Reap expired leases; the jobs of dead supervisors that no worker of
        theirs started go back to pending uncounted first (``_start_marks``)."""
        returned: list[tuple[int, str]] = []
        judged: list[tuple[str, Path]] = []
        if self._starts_directory is not None:
            expired = self.engine.expired_leases(REAP_BATCH)
            if expired:
                unstarted, judged = never_started(self.queue.path, expired)
                if unstarted:
                    returned = self.engine.return_unstarted(unstarted)
        reaped = returned + self.engine.reap_expired(REAP_BATCH)
        if judged:
            # A dead owner's record goes once none of its jobs runs any more:
            # the leases of the others may expire a little later.
            running = self.engine.list_jobs(status="running", limit=HOUSEKEEPING_BATCH)
            if len(running) < HOUSEKEEPING_BATCH:
                owners = {record.lease_owner for record in running}
                for owner, directory in judged:
                    if owner not in owners:
                        remove_starts(directory)
        return reaped

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

    def _turn(self, now: float) -> bool:
        """One turn of the loop before waiting; True when the supervisor is done."""
        if self._stop_requests:
            self._set_drain_deadline(now)
        self._enforce_deadlines(now)
        if self._storage_retry_at is not None:
            if now < self._storage_retry_at:
                return False  # Storage failed a moment ago: only deadlines until the retry.
            self._storage_retry_at = None
        self._flush_reports()
        if not self._stop_requests:
            self._top_up_workers(now)
        if self._stop_requests:
            self._flush_completions()
            self._release_claimed_ahead()
            self._drop_queued()
            # Set at the top of the turn, unless the stop came during it.
            drain_deadline = self._set_drain_deadline(now)
            if not self._busy_workers():
                return True
            if now >= drain_deadline:
                self._kill_busy_for_drain()
                return True
        else:
            if now >= self._next_heartbeat:
                self._heartbeat(now)
            if self._remote and now >= self._next_registration:
                self._renew_registration(now)
            if now >= self._next_poll:
                self._poll_changes(now)
            if now >= self._next_fire:
                self._fire_schedules(now)
            if now >= self._next_wal_check:
                self._compact_wal(now)
            if self._next_wakeup is not None and now >= self._next_wakeup:
                # An eta came (claim it), a lease ran out (reap it), a limit
                # refilled (claim) or a job expired.
                self._next_wakeup = None
                self._want_claim = True
                self._reap_expired()
                self.engine.expire_due(HOUSEKEEPING_BATCH)
            self._claim_and_dispatch(now)
            if self.until_idle and self._nothing_left():
                self.stop()
                return self._turn(now)
        self._on_storage_success()
        return False

    # --- storage failures --------------------------------------------------------------

    def _on_storage_error(self, error: StorageError, now: float) -> None:
        """Retry later; stop with the error once storage has failed for too long."""
        if self._storage_failing_since is None:
            self._storage_failing_since = now
            log.warning("the database failed (%s); retrying", error)
        failing_for = now - self._storage_failing_since
        if failing_for >= self.storage_failure_limit and not self._shutting_down:
            raise StorageError(
                f"stopping: the database {self.queue.path!r} kept failing for {failing_for:.0f} s "
                f"(last error: {error}); the jobs this supervisor was running will run again "
                "when their leases expire"
            ) from error
        self._storage_retry_at = now + self._storage_backoff
        self._storage_backoff = min(self._storage_backoff * 2, STORAGE_RETRY_MAX)

    def _on_storage_success(self) -> None:
        if self._storage_failing_since is not None:
            log.warning("the database works again")
        self._storage_failing_since = None
        self._storage_backoff = STORAGE_RETRY_MIN

    def _store(self, what: str, report: Callable[[], None]) -> None:
        """Store an outcome now, or keep it (in order) until storage works again."""
        self._reports.append((what, report))
        try:
            self._flush_reports()
        except StorageError as error:
            self._on_storage_error(error, time.monotonic())

    def _flush_reports(self) -> None:
        while self._reports:
            what, report = self._reports[0]
            if self._drain_deadline is not None:
                self._limit_storage_wait(time.monotonic())
            try:
                report()
            except StorageError:
                raise  # Kept, in order, for the retry.
            except Exception:
                # Not the storage failing but this one outcome: retrying it would
                # stop every outcome behind it. The job stays leased to this
                # supervisor until its lease expires, and then runs again.
                log.exception("%s could not be stored and was dropped", what)
            self._reports.popleft()

    def _wait(self, now: float) -> None:
        # The waiters in this process of the jobs whose outcomes the last turn
        # stored (completions, failures, kills) look now instead of at their
        # next poll; no other waiter wakes.
        if self._stored_outcomes:
            notify_outcomes(self._stored_outcomes, self._stored_results, self._database_key)
            self._stored_outcomes = []
            self._stored_results = {}
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
        for w in self._workers:
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
            self._next_poll = 0.0
        for w in list(self._workers):
            if w.channel.fd in writable:
                self._flush_output(w)
        # Messages first: a worker may have sent its result just before it died.
        for w in list(self._workers):
            if w.channel.fd in readable:
                self._read_messages(w)
        for w in list(self._workers):
            if w.sentinel in readable and w in self._workers:
                self._on_exit(w)
        if self._yield_core:
            # The workers that reported have their next job in their pipes:
            # let the one whose core this loop was woken onto get on with it;
            # the loop goes on (the commit, the next claim) when a core is free
            # or at the scheduler's next turn, while the workers run.
            self._yield_core = False
            os.sched_yield()
        # The completions just read are stored by the next turn, in the same
        # transaction as the claim of the next jobs.

    def _next_deadline(self, now: float) -> float:
        candidates = [now + 3600.0]
        if self._stop_requests:
            if self._drain_deadline is not None:
                candidates.append(self._drain_deadline)
        else:
            candidates.append(self._next_heartbeat)
            candidates.append(self._next_poll)
            if self._remote:
                candidates.append(self._next_registration)
            candidates.append(self._next_fire)
            if self._next_wakeup is not None:
                candidates.append(self._next_wakeup)
        if not self._stop_requests and len(self._workers) < self.processes + SPARE_WORKERS:
            candidates.append(self._start_not_before)
        if self._storage_retry_at is not None:
            candidates.append(self._storage_retry_at)
        for w in self._workers:
            if w.kill_at is not None:
                candidates.append(w.kill_at)
            elif w.running is not None and w.killed_for is None:
                if any(queued.dropping is None for queued in w.queued):
                    candidates.append(w.running.started + JOB_AHEAD_MAX_WAIT)
                if w.running.deadline is not None:
                    candidates.append(w.running.deadline)
                if w.running.cancel_at is not None:
                    candidates.append(w.running.cancel_at)
                if w.running.answer_by is not None:
                    candidates.append(w.running.answer_by)
                if w.running.options is not None and w.running.options.memory_limit_mb is not None:
                    candidates.append(self._next_memory_poll)
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
        if WAKE_NEW_WORK in received:
            self._want_claim = True
        if received.replace(WAKE_NEW_WORK, b""):
            self._next_poll = 0.0

    # --- claiming -------------------------------------------------------------------

    def _busy_workers(self) -> list[_Worker]:
        return [w for w in self._workers if w.running is not None]

    def _idle_workers(self) -> list[_Worker]:
        return [
            w
            for w in self._workers
            if w.ready and w.running is None and w.killed_for is None and not w.exited and not w.retiring
        ]

    def _claim_and_dispatch(self, now: float) -> None:
        """Start jobs on idle workers; store completions and claim more in one transaction."""
        self._dispatch_claimed_ahead(now)
        limit = self._claim_limit() if self._want_claim else 0
        if limit <= 0:
            self._flush_completions()
            self._dispatch_claimed_ahead(now)  # What an unmark just committed lets go.
            self._mark_held()
            self._move_queued_to_idle()
            return
        batch, self._completions = self._completions, []
        held, sent = self._take_marks()
        # Cleared before the claim, so that a send committed after the claim's
        # snapshot sees it and wakes this loop (see notify); set again below
        # if the claim came back full.
        self._want_claim = False
        try:
            applied, claimed = self.engine.complete_and_claim(
                batch, self.queues, limit, self.owner, self._lease_ms(), held=held, sent=sent
            )
        except StorageError:
            # Kept for the next try; if this supervisor stops first, the jobs run again.
            self._completions = batch + self._completions
            self._restore_marks(held, sent)
            self._want_claim = True
            raise
        self._marks_committed(held, sent)
        self._after_completions(batch, applied)
        if len(claimed) < limit:
            # Nothing more is runnable now: sleep until a change or the next eta.
            self._schedule_wakeup()
        else:
            self._want_claim = True
        self._claimed_ahead.extend(claimed)
        self._dispatch_claimed_ahead(now)
        self._mark_held()
        self._move_queued_to_idle()

    def _claim_limit(self) -> int:
        """How many jobs to claim now: one for every idle worker, plus the ones claimed ahead."""
        idle = len(self._idle_workers())
        free_slots = self.processes - len(self._busy_workers())
        held_ahead = len(self._claimed_ahead) + sum(len(w.queued) for w in self._workers)
        # The jobs in a stopped worker's pipe (asked back, not answered) can
        # exceed the budget for as long as it is stopped: an idle worker still
        # gets its job meanwhile.
        budget = self.processes * self._ahead_per_worker()
        return min(free_slots, idle) + max(0, budget - held_ahead)

    def _ahead_per_worker(self) -> int:
        """Jobs claimed ahead per worker: ``prefetch``, or more while jobs are short."""
        if self.prefetch == 0:
            return 0
        return max(self.prefetch, jobs_ahead_for(self._typical_job_s))

    def _dispatch_claimed_ahead(self, now: float) -> None:
        if not self._claimed_ahead:
            return
        free_slots = self.processes - len(self._busy_workers())
        if free_slots > 0:
            for worker in self._idle_workers()[:free_slots]:
                if not self._claimed_ahead or not self._may_send(self._claimed_ahead[0]):
                    break
                self._dispatch(self._claimed_ahead.popleft(), worker, now)
        if self._stop_requests or len(self._busy_workers()) < self.processes:
            return  # A slot is free (its worker is starting): the job waits for it here.
        for worker in self._workers:
            if not self._claimed_ahead:
                break
            if self._takes_job_ahead(worker, now):
                if not self._may_send(self._claimed_ahead[0]):
                    break
                self._dispatch(self._claimed_ahead.popleft(), worker, now, ahead=True)

    def _takes_job_ahead(self, w: _Worker, now: float) -> bool:
        """Whether a busy worker can be sent its next job now, to start when its current one ends."""
        running = w.running
        if running is None or w.killed_for is not None or w.retiring:
            return False
        # A new worker runs what the others ran.
        typical_job_s = self._typical_job_s if w.typical_job_s is None else w.typical_job_s
        if len(w.queued) >= jobs_ahead_for(typical_job_s):
            return False
        if now - running.started >= JOB_AHEAD_MAX_WAIT or w.last_job_s >= JOB_AHEAD_MAX_WAIT:
            return False  # Long jobs: the next worker free takes the next one.
        if running.cancel_at is not None or running.answer_by is not None:
            return False  # Its worker may be killed soon, for the running job.
        # A worker about to be recycled must not hold a job it would not run.
        if self.max_worker_memory_mb is not None:
            return False
        return (
            self.max_tasks_per_worker is None or w.tasks_done + 1 + len(w.queued) < self.max_tasks_per_worker
        )

    def _release_claimed_ahead(self) -> None:
        """Put the jobs claimed ahead back to pending (stopping), as if never claimed."""
        self._given_back.clear()
        while self._claimed_ahead:
            job = self._claimed_ahead.popleft()
            self._forget_held(job.id)
            self._store(f"release job {job.id}", functools.partial(self._release, job.id, job.token))

    # Jobs held here, in _claimed_ahead, sent to no worker, cannot have started: the
    # database marks them ("held"), so that if this supervisor dies the lease reaper gives
    # them back with no crash counted and no error record. A job claimed and sent to a
    # worker in the same turn, the common case, is never marked. One still held after the
    # turn that claimed or got it back is marked with the next commit; it is unmarked with
    # a commit before it is sent, so that no job that may have run keeps the mark.

    def _mark_held(self) -> None:
        """Mark, with the next commit, the jobs held here that are not marked."""
        for job in self._claimed_ahead:
            if job.id not in self._held_marked and job.id not in self._to_unmark:
                self._to_mark.setdefault(job.id, job.token)

    def _may_send(self, job: ClaimedJob) -> bool:
        """Whether ``job``, the next held here, may go to a worker now."""
        if self._to_mark.pop(job.id, None) is not None:
            return True  # Its mark was not committed yet.
        if job.id not in self._held_marked:
            return True
        # Unmarked with this turn's commit, then sent; with it, the others held here,
        # which would go next.
        for waiting in self._claimed_ahead:
            if waiting.id in self._held_marked:
                self._to_unmark.setdefault(waiting.id, waiting.token)
        return False

    def _take_marks(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The marks and unmarks for this commit: ``(held, sent)``."""
        held, sent = list(self._to_mark.items()), list(self._to_unmark.items())
        self._to_mark, self._to_unmark = {}, {}
        return held, sent

    def _restore_marks(self, held: list[tuple[int, int]], sent: list[tuple[int, int]]) -> None:
        """The commit failed: its marks and unmarks wait for the next one."""
        self._to_mark = dict(held) | self._to_mark
        self._to_unmark = dict(sent) | self._to_unmark

    def _marks_committed(self, held: list[tuple[int, int]], sent: list[tuple[int, int]]) -> None:
        self._held_marked.difference_update(job_id for job_id, _ in sent)
        if held:
            still_held = {job.id for job in self._claimed_ahead}
            self._held_marked.update(job_id for job_id, _ in held if job_id in still_held)

    def _forget_held(self, job_id: int) -> None:
        """The job left ``_claimed_ahead`` without going to a worker (released, cancelled)."""
        self._held_marked.discard(job_id)
        self._to_mark.pop(job_id, None)
        self._to_unmark.pop(job_id, None)

    def _dispatch(self, job: ClaimedJob, worker: _Worker, now: float, *, ahead: bool = False) -> None:
        task = REGISTRY.find(job.task_name, self._task_scope)
        serial = self._given_back.pop(job.id, None) if self._given_back else None
        if serial is None:
            self._dispatch_serial += 1
            serial = self._dispatch_serial
        seq = worker.runs_sent + 1
        try:
            worker.channel.send(
                ("run", job.id, job.token, job.attempt, job.task_name, job.payload, job.labels, seq)
            )
        except OSError:
            # The worker died between its last message and this one; the job never
            # started, so it goes back without counting an attempt.
            self._store(f"re-queue job {job.id}", lambda: self._requeue(job.id, job.token))
            self._want_claim = True
            return
        worker.runs_sent = seq
        options = task.options_ if task is not None else None
        if ahead:
            # Its clock starts when the job before it ends (_start_queued).
            worker.queued.append(_Running(job, now, None, options, serial=serial, seq=seq))
        else:
            worker.running = _Running(job, now, self._deadline(job, now), options, serial=serial, seq=seq)

    @staticmethod
    def _deadline(job: ClaimedJob, started: float) -> float | None:
        return None if job.timeout_ms is None else started + job.timeout_ms / 1000

    def _start_queued(self, w: _Worker, now: float) -> None:
        """The running job of ``w`` ended: the first job sent ahead has started."""
        if not w.queued:
            return
        queued = w.queued.popleft()
        queued.started = now
        queued.deadline = self._deadline(queued.job, now)
        if queued.dropping == "cancel":
            # The worker answers "dropped" at once if it had not started it.
            queued.answer_by = now + DROP_ANSWER_WAIT
        w.running = queued

    def _drop(self, w: _Worker, jobs: list[_Running], reason: str) -> None:
        """Ask a worker for jobs sent ahead to it back; it answers ``dropped`` for each it has not started."""
        # No signal: a thread of the worker reads these while its task runs,
        # and the task is not interrupted (a signal would cut short a sleep or
        # a blocking call in its C code).
        try:
            for queued in jobs:
                frame = DROP_FRAME.pack(queued.seq, queued.job.id, queued.job.token)
                if not w.channel.send_drop(frame):
                    return  # Not taken now (a full pipe): asked again at a later turn.
                queued.dropping = reason
        except OSError:
            pass  # The worker is gone: its sentinel hands the jobs back (_on_exit).

    @staticmethod
    def _not_dropping(w: _Worker) -> list[_Running]:
        return [queued for queued in w.queued if queued.dropping is None]

    def _move_queued_to_idle(self) -> None:
        """Nothing else to run and a slot idle: ask back jobs waiting behind running ones."""
        if self._claimed_ahead or self._want_claim or self._stop_requests:
            return
        idle = min(self.processes - len(self._busy_workers()), len(self._idle_workers()))
        if idle <= 0:
            return
        waiting = {id(w): self._not_dropping(w) for w in self._workers if w.killed_for is None}
        asked: dict[int, list[_Running]] = {}
        for _ in range(idle):
            # The last job of the longest line is the one that would start last.
            longest = max(self._workers, key=lambda w: len(waiting.get(id(w), ())))
            line = waiting.get(id(longest))
            if not line:
                break
            asked.setdefault(id(longest), []).append(line.pop())
        for w in self._workers:
            self._drop(w, asked.get(id(w), []), "move")

    def _drop_queued(self) -> None:
        """Stopping: ask every worker for the jobs sent ahead to it back, to be released."""
        for w in self._workers:
            if not w.exited:
                self._drop(w, self._not_dropping(w), "release")

    def _on_dropped(self, w: _Worker, job_id: int, token: int) -> None:
        """A worker gave back a job sent ahead without starting it."""
        for held in (w.running, *w.queued):
            if held is not None and held.job.id == job_id and held.job.token == token:
                break
        else:
            return
        if held is w.running:
            # It had been counted as started when the job before it ended:
            # the worker went on to the next one in its pipe instead.
            w.running = None
            self._want_claim = True
            self._start_queued(w, time.monotonic())
        else:
            w.queued = deque(queued for queued in w.queued if queued is not held)
        self._return_unstarted(held)
        if not self._stop_requests and not self._shutting_down:
            self._dispatch_claimed_ahead(time.monotonic())

    def _return_unstarted(self, held: _Running) -> None:
        """A job sent ahead that never started: cancelled, released, or run by another worker."""
        job = held.job
        if held.dropping == "cancel":
            self._store(f"cancel job {job.id}", lambda: self._finish_cancelled(job.id, job.token))
        elif held.dropping == "release" or self._stop_requests or self._shutting_down:
            self._store(f"release job {job.id}", functools.partial(self._release, job.id, job.token))
        else:
            # Still leased to this supervisor, and no attempt of it ran. It was
            # claimed before every job not sent yet, and goes before them, in
            # its order among the others given back.
            place = 0
            for waiting in self._claimed_ahead:
                given_back = self._given_back.get(waiting.id)
                if given_back is None or given_back > held.serial:
                    break
                place += 1
            self._claimed_ahead.insert(place, job)
            self._given_back[job.id] = held.serial
            self._want_claim = True

    def _return_all_unstarted(self, w: _Worker) -> None:
        """``w`` is gone: the jobs still in its pipe never started."""
        while w.queued:
            self._return_unstarted(w.queued.popleft())

    def _schedule_wakeup(self) -> None:
        wake_ms = self.engine.next_wakeup_ms()
        if wake_ms is None:
            self._next_wakeup = None
            return
        # One millisecond past it: a lease counts as expired only after its deadline.
        delay = max(0.0, (wake_ms + 1 - self.engine.now_ms()) / 1000)
        self._next_wakeup = time.monotonic() + delay

    def _nothing_left(self) -> bool:
        # The last claim came back short (no runnable job in our queues), and the
        # engine knows of no future eta and no running job of any supervisor.
        return (
            not self._want_claim
            and not self._busy_workers()
            and not self._claimed_ahead
            and self._next_wakeup is None
        )

    def _lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    # --- changes, heartbeats, cancellation -----------------------------------------------

    def _renew_registration(self, now: float) -> None:
        """Renew this supervisor's registration and reap the jobs of lost ones."""
        self.engine.register_supervisor(
            self.owner, socket.gethostname(), os.getpid(), round(REGISTRATION_LEASE * 1000)
        )
        self._next_registration = now + REGISTRATION_RENEW_INTERVAL
        if self._reap_expired():
            self._want_claim = True

    def _deregister(self) -> None:
        try:
            self.engine.deregister_supervisor(self.owner)
        except StorageError as error:
            # The registration then expires on its own, with nothing left to reap.
            log.warning("could not remove this supervisor's registration: %s", error)

    def _poll_changes(self, now: float) -> None:
        self._next_poll = now + self._change_poll_interval
        version = self.engine.data_version()
        if version == self._data_version:
            return
        self._want_claim = True
        self._next_fire = min(self._next_fire, now)  # A schedule may have been added.
        if self._busy_workers() or self._claimed_ahead:
            for job_id, token in self.engine.cancel_requests(self.owner):
                self._cancel(job_id, token)
        # Only now: if reading the cancel requests failed, the next poll reads them again.
        self._data_version = version

    def _close_send_log(self) -> None:
        self._limit_storage_wait(time.monotonic())
        try:
            self.engine.close_send_log()
        except StorageError as error:
            # They stay in the log file: the next transaction of this process
            # stores them, or, if it ends first, the next process to open the
            # database or the next heartbeat of any supervisor.
            log.warning("the sends still in this process's send log were not stored now: %s", error)

    def _heartbeat(self, now: float) -> None:
        leases = [(w.running.job.id, w.running.job.token) for w in self._busy_workers() if w.running]
        leases += [(queued.job.id, queued.job.token) for w in self._workers for queued in w.queued]
        leases += [(job.id, job.token) for job in self._claimed_ahead]
        if leases:
            # A failed heartbeat is retried with the next storage retry, not a third of a lease later.
            cancels = self.engine.heartbeat(self.owner, leases, self._lease_ms())
        self._next_heartbeat = now + self.lease * HEARTBEAT_FRACTION
        if leases:
            tokens = dict(leases)
            for job_id in cancels:
                self._cancel(job_id, tokens[job_id])
        if self._reap_expired():
            self._want_claim = True
        # The sends logged by a process that died before storing them.
        if self.engine.recover_send_logs():
            self._want_claim = True
        self.engine.expire_due(HOUSEKEEPING_BATCH)
        self.engine.purge_expired_results(HOUSEKEEPING_BATCH)

    def _compact_wal(self, now: float) -> None:
        self._next_wal_check = now + WAL_CHECK_INTERVAL
        if self.queue.path == ":memory:" or self._remote:
            return
        try:
            size = os.stat(self.queue.path + "-wal").st_size
        except OSError:
            return
        if size > WAL_COMPACT_BYTES and not self.engine.compact_log(WAL_COMPACT_WAIT_MS):
            log.debug("the write-ahead log (%d bytes) is in use; truncating it later", size)

    def _fire_schedules(self, now: float) -> None:
        """Fire the due schedules, then sleep until the next fire (or a change)."""
        if schedule.fire_due(self.engine, self.queue, self.owner):
            self._want_claim = True
        self._next_fire = now + 3600.0
        next_ms = self.engine.next_fire_ms()
        if next_ms is not None:
            delay = max(0.0, (next_ms - self.engine.now_ms()) / 1000)
            self._next_fire = min(self._next_fire, time.monotonic() + delay)

    def _cancel(self, job_id: int, token: int) -> None:
        for job in self._claimed_ahead:
            if job.id == job_id and job.token == token:
                # Not started yet: it ends cancelled without a worker being killed.
                self._claimed_ahead.remove(job)
                self._given_back.pop(job_id, None)
                self._forget_held(job_id)
                self._store(f"cancel job {job_id}", lambda: self._finish_cancelled(job_id, token))
                return
        for w in self._workers:
            for queued in w.queued:
                if queued.job.id == job_id and queued.job.token == token:
                    # Waiting in the worker's pipe behind the running job, which goes on.
                    if queued.dropping is None:
                        self._drop(w, [queued], "cancel")
                    return
        for w in self._busy_workers():
            running = w.running
            if running is None or running.job.id != job_id or running.job.token != token or w.killed_for:
                continue
            if running.answer_by is not None:
                return  # Asked back while it waited; the worker's answer decides (_enforce_deadlines).
            grace = running.options.cancel_grace if running.options is not None else 0.0
            if grace > 0:
                if running.cancel_at is None:
                    # Tell the task (SIGUSR1 sets the flag ctx.check_cancelled() reads);
                    # kill it if it has not stopped when the grace is over.
                    running.cancel_at = time.monotonic() + grace
                    try:
                        os.kill(w.pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        pass
            else:
                self._kill(w, "cancel", grace=0.0)

    # --- worker messages and deaths -------------------------------------------------

    def _read_messages(self, w: _Worker) -> None:
        if w.exited:
            return
        try:
            messages = w.channel.receive()
        except ProtocolError as error:
            # Nothing more can be understood from this worker: treat it as lost.
            log.error("worker process %s sent a broken message (%s); killing it", w.pid, error)
            w.channel.eof = True
            self._kill_tree(w)
            return
        # An end-of-file is reported by the process sentinel, as the worker's death.
        for message in messages:
            if w.exited:
                return
            try:
                self._on_message(w, message)
            except StorageError:
                raise
            except Exception as error:
                # A message of the wrong shape: nothing more from this worker
                # can be trusted; its death reports its job as lost.
                log.error(
                    "worker process %s sent a message stoker cannot act on (%r); killing it", w.pid, error
                )
                w.channel.eof = True
                kill_tree(w.pid)
                return

    def _flush_output(self, w: _Worker) -> None:
        try:
            w.channel.flush()
        except OSError:
            pass  # The worker is gone; its sentinel reports it.

    def _on_message(self, w: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            w.ready = True
            self._startup_failures = 0
            self._want_claim = True
            if len([x for x in self._workers if x.ready]) >= self.processes:
                self.started.set()
        elif kind == "startup_error":
            w.startup_error = storable(message[1])
        elif kind == "progress":
            _, job_id, token, progress = message
            if w.running is not None and w.running.job.id == job_id and w.running.job.token == token:
                try:
                    if type(progress) is not str or len(progress) > PROGRESS_MAX_CHARS:
                        raise ValueError(f"a {type(progress).__qualname__} of {len(progress)} characters")
                    self.engine.set_progress(job_id, token, storable_text(progress))
                except Exception as error:
                    # Progress is advisory: a later report replaces a lost one.
                    log.warning("the progress of job %s was not stored: %s", job_id, error)
        elif kind == "done":
            _, job_id, token, result, usage = message
            running = w.running
            if self._finish_running(w, job_id, token):
                if result is not None and (
                    type(result) is not bytes or len(result) > serialization.STORED_VALUE_MAX_BYTES
                ):
                    self._refuse_result(job_id, token, result, w.pid)
                    return
                options = running.options if running is not None else None
                if options is not None and options.result_ttl is not None:
                    # Read back from the database, which knows when it expires.
                    self._results_not_kept.add(job_id)
                self._completions.append((job_id, token, result, self._with_worker(usage, w)))
        elif kind == "failed":
            _, job_id, token, captured, retryable, usage = message
            if self._finish_running(w, job_id, token):
                self._report_failure(
                    job_id,
                    token,
                    "error",
                    captured,
                    w.pid,
                    retryable=retryable,
                    usage=self._with_worker(usage, w),
                )
        elif kind == "cancelled":
            _, job_id, token, _usage = message
            if self._finish_running(w, job_id, token):
                self._store(f"cancel job {job_id}", lambda: self._finish_cancelled(job_id, token))
        elif kind == "dropped":
            _, job_id, token = message
            self._on_dropped(w, job_id, token)
        elif kind == "requeue":
            _, job_id, token = message
            if self._finish_running(w, job_id, token):
                pid = w.pid
                self._store(f"re-queue job {job_id}", lambda: self._requeue_on_request(job_id, token, pid))

    def _refuse_result(self, job_id: int, token: int, result: object, pid: int) -> None:
        """A result the database cannot take: the attempt fails instead, saying why."""
        size = f"{len(result)} bytes" if isinstance(result, bytes) else f"a {type(result).__qualname__}"
        error = SerializationError(
            f"the result of job {job_id} could not be stored: it is {size}, and stoker stores "
            f"bytes of at most {serialization.STORED_VALUE_MAX_BYTES}"
        )
        self._report_failure(job_id, token, "error", _supervisor_error(error), pid)

    def _finish_running(self, w: _Worker, job_id: int, token: int) -> bool:
        running = w.running
        if running is None or running.job.id != job_id or running.job.token != token:
            return False
        if w.killed_for and not running.condemned:
            # It ended just as its worker was being killed for it: the kill's
            # outcome stands. The worker may have gone on to the first job sent
            # ahead: that one counts as started (condemned), and dies with it.
            if w.queued:
                w.running = None
                self._report_end_of_killed_or_lost(w, running)
                self._start_queued(w, time.monotonic())
                if w.running is not None:
                    w.running.condemned = True
            return False
        w.running = None
        w.tasks_done += 1
        self._want_claim = True
        now = time.monotonic()
        w.last_job_s = now - running.started
        w.typical_job_s = _average(w.typical_job_s, w.last_job_s)
        self._typical_job_s = _average(self._typical_job_s, w.last_job_s)
        if w.last_job_s >= YIELD_AFTER_JOB_OF:
            self._yield_core = True
        if w.queued:
            self._start_queued(w, now)
            if w.killed_for is not None and w.running is not None:
                # Ended after its worker was killed for the job before it: the
                # worker may have started the next one too.
                w.running.condemned = True
        if self._should_recycle(w):
            self._retire(w)
        elif not self._stop_requests and not self._shutting_down:
            # The worker waits for its next job from now on: hand it the one
            # claimed ahead at once, before the rest of this wake-up's work.
            self._dispatch_claimed_ahead(now)
        return True

    def _with_worker(self, usage: str | None, w: _Worker) -> str | None:
        """The attempt's usage with the worker that ran it, as ``owner/pid``."""
        if usage is None or type(usage) is not str or not usage.isascii():
            return None  # The worker's meter writes ASCII JSON; anything else is not its.
        # Spliced into the worker's JSON object instead of parsed and dumped
        # again: this runs once per job.
        head = usage.rstrip()
        if not head.endswith("}") or head.rstrip("} \n").endswith("{"):
            try:
                values = json.loads(usage)
            except ValueError:
                return None
            if not isinstance(values, dict):
                return None
            values["worker"] = f"{self.owner}/{w.pid}"
            return json.dumps(values)
        if not w.usage_suffix:
            w.usage_suffix = f', "worker": {json.dumps(f"{self.owner}/{w.pid}")}}}'
        return head[:-1] + w.usage_suffix

    def _requeue_on_request(self, job_id: int, token: int, pid: int) -> None:
        record = self.engine.get(job_id)
        requeues = record.attempt - 1 - record.failures - record.crashes
        if requeues < MAX_REQUEUES:
            self.engine.requeue(job_id, token)
            self._post_save(job_id, "pending")
            return
        error = RequeueLimitError(
            f"job {job_id} ({record.task_name}) asked to be requeued more than {MAX_REQUEUES} times",
            job_id=job_id,
            attempt=record.attempt,
        )
        # Already inside a stored report (see _store): fail directly.
        self._fail(job_id, token, "error", _supervisor_error(error), pid, retryable=False, usage=None)

    def _should_recycle(self, w: _Worker) -> bool:
        if self.max_tasks_per_worker is not None and w.tasks_done >= self.max_tasks_per_worker:
            return True
        if self.max_worker_memory_mb is not None:
            return _tree_rss_kib(w.pid) > self.max_worker_memory_mb * 1024
        return False

    def _retire(self, w: _Worker) -> None:
        """Let an idle worker exit gracefully; the spare takes its slot and a new spare starts."""
        w.retiring = True
        try:
            w.channel.send(("stop",))
        except (BrokenPipeError, OSError):
            pass  # Its sentinel reports the exit either way.

    def _top_up_workers(self, now: float) -> None:
        """Start workers until there are ``processes`` plus the spares (after any start-up back-off)."""
        while len(self._workers) < self.processes + SPARE_WORKERS and now >= self._start_not_before:
            self._start_worker()

    def _post_save(self, job_id: int, status: str) -> None:
        self._stored_outcomes.append(job_id)
        for middleware in self.queue.hooks.middlewares:
            try:
                middleware.post_save(job_id, status)
            except Exception:
                log.exception("middleware %s.post_save raised for job %s", handler_name(middleware), job_id)

    def _flush_completions(self) -> None:
        if not (self._completions or self._to_mark or self._to_unmark) or self._storage_retry_at is not None:
            return
        batch, self._completions = self._completions, []
        if self._drain_deadline is not None:
            self._limit_storage_wait(time.monotonic())
        held, sent = self._take_marks()
        try:
            if held or sent:
                applied, _ = self.engine.complete_and_claim(
                    batch, self.queues, 0, self.owner, self._lease_ms(), held=held, sent=sent
                )
            else:
                applied = self.engine.complete_many(batch)
        except StorageError:
            # Kept for the next try; if this supervisor stops first, the jobs run again.
            self._completions = batch + self._completions
            self._restore_marks(held, sent)
            raise
        self._marks_committed(held, sent)
        self._after_completions(batch, applied)

    def _after_completions(
        self, batch: list[tuple[int, int, bytes | None, str | None]], applied: list[bool]
    ) -> None:
        for (job_id, token, result, _), ok in zip(batch, applied, strict=True):
            kept = job_id not in self._results_not_kept
            if not kept:
                self._results_not_kept.discard(job_id)
            if ok:
                if result is not None and self._database_key and kept:
                    self._stored_results[job_id] = result
                self._post_save(job_id, "complete")
            else:
                log.warning("the outcome of job %s (token %s) was stale and was refused", job_id, token)

    def _report_failure(
        self,
        job_id: int,
        token: int,
        kind: str,
        captured: CapturedError,
        pid: int,
        *,
        retryable: bool = True,
        usage: str | None = None,
    ) -> None:
        self._store(
            f"the failure of job {job_id}",
            lambda: self._fail(job_id, token, kind, captured, pid, retryable=retryable, usage=usage),
        )

    def _fail(
        self,
        job_id: int,
        token: int,
        kind: str,
        captured: CapturedError,
        pid: int,
        *,
        retryable: bool,
        usage: str | None,
    ) -> None:
        worker = f"{self.owner}/{pid}"
        outcome = fail_storably(self.engine, job_id, token, kind, captured, worker, retryable, usage)
        if outcome == "stale":
            log.warning("the failure of job %s (token %s) was stale and was refused", job_id, token)
        else:
            self._post_save(job_id, "scheduled" if outcome == "retry" else outcome)

    def _on_exit(self, w: _Worker) -> None:
        self._read_messages(w)
        w.process.join(KILL_REAP_WAIT)
        w.exited = True
        self._tell_guardian(f"-{w.pid}")
        self._workers.remove(w)
        w.close()
        running, w.running = w.running, None
        self._return_all_unstarted(w)
        if running is not None:
            self._report_end_of_killed_or_lost(w, running)
            self._want_claim = True
        elif not w.ready and w.killed_for is None and not w.retiring:
            self._on_startup_failure(w)
        self._kill_orphans()
        if not self._stop_requests:
            self._top_up_workers(time.monotonic())

    def _kill_orphans(self) -> None:
        """Kill what a worker that died on its own (a segfault, an OOM kill,
        ``os._exit``) left running: with this process a subreaper, its task's
        orphans were re-parented here. Every child that is not a worker, the
        guardian, multiprocessing's fork server or resource tracker, or one this
        process had before it started supervising, is one of them."""
        if not self.adopt_orphans:
            return
        known = self._children_before | {w.pid for w in self._workers} | _multiprocessing_helpers()
        if self._guardian is not None:
            known.add(self._guardian.pid)
        for pid in children(os.getpid()):
            if pid in known:
                continue
            kill_tree(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def _report_end_of_killed_or_lost(self, w: _Worker, running: _Running) -> None:
        job = running.job
        exit_text = describe_exit(w.process.exitcode)
        usage = json.dumps(
            {
                "wall_s": round(time.monotonic() - running.started, 6),
                "peak_rss_kib": running.peak_rss_kib or None,
                "worker": f"{self.owner}/{w.pid}",
            }
        )
        if running.condemned or w.killed_for in ("drain", "shutdown"):
            # Killed through no fault of its own (a condemned job was killed
            # for the job before it): back to pending, no failure counted.
            self._store(f"re-queue job {job.id}", lambda: self._requeue(job.id, job.token))
        elif w.killed_for == "memory":
            limit = running.options.memory_limit_mb if running.options else None
            error: BaseException = MemoryLimitExceededError(
                f"job {job.id} ({job.task_name}) attempt {job.attempt} used "
                f"{running.peak_rss_kib / 1024:.0f} MiB, over its memory limit of {limit:g} MiB; "
                f"its worker process {w.pid} was killed",
                job_id=job.id,
                attempt=job.attempt,
            )
            self._report_failure(job.id, job.token, "error", _supervisor_error(error), w.pid, usage=usage)
        elif w.killed_for == "timeout":
            timeout_s = (job.timeout_ms or 0) / 1000
            error = TaskTimeoutError(
                f"job {job.id} ({job.task_name}) attempt {job.attempt} ran past its hard timeout of "
                f"{timeout_s:g} s; its worker process {w.pid} was killed",
                job_id=job.id,
                attempt=job.attempt,
            )
            self._report_failure(job.id, job.token, "timeout", _supervisor_error(error), w.pid, usage=usage)
        elif w.killed_for == "cancel":
            self._store(f"cancel job {job.id}", lambda: self._finish_cancelled(job.id, job.token))
        else:
            suffix = (
                " (possibly by the out-of-memory killer)" if w.process.exitcode == -signal.SIGKILL else ""
            )
            error = WorkerLostError(
                f"the worker process {w.pid} running job {job.id} ({job.task_name}) attempt {job.attempt} "
                f"{exit_text}{suffix}",
                job_id=job.id,
                attempt=job.attempt,
            )
            self._report_failure(job.id, job.token, "crash", _supervisor_error(error), w.pid, usage=usage)

    def _finish_cancelled(self, job_id: int, token: int) -> None:
        if self.engine.finish_cancelled(job_id, token):
            self._post_save(job_id, "cancelled")
        else:
            log.warning("job %s was cancelled but its token %s was stale", job_id, token)

    def _release(self, job_id: int, token: int) -> None:
        if not self.engine.release(job_id, token):
            log.warning("job %s could not be released: its token %s was stale", job_id, token)

    def _requeue(self, job_id: int, token: int) -> None:
        if not self.engine.requeue(job_id, token):
            log.warning("job %s could not be re-queued: its token %s was stale", job_id, token)

    def _on_startup_failure(self, w: _Worker) -> None:
        if w.startup_error is None and w.process.exitcode == MAIN_REIMPORT_EXIT_CODE:
            # Every worker would do the same: the main module is at fault, not the start.
            main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
            raise MainModuleNotGuardedError(
                f"worker process {w.pid} stopped while importing {main} again: that module sends jobs, "
                "waits for results or starts a worker pool when it is imported, and worker processes "
                f"({self._context.get_start_method()}) import the main module again in each of them; "
                'put that code under `if __name__ == "__main__":` (the worker\'s stderr names the line)'
            )
        if w.startup_error is None and w.process.exitcode == -signal.SIGKILL:
            # Killed from outside (an operator, the out-of-memory killer) while it
            # started: not a sign that workers cannot start, so it is not counted.
            log.warning("worker process %s was killed (SIGKILL) before it was ready; starting another", w.pid)
            return
        self._startup_failures += 1
        cause = w.startup_error
        detail = (
            f"{cause.exc_type}: {cause.message}\n{cause.traceback}"
            if cause
            else f"it {describe_exit(w.process.exitcode)}"
        )
        log.error("worker process %s failed to start: %s", w.pid, detail)
        backoff = min(STARTUP_BACKOFF_MAX, STARTUP_BACKOFF * 2 ** (self._startup_failures - 1))
        self._start_not_before = time.monotonic() + backoff
        if self._startup_failures >= STARTUP_FAILURE_LIMIT:
            raise WorkerStartupError(
                f"{self._startup_failures} worker processes in a row failed to start; the last one: {detail}"
            )

    # --- deadlines and kills ------------------------------------------------------------

    def _enforce_deadlines(self, now: float) -> None:
        poll_memory = now >= self._next_memory_poll
        if poll_memory:
            self._next_memory_poll = now + MEMORY_POLL_INTERVAL
        for w in list(self._workers):
            running = w.running
            if w.queued and running is not None and now >= running.started + JOB_AHEAD_MAX_WAIT:
                # Behind a long job: the next workers free take them instead.
                self._drop(w, self._not_dropping(w), "move")
            if running is not None and w.killed_for is None:
                if running.answer_by is not None and now >= running.answer_by:
                    # Asked back for a cancel while it waited, it started anyway.
                    running.answer_by = None
                    running.dropping = None
                    self._cancel(running.job.id, running.job.token)
                    if w.killed_for is not None:
                        continue
                if running.cancel_at is not None and now >= running.cancel_at:
                    self._kill(w, "cancel", grace=0.0)
                    continue
                limit = running.options.memory_limit_mb if running.options is not None else None
                if poll_memory and limit is not None:
                    rss = _tree_rss_kib(w.pid)
                    running.peak_rss_kib = max(running.peak_rss_kib, rss)
                    if rss > limit * 1024:
                        self._kill(w, "memory", grace=0.0)
                        continue
            if w.kill_at is not None and now >= w.kill_at:
                self._kill(w, w.killed_for or "timeout", grace=0.0)
            elif (
                w.running is not None
                and w.killed_for is None
                and w.running.deadline is not None
                and now >= w.running.deadline
            ):
                self._kill(w, "timeout", grace=self.kill_grace)

    def _kill(self, w: _Worker, reason: str, *, grace: float) -> None:
        """Kill a worker and its descendants; report its job once the process is gone."""
        w.killed_for = reason
        if grace > 0 and w.kill_at is None:
            w.kill_at = time.monotonic() + grace
            signal_tree(w.pid, signal.SIGTERM)
            return
        w.kill_at = None
        self._kill_tree(w)
        w.process.join(KILL_REAP_WAIT)
        if w in self._workers:
            self._on_exit(w)

    def _kill_tree(self, w: _Worker) -> None:
        """SIGKILL a worker and every process descending from it (``setsid`` and orphaned ones too).

        It takes a millisecond or two (a few reads of /proc); the worker is
        stopped first, so nothing of its tree escapes meanwhile.
        """
        if w.process.exitcode is None:
            kill_tree(w.pid)

    def _kill_busy_for_drain(self) -> None:
        for w in self._busy_workers():
            if w.killed_for is None:
                self._kill(w, "drain", grace=0.0)

    # --- worker processes -------------------------------------------------------------

    def _start_worker(self) -> None:
        self._worker_serial += 1
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        drops_read, drops_write = self._context.Pipe(duplex=False)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                child_conn,
                os.getpid(),
                self.task_modules,
                self.queue.sealer.secret if "stoker.executor" in self.task_modules else None,
                self._task_scope,
                self._initializer,
                None if self._starts_directory is None else str(self._starts_directory),
                drops_read,
            ),
            name=f"{WORKER_PROCESS_PREFIX}-{self._worker_serial}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        drops_read.close()
        self._tell_guardian(f"+{process.pid}")
        self._workers.append(_Worker(process, Channel(parent_conn, drops_write)))

    def _shutdown_workers(self) -> None:
        self._shutting_down = True
        if self._drain_deadline is None:
            # Stopped without a drain (the loop failed): storing gets the grace alone.
            self._drain_deadline = time.monotonic()
        self._limit_storage_wait(time.monotonic())
        for w in self._workers:
            if w.running is not None and not w.exited:
                self._kill_tree(w)
                w.killed_for = w.killed_for or "shutdown"
            else:
                try:
                    w.channel.send(("stop",))
                except OSError:
                    pass
        deadline = time.monotonic() + KILL_REAP_WAIT
        for w in list(self._workers):
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                self._kill_tree(w)
                w.process.join(KILL_REAP_WAIT)
            if w.process.exitcode is not None:
                self._tell_guardian(f"-{w.pid}")
            if self._engine is not None:
                # What it said before it died: whether the job sent ahead started.
                self._read_messages(w)
            if w.running is not None and self._engine is not None:
                self._report_end_of_killed_or_lost(w, w.running)
                w.running = None
            if self._engine is not None:
                self._return_all_unstarted(w)
            w.close()
        self._workers.clear()
        self._kill_orphans()
        self._storage_retry_at = None
        self._release_claimed_ahead()
        try:
            self._flush_reports()
            self._flush_completions()
        except StorageError as error:
            log.error(
                "%d outcome(s) could not be stored (%s); those jobs run again when their leases expire",
                len(self._reports) + len(self._completions),
                error,
            )

    def _start_guardian(self) -> None:
        """Start the process that kills the workers if this supervisor dies (see ``_guardian``)."""
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
        self._guardian = subprocess.Popen(
            [sys.executable, script], stdin=subprocess.PIPE, close_fds=True, start_new_session=True
        )

    def _tell_guardian(self, line: str) -> None:
        if self._guardian is None or self._guardian.stdin is None:
            return
        try:
            self._guardian.stdin.write(line.encode() + b"\n")
            self._guardian.stdin.flush()
        except (BrokenPipeError, OSError):
            log.error("the guardian process is gone; workers may outlive a crash of this supervisor")
            self._guardian = None

    def _stop_guardian(self) -> None:
        guardian, self._guardian = self._guardian, None
        if guardian is None:
            return
        if guardian.stdin is not None:
            try:
                guardian.stdin.close()
            except OSError:
                pass
        try:
            guardian.wait(KILL_REAP_WAIT)
        except subprocess.TimeoutExpired:
            guardian.kill()
            guardian.wait()

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


def _multiprocessing_helpers() -> set[int]:
    """The pids of multiprocessing's fork server and resource tracker of this process, where running."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None),
        getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None),
    }
    return {pid for pid in pids if isinstance(pid, int)}


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a worker and its descendants (``setsid`` and orphaned ones too), in KiB.

    0 if it is gone.
    """
    try:
        total = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
    for descendant in live_descendants(pid):
        try:
            total += psutil.Process(descendant).memory_info().rss
        except psutil.Error:
            pass
    return int(total) // 1024


def _supervisor_error(error: BaseException) -> CapturedError:
    """An error raised by the supervisor itself, stored like a task's error.

    It is stored without a pickle: the caller rebuilds stoker's own errors from
    their type name and message (``remote_errors.rebuild``), so there is no
    pickle to sign on a signed queue, nor one a forger could swap.
    """
    return CapturedError(
        exc_type=qualified_name(type(error)),
        message=str(error),
        traceback=f"{qualified_name(type(error))}: {error}\n",
        exc_pickle=None,
    )


class SupervisorThread:
    """A supervisor running on a background thread (for tests and embedding)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stoker-supervisor", daemon=True)
        self._thread.start()
        # Registered after multiprocessing's own exit hook, so it runs first:
        # that hook joins every child process, and would wait forever for the
        # workers of a pool that nobody stopped.
        atexit.register(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        if self._thread.is_alive():
            self.supervisor.stop()
            self.supervisor.stop()  # A second stop kills running jobs and re-queues them.
            self._thread.join(2 * KILL_REAP_WAIT)

    def _run(self) -> None:
        try:
            self.supervisor.run()
        except BaseException as exc:
            self.error = exc
            if isinstance(exc, WorkerStartupError) and self.supervisor._database_key:
                # The waiters of this process for jobs it would have run learn why at once.
                pool_failed(self.supervisor._database_key, exc)
            self.supervisor.started.set()
            raise

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until every worker is ready (or the supervisor failed)."""
        return self.supervisor.started.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully and wait for the thread to end."""
        self.supervisor.stop()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            atexit.unregister(self._stop_at_exit)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> SupervisorThread:  # noqa: PYI034 - not meant to be subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
