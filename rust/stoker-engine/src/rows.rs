//! Rows as both drivers give them, so that each record is decoded once.
//!
//! A backend wraps its driver's row in a type implementing [`Columns`]
//! (typed reads by column index, with the driver's own error), and the
//! decoders here and in [`crate::decide`] read the columns in the order of
//! the `*_COLUMNS` lists next to them. The lists name plain columns; where a
//! backend reads a column through an expression (a payload stored aside), it
//! keeps its own list in the same order.

use crate::model::{ClaimedJob, ErrorRecord, JobRecord, NewJob, StaleOutcome, Status};
use crate::schedule::{FireRecord, MissedFires, ScheduleRecord, ScheduleSpec};

/// Typed reads of one row's columns by index.
pub trait Columns {
    /// The driver's error (a missing column, a type that does not match).
    type Error;

    /// A non-null integer (BIGINT) column.
    fn int(&self, index: usize) -> Result<i64, Self::Error>;

    /// A nullable integer column.
    fn opt_int(&self, index: usize) -> Result<Option<i64>, Self::Error>;

    /// A non-null text column.
    fn text(&self, index: usize) -> Result<String, Self::Error>;

    /// A nullable text column.
    fn opt_text(&self, index: usize) -> Result<Option<String>, Self::Error>;

    /// A non-null blob (BYTEA) column.
    fn bytes(&self, index: usize) -> Result<Vec<u8>, Self::Error>;

    /// A nullable blob column.
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>, Self::Error>;

    /// A non-null float (DOUBLE PRECISION) column.
    fn float(&self, index: usize) -> Result<f64, Self::Error>;

    /// A status column: its code read as a [`Status`], an unknown code being
    /// the driver's conversion error.
    fn status(&self, index: usize) -> Result<Status, Self::Error>;

    /// A flag stored as an integer (0 is false).
    fn flag(&self, index: usize) -> Result<bool, Self::Error> {
        Ok(self.int(index)? != 0)
    }

    /// The column as whatever type is asked for (see [`FromColumn`]).
    fn get<T: FromColumn>(&self, index: usize) -> Result<T, Self::Error>
    where
        Self: Sized,
    {
        T::from_column(self, index)
    }
}

/// A type a column is read as, through the typed reads of [`Columns`].
pub trait FromColumn: Sized {
    /// Reads column `index` of `row`.
    fn from_column<R: Columns>(row: &R, index: usize) -> Result<Self, R::Error>;
}

macro_rules! from_column {
    ($($ty:ty => $read:ident),* $(,)?) => {
        $(impl FromColumn for $ty {
            fn from_column<R: Columns>(row: &R, index: usize) -> Result<Self, R::Error> {
                row.$read(index)
            }
        })*
    };
}

from_column! {
    i64 => int,
    Option<i64> => opt_int,
    String => text,
    Option<String> => opt_text,
    Vec<u8> => bytes,
    Option<Vec<u8>> => opt_bytes,
    f64 => float,
    bool => flag,
    Status => status,
}

/// A job read as its backend's `JOB_COLUMNS` (payload and result resolved
/// from the side tables by the backend's SQL): id, task_name, queue,
/// priority, status, payload, attempt, failures, crashes, max_retries,
/// max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms,
/// result_ttl_ms, created_ms, eta_ms, started_ms, finished_ms, lease_owner,
/// lease_deadline_ms, cancel_requested, result, result_expires_ms,
/// replayed_from, labels, progress, usage, unique_key, expires_ms.
pub fn job_from_row<R: Columns>(row: &R) -> Result<JobRecord, R::Error> {
    Ok(JobRecord {
        id: row.get(0)?,
        task_name: row.get(1)?,
        queue: row.get(2)?,
        priority: row.get(3)?,
        status: row.get(4)?,
        payload: row.get(5)?,
        attempt: row.get(6)?,
        failures: row.get(7)?,
        crashes: row.get(8)?,
        max_retries: row.get(9)?,
        max_crashes: row.get(10)?,
        backoff_base_ms: row.get(11)?,
        backoff_cap_ms: row.get(12)?,
        jitter: row.get(13)?,
        timeout_ms: row.get(14)?,
        result_ttl_ms: row.get(15)?,
        created_ms: row.get(16)?,
        eta_ms: row.get(17)?,
        started_ms: row.get(18)?,
        finished_ms: row.get(19)?,
        lease_owner: row.get(20)?,
        lease_deadline_ms: row.get(21)?,
        cancel_requested: row.get(22)?,
        result: row.get(23)?,
        result_expires_ms: row.get(24)?,
        replayed_from: row.get(25)?,
        labels: row.get(26)?,
        progress: row.get(27)?,
        usage: row.get(28)?,
        unique_key: row.get(29)?,
        expires_ms: row.get(30)?,
    })
}

/// The columns of `errors` that [`error_from_row`] reads, in order.
pub const ERROR_COLUMNS: &str =
    "id, job_id, attempt, kind, exc_type, message, traceback, exc_pickle, failed_ms, worker, usage";

/// One failed attempt read as [`ERROR_COLUMNS`].
pub fn error_from_row<R: Columns>(row: &R) -> Result<ErrorRecord, R::Error> {
    Ok(ErrorRecord {
        id: row.get(0)?,
        job_id: row.get(1)?,
        attempt: row.get(2)?,
        kind: row.get(3)?,
        exc_type: row.get(4)?,
        message: row.get(5)?,
        traceback: row.get(6)?,
        exc_pickle: row.get(7)?,
        failed_ms: row.get(8)?,
        worker: row.get(9)?,
        usage: row.get(10)?,
    })
}

/// The columns of `stale_outcomes` that [`stale_from_row`] reads, in order.
pub const STALE_COLUMNS: &str = "job_id, token, owner, outcome, at_ms";

/// One refused outcome read as [`STALE_COLUMNS`].
pub fn stale_from_row<R: Columns>(row: &R) -> Result<StaleOutcome, R::Error> {
    Ok(StaleOutcome {
        job_id: row.get(0)?,
        token: row.get(1)?,
        owner: row.get(2)?,
        outcome: row.get(3)?,
        at_ms: row.get(4)?,
    })
}

/// A job a claim leased, read from its row from column `first` on:
/// attempt, task_name, queue, payload, timeout_ms, labels. The attempt is
/// the fencing token.
pub fn claimed_from_row<R: Columns>(
    row: &R,
    first: usize,
    id: i64,
    lease_deadline_ms: i64,
) -> Result<ClaimedJob, R::Error> {
    let attempt: i64 = row.get(first)?;
    Ok(ClaimedJob {
        id,
        token: attempt,
        attempt,
        task_name: row.get(first + 1)?,
        queue: row.get(first + 2)?,
        payload: row.get(first + 3)?,
        timeout_ms: row.get(first + 4)?,
        lease_deadline_ms,
        labels: row.get(first + 5)?,
    })
}

/// The columns of `schedules` that [`schedule_from_row`] reads, in order.
pub const SCHEDULE_COLUMNS: &str = "id, name, kind, cron, timezone, every_ms, at_ms, missed, source, labels, \
     paused, next_fire_ms, last_fire_ms, enqueued, created_ms, task_name, queue, priority, payload, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, \
     expires_after_ms, unique_key";

/// How a schedule's spec is stored: its `cron`, `timezone`, `every_ms` and
/// `at_ms` columns (an interval's start is stored as its `at_ms`).
pub fn schedule_columns(
    spec: &ScheduleSpec,
) -> (Option<&str>, Option<&str>, Option<i64>, Option<i64>) {
    match spec {
        ScheduleSpec::Cron { expr, timezone } => (Some(expr), Some(timezone), None, None),
        ScheduleSpec::Interval { every_ms, start_ms } => (None, None, Some(*every_ms), *start_ms),
        ScheduleSpec::Once { at_ms } => (None, None, None, Some(*at_ms)),
    }
}

/// A schedule read as [`SCHEDULE_COLUMNS`].
pub fn schedule_from_row<R: Columns>(row: &R) -> Result<ScheduleRecord, R::Error> {
    let kind: String = row.get(2)?;
    let spec = match kind.as_str() {
        "cron" => ScheduleSpec::Cron {
            expr: row.get(3)?,
            timezone: row.get(4)?,
        },
        "interval" => ScheduleSpec::Interval {
            every_ms: row.get(5)?,
            start_ms: row.get(6)?,
        },
        _ => ScheduleSpec::Once { at_ms: row.get(6)? },
    };
    let missed: String = row.get(7)?;
    let mut job = NewJob::new(row.get::<String>(15)?, row.get::<Vec<u8>>(18)?);
    job.queue = row.get(16)?;
    job.priority = row.get(17)?;
    job.max_retries = row.get(19)?;
    job.max_crashes = row.get(20)?;
    job.backoff_base_ms = row.get(21)?;
    job.backoff_cap_ms = row.get(22)?;
    job.jitter = row.get(23)?;
    job.timeout_ms = row.get(24)?;
    job.result_ttl_ms = row.get(25)?;
    job.expires_after_ms = row.get(26)?;
    job.unique_key = row.get(27)?;
    let labels: String = row.get(9)?;
    // The schedule's labels are the labels of every job it fires.
    job.labels = (!labels.is_empty() && labels != "{}").then(|| labels.clone());
    Ok(ScheduleRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        spec,
        job,
        missed: if missed == "catch_up" {
            MissedFires::CatchUp
        } else {
            MissedFires::Skip
        },
        source: row.get(8)?,
        labels,
        paused: row.get(10)?,
        next_fire_ms: row.get(11)?,
        last_fire_ms: row.get(12)?,
        enqueued: row.get(13)?,
        created_ms: row.get(14)?,
    })
}

/// The columns of `schedule_fires` that [`fire_from_row`] reads, in order.
pub const FIRE_COLUMNS: &str =
    "id, schedule_id, fire_ms, at_ms, outcome, job_id, missed, owner, message";

/// One fire of a schedule read as [`FIRE_COLUMNS`].
pub fn fire_from_row<R: Columns>(row: &R) -> Result<FireRecord, R::Error> {
    Ok(FireRecord {
        id: row.get(0)?,
        schedule_id: row.get(1)?,
        fire_ms: row.get(2)?,
        at_ms: row.get(3)?,
        outcome: row.get(4)?,
        job_id: row.get(5)?,
        missed: row.get(6)?,
        owner: row.get(7)?,
        message: row.get(8)?,
    })
}
