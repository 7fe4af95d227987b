//! The storage boundary: one trait whose operations are whole state
//! transitions.
//!
//! Each operation runs as one transaction and takes the current time as an
//! argument, so an implementation never reads a clock and the same inputs give
//! the same state. The trait is shaped for several supervisors sharing one
//! store: a claim picks and leases rows in one transaction (with PostgreSQL,
//! `SELECT ... FOR UPDATE SKIP LOCKED`), and every outcome carries its fencing
//! token into the statement that writes it (`WHERE attempt = token AND status =
//! running`), so a stale writer can never overwrite a newer attempt.
//!
//! Implementations take `&self` and synchronise internally (a connection behind
//! a mutex, or a pool), so one storage can serve many threads.

pub mod backend;
pub mod flow_storage;

use crate::error::EngineError;
use crate::model::{
    CancelOutcome, ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureReport, JobFilter,
    JobRecord, NewJob, StaleOutcome, Status,
};
use crate::schedule::{FireOutcome, NewSchedule, Planner, Verdict};

/// The exception type recorded for an attempt whose lease expired.
pub const LEASE_EXPIRED_EXC_TYPE: &str = "stoker.errors.LeaseExpiredError";

/// With limits configured, a claim reads this many candidates per queue
/// beyond its limit, so that jobs held back by a limit do not hide runnable
/// jobs of other tasks behind them. Beyond that many held-back jobs at the
/// head of a queue, the others wait for a later claim.
pub const LIMITED_SCAN_EXTRA: usize = 256;

/// A source of uniform random draws in `[0, 1)` for retry jitter.
pub type Jitter<'a> = &'a mut dyn FnMut() -> f64;

/// Payloads and results up to this many bytes are kept in the job's own row;
/// larger ones are stored aside, in `job_payloads` and `job_results`, one row
/// per job, written once and never rewritten by the job's status changes.
///
/// The row of a job is written again by every change of its status (claim,
/// lease renewal, completion, retry), and a database rewrites a value stored
/// in the row with it: SQLite copies the whole record, overflow pages
/// included, into its log. A large value in the row therefore costs its size
/// in writes on every change. A value stored aside costs one more row at
/// enqueue or completion and one more lookup when it is read. At 2 KiB a job
/// row with an inline payload still fits in one 4 KiB SQLite page, so small
/// jobs, the common case, write no overflow pages and pay no lookup;
/// PostgreSQL moves values above about 2 KiB out of its row (TOAST) anyway.
///
/// A value stored aside leaves an empty value in the row (an empty payload,
/// or an empty result for a result), which readers take as "look in the side
/// table"; a job whose value really is empty has no side row.
pub const INLINE_BLOB_MAX_BYTES: usize = 2048;

/// Whether a payload or result of `len` bytes is stored aside rather than in
/// the job's row (see [`INLINE_BLOB_MAX_BYTES`]).
pub fn stored_aside(len: usize) -> bool {
    len > INLINE_BLOB_MAX_BYTES
}

/// What a supervisor asks of a claim: up to `limit` runnable jobs of
/// `queues`, leased to `owner` for `lease_ms`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub queues: &'a [String],
    pub limit: usize,
    pub owner: &'a str,
    pub lease_ms: i64,
    /// `(job_id, token)` of running jobs of `owner` that it holds itself,
    /// claimed ahead and sent to no worker: they cannot have started. If the
    /// lease of such a job expires, the reaper gives it back to pending with
    /// no crash counted and no error record. Recorded first, in the same
    /// transaction; a job claimed is not marked (a supervisor usually sends
    /// it to a worker at once).
    pub held: &'a [(i64, i64)],
    /// `(job_id, token)` of jobs marked `held` that the supervisor is about
    /// to send to a worker: unmarked first, in the same transaction. The
    /// supervisor sends a marked job only once this is committed, so a mark
    /// the reaper finds is never of a job that may have run.
    pub sent: &'a [(i64, i64)],
}

/// The job transitions whose steps read the same in every backend: a
/// [`backend::Backend`] has them from [`backend`], written once over its
/// [`backend::JobSteps`].
pub trait Transitions {
    /// Stores the jobs in one transaction and returns their ids in order. A job
    /// whose eta has come is pending, otherwise scheduled.
    fn enqueue(&self, jobs: &[NewJob], now_ms: i64) -> Result<Vec<i64>, EngineError>;

    /// Promotes the scheduled jobs that fell due, then leases up to `limit`
    /// pending jobs of `queues` to `owner` until `now_ms + lease_ms`, highest
    /// priority first, then lowest id.
    fn claim(
        &self,
        queues: &[String],
        limit: usize,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<ClaimedJob>, EngineError>;

    /// Completes each attempt whose token is current; records the others as
    /// stale. One transaction; returns whether each was applied.
    fn complete_many(
        &self,
        completions: &[Completion],
        now_ms: i64,
    ) -> Result<Vec<bool>, EngineError>;

    /// [`Storage::complete_many`] then [`Storage::claim`], as one transaction:
    /// a supervisor that stores finished jobs and takes the next ones pays
    /// for one commit instead of two.
    fn complete_and_claim(
        &self,
        completions: &[Completion],
        claim: &ClaimRequest<'_>,
        now_ms: i64,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), EngineError>;

    /// Records a failed attempt and applies the retry policy, drawing jitter
    /// from `jitter`.
    fn fail(
        &self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<FailOutcome, EngineError>;

    /// Cancels a job that has not started, asks for a running one to be
    /// stopped, and leaves a finished one alone.
    fn cancel(&self, job_id: i64, now_ms: i64) -> Result<CancelOutcome, EngineError>;

    /// Ends a running attempt as cancelled; false (and recorded) if stale.
    fn finish_cancelled(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError>;

    /// Puts a running attempt back to pending without counting a failure;
    /// false (and recorded) if stale.
    fn requeue(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError>;

    /// Undoes the claim of a job that its supervisor never started (it was
    /// claimed ahead): back to pending with the attempt taken back, so it
    /// reads as never claimed; false (and recorded) if stale. The claimed
    /// token was never handed to a worker, so no outcome can carry it.
    fn release(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError>;

    /// Fails, as lease_expired, up to `limit` running jobs whose lease deadline
    /// is before `now_ms`. A job its supervisor held, sent to no worker
    /// ([`ClaimRequest::held`]), goes back to pending instead
    /// ([`FailOutcome::Returned`]: no crash counted, no error record).
    fn reap_expired(
        &self,
        limit: usize,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError>;

    /// Gives back, as [`FailOutcome::Returned`] (pending again, no crash and no
    /// error record counted; cancelled if a cancel was requested), each job of
    /// `jobs` (`(job id, token)`) that is still running that attempt with an
    /// expired lease: the caller knows that no worker started it (its
    /// supervisor and workers are gone, and none of them recorded its start).
    /// The attempt stays taken, so its next claim gets a token never seen.
    fn return_unstarted(
        &self,
        jobs: &[(i64, i64)],
        now_ms: i64,
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError>;

    /// The job's error history, oldest first.
    fn errors(&self, job_id: i64) -> Result<Vec<ErrorRecord>, EngineError>;

    /// Job counts for every status, zero included, in the order of
    /// [`Status::ALL`].
    fn stats(&self) -> Result<Vec<(Status, i64)>, EngineError>;

    /// Enqueues a new pending job from a dead one, with its task, payload and
    /// options; returns the new id.
    fn replay(&self, job_id: i64, now_ms: i64) -> Result<i64, EngineError>;

    /// Stores the progress (JSON text) a running attempt reported; false (and
    /// recorded) if the token is stale.
    fn set_progress(
        &self,
        job_id: i64,
        token: i64,
        progress: &str,
        now_ms: i64,
    ) -> Result<bool, EngineError>;

    /// Deletes up to `limit` finished jobs in `statuses` (terminal ones only)
    /// that finished before `finished_before_ms` (any time if `None`), with
    /// their error history; returns how many.
    fn purge_jobs(
        &self,
        statuses: &[Status],
        finished_before_ms: Option<i64>,
        limit: usize,
    ) -> Result<usize, EngineError>;

    /// Drops the results and error histories of up to `limit` finished jobs
    /// whose retention ended at or before `now_ms`; returns how many jobs.
    fn purge_expired_results(&self, limit: usize, now_ms: i64) -> Result<usize, EngineError>;

    /// Ends as expired up to `limit` not-yet-started jobs whose expiry is at
    /// or before `now_ms`, earliest first; their ids.
    fn expire_due(&self, limit: usize, now_ms: i64) -> Result<Vec<i64>, EngineError>;

    /// The jobs `job_id` depends on, in the order given, with their statuses.
    fn dependencies(&self, job_id: i64) -> Result<Vec<(i64, Status)>, EngineError>;

    /// In one transaction: if the schedule's next fire is still `fire_ms`,
    /// moves it to the planned next fire and, by the verdict and the
    /// missed-fire policy, enqueues the template's job; records the fire.
    fn fire_schedule(
        &self,
        id: i64,
        fire_ms: i64,
        verdict: &Verdict,
        planner: Planner<'_>,
        owner: &str,
        now_ms: i64,
    ) -> Result<FireOutcome, EngineError>;

    /// Stores a schedule whose first fire is `first_fire_ms`, or updates the
    /// schedule with the same name (keeping its next fire when its timing did
    /// not change); its id.
    fn create_schedule(
        &self,
        schedule: &NewSchedule,
        first_fire_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<i64, EngineError>;
}

/// Durable job state. See the module documentation for the contract every
/// implementation keeps. The shared job transitions, flow control and
/// schedules are the supertraits' operations ([`Transitions`],
/// [`flow_storage`]).
pub trait Storage:
    Transitions
    + flow_storage::FlowStorage
    + flow_storage::ScheduleStorage
    + std::fmt::Debug
    + Send
    + Sync
{
    /// Stores one copy of `template` per payload, each with that payload, in
    /// one transaction, as [`Storage::enqueue`] would store those jobs; their
    /// ids, in order. A backend may write such a batch faster than jobs that
    /// differ in more than their payload.
    fn enqueue_copies(
        &self,
        template: &NewJob,
        payloads: &[&[u8]],
        now_ms: i64,
    ) -> Result<Vec<i64>, EngineError> {
        let jobs: Vec<NewJob> = payloads
            .iter()
            .map(|payload| NewJob {
                payload: payload.to_vec(),
                ..template.clone()
            })
            .collect();
        self.enqueue(&jobs, now_ms)
    }

    /// Extends the leases `(job_id, token)` that `owner` still holds to
    /// `now_ms + lease_ms`, records the others as stale, and returns the ids
    /// among the extended ones whose cancellation was requested.
    fn heartbeat(
        &self,
        owner: &str,
        leases: &[(i64, i64)],
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<i64>, EngineError>;

    /// `(job_id, token)` of the running jobs of `owner` with a cancel request.
    fn cancel_requests(&self, owner: &str) -> Result<Vec<(i64, i64)>, EngineError>;

    /// Up to `limit` running jobs whose lease deadline is before `now_ms`,
    /// earliest first: `(job id, token, lease owner)`. It writes nothing: the
    /// reaper of a dead supervisor's jobs looks at what its workers started
    /// before [`Storage::reap_expired`] counts the rest as lost.
    fn expired_leases(
        &self,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<(i64, i64, String)>, EngineError>;

    /// The job's row.
    fn get(&self, job_id: i64) -> Result<JobRecord, EngineError>;

    /// The statuses of the jobs, in one read.
    fn statuses(&self, job_ids: &[i64]) -> Result<Vec<Status>, EngineError>;

    /// Dead jobs, most recently finished first.
    fn dead_letters(&self, limit: usize, offset: usize) -> Result<Vec<JobRecord>, EngineError>;

    /// Refused stale outcomes, most recent first.
    fn stale_outcomes(&self, limit: usize) -> Result<Vec<StaleOutcome>, EngineError>;

    /// The earliest eta of a scheduled job, lease deadline of a running job,
    /// expiry of a job not started, or time a limit lets a held-back job run.
    fn next_wakeup_ms(&self) -> Result<Option<i64>, EngineError>;

    /// A number that changes whenever another connection commits.
    fn data_version(&self) -> Result<i64, EngineError>;

    /// Appends one copy of `template` with `payload` to this process's send
    /// log and returns its id, if a log is open and can take it without
    /// waiting for the store (it has an id left); `None` otherwise, and the
    /// caller stores the job with [`Storage::enqueue_copies`].
    fn try_log_send(
        &self,
        template: &NewJob,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Option<i64>, EngineError> {
        let _ = (template, payload, now_ms);
        Ok(None)
    }

    /// How long a write waits for another writer's lock from now on before
    /// it fails with [`EngineError::Busy`]. Stores that do not wait for a
    /// lock ignore it.
    fn set_busy_timeout(&self, timeout: std::time::Duration) {
        let _ = timeout;
    }

    /// Stores what this process still holds for the database (its logged
    /// sends) and closes the connection; every later call fails. For SQLite
    /// the last connection to the file checkpoints the write-ahead log into
    /// it and removes the `-wal` and `-shm` files. Closing twice does nothing.
    fn close(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Sends of single plain jobs from this process go to a send log from
    /// now on, until as many [`Storage::close_send_log`] calls (see
    /// `stoker-sqlite/src/send_log.rs`). Stores without one keep storing each
    /// send in its own transaction.
    fn open_send_log(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Undoes one [`Storage::open_send_log`]; the last one moves what is
    /// pending into the store and removes the log.
    fn close_send_log(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Moves the send logs of processes that are gone into the store; how
    /// many jobs they held that were not stored yet.
    fn recover_send_logs(&self) -> Result<usize, EngineError> {
        Ok(0)
    }

    /// Shrinks the write-ahead log back to nothing once every reader has
    /// moved past it, waiting at most `wait` for them; whether it did. A log
    /// that readers never leave all at once is otherwise only ever appended
    /// to. Stores without such a log do nothing and return false.
    fn compact_log(&self, wait: std::time::Duration) -> Result<bool, EngineError> {
        let _ = wait;
        Ok(false)
    }

    /// Jobs matching `filter`, newest first.
    fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<JobRecord>, EngineError>;

    /// Registers `owner` as a live supervisor until `now_ms + lease_ms`, or
    /// renews its registration. When a registration expires, the running
    /// jobs of its owner are reaped as lost (by [`Storage::reap_expired`])
    /// without waiting for their own leases. SQLite serves the supervisors of
    /// one host, whose job leases are enough, and keeps no registrations.
    fn register_supervisor(
        &self,
        owner: &str,
        host: &str,
        pid: i64,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let _ = (owner, host, pid, lease_ms, now_ms);
        Ok(())
    }

    /// Removes the registration of a supervisor that stops cleanly.
    fn deregister_supervisor(&self, owner: &str) -> Result<(), EngineError> {
        let _ = owner;
        Ok(())
    }

    /// Starts listening for this storage's wake-up notifications, if it
    /// sends any (PostgreSQL: LISTEN on a dedicated connection); `None` for a
    /// storage that sends none. Called once per engine.
    fn start_wake_listener(&self) -> Result<Option<Box<dyn WakeListener>>, EngineError> {
        Ok(None)
    }
}

/// A running wake-up source: a descriptor that becomes readable when jobs
/// may have become runnable or a cancel was requested, so a supervisor can
/// wait on it in the same `poll` as on its workers. Notifications only wake:
/// whoever wakes reads the database for what to do. It stops when dropped.
pub trait WakeListener: std::fmt::Debug + Send + Sync {
    /// The descriptor that becomes readable on a wake-up.
    fn fd(&self) -> std::os::fd::RawFd;

    /// Empties the descriptor; how many wake-ups it held.
    fn drain(&self) -> usize;

    /// Whether the listening connection is currently up.
    fn is_connected(&self) -> bool;
}
