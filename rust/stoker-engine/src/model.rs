//! The values that cross the engine's API: jobs to enqueue, claimed jobs, job
//! snapshots, error history, refused outcomes, and the enums of statuses and
//! outcomes.

use std::fmt;

use crate::error::EngineError;

/// The longest duration (delays, timeouts, leases, backoff, result TTL) the
/// engine accepts: about 1000 years. Bounding durations keeps every `now +
/// duration` sum far from `i64` overflow without checking each one.
pub const MAX_DURATION_MS: i64 = 1000 * 365 * 24 * 60 * 60 * 1000;

/// The status of a job. Stored as a small integer (its [`Status::code`]),
/// exposed by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Runnable now: waiting to be claimed.
    Pending,
    /// Waiting for its eta: a delayed job, or a retry in backoff.
    Scheduled,
    /// Claimed by a supervisor that holds a lease on it.
    Running,
    /// Finished with a result.
    Complete,
    /// Failed for good: out of retries, or not retryable.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
    /// Still pending when its expiry passed: it never ran and never will.
    Expired,
    /// Waiting for the jobs it depends on to complete.
    Waiting,
}

impl Status {
    /// Every status, in the order of their codes.
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Scheduled,
        Status::Running,
        Status::Complete,
        Status::Dead,
        Status::Cancelled,
        Status::Expired,
        Status::Waiting,
    ];

    /// The name of the status, as the Python API shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Scheduled => "scheduled",
            Status::Running => "running",
            Status::Complete => "complete",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Waiting => "waiting",
        }
    }

    /// The integer stored in the database (see [`crate::codes`]: the SQL of
    /// the storages writes these codes as literals, so that SQLite can match
    /// partial indexes, and they must never change).
    pub const fn code(self) -> i64 {
        match self {
            Status::Pending => status_code!(pending),
            Status::Scheduled => status_code!(scheduled),
            Status::Running => status_code!(running),
            Status::Complete => status_code!(complete),
            Status::Dead => status_code!(dead),
            Status::Cancelled => status_code!(cancelled),
            Status::Expired => status_code!(expired),
            Status::Waiting => status_code!(waiting),
        }
    }

    /// The status stored as `code`, if it is one.
    pub const fn from_code(code: i64) -> Option<Status> {
        match code {
            0 => Some(Status::Pending),
            1 => Some(Status::Scheduled),
            2 => Some(Status::Running),
            3 => Some(Status::Complete),
            4 => Some(Status::Dead),
            5 => Some(Status::Cancelled),
            6 => Some(Status::Expired),
            7 => Some(Status::Waiting),
            _ => None,
        }
    }

    /// Whether the job is finished; a finished job's status never changes.
    /// The status of this name; an invalid-option error naming the known ones.
    pub fn parse(name: &str) -> Result<Status, EngineError> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Status::ALL.iter().map(|status| status.as_str()).collect();
                EngineError::invalid(format!(
                    "status must be one of {}, got {name:?}",
                    known.join(", ")
                ))
            })
    }

    /// Whether the status is final (complete, dead, cancelled).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Complete | Status::Dead | Status::Cancelled | Status::Expired
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed; decides which bound its retry is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The task raised an exception.
    Error,
    /// The attempt ran past its hard timeout and was killed.
    Timeout,
    /// The worker process died under the task.
    Crash,
    /// The supervisor holding the lease stopped heartbeating.
    LeaseExpired,
}

impl FailureKind {
    /// The name stored in the error history.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Timeout => "timeout",
            FailureKind::Crash => "crash",
            FailureKind::LeaseExpired => "lease_expired",
        }
    }

    /// The kind named `name`; any other name is an invalid option.
    pub fn parse(name: &str) -> Result<FailureKind, EngineError> {
        match name {
            "error" => Ok(FailureKind::Error),
            "timeout" => Ok(FailureKind::Timeout),
            "crash" => Ok(FailureKind::Crash),
            "lease_expired" => Ok(FailureKind::LeaseExpired),
            other => Err(EngineError::invalid(format!(
                "kind must be one of error, timeout, crash, lease_expired, got {other:?}"
            ))),
        }
    }

    /// Whether the attempt was lost with its worker (counted against
    /// `max_crashes`) rather than failed by the task (counted against
    /// `max_retries`).
    pub const fn is_crash(self) -> bool {
        matches!(self, FailureKind::Crash | FailureKind::LeaseExpired)
    }
}

/// What became of a reported failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// The job will run again at `eta_ms`.
    Retry {
        /// When the retry becomes runnable.
        eta_ms: i64,
    },
    /// The job is dead.
    Dead,
    /// A cancel request was pending: the failure is recorded and the job ends
    /// cancelled instead of being retried, so a cancel is never lost.
    Cancelled,
    /// The token was stale: the outcome was recorded and not applied.
    Stale,
    /// Its supervisor held it, sent to no worker, so it never started: it
    /// went back to pending with no failed attempt counted or recorded.
    Returned,
}

impl FailOutcome {
    /// `"retry"`, `"dead"`, `"cancelled"`, `"stale"` or `"returned"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailOutcome::Retry { .. } => "retry",
            FailOutcome::Dead => "dead",
            FailOutcome::Cancelled => "cancelled",
            FailOutcome::Stale => "stale",
            FailOutcome::Returned => "returned",
        }
    }

    /// The eta of a retry.
    pub const fn eta_ms(self) -> Option<i64> {
        match self {
            FailOutcome::Retry { eta_ms } => Some(eta_ms),
            _ => None,
        }
    }
}

/// What became of a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job had not started and is now cancelled.
    Cancelled,
    /// The job is running; its supervisor is asked to stop it.
    Requested,
    /// The job had already finished with this status, which is left alone.
    Finished(Status),
}

impl CancelOutcome {
    /// `"cancelled"`, `"requested"`, or the finished job's status.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelOutcome::Cancelled => "cancelled",
            CancelOutcome::Requested => "requested",
            CancelOutcome::Finished(status) => status.as_str(),
        }
    }
}

/// A job to enqueue. Build it with [`NewJob::new`] and adjust the public
/// fields; [`NewJob::validate`] checks them (the engine does so on enqueue).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The registered name of the task to run.
    pub task_name: String,
    /// The opaque serialized arguments.
    pub payload: Vec<u8>,
    /// The queue the job is claimed from.
    pub queue: String,
    /// Higher runs first.
    pub priority: i64,
    /// How many failed attempts (errors, timeouts) are retried.
    pub max_retries: i64,
    /// How many lost attempts (crashes, expired leases) are retried.
    pub max_crashes: i64,
    /// The delay before the first retry.
    pub backoff_base_ms: i64,
    /// The longest delay between retries.
    pub backoff_cap_ms: i64,
    /// The largest fraction (0 to 1) by which a retry delay is randomly shortened.
    pub jitter: f64,
    /// The hard timeout of one attempt, if any.
    pub timeout_ms: Option<i64>,
    /// Run no sooner than this long after enqueue (exclusive with `eta_ms`).
    pub delay_ms: i64,
    /// Run no sooner than this time (exclusive with `delay_ms`).
    pub eta_ms: Option<i64>,
    /// Keep the result and the error history this long after the job
    /// finished, if set; forever otherwise.
    pub result_ttl_ms: Option<i64>,
    /// The caller's labels, as JSON text the engine stores and returns unread.
    pub labels: Option<String>,
    // --- flow control (see `flow.rs`) ---
    /// While a job with this key is waiting, pending, scheduled or running,
    /// enqueueing another one with the same key returns the existing job.
    pub unique_key: Option<String>,
    /// A job still waiting, pending or scheduled this long after enqueue
    /// ends expired instead of running.
    pub expires_after_ms: Option<i64>,
    /// Jobs that must complete before this one runs; if one of them ends
    /// dead, cancelled or expired, this job ends dead.
    pub depends_on: Vec<i64>,
    /// When the task's or queue's rate limit has no token or the task's
    /// circuit breaker is open, refuse the enqueue instead of letting the job
    /// wait.
    pub fail_when_limited: bool,
}

impl NewJob {
    /// The default queue name.
    pub const DEFAULT_QUEUE: &'static str = "default";
    /// By default a raising task is not retried.
    pub const DEFAULT_MAX_RETRIES: i64 = 0;
    /// By default a job whose worker was lost is retried once, so one crash of
    /// an unrelated worker does not kill it, while a poison job that always
    /// crashes its worker ends dead after its second crash.
    pub const DEFAULT_MAX_CRASHES: i64 = 1;
    /// The first retry waits one second by default.
    pub const DEFAULT_BACKOFF_BASE_MS: i64 = 1000;
    /// Retries wait at most five minutes by default.
    pub const DEFAULT_BACKOFF_CAP_MS: i64 = 300_000;

    /// A job of `task_name` with `payload` and default options.
    pub fn new(task_name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            task_name: task_name.into(),
            payload: payload.into(),
            queue: Self::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            max_crashes: Self::DEFAULT_MAX_CRASHES,
            backoff_base_ms: Self::DEFAULT_BACKOFF_BASE_MS,
            backoff_cap_ms: Self::DEFAULT_BACKOFF_CAP_MS,
            jitter: 0.0,
            timeout_ms: None,
            delay_ms: 0,
            eta_ms: None,
            result_ttl_ms: None,
            labels: None,
            unique_key: None,
            expires_after_ms: None,
            depends_on: Vec::new(),
            fail_when_limited: false,
        }
    }

    /// Checks every option; the error names the first wrong one and its value.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.task_name.is_empty() {
            return Err(EngineError::invalid("task_name must not be empty"));
        }
        if self.queue.is_empty() {
            return Err(EngineError::invalid("queue must not be empty"));
        }
        check_count("max_retries", self.max_retries)?;
        check_count("max_crashes", self.max_crashes)?;
        check_duration("backoff_base_ms", self.backoff_base_ms)?;
        check_duration("backoff_cap_ms", self.backoff_cap_ms)?;
        if self.backoff_base_ms > self.backoff_cap_ms {
            return Err(EngineError::invalid(format!(
                "backoff_base_ms must not exceed backoff_cap_ms, got backoff_base_ms={} > backoff_cap_ms={}",
                self.backoff_base_ms, self.backoff_cap_ms
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(EngineError::invalid(format!(
                "jitter must be between 0 and 1, got {}",
                self.jitter
            )));
        }
        if let Some(timeout_ms) = self.timeout_ms {
            if timeout_ms == 0 {
                return Err(EngineError::invalid(
                    "timeout_ms must be positive (None for no timeout), got 0",
                ));
            }
            check_duration("timeout_ms", timeout_ms)?;
        }
        check_duration("delay_ms", self.delay_ms)?;
        if let Some(eta_ms) = self.eta_ms {
            if self.delay_ms != 0 {
                return Err(EngineError::invalid(format!(
                    "delay_ms and eta_ms are exclusive, got delay_ms={} and eta_ms={eta_ms}",
                    self.delay_ms
                )));
            }
            if eta_ms < 0 {
                return Err(EngineError::invalid(format!(
                    "eta_ms must be >= 0, got {eta_ms}"
                )));
            }
        }
        if let Some(ttl) = self.result_ttl_ms {
            check_duration("result_ttl_ms", ttl)?;
        }
        crate::flow::validate_job(self)
    }

    /// When the job first becomes runnable, if enqueued at `now_ms`.
    pub fn eta_at(&self, now_ms: i64) -> i64 {
        self.eta_ms
            .unwrap_or_else(|| now_ms.saturating_add(self.delay_ms))
    }
}

fn check_count(name: &str, value: i64) -> Result<(), EngineError> {
    if value < 0 {
        return Err(EngineError::invalid(format!(
            "{name} must be >= 0, got {value}"
        )));
    }
    Ok(())
}

/// Checks that a duration is non-negative and at most [`MAX_DURATION_MS`].
pub fn check_duration(name: &str, value: i64) -> Result<(), EngineError> {
    if value < 0 {
        return Err(EngineError::invalid(format!(
            "{name} must be >= 0, got {value}"
        )));
    }
    if value > MAX_DURATION_MS {
        return Err(EngineError::invalid(format!(
            "{name} must be at most {MAX_DURATION_MS} ms, got {value}"
        )));
    }
    Ok(())
}

/// A job handed to one supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    /// The job's id.
    pub id: i64,
    /// The fencing token: outcomes reported with another token are refused.
    pub token: i64,
    /// How many times the job was claimed, this claim included.
    pub attempt: i64,
    /// The task to run.
    pub task_name: String,
    /// The queue it was claimed from.
    pub queue: String,
    /// The serialized arguments.
    pub payload: Vec<u8>,
    /// The hard timeout of this attempt, if any.
    pub timeout_ms: Option<i64>,
    /// When the lease ends unless renewed by a heartbeat.
    pub lease_deadline_ms: i64,
    /// The caller's labels (JSON text), if any.
    pub labels: Option<String>,
}

/// A snapshot of one job row.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub struct JobRecord {
    pub id: i64,
    pub task_name: String,
    pub queue: String,
    pub priority: i64,
    pub status: Status,
    pub payload: Vec<u8>,
    /// How many times the job was claimed; also the token of the latest claim.
    pub attempt: i64,
    /// Failed attempts counted against `max_retries`.
    pub failures: i64,
    /// Lost attempts counted against `max_crashes`.
    pub crashes: i64,
    pub max_retries: i64,
    pub max_crashes: i64,
    pub backoff_base_ms: i64,
    pub backoff_cap_ms: i64,
    pub jitter: f64,
    pub timeout_ms: Option<i64>,
    pub result_ttl_ms: Option<i64>,
    pub created_ms: i64,
    pub eta_ms: i64,
    /// When the latest attempt was claimed.
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_deadline_ms: Option<i64>,
    pub cancel_requested: bool,
    pub result: Option<Vec<u8>>,
    pub result_expires_ms: Option<i64>,
    /// For a replay, the dead job it was made from.
    pub replayed_from: Option<i64>,
    /// The caller's labels (JSON text).
    pub labels: Option<String>,
    /// The latest progress the running attempt reported (JSON text).
    pub progress: Option<String>,
    /// The resources the latest finished attempt used (JSON text).
    pub usage: Option<String>,
    /// The uniqueness key it was sent with.
    pub unique_key: Option<String>,
    /// When it expires if it has not started by then.
    pub expires_ms: Option<i64>,
}

/// One failed attempt in a job's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ErrorRecord {
    pub id: i64,
    pub job_id: i64,
    pub attempt: i64,
    pub kind: String,
    pub exc_type: String,
    pub message: String,
    pub traceback: String,
    pub exc_pickle: Option<Vec<u8>>,
    pub failed_ms: i64,
    pub worker: String,
    /// The resources the attempt used (JSON text), when known.
    pub usage: Option<String>,
}

/// An outcome refused because its token was stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleOutcome {
    /// The job the outcome was about.
    pub job_id: i64,
    /// The stale token it carried.
    pub token: i64,
    /// Who sent it: the heartbeating owner, or for other outcomes (which carry no
    /// owner) the job's lease owner at the time, or "" when it had none.
    pub owner: String,
    /// What was refused: complete, fail, cancel, requeue or heartbeat.
    pub outcome: String,
    /// When it was refused.
    pub at_ms: i64,
}

/// A failed attempt as reported by a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReport {
    /// Why the attempt failed.
    pub kind: FailureKind,
    /// The qualified name of the exception type.
    pub exc_type: String,
    /// The exception's message.
    pub message: String,
    /// The formatted traceback.
    pub traceback: String,
    /// The pickled exception, when it could be pickled.
    pub exc_pickle: Option<Vec<u8>>,
    /// Which worker ran the attempt.
    pub worker: String,
    /// False when the failure must not be retried whatever the bounds.
    pub retryable: bool,
    /// The resources the attempt used (JSON text), when known.
    pub usage: Option<String>,
}

/// A successful attempt as reported by a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The job.
    pub job_id: i64,
    /// The token of the claim that ran it.
    pub token: i64,
    /// The serialized result.
    pub result: Option<Vec<u8>>,
    /// The resources the attempt used (JSON text), when known.
    pub usage: Option<String>,
}

/// Which jobs a listing returns; `None` fields match every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<Status>,
    /// Only jobs of this task.
    pub task_name: Option<String>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
}
