"""The Rust engine of stoker: durable job state and scheduling over SQLite.

This private module is the compiled binding (``rust/stoker-py``) over the
PyO3-free engine crate (``rust/stoker-engine``). It holds no Python objects:
payloads, results and pickled exceptions are opaque ``bytes``. Every method
that touches storage releases the GIL. Errors are raised as the classes of
``stoker.errors``.

Times are integer milliseconds since the Unix epoch, read from the engine's
clock (the system clock, or a manual clock for tests).
"""

from typing import final

__version__: str
SCHEMA_VERSION: int
PG_SCHEMA_VERSION: int
"""The schema version this engine writes and reads."""

@final
class NewJob:
    """A job to enqueue: what to run and how to treat its attempts."""

    def __init__(
        self,
        task_name: str,
        payload: bytes,
        *,
        queue: str = "default",
        priority: int = 0,
        max_retries: int = 0,
        max_crashes: int = 1,
        backoff_base_ms: int = 1000,
        backoff_cap_ms: int = 300000,
        jitter: float = 0.0,
        timeout_ms: int | None = None,
        delay_ms: int = 0,
        eta_ms: int | None = None,
        result_ttl_ms: int | None = None,
        labels: str | None = None,
        unique_key: str | None = None,
        expires_after_ms: int | None = None,
        depends_on: list[int] | None = None,
        fail_when_limited: bool = False,
    ) -> None:
        """Describe a job.

        ``max_retries`` bounds the failed attempts (errors and timeouts) that are
        retried; ``max_crashes`` separately bounds retries after the worker was
        lost (crash, kill, expired lease), so a poison job ends dead. The retry
        delay after the n-th failure is ``min(backoff_cap_ms, backoff_base_ms *
        2**(n-1))``, reduced by a random fraction of at most ``jitter`` (0 to 1).
        ``delay_ms`` and ``eta_ms`` (absolute) are exclusive. ``labels`` is JSON
        text the engine stores and hands back unread. Wrong values raise
        ``InvalidOptionError`` naming the option.
        ``delay_ms`` and ``eta_ms`` (absolute) are exclusive. ``result_ttl_ms``
        keeps the result and error history that long after the job finished.

        Flow control: a live job (waiting, pending, scheduled, running) with the
        same ``unique_key`` is returned instead of a new one; a job not started
        ``expires_after_ms`` after enqueue ends ``expired``; a job with
        ``depends_on`` is ``waiting`` until they all complete (and dead if one
        ends dead, cancelled or expired); with ``fail_when_limited`` an empty
        rate limit or an open circuit breaker raise ``RateLimitExceededError`` or
        ``CircuitBreakerOpenError`` here instead of letting the job wait.
        Wrong values raise ``InvalidOptionError`` naming the option.
        """
    @property
    def task_name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...

@final
class ClaimedJob:
    """A job handed to one supervisor: run it and report with ``token``."""

    @property
    def id(self) -> int: ...
    @property
    def token(self) -> int:
        """The fencing token: outcomes carrying another token are refused."""
    @property
    def attempt(self) -> int:
        """1 for the first run, counting every claim of this job."""
    @property
    def task_name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def timeout_ms(self) -> int | None: ...
    @property
    def lease_deadline_ms(self) -> int: ...
    @property
    def labels(self) -> str | None:
        """The caller's labels (JSON text)."""

@final
class JobRecord:
    """A snapshot of one job row."""

    @property
    def id(self) -> int: ...
    @property
    def task_name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def status(self) -> str:
        """One of pending, scheduled, running, complete, dead, cancelled, expired, waiting."""
    @property
    def payload(self) -> bytes: ...
    @property
    def attempt(self) -> int:
        """How many times the job was claimed."""
    @property
    def failures(self) -> int:
        """Failed attempts counted against ``max_retries``."""
    @property
    def crashes(self) -> int:
        """Lost attempts counted against ``max_crashes``."""
    @property
    def max_retries(self) -> int: ...
    @property
    def max_crashes(self) -> int: ...
    @property
    def backoff_base_ms(self) -> int: ...
    @property
    def backoff_cap_ms(self) -> int: ...
    @property
    def jitter(self) -> float: ...
    @property
    def timeout_ms(self) -> int | None: ...
    @property
    def result_ttl_ms(self) -> int | None: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def eta_ms(self) -> int: ...
    @property
    def started_ms(self) -> int | None:
        """When the latest attempt was claimed."""
    @property
    def finished_ms(self) -> int | None: ...
    @property
    def lease_owner(self) -> str | None: ...
    @property
    def lease_deadline_ms(self) -> int | None: ...
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def result(self) -> bytes | None: ...
    @property
    def result_expires_ms(self) -> int | None: ...
    @property
    def replayed_from(self) -> int | None:
        """For a replay, the id of the dead job it was made from."""
    @property
    def labels(self) -> str | None:
        """The caller's labels (JSON text)."""
    @property
    def progress(self) -> str | None:
        """The latest progress its running attempt reported (JSON text); cleared by a claim."""
    @property
    def usage(self) -> str | None:
        """Resources used by the latest finished attempt (JSON text)."""
    @property
    def unique_key(self) -> str | None: ...
    @property
    def expires_ms(self) -> int | None:
        """When the job expires if it has not started by then."""

@final
class ErrorRecord:
    """One failed attempt in a job's error history."""

    @property
    def id(self) -> int: ...
    @property
    def job_id(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def kind(self) -> str:
        """error, timeout, crash, or lease_expired."""
    @property
    def exc_type(self) -> str:
        """Qualified name of the exception type, e.g. ``builtins.ValueError``."""
    @property
    def message(self) -> str: ...
    @property
    def traceback(self) -> str: ...
    @property
    def exc_pickle(self) -> bytes | None:
        """The pickled exception, when it could be pickled."""
    @property
    def failed_ms(self) -> int: ...
    @property
    def worker(self) -> str: ...
    @property
    def usage(self) -> str | None:
        """Resources the attempt used (JSON text), when known."""

@final
class StaleOutcome:
    """An outcome that was refused because its fencing token was stale."""

    @property
    def job_id(self) -> int: ...
    @property
    def token(self) -> int: ...
    @property
    def owner(self) -> str: ...
    @property
    def outcome(self) -> str:
        """What was refused: complete, fail, cancel, requeue, release, heartbeat, progress."""
    @property
    def at_ms(self) -> int: ...

@final
class Schedule:
    """A stored schedule."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str | None: ...
    @property
    def kind(self) -> str:
        """cron, interval or once."""
    @property
    def cron(self) -> str | None: ...
    @property
    def timezone(self) -> str | None: ...
    @property
    def every_ms(self) -> int | None: ...
    @property
    def at_ms(self) -> int | None:
        """The fire time of a one-shot schedule, or the first fire of an interval."""
    @property
    def missed(self) -> str:
        """skip or catch_up."""
    @property
    def source(self) -> str | None: ...
    @property
    def labels(self) -> str: ...
    @property
    def paused(self) -> bool: ...
    @property
    def next_fire_ms(self) -> int | None:
        """None once a one-shot schedule has fired."""
    @property
    def last_fire_ms(self) -> int | None: ...
    @property
    def enqueued(self) -> int:
        """Jobs this schedule enqueued."""
    @property
    def created_ms(self) -> int: ...
    @property
    def task_name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def payload(self) -> bytes: ...

@final
class ScheduleFire:
    """One recorded fire of a schedule."""

    @property
    def schedule_id(self) -> int: ...
    @property
    def fire_ms(self) -> int:
        """The fire time that was due."""
    @property
    def at_ms(self) -> int:
        """When it was handled."""
    @property
    def outcome(self) -> str:
        """enqueued, duplicate, missed, vetoed or error."""
    @property
    def job_id(self) -> int | None: ...
    @property
    def missed(self) -> int:
        """Later fire times that had also passed."""
    @property
    def owner(self) -> str: ...
    @property
    def message(self) -> str: ...

@final
class LimitState:
    """The limits of one task or queue and their state."""

    @property
    def key(self) -> str:
        """``task:NAME`` or ``queue:NAME``."""
    @property
    def rate(self) -> tuple[int, int, int] | None:
        """``(count, per_ms, burst)`` of the token bucket."""
    @property
    def tokens(self) -> int | None:
        """Whole tokens in the bucket now."""
    @property
    def concurrency(self) -> int | None: ...
    @property
    def running(self) -> int:
        """Running jobs of the task now."""
    @property
    def breaker(self) -> tuple[int, int, int] | None:
        """``(failures, window_ms, cooldown_ms)`` of the circuit breaker."""
    @property
    def breaker_state(self) -> str:
        """closed, open or half_open."""
    @property
    def recent_failures(self) -> int:
        """Counted failures within the breaker's window."""
    @property
    def open_until_ms(self) -> int | None: ...

@final
class Engine:
    """Durable job state over one SQLite database file (WAL mode) or one
    PostgreSQL database."""

    def __init__(self, path: str, *, clock_ms: int | None = None, busy_timeout_ms: int = 5000) -> None:
        """Open (and create if missing) the database at ``path``.

        ``path`` is a SQLite file, or a PostgreSQL URL (``postgresql://`` or
        ``postgres://``) whose database (or first ``search_path`` schema) is
        empty or stoker's. With ``clock_ms`` the engine uses a manual clock
        starting at that time, moved only by ``advance_clock``; tests use it.
        Without it, a PostgreSQL engine follows the server's clock. A database
        that is not stoker's raises ``NotAStokerDatabaseError``; another schema
        version, ``SchemaVersionError``; a malformed URL,
        ``InvalidOptionError``; an unreachable server, ``StorageError``.
        """
    @property
    def path(self) -> str:
        """The file path, or the URL with its password masked."""
    @property
    def backend(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
    @property
    def schema_version(self) -> int:
        """The schema version of the database's backend."""
    def wake_fd(self) -> int | None:
        """A descriptor that becomes readable when jobs may have become runnable
        or a cancel was requested (PostgreSQL notifications); ``None`` for
        SQLite. The listener starts on the first call."""
    def drain_wakeups(self) -> int:
        """Empty the wake-up descriptor; how many wake-ups it held."""
    def register_supervisor(self, owner: str, host: str, pid: int, lease_ms: int) -> None:
        """Register (or renew) ``owner`` as a live supervisor for ``lease_ms``.

        Once the registration expires, ``reap_expired`` fails the owner's
        running jobs as lost without waiting for their own leases. SQLite keeps
        no registrations (this does nothing).
        """
    def deregister_supervisor(self, owner: str) -> None:
        """Remove the registration of a supervisor that stops cleanly."""
    def now_ms(self) -> int:
        """The engine clock."""
    def advance_clock(self, ms: int) -> None:
        """Move the manual clock forward; ``InvalidOptionError`` on the system clock."""
    def enqueue(self, jobs: list[NewJob]) -> list[int]:
        """Store the jobs in one transaction and return their ids, in order."""
    def enqueue_payloads(self, template: NewJob, payloads: list[bytes]) -> list[int]:
        """Enqueue, in one transaction, one job per payload: a copy of ``template`` with that payload."""
    def claim(self, queues: list[str], limit: int, owner: str, lease_ms: int) -> list[ClaimedJob]:
        """Claim up to ``limit`` runnable jobs of ``queues`` for ``owner``.

        Highest priority first, then oldest (lowest id); only jobs whose eta has
        come. Each claimed job becomes running with a lease until ``now +
        lease_ms`` and a fresh token.
        """
    def heartbeat(self, owner: str, leases: list[tuple[int, int]], lease_ms: int) -> list[int]:
        """Extend the leases ``(job_id, token)`` held by ``owner`` to ``now + lease_ms``.

        Returns the ids among them whose cancellation was requested. Leases that
        are no longer held (stale tokens) are skipped and recorded.
        """
    def complete(self, job_id: int, token: int, result: bytes | None, usage: str | None = None) -> bool:
        """Mark the attempt complete with its pickled result; False if stale (recorded).

        ``usage`` is JSON text describing the resources the attempt used.
        """
    def complete_many(
        self,
        outcomes: list[tuple[int, int, bytes | None]] | list[tuple[int, int, bytes | None, str | None]],
    ) -> list[bool]:
        """``complete`` for many jobs in one transaction: ``(job_id, token, result[, usage])``."""
    def complete_and_claim(
        self,
        outcomes: list[tuple[int, int, bytes | None]] | list[tuple[int, int, bytes | None, str | None]],
        queues: list[str],
        limit: int,
        owner: str,
        lease_ms: int,
        *,
        held: list[tuple[int, int]] = ...,
        sent: list[tuple[int, int]] = ...,
    ) -> tuple[list[bool], list[ClaimedJob]]:
        """``complete_many`` then ``claim``, in one transaction (one commit instead of two).

        First, ``held``: running jobs of ``owner`` that it holds, claimed ahead
        and sent to no worker, are marked so (if their lease expires,
        ``reap_expired`` gives them back to pending without counting a crash),
        and ``sent``: marked jobs about to go to a worker, unmarked.

        Returns whether each completion was applied, and the claimed jobs.
        """
    def fail(
        self,
        job_id: int,
        token: int,
        *,
        kind: str,
        exc_type: str,
        message: str,
        traceback: str = "",
        exc_pickle: bytes | None = None,
        worker: str = "",
        retryable: bool = True,
        usage: str | None = None,
    ) -> tuple[str, int | None]:
        """Record a failed attempt and apply the retry policy.

        ``kind`` is error or timeout (counted against ``max_retries``), crash
        or lease_expired (counted against ``max_crashes``). Returns ``("retry",
        eta_ms)``, ``("dead", None)``, ``("cancelled", None)`` when a cancel was
        requested (the job is not retried), or ``("stale", None)`` when the token
        is stale (the outcome is then recorded and not applied).
        """
    def cancel(self, job_id: int) -> str:
        """Cancel a job.

        A pending or scheduled job becomes cancelled (returns ``"cancelled"``); a
        running one gets a cancel request (``"requested"``) that its supervisor
        acts on; a finished one is left alone and its status is returned.
        """
    def cancel_requests(self, owner: str) -> list[tuple[int, int]]:
        """``(job_id, token)`` of the running jobs of ``owner`` with a cancel request."""
    def finish_cancelled(self, job_id: int, token: int) -> bool:
        """A running job whose worker was stopped for its cancel request ends cancelled."""
    def release(self, job_id: int, token: int) -> bool:
        """Undo the claim of a job that was claimed but never started.

        It is pending again with its attempt taken back, as if never claimed
        (cancelled instead if its cancel was requested); False if the token is
        stale (recorded).
        """
    def requeue(self, job_id: int, token: int) -> bool:
        """Put a running job back to pending without counting a failed attempt.

        A job whose cancel was requested ends cancelled instead.
        """
    def reap_expired(self, limit: int = 100) -> list[tuple[int, str]]:
        """Fail the running jobs whose lease has expired (kind lease_expired).

        A job marked held (``complete_and_claim``) goes back to pending
        instead, with no crash counted and no error record (``"returned"``).
        Returns ``(job_id, "retry" | "dead" | "cancelled" | "returned")`` for each.
        """
    def expired_leases(self, limit: int = 100) -> list[tuple[int, int, str]]:
        """Running jobs whose lease expired, as ``(job_id, token, owner)``, earliest first; nothing changes.

        The reaper of a dead supervisor's jobs reads what its workers started
        before ``reap_expired`` counts the rest as lost.
        """
    def return_unstarted(self, jobs: list[tuple[int, int]]) -> list[tuple[int, str]]:
        """Give back each ``(job_id, token)`` still running that attempt with an expired lease.

        For jobs no worker started (their supervisor and workers are gone and
        none recorded the start): pending again (``"returned"``; cancelled if
        a cancel was requested), no crash or error record counted, the attempt
        kept taken.
        """
    def get(self, job_id: int) -> JobRecord:
        """The job's row; ``JobNotFoundError`` if there is none."""
    def status(self, job_id: int) -> str:
        """The job's status, read without its payload or result."""
    def statuses(self, job_ids: list[int]) -> list[str]:
        """``status`` of many jobs in one read."""
    def errors(self, job_id: int) -> list[ErrorRecord]:
        """The job's error history, oldest first."""
    def stats(self) -> dict[str, int]:
        """Job counts by status; every status is present (expired and waiting included)."""
    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Dead jobs, most recently finished first."""
    def replay(self, job_id: int) -> int:
        """Enqueue a new job from a dead one, keeping its task, payload and options."""
    def stale_outcomes(self, limit: int = 100) -> list[StaleOutcome]:
        """Refused stale outcomes, most recent first."""
    def next_wakeup_ms(self) -> int | None:
        """The earliest eta, lease deadline, expiry, or time a limit lets a held-back job run."""
    def data_version(self) -> int:
        """Changes whenever another connection commits to the database."""
    def open_send_log(self) -> None:
        """Send single plain jobs of this process through its send log until ``close_send_log``.

        A logged send is one append to a file of this process; the next
        transaction of any connection of this process stores it. Calls nest;
        PostgreSQL stores every send at once.
        """
    def close_send_log(self) -> None:
        """Undo one ``open_send_log``; the last one stores what is pending and removes the log."""
    def recover_send_logs(self) -> int:
        """Store the sends logged by processes that died; how many jobs were not stored yet."""
    def set_busy_timeout(self, busy_timeout_ms: int) -> None:
        """How long writes wait for another writer's lock from now on (SQLite; ignored elsewhere)."""
    def close(self) -> None:
        """Store this process's logged sends and close the database; later calls raise ``StorageError``.

        The last connection to a SQLite file checkpoints the write-ahead log
        into it and removes the ``-wal`` and ``-shm`` files. Closing twice does
        nothing.
        """
    def compact_log(self, wait_ms: int) -> bool:
        """Truncate the write-ahead log once no reader uses it, waiting at most ``wait_ms``.

        Returns whether it was truncated (False if readers stayed, or for a
        store without such a log).
        """
    def set_progress(self, job_id: int, token: int, progress: str) -> bool:
        """Store the progress (JSON text) of a running attempt; False if stale (recorded)."""
    def list_jobs(
        self,
        *,
        status: str | None = None,
        task_name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Jobs matching every given filter, newest first."""
    def purge_jobs(self, statuses: list[str], *, older_than_ms: int | None = None, limit: int = 1000) -> int:
        """Delete finished jobs in ``statuses`` with their error history.

        Only jobs that finished more than ``older_than_ms`` ago (any, if None), at
        most ``limit``; returns how many. Unfinished statuses raise
        ``InvalidOptionError``.
        """
    def purge_expired_results(self, limit: int = 1000) -> int:
        """Drop the results and error histories of finished jobs past their retention.

        At most ``limit`` jobs (``result_ttl_ms`` after they finished); returns how many.
        """

    # --- flow control -------------------------------------------------------------
    def set_limits(
        self,
        scope: str,
        name: str,
        *,
        rate: tuple[int, int, int] | None = None,
        concurrency: int | None = None,
        breaker: tuple[int, int, int] | None = None,
    ) -> None:
        """Set (or, with no limit given, remove) the limits of a task or queue.

        ``scope`` is task or queue. ``rate`` is ``(count, per_ms, burst)``: a
        token bucket of ``count`` tokens per ``per_ms``, holding at most
        ``burst``; every claimed job takes a token of its task and of its queue,
        and jobs without one stay pending. ``concurrency`` caps running jobs of
        the task across every supervisor. ``breaker`` is ``(failures,
        window_ms, cooldown_ms)``: that many failed attempts within the window
        open the task's breaker for the cooldown, then one probe job runs at a
        time until one succeeds (closed) or fails (open again). A bucket that
        exists keeps its tokens.
        """
    def limits(self) -> list[LimitState]:
        """Every limit with its state now, by key."""
    def expire_due(self, limit: int = 1000) -> list[int]:
        """End as expired up to ``limit`` jobs whose expiry passed; their ids."""
    def dependencies(self, job_id: int) -> list[tuple[int, str]]:
        """``(job_id, status)`` of the jobs a job depends on, in the order given."""

    # --- schedules --------------------------------------------------------------
    def create_schedule(
        self,
        job: NewJob,
        *,
        kind: str,
        cron: str | None = None,
        timezone: str = "UTC",
        every_ms: int | None = None,
        at_ms: int | None = None,
        name: str | None = None,
        missed: str = "skip",
        source: str | None = None,
        labels: str = "",
    ) -> int:
        """Create a schedule that enqueues ``job`` (or update the one named ``name``).

        ``kind`` cron (``cron`` with 5 fields, or 6 with seconds first, in the
        IANA ``timezone``), interval (every ``every_ms``, first at ``at_ms`` or
        one period from now) or once (at ``at_ms``). ``missed`` says what
        happens to fires missed while no supervisor ran: skip them, or
        catch_up with one job. ``source`` names the condition supervisors
        evaluate before each fire. Returns the schedule's id.
        """
    def schedules(self) -> list[Schedule]:
        """Every schedule, by id."""
    def get_schedule(self, schedule_id: int) -> Schedule:
        """One schedule; ``ScheduleNotFoundError`` if there is none."""
    def pause_schedule(self, schedule_id: int, paused: bool = True) -> None:
        """Pause (or, with ``paused=False``, resume) a schedule."""
    def delete_schedule(self, schedule_id: int) -> bool:
        """Delete a schedule and its fire records; False if there was none."""
    def due_schedules(self, limit: int = 100) -> list[Schedule]:
        """Schedules whose next fire has come (not paused), earliest first."""
    def fire_schedule(
        self, schedule_id: int, fire_ms: int, *, owner: str, veto: str | None = None, error: str | None = None
    ) -> tuple[str, int | None]:
        """Fire the schedule's fire due at ``fire_ms``, unless vetoed.

        In one transaction: if the schedule's next fire is still ``fire_ms``, it
        moves to the next fire and one job is enqueued (or, with ``veto`` or
        ``error``, the fire is recorded as vetoed or error and skipped).
        Returns ``(outcome, job_id)``: enqueued, duplicate (a live job with the
        template's unique key), missed, vetoed, error, or lost (another
        supervisor fired it first; nothing was done).
        """
    def fire_due(self, owner: str, limit: int = 100) -> list[tuple[int, str, int | None]]:
        """Fire every due schedule that has no source: ``(schedule_id, outcome, job_id)``."""
    def schedule_fires(self, schedule_id: int, limit: int = 100) -> list[ScheduleFire]:
        """The fire records of a schedule, newest first."""
    def next_fire_ms(self) -> int | None:
        """The earliest next fire of a schedule that is not paused."""
