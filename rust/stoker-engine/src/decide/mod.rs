//! The decisions of the job state machine, written once for every storage.
//!
//! Nothing here reads or writes a database: each decision takes the state a
//! backend read inside its transaction and returns what the backend must
//! write, so a backend's operation is "read the state, call the decision,
//! write the result", and the rules themselves are tested here without SQL.
//!
//! - [`attempt`]: a failed attempt and the reaping of expired leases, over
//!   the statements a backend offers;
//! - [`dependents`]: what a finished job does to the jobs that depend on it;
//! - [`failure`]: what a failed attempt does to its job (stale, cancelled,
//!   retried at an eta with backoff, or dead);
//! - [`fire`]: one fire of a schedule (the fence, the missed-fire policy,
//!   the source's verdict);
//! - [`limits`]: rate-limit tokens, concurrency admission and the circuit
//!   breaker's steps, at claim time and at send time;
//! - [`purge`]: what a purge of finished jobs may remove.

pub mod attempt;
pub mod dependents;
pub mod failure;
pub mod fire;
pub mod limits;
pub mod purge;

pub use failure::{
    counts_against_breaker, decide_failure, failure_state_from_row, FailureDecision, FailureState,
    FAILURE_COLUMNS,
};
pub use limits::{
    admit_at_send, breaker_opens, limit_from_row, reconfigured, Gate, LimitRow, SendAdmission,
    StoredLimit, LIMIT_COLUMNS,
};
pub use purge::{purgeable, Purge};
