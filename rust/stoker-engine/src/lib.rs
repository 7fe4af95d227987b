//! The engine of stoker: durable job state and scheduling, free of Python.
//!
//! Every state transition of a job (enqueue, claim, heartbeat, complete, fail,
//! cancel, requeue, reap, replay) is one operation of the [`Storage`] trait and
//! runs as one transaction. The [`Engine`] puts a storage together with a
//! [`Clock`] and a random source for retry jitter, and is the public API: it
//! reads `now` from the clock so that storage operations stay pure functions of
//! their arguments and can be tested with a [`ManualClock`].
//!
//! Payloads, results and pickled exceptions are opaque bytes here; the Python
//! binding (`stoker._core`) is the only place that knows they are pickles.

pub mod clock;
#[macro_use]
pub mod codes;
pub mod decide;
pub mod engine;
pub mod error;
pub mod flow;
pub mod model;
pub mod retry;
pub mod rows;
pub mod schedule;
pub mod sql;
pub mod storage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::Engine;
pub use error::EngineError;
pub use flow::{BreakerConfig, BreakerState, LimitScope, LimitState, Limits, RateLimit};
pub use model::{
    CancelOutcome, ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureKind, FailureReport,
    JobFilter, JobRecord, NewJob, StaleOutcome, Status,
};
pub use schedule::{
    FireOutcome, FireRecord, MissedFires, NewSchedule, ScheduleRecord, ScheduleSpec, Verdict,
};
pub use storage::{ClaimRequest, Storage, Transitions, WakeListener};

/// Shorthand for results whose error is an [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
