//! The public API of the engine: a storage, a clock and a random source.
//!
//! The engine validates arguments, reads `now` from its clock and draws retry
//! jitter from its random source, then hands the whole state transition to the
//! storage. It is `Send + Sync`: many threads may share one engine.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::clock::Clock;
use crate::error::EngineError;
use crate::model::{
    check_duration, CancelOutcome, ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureReport,
    JobFilter, JobRecord, NewJob, StaleOutcome, Status,
};
use crate::storage::{ClaimRequest, Storage, WakeListener};

/// Durable job state and scheduling; see the crate documentation.
#[derive(Debug)]
pub struct Engine {
    pub(crate) storage: Box<dyn Storage>,
    clock: Arc<dyn Clock>,
    rng: Mutex<fastrand::Rng>,
    /// The wake-up listener, started by the first [`Engine::wake_fd`].
    listener: OnceLock<Option<Box<dyn WakeListener>>>,
}

impl Engine {
    /// An engine over `storage` that reads the time from `clock`.
    pub fn new(storage: Box<dyn Storage>, clock: Arc<dyn Clock>) -> Self {
        Self {
            storage,
            clock,
            rng: Mutex::new(fastrand::Rng::new()),
            listener: OnceLock::new(),
        }
    }

    /// Seeds the jitter source, so that retry delays are reproducible.
    pub fn with_seed(self, seed: u64) -> Self {
        Self {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            ..self
        }
    }

    /// The engine clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Moves a manual clock forward; an invalid option on the system clock.
    pub fn advance_clock(&self, ms: i64) -> Result<(), EngineError> {
        self.clock.advance_ms(ms)
    }

    /// A jitter source for one operation, forked so the lock is not held while
    /// the storage works.
    fn jitter_source(&self) -> fastrand::Rng {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fork()
    }

    /// Validates and stores the jobs in one transaction; their ids, in order.
    pub fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<i64>, EngineError> {
        for job in jobs {
            job.validate()?;
        }
        self.storage.enqueue(jobs, self.now_ms())
    }

    /// Stores one copy of `template` per payload, each with that payload, in
    /// one transaction (a batch send); their ids, in order.
    pub fn enqueue_copies(
        &self,
        template: &NewJob,
        payloads: &[&[u8]],
    ) -> Result<Vec<i64>, EngineError> {
        template.validate()?;
        self.storage
            .enqueue_copies(template, payloads, self.now_ms())
    }

    /// Leases up to `limit` runnable jobs of `queues` to `owner` for `lease_ms`.
    pub fn claim(
        &self,
        queues: &[String],
        limit: usize,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedJob>, EngineError> {
        check_claim(queues, owner, lease_ms)?;
        self.storage
            .claim(queues, limit, owner, lease_ms, self.now_ms())
    }

    /// Completes `completions` and claims as [`Engine::claim`] does, in one
    /// transaction; whether each completion was applied, and the claimed jobs.
    pub fn complete_and_claim(
        &self,
        completions: &[Completion],
        claim: &ClaimRequest<'_>,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), EngineError> {
        check_claim(claim.queues, claim.owner, claim.lease_ms)?;
        self.storage
            .complete_and_claim(completions, claim, self.now_ms())
    }

    /// Extends the leases `owner` still holds; the ids with a cancel request.
    pub fn heartbeat(
        &self,
        owner: &str,
        leases: &[(i64, i64)],
        lease_ms: i64,
    ) -> Result<Vec<i64>, EngineError> {
        check_owner(owner)?;
        check_lease(lease_ms)?;
        self.storage
            .heartbeat(owner, leases, lease_ms, self.now_ms())
    }

    /// Completes one attempt; false if its token is stale (recorded).
    pub fn complete(
        &self,
        job_id: i64,
        token: i64,
        result: Option<Vec<u8>>,
    ) -> Result<bool, EngineError> {
        let applied = self.complete_many(&[Completion {
            job_id,
            token,
            result,
            usage: None,
        }])?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// Completes many attempts in one transaction.
    pub fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, EngineError> {
        self.storage.complete_many(completions, self.now_ms())
    }

    /// Records a failed attempt and applies the retry policy.
    pub fn fail(
        &self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
    ) -> Result<FailOutcome, EngineError> {
        let mut rng = self.jitter_source();
        self.storage
            .fail(job_id, token, report, &mut || rng.f64(), self.now_ms())
    }

    /// Cancels a job, or asks for a running one to be stopped.
    pub fn cancel(&self, job_id: i64) -> Result<CancelOutcome, EngineError> {
        self.storage.cancel(job_id, self.now_ms())
    }

    /// `(job_id, token)` of the running jobs of `owner` with a cancel request.
    pub fn cancel_requests(&self, owner: &str) -> Result<Vec<(i64, i64)>, EngineError> {
        self.storage.cancel_requests(owner)
    }

    /// Ends a running attempt as cancelled; false if stale (recorded).
    pub fn finish_cancelled(&self, job_id: i64, token: i64) -> Result<bool, EngineError> {
        self.storage.finish_cancelled(job_id, token, self.now_ms())
    }

    /// Puts a running attempt back to pending; false if stale (recorded).
    pub fn requeue(&self, job_id: i64, token: i64) -> Result<bool, EngineError> {
        self.storage.requeue(job_id, token, self.now_ms())
    }

    /// Undoes the claim of a job never started; false if stale (recorded).
    pub fn release(&self, job_id: i64, token: i64) -> Result<bool, EngineError> {
        self.storage.release(job_id, token, self.now_ms())
    }

    /// Running jobs whose lease expired, without touching them (see
    /// [`Storage::expired_leases`]).
    pub fn expired_leases(&self, limit: usize) -> Result<Vec<(i64, i64, String)>, EngineError> {
        self.storage.expired_leases(limit, self.now_ms())
    }

    /// Gives back expired jobs no worker started (see
    /// [`Storage::return_unstarted`]).
    pub fn return_unstarted(
        &self,
        jobs: &[(i64, i64)],
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError> {
        self.storage.return_unstarted(jobs, self.now_ms())
    }

    /// Fails up to `limit` running jobs whose lease expired.
    pub fn reap_expired(&self, limit: usize) -> Result<Vec<(i64, FailOutcome)>, EngineError> {
        let mut rng = self.jitter_source();
        self.storage
            .reap_expired(limit, &mut || rng.f64(), self.now_ms())
    }

    /// The job's row.
    pub fn get(&self, job_id: i64) -> Result<JobRecord, EngineError> {
        self.storage.get(job_id)
    }

    /// The job's status.
    pub fn status(&self, job_id: i64) -> Result<Status, EngineError> {
        let statuses = self.storage.statuses(&[job_id])?;
        statuses
            .first()
            .copied()
            .ok_or(EngineError::NotFound(job_id))
    }

    /// The statuses of many jobs, in one read.
    pub fn statuses(&self, job_ids: &[i64]) -> Result<Vec<Status>, EngineError> {
        self.storage.statuses(job_ids)
    }

    /// The job's error history, oldest first.
    pub fn errors(&self, job_id: i64) -> Result<Vec<ErrorRecord>, EngineError> {
        self.storage.errors(job_id)
    }

    /// Job counts for every status.
    pub fn stats(&self) -> Result<Vec<(Status, i64)>, EngineError> {
        self.storage.stats()
    }

    /// Dead jobs, most recently finished first.
    pub fn dead_letters(&self, limit: usize, offset: usize) -> Result<Vec<JobRecord>, EngineError> {
        self.storage.dead_letters(limit, offset)
    }

    /// Enqueues a new job from a dead one; its id.
    pub fn replay(&self, job_id: i64) -> Result<i64, EngineError> {
        self.storage.replay(job_id, self.now_ms())
    }

    /// Refused stale outcomes, most recent first.
    pub fn stale_outcomes(&self, limit: usize) -> Result<Vec<StaleOutcome>, EngineError> {
        self.storage.stale_outcomes(limit)
    }

    /// The earliest eta of a scheduled job, lease deadline of a running job,
    /// expiry of a job not started, or time a limit lets a held-back job run.
    pub fn next_wakeup_ms(&self) -> Result<Option<i64>, EngineError> {
        self.storage.next_wakeup_ms()
    }

    /// Changes whenever another connection commits.
    pub fn data_version(&self) -> Result<i64, EngineError> {
        self.storage.data_version()
    }

    /// Logs one copy of `template` with `payload` if this process's send
    /// log takes it at once (see [`Storage::try_log_send`]): its id. Never
    /// waits for the database, so it may run where blocking is costly.
    pub fn try_log_send(
        &self,
        template: &NewJob,
        payload: &[u8],
    ) -> Result<Option<i64>, EngineError> {
        template.validate()?;
        self.storage.try_log_send(template, payload, self.now_ms())
    }

    /// Sends of single plain jobs from this process go to a send log until
    /// the matching [`Engine::close_send_log`]: a supervisor of this process
    /// moves them into the database at its next transaction (see
    /// `stoker-sqlite/src/send_log.rs`). PostgreSQL stores every send at once.
    pub fn open_send_log(&self) -> Result<(), EngineError> {
        self.storage.open_send_log()
    }

    /// Undoes one [`Engine::open_send_log`]; the last one moves what is
    /// pending into the database and removes the log.
    pub fn close_send_log(&self) -> Result<(), EngineError> {
        self.storage.close_send_log()
    }

    /// Moves the send logs of processes that died into the database; how
    /// many jobs they held that were not stored yet.
    pub fn recover_send_logs(&self) -> Result<usize, EngineError> {
        self.storage.recover_send_logs()
    }

    /// How long writes wait for another writer's lock from now on (see
    /// [`Storage::set_busy_timeout`]).
    pub fn set_busy_timeout(&self, timeout: Duration) {
        self.storage.set_busy_timeout(timeout);
    }

    /// Stores what this process still holds and closes the database (see
    /// [`Storage::close`]); every later call fails.
    pub fn close(&self) -> Result<(), EngineError> {
        self.storage.close()
    }

    /// Truncates the write-ahead log if no reader uses it within `wait`;
    /// whether it did (see [`Storage::compact_log`]).
    pub fn compact_log(&self, wait: Duration) -> Result<bool, EngineError> {
        self.storage.compact_log(wait)
    }

    /// Drops the results and error histories of up to `limit` finished jobs
    /// past their retention (`result_ttl_ms` after they finished); how many.
    pub fn purge_expired_results(&self, limit: usize) -> Result<usize, EngineError> {
        self.storage.purge_expired_results(limit, self.now_ms())
    }

    /// Stores the progress (JSON text) of a running attempt; false if stale.
    pub fn set_progress(
        &self,
        job_id: i64,
        token: i64,
        progress: &str,
    ) -> Result<bool, EngineError> {
        self.storage
            .set_progress(job_id, token, progress, self.now_ms())
    }

    /// Jobs matching `filter`, newest first.
    pub fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<JobRecord>, EngineError> {
        self.storage.list_jobs(filter, limit, offset)
    }

    /// Deletes up to `limit` finished jobs in `statuses` that finished more
    /// than `older_than_ms` ago (any age if `None`); returns how many.
    pub fn purge_jobs(
        &self,
        statuses: &[Status],
        older_than_ms: Option<i64>,
        limit: usize,
    ) -> Result<usize, EngineError> {
        if let Some(age) = older_than_ms {
            check_duration("older_than_ms", age)?;
        }
        let before = older_than_ms.map(|age| self.now_ms().saturating_sub(age));
        self.storage.purge_jobs(statuses, before, limit)
    }
}

impl Engine {
    /// Registers (or renews) `owner` as a live supervisor for `lease_ms`; its
    /// running jobs are reaped as lost once the registration expires.
    pub fn register_supervisor(
        &self,
        owner: &str,
        host: &str,
        pid: i64,
        lease_ms: i64,
    ) -> Result<(), EngineError> {
        check_owner(owner)?;
        check_lease(lease_ms)?;
        self.storage
            .register_supervisor(owner, host, pid, lease_ms, self.now_ms())
    }

    /// Removes the registration of a supervisor that stops cleanly.
    pub fn deregister_supervisor(&self, owner: &str) -> Result<(), EngineError> {
        check_owner(owner)?;
        self.storage.deregister_supervisor(owner)
    }

    /// A descriptor that becomes readable when jobs may have become runnable
    /// or a cancel was requested (PostgreSQL notifications); `None` when the
    /// storage sends none. The listener starts on the first call.
    pub fn wake_fd(&self) -> Result<Option<i32>, EngineError> {
        if let Some(listener) = self.listener.get() {
            return Ok(listener.as_ref().map(|listener| listener.fd()));
        }
        let started = self.storage.start_wake_listener()?;
        // A racing first call may have set it; either listener serves.
        let listener = self.listener.get_or_init(|| started);
        Ok(listener.as_ref().map(|listener| listener.fd()))
    }

    /// Empties the wake-up descriptor; how many wake-ups it held.
    pub fn drain_wakeups(&self) -> usize {
        self.listener
            .get()
            .and_then(Option::as_ref)
            .map_or(0, |listener| listener.drain())
    }

    /// Whether the wake-up listener's connection is up (false before
    /// [`Engine::wake_fd`] and for storages without notifications).
    pub fn wake_listener_connected(&self) -> bool {
        self.listener
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|listener| listener.is_connected())
    }
}

fn check_claim(queues: &[String], owner: &str, lease_ms: i64) -> Result<(), EngineError> {
    check_owner(owner)?;
    check_lease(lease_ms)?;
    if let Some(queue) = queues.iter().find(|queue| queue.is_empty()) {
        return Err(EngineError::invalid(format!(
            "queues must not contain an empty name, got {queue:?}"
        )));
    }
    Ok(())
}

fn check_owner(owner: &str) -> Result<(), EngineError> {
    if owner.is_empty() {
        return Err(EngineError::invalid("owner must not be empty"));
    }
    Ok(())
}

fn check_lease(lease_ms: i64) -> Result<(), EngineError> {
    if lease_ms <= 0 {
        return Err(EngineError::invalid(format!(
            "lease_ms must be positive, got {lease_ms}"
        )));
    }
    check_duration("lease_ms", lease_ms)
}
