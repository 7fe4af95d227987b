//! The `Engine` class of `stoker._core`.
//!
//! Every method that touches storage runs through `Engine::call`, inside
//! `Python::detach`, so other Python threads keep running while SQLite waits
//! for its lock or the disk, or PostgreSQL answers over the network.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use stoker_engine::model::{Completion, FailureKind, FailureReport, JobFilter, Status};
use stoker_engine::{
    ClaimRequest, Clock, EngineError, LimitScope, ManualClock, MissedFires, NewSchedule,
};

use crate::errors::OrRaise;
use crate::flow::{self, LimitState, Schedule, ScheduleFire};
use crate::open::{self, Backend};
use crate::types::{ClaimedJob, ErrorRecord, JobRecord, NewJob, StaleOutcome};

/// Durable job state over one SQLite database file (WAL mode) or one
/// PostgreSQL database.
#[pyclass(frozen, module = "stoker._core")]
pub struct Engine {
    engine: Arc<stoker_engine::Engine>,
    path: String,
    backend: Backend,
}

/// Completions from ``(job_id, token, result[, usage])`` tuples.
fn completions_from(outcomes: &[Bound<'_, PyTuple>]) -> PyResult<Vec<Completion>> {
    let mut completions: Vec<Completion> = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let usage: Option<String> = match outcome.len() {
            3 => None,
            4 => outcome.get_item(3)?.extract()?,
            n => {
                return Err(PyTypeError::new_err(format!(
                    "completions are (job_id, token, result[, usage]) tuples, got one of length {n}"
                )))
            }
        };
        let result: Option<Bound<'_, PyBytes>> = outcome.get_item(2)?.extract()?;
        completions.push(Completion {
            job_id: outcome.get_item(0)?.extract()?,
            token: outcome.get_item(1)?.extract()?,
            result: result.map(|bytes| bytes.as_bytes().to_vec()),
            usage,
        });
    }
    Ok(completions)
}

/// A count argument (a limit or an offset) as a `usize`; negative values are
/// invalid options.
fn count(name: &str, value: i64) -> Result<usize, EngineError> {
    usize::try_from(value)
        .map_err(|_| EngineError::invalid(format!("{name} must be >= 0, got {value}")))
}

impl Engine {
    /// Runs `operation` on the engine with the GIL released, so other Python
    /// threads keep running while the storage waits for its lock, the disk or
    /// the network, and raises its error as the `stoker.errors` exception.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        operation: impl Send + FnOnce(&stoker_engine::Engine) -> Result<T, EngineError>,
    ) -> PyResult<T> {
        let engine = &*self.engine;
        py.detach(|| operation(engine)).or_raise(py)
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (path, *, clock_ms = None, busy_timeout_ms = 5000))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        clock_ms: Option<i64>,
        busy_timeout_ms: i64,
    ) -> PyResult<Self> {
        let busy_timeout = u64::try_from(busy_timeout_ms)
            .map(Duration::from_millis)
            .map_err(|_| {
                EngineError::invalid(format!(
                    "busy_timeout_ms must be >= 0, got {busy_timeout_ms}"
                ))
            })
            .or_raise(py)?;
        let clock: Option<Arc<dyn Clock>> = match clock_ms {
            Some(start_ms) => Some(Arc::new(ManualClock::new(start_ms))),
            None => None,
        };
        let target = path.to_string_lossy().into_owned();
        let opened = py
            .detach(|| open::open(&target, busy_timeout, clock))
            .or_raise(py)?;
        Ok(Self {
            engine: Arc::new(opened.engine),
            path: opened.shown,
            backend: opened.backend,
        })
    }

    /// ``"postgresql"`` or ``"sqlite"``.
    #[getter]
    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// The schema version of the database's backend.
    #[getter]
    fn schema_version(&self) -> i64 {
        self.backend.schema_version()
    }

    /// A descriptor that becomes readable when jobs may have become runnable
    /// or a cancel was requested (PostgreSQL notifications); ``None`` for
    /// SQLite. The listener starts on the first call.
    fn wake_fd(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        self.call(py, |engine| engine.wake_fd())
    }

    /// Empty the wake-up descriptor; how many wake-ups it held.
    fn drain_wakeups(&self) -> usize {
        self.engine.drain_wakeups()
    }

    /// Register (or renew) ``owner`` as a live supervisor for ``lease_ms``.
    ///
    /// Once the registration expires, ``reap_expired`` fails the owner's
    /// running jobs as lost without waiting for their own leases. SQLite keeps
    /// no registrations (this does nothing).
    fn register_supervisor(
        &self,
        py: Python<'_>,
        owner: &str,
        host: &str,
        pid: i64,
        lease_ms: i64,
    ) -> PyResult<()> {
        self.call(py, |engine| {
            engine.register_supervisor(owner, host, pid, lease_ms)
        })
    }

    /// Remove the registration of a supervisor that stops cleanly.
    fn deregister_supervisor(&self, py: Python<'_>, owner: &str) -> PyResult<()> {
        self.call(py, |engine| engine.deregister_supervisor(owner))
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// The engine clock.
    fn now_ms(&self, py: Python<'_>) -> i64 {
        // A PostgreSQL engine's clock re-measures its offset to the server now
        // and then, which is a round trip.
        let engine = &self.engine;
        py.detach(|| engine.now_ms())
    }

    /// Move the manual clock forward; ``InvalidOptionError`` on the system clock.
    fn advance_clock(&self, py: Python<'_>, ms: i64) -> PyResult<()> {
        self.engine.advance_clock(ms).or_raise(py)
    }

    /// Store the jobs in one transaction and return their ids, in order.
    fn enqueue(&self, py: Python<'_>, jobs: Vec<Bound<'_, NewJob>>) -> PyResult<Vec<i64>> {
        let jobs: Vec<_> = jobs.iter().map(|job| job.get().inner.clone()).collect();
        self.call(py, |engine| engine.enqueue(&jobs))
    }

    /// Enqueue one job per payload, each a copy of ``template`` with that payload.
    fn enqueue_payloads(
        &self,
        py: Python<'_>,
        template: &Bound<'_, NewJob>,
        payloads: Vec<Bound<'_, PyBytes>>,
    ) -> PyResult<Vec<i64>> {
        let template = &template.get().inner;
        // Bytes objects are immutable and these references keep them alive,
        // so their contents can be read without the GIL and need no copy.
        let payloads: Vec<&[u8]> = payloads.iter().map(|payload| payload.as_bytes()).collect();
        let engine = &self.engine;
        if let [payload] = payloads.as_slice() {
            // A send the send log takes is one append: holding the GIL through
            // it costs less than handing the GIL to another thread and waiting
            // to get it back.
            if let Some(id) = engine.try_log_send(template, payload).or_raise(py)? {
                return Ok(vec![id]);
            }
        }
        self.call(py, |engine| engine.enqueue_copies(template, &payloads))
    }

    /// Claim up to ``limit`` runnable jobs of ``queues`` for ``owner``.
    fn claim(
        &self,
        py: Python<'_>,
        queues: Vec<String>,
        limit: i64,
        owner: &str,
        lease_ms: i64,
    ) -> PyResult<Vec<ClaimedJob>> {
        let limit = count("limit", limit).or_raise(py)?;
        let claimed = self.call(py, |engine| engine.claim(&queues, limit, owner, lease_ms))?;
        Ok(claimed
            .into_iter()
            .map(|inner| ClaimedJob { inner })
            .collect())
    }

    /// Extend the leases ``(job_id, token)`` held by ``owner`` to ``now + lease_ms``.
    fn heartbeat(
        &self,
        py: Python<'_>,
        owner: &str,
        leases: Vec<(i64, i64)>,
        lease_ms: i64,
    ) -> PyResult<Vec<i64>> {
        self.call(py, |engine| engine.heartbeat(owner, &leases, lease_ms))
    }

    /// Mark the attempt complete with its pickled result; False if stale (recorded).
    #[pyo3(signature = (job_id, token, result, usage = None))]
    fn complete(
        &self,
        py: Python<'_>,
        job_id: i64,
        token: i64,
        result: Option<Cow<'_, [u8]>>,
        usage: Option<String>,
    ) -> PyResult<bool> {
        let completion = Completion {
            job_id,
            token,
            result: result.map(Cow::into_owned),
            usage,
        };
        let applied = self.call(py, |engine| {
            engine.complete_many(std::slice::from_ref(&completion))
        })?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// ``complete`` for many jobs in one transaction.
    fn complete_many(
        &self,
        py: Python<'_>,
        outcomes: Vec<Bound<'_, PyTuple>>,
    ) -> PyResult<Vec<bool>> {
        let completions = completions_from(&outcomes)?;
        self.call(py, |engine| engine.complete_many(&completions))
    }

    /// ``complete_many`` and then ``claim``, in one transaction; first the
    /// jobs ``held`` (by ``owner``, sent to no worker) are marked and the
    /// jobs ``sent`` unmarked.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (outcomes, queues, limit, owner, lease_ms, *, held = Vec::new(), sent = Vec::new()))]
    fn complete_and_claim(
        &self,
        py: Python<'_>,
        outcomes: Vec<Bound<'_, PyTuple>>,
        queues: Vec<String>,
        limit: i64,
        owner: &str,
        lease_ms: i64,
        held: Vec<(i64, i64)>,
        sent: Vec<(i64, i64)>,
    ) -> PyResult<(Vec<bool>, Vec<ClaimedJob>)> {
        let completions = completions_from(&outcomes)?;
        let limit = count("limit", limit).or_raise(py)?;
        let request = ClaimRequest {
            queues: &queues,
            limit,
            owner,
            lease_ms,
            held: &held,
            sent: &sent,
        };
        let (applied, claimed) = self.call(py, |engine| {
            engine.complete_and_claim(&completions, &request)
        })?;
        Ok((
            applied,
            claimed
                .into_iter()
                .map(|inner| ClaimedJob { inner })
                .collect(),
        ))
    }

    /// Record a failed attempt and apply the retry policy.
    #[pyo3(signature = (
        job_id,
        token,
        *,
        kind,
        exc_type,
        message,
        traceback = "",
        exc_pickle = None,
        worker = "",
        retryable = true,
        usage = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        py: Python<'_>,
        job_id: i64,
        token: i64,
        kind: &str,
        exc_type: String,
        message: String,
        traceback: &str,
        exc_pickle: Option<Cow<'_, [u8]>>,
        worker: &str,
        retryable: bool,
        usage: Option<String>,
    ) -> PyResult<(&'static str, Option<i64>)> {
        let report = FailureReport {
            kind: FailureKind::parse(kind).or_raise(py)?,
            exc_type,
            message,
            traceback: traceback.to_owned(),
            exc_pickle: exc_pickle.map(Cow::into_owned),
            worker: worker.to_owned(),
            retryable,
            usage,
        };
        let outcome = self.call(py, |engine| engine.fail(job_id, token, &report))?;
        Ok((outcome.as_str(), outcome.eta_ms()))
    }

    /// Cancel a job.
    fn cancel(&self, py: Python<'_>, job_id: i64) -> PyResult<&'static str> {
        Ok(self.call(py, |engine| engine.cancel(job_id))?.as_str())
    }

    /// ``(job_id, token)`` of the running jobs of ``owner`` with a cancel request.
    fn cancel_requests(&self, py: Python<'_>, owner: &str) -> PyResult<Vec<(i64, i64)>> {
        self.call(py, |engine| engine.cancel_requests(owner))
    }

    /// A running job whose worker was stopped for its cancel request ends cancelled.
    fn finish_cancelled(&self, py: Python<'_>, job_id: i64, token: i64) -> PyResult<bool> {
        self.call(py, |engine| engine.finish_cancelled(job_id, token))
    }

    /// Put a running job back to pending without counting a failed attempt.
    fn requeue(&self, py: Python<'_>, job_id: i64, token: i64) -> PyResult<bool> {
        self.call(py, |engine| engine.requeue(job_id, token))
    }

    /// Undo the claim of a job that was never started: pending again, attempt taken back.
    fn release(&self, py: Python<'_>, job_id: i64, token: i64) -> PyResult<bool> {
        self.call(py, |engine| engine.release(job_id, token))
    }

    /// Fail the running jobs whose lease has expired (kind lease_expired).
    #[pyo3(signature = (limit = 100))]
    fn reap_expired(&self, py: Python<'_>, limit: i64) -> PyResult<Vec<(i64, &'static str)>> {
        let limit = count("limit", limit).or_raise(py)?;
        let reaped = self.call(py, |engine| engine.reap_expired(limit))?;
        Ok(reaped
            .into_iter()
            .map(|(job_id, outcome)| (job_id, outcome.as_str()))
            .collect())
    }

    /// Running jobs whose lease expired: ``(job_id, token, owner)``, earliest first; nothing changes.
    #[pyo3(signature = (limit = 100))]
    fn expired_leases(&self, py: Python<'_>, limit: i64) -> PyResult<Vec<(i64, i64, String)>> {
        let limit = count("limit", limit).or_raise(py)?;
        self.call(py, |engine| engine.expired_leases(limit))
    }

    /// Give back expired jobs that no worker started: pending again, nothing counted.
    fn return_unstarted(
        &self,
        py: Python<'_>,
        jobs: Vec<(i64, i64)>,
    ) -> PyResult<Vec<(i64, &'static str)>> {
        let returned = self.call(py, |engine| engine.return_unstarted(&jobs))?;
        Ok(returned
            .into_iter()
            .map(|(job_id, outcome)| (job_id, outcome.as_str()))
            .collect())
    }

    /// The job's row; ``JobNotFoundError`` if there is none.
    fn get(&self, py: Python<'_>, job_id: i64) -> PyResult<JobRecord> {
        let inner = self.call(py, |engine| engine.get(job_id))?;
        Ok(JobRecord { inner })
    }

    /// The job's status, read without its payload or result.
    fn status(&self, py: Python<'_>, job_id: i64) -> PyResult<&'static str> {
        Ok(self.call(py, |engine| engine.status(job_id))?.as_str())
    }

    /// ``status`` of many jobs in one read.
    fn statuses(&self, py: Python<'_>, job_ids: Vec<i64>) -> PyResult<Vec<&'static str>> {
        let statuses = self.call(py, |engine| engine.statuses(&job_ids))?;
        Ok(statuses.into_iter().map(|status| status.as_str()).collect())
    }

    /// The job's error history, oldest first.
    fn errors(&self, py: Python<'_>, job_id: i64) -> PyResult<Vec<ErrorRecord>> {
        let errors = self.call(py, |engine| engine.errors(job_id))?;
        Ok(errors
            .into_iter()
            .map(|inner| ErrorRecord { inner })
            .collect())
    }

    /// Job counts by status; every status is present.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.call(py, |engine| engine.stats())?;
        let dict = PyDict::new(py);
        for (status, count) in counts {
            dict.set_item(status.as_str(), count)?;
        }
        Ok(dict)
    }

    /// Dead jobs, most recently finished first.
    #[pyo3(signature = (limit = 100, offset = 0))]
    fn dead_letters(&self, py: Python<'_>, limit: i64, offset: i64) -> PyResult<Vec<JobRecord>> {
        let limit = count("limit", limit).or_raise(py)?;
        let offset = count("offset", offset).or_raise(py)?;
        let dead = self.call(py, |engine| engine.dead_letters(limit, offset))?;
        Ok(dead.into_iter().map(|inner| JobRecord { inner }).collect())
    }

    /// Enqueue a new job from a dead one, keeping its task, payload and options.
    fn replay(&self, py: Python<'_>, job_id: i64) -> PyResult<i64> {
        self.call(py, |engine| engine.replay(job_id))
    }

    /// Refused stale outcomes, most recent first.
    #[pyo3(signature = (limit = 100))]
    fn stale_outcomes(&self, py: Python<'_>, limit: i64) -> PyResult<Vec<StaleOutcome>> {
        let limit = count("limit", limit).or_raise(py)?;
        let stale = self.call(py, |engine| engine.stale_outcomes(limit))?;
        Ok(stale
            .into_iter()
            .map(|inner| StaleOutcome { inner })
            .collect())
    }

    /// The earliest eta, lease deadline, expiry, or time a limit lets a held-back job run.
    fn next_wakeup_ms(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        self.call(py, |engine| engine.next_wakeup_ms())
    }

    /// Changes whenever another connection commits to the database.
    fn data_version(&self, py: Python<'_>) -> PyResult<i64> {
        self.call(py, |engine| engine.data_version())
    }

    /// Send single plain jobs of this process through its send log until ``close_send_log``.
    fn open_send_log(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |engine| engine.open_send_log())
    }

    /// Undo one ``open_send_log``; the last one stores what is pending and removes the log.
    fn close_send_log(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |engine| engine.close_send_log())
    }

    /// Store the sends logged by processes that died; how many jobs were not stored yet.
    fn recover_send_logs(&self, py: Python<'_>) -> PyResult<usize> {
        self.call(py, |engine| engine.recover_send_logs())
    }

    /// How long writes wait for another writer's lock from now on, in ms.
    fn set_busy_timeout(&self, py: Python<'_>, busy_timeout_ms: i64) -> PyResult<()> {
        let timeout = u64::try_from(busy_timeout_ms)
            .map(Duration::from_millis)
            .map_err(|_| {
                EngineError::invalid(format!(
                    "busy_timeout_ms must be >= 0, got {busy_timeout_ms}"
                ))
            })
            .or_raise(py)?;
        self.engine.set_busy_timeout(timeout);
        Ok(())
    }

    /// Store this process's logged sends and close the database; later calls raise ``StorageError``.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |engine| engine.close())
    }

    /// Truncate the write-ahead log, waiting at most ``wait_ms`` for readers.
    fn compact_log(&self, py: Python<'_>, wait_ms: i64) -> PyResult<bool> {
        let wait = u64::try_from(wait_ms)
            .map(Duration::from_millis)
            .map_err(|_| EngineError::invalid(format!("wait_ms must be >= 0, got {wait_ms}")))
            .or_raise(py)?;
        self.call(py, |engine| engine.compact_log(wait))
    }

    /// Drop the results and error histories of finished jobs past their retention.
    #[pyo3(signature = (limit = 1000))]
    fn purge_expired_results(&self, py: Python<'_>, limit: i64) -> PyResult<usize> {
        let limit = count("limit", limit).or_raise(py)?;
        self.call(py, |engine| engine.purge_expired_results(limit))
    }

    /// Store the progress (JSON text) of a running attempt; False if stale (recorded).
    fn set_progress(
        &self,
        py: Python<'_>,
        job_id: i64,
        token: i64,
        progress: &str,
    ) -> PyResult<bool> {
        self.call(py, |engine| engine.set_progress(job_id, token, progress))
    }

    /// Jobs matching every given filter, newest first.
    #[pyo3(signature = (*, status = None, task_name = None, queue = None, limit = 100, offset = 0))]
    fn list_jobs(
        &self,
        py: Python<'_>,
        status: Option<&str>,
        task_name: Option<String>,
        queue: Option<String>,
        limit: i64,
        offset: i64,
    ) -> PyResult<Vec<JobRecord>> {
        let filter = JobFilter {
            status: status.map(Status::parse).transpose().or_raise(py)?,
            task_name,
            queue,
        };
        let limit = count("limit", limit).or_raise(py)?;
        let offset = count("offset", offset).or_raise(py)?;
        let jobs = self.call(py, |engine| engine.list_jobs(&filter, limit, offset))?;
        Ok(jobs.into_iter().map(|inner| JobRecord { inner }).collect())
    }

    /// Delete finished jobs in ``statuses`` with their error history.
    #[pyo3(signature = (statuses, *, older_than_ms = None, limit = 1000))]
    fn purge_jobs(
        &self,
        py: Python<'_>,
        statuses: Vec<String>,
        older_than_ms: Option<i64>,
        limit: i64,
    ) -> PyResult<usize> {
        let statuses = statuses
            .iter()
            .map(|name| Status::parse(name))
            .collect::<Result<Vec<_>, _>>()
            .or_raise(py)?;
        let limit = count("limit", limit).or_raise(py)?;
        self.call(py, |engine| {
            engine.purge_jobs(&statuses, older_than_ms, limit)
        })
    }

    // --- flow control and schedules (value classes and conversions in flow.rs) ---

    /// Set (or, with no limit given, remove) the limits of a task or queue.
    #[pyo3(signature = (scope, name, *, rate = None, concurrency = None, breaker = None))]
    fn set_limits(
        &self,
        py: Python<'_>,
        scope: &str,
        name: &str,
        rate: Option<(i64, i64, i64)>,
        concurrency: Option<i64>,
        breaker: Option<(i64, i64, i64)>,
    ) -> PyResult<()> {
        let scope = LimitScope::parse(scope).or_raise(py)?;
        let limits = flow::limits(rate, concurrency, breaker);
        self.call(py, |engine| engine.set_limits(scope, name, &limits))
    }

    /// Every limit with its state now, by key.
    fn limits(&self, py: Python<'_>) -> PyResult<Vec<LimitState>> {
        let states = self.call(py, |engine| engine.limits())?;
        Ok(states
            .into_iter()
            .map(|inner| LimitState { inner })
            .collect())
    }

    /// End as expired up to ``limit`` jobs whose expiry passed; their ids.
    #[pyo3(signature = (limit = 1000))]
    fn expire_due(&self, py: Python<'_>, limit: i64) -> PyResult<Vec<i64>> {
        let limit = count("limit", limit).or_raise(py)?;
        self.call(py, |engine| engine.expire_due(limit))
    }

    /// ``(job_id, status)`` of the jobs a job depends on, in the order given.
    fn dependencies(&self, py: Python<'_>, job_id: i64) -> PyResult<Vec<(i64, &'static str)>> {
        let deps = self.call(py, |engine| engine.dependencies(job_id))?;
        Ok(deps
            .into_iter()
            .map(|(id, status)| (id, status.as_str()))
            .collect())
    }

    /// Create a schedule that enqueues ``job`` (or update the one named ``name``).
    #[pyo3(signature = (
        job,
        *,
        kind,
        cron = None,
        timezone = "UTC",
        every_ms = None,
        at_ms = None,
        name = None,
        missed = "skip",
        source = None,
        labels = "",
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create_schedule(
        &self,
        py: Python<'_>,
        job: Bound<'_, NewJob>,
        kind: &str,
        cron: Option<String>,
        timezone: &str,
        every_ms: Option<i64>,
        at_ms: Option<i64>,
        name: Option<String>,
        missed: &str,
        source: Option<String>,
        labels: &str,
    ) -> PyResult<i64> {
        let schedule = NewSchedule {
            name,
            spec: flow::spec(kind, cron, timezone.to_owned(), every_ms, at_ms).or_raise(py)?,
            job: job.get().inner.clone(),
            missed: MissedFires::parse(missed).or_raise(py)?,
            source,
            labels: labels.to_owned(),
        };
        self.call(py, |engine| engine.create_schedule(&schedule))
    }

    /// Every schedule, by id.
    fn schedules(&self, py: Python<'_>) -> PyResult<Vec<Schedule>> {
        let schedules = self.call(py, |engine| engine.schedules())?;
        Ok(schedules
            .into_iter()
            .map(|inner| Schedule { inner })
            .collect())
    }

    /// One schedule; ``ScheduleNotFoundError`` if there is none.
    fn get_schedule(&self, py: Python<'_>, schedule_id: i64) -> PyResult<Schedule> {
        let inner = self.call(py, |engine| engine.get_schedule(schedule_id))?;
        Ok(Schedule { inner })
    }

    /// Pause (or, with ``paused=False``, resume) a schedule.
    #[pyo3(signature = (schedule_id, paused = true))]
    fn pause_schedule(&self, py: Python<'_>, schedule_id: i64, paused: bool) -> PyResult<()> {
        self.call(py, |engine| engine.set_schedule_paused(schedule_id, paused))
    }

    /// Delete a schedule and its fire records; False if there was none.
    fn delete_schedule(&self, py: Python<'_>, schedule_id: i64) -> PyResult<bool> {
        self.call(py, |engine| engine.delete_schedule(schedule_id))
    }

    /// Schedules whose next fire has come (not paused), earliest first.
    #[pyo3(signature = (limit = 100))]
    fn due_schedules(&self, py: Python<'_>, limit: i64) -> PyResult<Vec<Schedule>> {
        let limit = count("limit", limit).or_raise(py)?;
        let due = self.call(py, |engine| engine.due_schedules(limit))?;
        Ok(due.into_iter().map(|inner| Schedule { inner }).collect())
    }

    /// Fire the schedule's fire due at ``fire_ms``, unless vetoed.
    #[pyo3(signature = (schedule_id, fire_ms, *, owner, veto = None, error = None))]
    fn fire_schedule(
        &self,
        py: Python<'_>,
        schedule_id: i64,
        fire_ms: i64,
        owner: &str,
        veto: Option<String>,
        error: Option<String>,
    ) -> PyResult<(&'static str, Option<i64>)> {
        let verdict = flow::verdict(veto, error).or_raise(py)?;
        let outcome = self.call(py, |engine| {
            engine.fire_schedule(schedule_id, fire_ms, &verdict, owner)
        })?;
        Ok(flow::outcome(outcome))
    }

    /// Fire every due schedule that has no source.
    #[pyo3(signature = (owner, limit = 100))]
    fn fire_due(
        &self,
        py: Python<'_>,
        owner: &str,
        limit: i64,
    ) -> PyResult<Vec<(i64, &'static str, Option<i64>)>> {
        let limit = count("limit", limit).or_raise(py)?;
        let fired = self.call(py, |engine| engine.fire_due(limit, owner))?;
        Ok(fired
            .into_iter()
            .map(|(id, outcome)| {
                let (name, job_id) = flow::outcome(outcome);
                (id, name, job_id)
            })
            .collect())
    }

    /// The fire records of a schedule, newest first.
    #[pyo3(signature = (schedule_id, limit = 100))]
    fn schedule_fires(
        &self,
        py: Python<'_>,
        schedule_id: i64,
        limit: i64,
    ) -> PyResult<Vec<ScheduleFire>> {
        let limit = count("limit", limit).or_raise(py)?;
        let fires = self.call(py, |engine| engine.schedule_fires(schedule_id, limit))?;
        Ok(fires
            .into_iter()
            .map(|inner| ScheduleFire { inner })
            .collect())
    }

    /// The earliest next fire of a schedule that is not paused.
    fn next_fire_ms(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        self.call(py, |engine| engine.next_fire_ms())
    }

    fn __repr__(&self) -> String {
        format!("Engine({:?})", self.path)
    }
}
