//! The one error type of the engine.
//!
//! Each variant stands for one kind of failure that a caller may want to tell
//! apart; the Python binding maps each to one class of `stoker.errors`, so the
//! variants carry the fields those classes are built from rather than only a
//! message.

use thiserror::Error;

/// Everything that can go wrong in an engine operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// No job has this id.
    #[error("no job with id {0}")]
    NotFound(i64),

    /// The file exists but was not written by stoker (or is not a database at
    /// all); `reason` says what was found instead.
    #[error("{path:?} is not a stoker database: {reason}")]
    NotOurDatabase {
        /// The path that was opened.
        path: String,
        /// What was found in the file, in words.
        reason: String,
    },

    /// The database was written by a stoker with another schema version.
    #[error("{path:?} has stoker schema version {found}, this stoker reads version {expected}")]
    SchemaVersion {
        /// The path that was opened.
        path: String,
        /// The schema version stored in the file.
        found: i64,
        /// The schema version this engine reads and writes.
        expected: i64,
    },

    /// An argument or option has a value the engine cannot accept; the message
    /// names the option and the value.
    #[error("{0}")]
    InvalidOption(String),

    /// The operation does not apply to the job in its current state (for
    /// example, replaying a job that is not dead).
    #[error("cannot {operation} job {job_id}: it is {status}")]
    JobState {
        /// The job the operation was asked for.
        job_id: i64,
        /// The job's status when the operation was refused.
        status: String,
        /// The refused operation.
        operation: String,
    },

    /// Another writer held the database lock for longer than the busy timeout.
    #[error("{0}")]
    Busy(String),

    /// Any other failure of the storage (I/O, SQL, corruption); the message
    /// says what failed.
    #[error("{0}")]
    Storage(String),

    // --- flow control and schedules (see `flow.rs`, `schedule.rs`) ---
    /// An enqueue that asked to fail rather than wait found no token in a rate
    /// limit (`key` is `task:NAME` or `queue:NAME`).
    #[error("rate limit of {key} exceeded; the next token comes in {retry_after_ms} ms")]
    RateLimited {
        /// The limit that had no token.
        key: String,
        /// How long until it has one.
        retry_after_ms: i64,
    },

    /// An enqueue that asked to fail rather than wait found the task's circuit
    /// breaker open.
    #[error("the circuit breaker of task {task_name} is open until {open_until_ms} ms")]
    BreakerOpen {
        /// The task whose breaker is open.
        task_name: String,
        /// When it lets a probe through.
        open_until_ms: i64,
    },

    /// No schedule has this id.
    #[error("no schedule with id {0}")]
    ScheduleNotFound(i64),
}

impl EngineError {
    /// An [`EngineError::InvalidOption`] from a message that names the option
    /// and the offending value.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidOption(message.into())
    }
}
