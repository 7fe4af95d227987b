//! The storage operations of flow control and schedules, as two traits that
//! every [`super::Storage`] also implements.
//!
//! Like the job operations, each one runs as one transaction and takes the
//! current time as an argument. Claims, enqueues and the transitions that
//! finish a job consult the same state inside their own transactions (see
//! `flow.rs`); these are the operations that manage it.

use crate::error::EngineError;
use crate::flow::{LimitState, Limits};
use crate::schedule::{FireRecord, ScheduleRecord};

/// Limits (expiry and dependencies are [`super::Transitions`]).
pub trait FlowStorage {
    /// Sets the limits under `key` (`task:NAME` or `queue:NAME`); empty
    /// limits remove the row and its state.
    fn set_limits(&self, key: &str, limits: &Limits, now_ms: i64) -> Result<(), EngineError>;

    /// Every limit with its state at `now_ms`, by key.
    fn limits(&self, now_ms: i64) -> Result<Vec<LimitState>, EngineError>;
}

/// Durable schedules (creating one and a fire are [`super::Transitions`]).
pub trait ScheduleStorage {
    /// Every schedule, by id.
    fn schedules(&self) -> Result<Vec<ScheduleRecord>, EngineError>;

    /// One schedule.
    fn get_schedule(&self, id: i64) -> Result<ScheduleRecord, EngineError>;

    /// Pauses or resumes a schedule.
    fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<(), EngineError>;

    /// Deletes a schedule and its fire records; false if there was none.
    fn delete_schedule(&self, id: i64) -> Result<bool, EngineError>;

    /// Schedules not paused whose next fire is at or before `now_ms`.
    fn due_schedules(&self, limit: usize, now_ms: i64) -> Result<Vec<ScheduleRecord>, EngineError>;

    /// A schedule's fire records, newest first.
    fn schedule_fires(&self, id: i64, limit: usize) -> Result<Vec<FireRecord>, EngineError>;

    /// The earliest next fire of a schedule that is not paused.
    fn next_fire_ms(&self) -> Result<Option<i64>, EngineError>;
}
