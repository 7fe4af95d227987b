"""The pool's tunables: each a named constant with the trade-off it sets.

The modules of the pool read them as ``tunables.NAME`` where a test changes
one (``monkeypatch.setattr(tunables, ...)``) and the change must be seen.
"""

from __future__ import annotations

from .._base import wakeup

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
#: another one: ``_base/wakeup.py``), so this poll is only the backstop for a
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
#: database: cancel requests, schedules). Defined in ``stoker._base.wakeup``.
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
