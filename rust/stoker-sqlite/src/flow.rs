//! The SQLite side of flow control and schedules (see `flow.rs` and
//! `schedule.rs` for the rules): its part of the schema, the helpers the job
//! transitions of `lib.rs` call inside their transactions, and the
//! [`FlowStorage`] and [`ScheduleStorage`] operations.
//!
//! The helpers, and where they are called:
//! - [`insert_job`] (enqueue, schedule fires): uniqueness keys, send-time
//!   limits, dependencies, expiry.
//! - [`expire_due_in`] and [`Gate`] (claim): expired jobs never run; rate,
//!   concurrency and breaker limits decide which picked jobs are taken.
//! - [`on_completed`], [`on_attempt_failed`], [`on_finished`] (complete, fail,
//!   cancel, finish_cancelled, requeue, expiry): breaker outcomes, resolution
//!   of dependent jobs, and the retention deadline of finished jobs.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension, Transaction};

use crate::{
    sql_limit, status_from_code, SqlResult, SqliteStorage, INSERT_JOB_SQL, INSERT_PAYLOAD_SQL,
};
use stoker_engine::decide::dependents::{self, dependency_failed_message, FinishSteps};
use stoker_engine::decide::{
    self, breaker_opens, limit_from_row, reconfigured, Gate, LimitRow, SendAdmission, LIMIT_COLUMNS,
};
use stoker_engine::error::EngineError;
use stoker_engine::flow::{BreakerState, LimitState, Limits, DEPENDENCY_FAILED_EXC_TYPE};
use stoker_engine::model::{NewJob, Status};
use stoker_engine::storage::flow_storage::FlowStorage;
use stoker_engine::{status_code, unfinished_codes, unstarted_codes};

use crate::columns::SqlRow;
use crate::transitions::Steps;
use crate::SqlError;
use stoker_engine::sql::*;
use stoker_engine::storage::{stored_aside, LIMITED_SCAN_EXTRA};

/// The flow-control and schedule part of the schema, run right after the job
/// schema of `lib.rs` when a database is created. The flow columns of
/// `jobs` are added here, so that the job table's own definition stays as the
/// job life needs it.
pub const SCHEMA: &str = concat!("
ALTER TABLE jobs ADD COLUMN unique_key TEXT;
ALTER TABLE jobs ADD COLUMN expires_ms INTEGER;
-- 1 when the job took its rate-limit tokens at enqueue (fail_when_limited).
ALTER TABLE jobs ADD COLUMN rate_prepaid INTEGER NOT NULL DEFAULT 0;

-- At most one live job per uniqueness key (waiting, pending, scheduled, running).
CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key) WHERE unique_key IS NOT NULL AND status IN (", unfinished_codes!(), ")", ";
-- Expiry of jobs that have not started.
CREATE INDEX jobs_expiry ON jobs (expires_ms) WHERE expires_ms IS NOT NULL AND status IN (", unstarted_codes!(), ")", ";
-- Running jobs per task, for concurrency limits and breaker probes.
CREATE INDEX jobs_running_task ON jobs (task_name) WHERE status = ", status_code!(running), ";

-- Dependencies: job_id waits for dep_id. Kept after they resolve, as history.
CREATE TABLE job_deps (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    dep_id INTEGER NOT NULL REFERENCES jobs (id),
    position INTEGER NOT NULL,
    PRIMARY KEY (job_id, dep_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX job_deps_dep ON job_deps (dep_id);

-- Limits of tasks and queues, with their token buckets and breaker state.
CREATE TABLE flow_limits (
    key TEXT PRIMARY KEY,
    rate_count INTEGER,
    rate_per_ms INTEGER,
    burst INTEGER,
    tokens INTEGER NOT NULL DEFAULT 0,
    refilled_ms INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER,
    breaker_failures INTEGER,
    breaker_window_ms INTEGER,
    breaker_cooldown_ms INTEGER,
    breaker_state INTEGER NOT NULL DEFAULT 0,
    open_until_ms INTEGER,
    -- When a job this limit held back may run: a wake-up hint.
    wake_ms INTEGER
) STRICT;

-- Counted failures of tasks with a breaker, within the breaker's window.
CREATE TABLE flow_failures (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX flow_failures_key ON flow_failures (key, at_ms);

CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE,
    kind TEXT NOT NULL,
    cron TEXT,
    timezone TEXT,
    every_ms INTEGER,
    at_ms INTEGER,
    missed TEXT NOT NULL,
    source TEXT,
    labels TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    next_fire_ms INTEGER,
    last_fire_ms INTEGER,
    enqueued INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    task_name TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    max_retries INTEGER NOT NULL,
    max_crashes INTEGER NOT NULL,
    backoff_base_ms INTEGER NOT NULL,
    backoff_cap_ms INTEGER NOT NULL,
    jitter REAL NOT NULL,
    timeout_ms INTEGER,
    result_ttl_ms INTEGER,
    expires_after_ms INTEGER,
    unique_key TEXT
) STRICT;
CREATE INDEX schedules_due ON schedules (next_fire_ms) WHERE paused = 0 AND next_fire_ms IS NOT NULL;

CREATE TABLE schedule_fires (
    id INTEGER PRIMARY KEY,
    schedule_id INTEGER NOT NULL,
    fire_ms INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    job_id INTEGER,
    missed INTEGER NOT NULL,
    owner TEXT NOT NULL,
    message TEXT NOT NULL
) STRICT;
CREATE INDEX schedule_fires_schedule ON schedule_fires (schedule_id, id);
");

/// The live job with a uniqueness key.
pub const UNIQUE_LIVE_SQL: &str = concat!(
    "SELECT id FROM jobs WHERE unique_key = ?1 AND status IN (",
    unfinished_codes!(),
    ")"
);

/// Jobs to expire, earliest expiry first.
pub const EXPIRE_DUE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(expired),
    ", finished_ms = ?1 WHERE id IN \
     (SELECT id FROM jobs WHERE expires_ms IS NOT NULL AND status IN (",
    unstarted_codes!(),
    ")",
    " AND expires_ms <= ?1 \
     ORDER BY expires_ms LIMIT ?2) RETURNING id"
);

/// The earliest expiry of a job that has not started.
pub const NEXT_EXPIRY_SQL: &str = concat!(
    "SELECT expires_ms FROM jobs \
     WHERE expires_ms IS NOT NULL AND status IN (",
    unstarted_codes!(),
    ")",
    " ORDER BY expires_ms LIMIT 1"
);

/// Running jobs of one task.
pub const RUNNING_OF_TASK_SQL: &str = concat!(
    "SELECT count(*) FROM jobs WHERE status = ",
    status_code!(running),
    " AND task_name = ?1"
);

/// The jobs that depend on one job.
pub const DEPENDENTS_SQL: &str = "SELECT job_id FROM job_deps WHERE dep_id = ?1";

/// Schedules due, earliest first.
pub const DUE_SCHEDULES_SQL: &str = "SELECT id FROM schedules \
     WHERE paused = 0 AND next_fire_ms IS NOT NULL AND next_fire_ms <= ?1 ORDER BY next_fire_ms LIMIT ?2";

/// The earliest next fire.
pub const NEXT_FIRE_SQL: &str = "SELECT next_fire_ms FROM schedules \
     WHERE paused = 0 AND next_fire_ms IS NOT NULL ORDER BY next_fire_ms LIMIT 1";

/// Results and error histories past their retention, bounded.
pub const RETENTION_DUE_SQL: &str = "SELECT id FROM jobs \
     WHERE result_expires_ms IS NOT NULL AND result_expires_ms <= ?1 ORDER BY result_expires_ms LIMIT ?2";

/// The statements of this module whose cost must not grow with the number of
/// jobs; tests check their query plans.
pub const HOT_STATEMENTS: &[(&str, &str)] = &[
    ("unique_live", UNIQUE_LIVE_SQL),
    ("expire_due", EXPIRE_DUE_SQL),
    ("next_expiry", NEXT_EXPIRY_SQL),
    ("running_of_task", RUNNING_OF_TASK_SQL),
    ("dependents", DEPENDENTS_SQL),
    ("due_schedules", DUE_SCHEDULES_SQL),
    ("next_fire", NEXT_FIRE_SQL),
    ("retention_due", RETENTION_DUE_SQL),
];

/// At most this many jobs are expired by one claim.
const EXPIRE_BATCH: i64 = 1000;

// --- jobs: enqueue -----------------------------------------------------------

/// Inserts one job inside `tx`, applying its flow options; its id, and
/// whether it was created (false: a live job with its unique key exists).
pub(crate) fn insert_job(
    tx: &Transaction<'_>,
    job: &NewJob,
    now_ms: i64,
) -> SqlResult<(i64, bool)> {
    if let Some(key) = &job.unique_key {
        let existing: Option<i64> = tx
            .prepare_cached(UNIQUE_LIVE_SQL)?
            .query_row([key], |row| row.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok((id, false));
        }
    }
    let prepaid = if job.fail_when_limited {
        admit_at_send(tx, &job.task_name, &job.queue, now_ms)?
    } else {
        false
    };
    let mut failed: Option<(i64, Status)> = None;
    let mut unfinished = false;
    let mut deps: Vec<i64> = Vec::with_capacity(job.depends_on.len());
    {
        let mut status_of = tx.prepare_cached("SELECT status FROM jobs WHERE id = ?1")?;
        let mut seen = BTreeSet::new();
        for &dep in &job.depends_on {
            if !seen.insert(dep) {
                continue;
            }
            let code: i64 = status_of
                .query_row([dep], |row| row.get(0))
                .optional()?
                .ok_or(EngineError::NotFound(dep))?;
            match status_from_code(code, 0)? {
                Status::Complete => {}
                status @ (Status::Dead | Status::Cancelled | Status::Expired) => {
                    failed = failed.or(Some((dep, status)));
                }
                _ => unfinished = true,
            }
            deps.push(dep);
        }
    }
    let eta_ms = job.eta_at(now_ms);
    let status = if failed.is_some() || unfinished {
        Status::Waiting
    } else if eta_ms <= now_ms {
        Status::Pending
    } else {
        Status::Scheduled
    };
    let id = insert_row(tx, None, job, status, now_ms, prepaid)?;
    if !deps.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO job_deps (job_id, dep_id, position) VALUES (?1, ?2, ?3)",
        )?;
        for (position, dep) in deps.iter().enumerate() {
            insert.execute(params![id, dep, sql_limit(position)])?;
        }
    }
    if let Some((dep, dep_status)) = failed {
        if Steps(tx).fail_waiting(id, (dep, dep_status), now_ms)? {
            on_finished(tx, id, Status::Dead, now_ms)?;
        }
    }
    Ok((id, true))
}

/// Inserts the row of `job`, sent at `now_ms`, in `status`, with the id `id`
/// (the next one for `None`); a large payload goes to its own table, so the
/// row keeps an empty one. Its id.
pub(crate) fn insert_row(
    tx: &Transaction<'_>,
    id: Option<i64>,
    job: &NewJob,
    status: Status,
    now_ms: i64,
    prepaid: bool,
) -> SqlResult<i64> {
    let aside = stored_aside(job.payload.len());
    let in_row: &[u8] = if aside { &[] } else { &job.payload };
    tx.prepare_cached(INSERT_JOB_SQL)?.execute(params![
        id,
        job.task_name,
        job.queue,
        job.priority,
        in_row,
        status.code(),
        job.max_retries,
        job.max_crashes,
        job.backoff_base_ms,
        job.backoff_cap_ms,
        job.jitter,
        job.timeout_ms,
        job.result_ttl_ms,
        now_ms,
        job.eta_at(now_ms),
        job.unique_key,
        job.expires_after_ms.map(|ms| now_ms.saturating_add(ms)),
        i64::from(prepaid),
        job.labels,
    ])?;
    let id = tx.last_insert_rowid();
    if aside {
        tx.prepare_cached(INSERT_PAYLOAD_SQL)?
            .execute(params![id, job.payload])?;
    }
    Ok(id)
}

// --- jobs: finishing ---------------------------------------------------------

/// Called inside every transition that finishes a job: resolves what it
/// does to its dependents (see [`dependents::on_finished`]).
pub(crate) fn on_finished(
    tx: &Transaction<'_>,
    id: i64,
    status: Status,
    at_ms: i64,
) -> SqlResult<()> {
    dependents::on_finished(&mut Steps(tx), id, status, at_ms)
}

/// The statements that resolve a finished job's dependents.
impl FinishSteps for Steps<'_, '_> {
    type Error = SqlError;

    fn start_retention(&mut self, job_id: i64) -> SqlResult<()> {
        self.0
            .prepare_cached(START_RETENTION_SQL)?
            .execute([job_id])?;
        Ok(())
    }

    fn dependents(&mut self, job_id: i64) -> SqlResult<Vec<i64>> {
        let mut stmt = self.0.prepare_cached(DEPENDENTS_SQL)?;
        let rows = stmt.query_map([job_id], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn unfinished_dependencies(&mut self, dependent: i64) -> SqlResult<i64> {
        Ok(self
            .0
            .prepare_cached(UNFINISHED_DEPENDENCIES_SQL)?
            .query_row([dependent], |row| row.get(0))?)
    }

    fn release_waiting(&mut self, dependent: i64, now_ms: i64) -> SqlResult<()> {
        self.0
            .prepare_cached(RELEASE_WAITING_SQL)?
            .query_row(params![now_ms, dependent], |_| Ok(()))
            .optional()?;
        Ok(())
    }

    /// Ends a waiting job dead because `dep` ended as `how`; false if it
    /// was not waiting.
    fn fail_waiting(&mut self, job: i64, (dep, how): (i64, Status), at_ms: i64) -> SqlResult<bool> {
        let tx = self.0;
        if tx
            .prepare_cached(FAIL_WAITING_SQL)?
            .execute(params![at_ms, job])?
            == 0
        {
            return Ok(false);
        }
        let message = dependency_failed_message(job, dep, how);
        tx.prepare_cached(DEPENDENCY_ERROR_SQL)?.execute(params![
            DEPENDENCY_FAILED_EXC_TYPE,
            message,
            at_ms,
            job
        ])?;
        Ok(true)
    }
}

/// Called when an attempt completed: a half-open breaker of its task closes.
pub(crate) fn on_completed(tx: &Transaction<'_>, job_id: i64, now_ms: i64) -> SqlResult<()> {
    let any_half_open: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM flow_limits WHERE breaker_state = 2)")?
        .query_row([], |row| row.get(0))?;
    if any_half_open {
        let key = task_key_of(tx, job_id)?;
        let closed = tx
            .prepare_cached(
                "UPDATE flow_limits SET breaker_state = 0, open_until_ms = NULL \
                 WHERE key = ?1 AND breaker_state = 2",
            )?
            .execute([&key])?;
        if closed > 0 {
            tx.prepare_cached("DELETE FROM flow_failures WHERE key = ?1")?
                .execute([&key])?;
        }
    }
    on_finished(tx, job_id, Status::Complete, now_ms)
}

/// Called when an attempt failed (before the retry policy is applied): counts
/// the failure against its task's breaker, which may open.
pub(crate) fn on_attempt_failed(tx: &Transaction<'_>, job_id: i64, now_ms: i64) -> SqlResult<()> {
    let any_breaker: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM flow_limits WHERE breaker_failures IS NOT NULL)",
        )?
        .query_row([], |row| row.get(0))?;
    if !any_breaker {
        return Ok(());
    }
    let key = task_key_of(tx, job_id)?;
    let breaker: Option<(i64, i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT breaker_failures, breaker_window_ms, breaker_cooldown_ms, breaker_state \
             FROM flow_limits WHERE key = ?1 AND breaker_failures IS NOT NULL",
        )?
        .query_row([&key], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    let Some((threshold, window_ms, cooldown_ms, state)) = breaker else {
        return Ok(());
    };
    tx.prepare_cached("INSERT INTO flow_failures (key, at_ms) VALUES (?1, ?2)")?
        .execute(params![key, now_ms])?;
    tx.prepare_cached("DELETE FROM flow_failures WHERE key = ?1 AND at_ms <= ?2")?
        .execute(params![key, now_ms.saturating_sub(window_ms)])?;
    let open = breaker_opens(
        BreakerState::from_code(state),
        threshold,
        || -> SqlResult<i64> {
            Ok(tx
                .prepare_cached("SELECT count(*) FROM flow_failures WHERE key = ?1")?
                .query_row([&key], |row| row.get(0))?)
        },
    )?;
    if open {
        let until = now_ms.saturating_add(cooldown_ms);
        tx.prepare_cached(
            "UPDATE flow_limits SET breaker_state = 1, open_until_ms = ?2, \
             wake_ms = min(coalesce(wake_ms, ?2), ?2) WHERE key = ?1",
        )?
        .execute(params![key, until])?;
    }
    Ok(())
}

fn task_key_of(tx: &Transaction<'_>, job_id: i64) -> SqlResult<String> {
    let task: String = tx
        .prepare_cached("SELECT task_name FROM jobs WHERE id = ?1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?
        .ok_or(EngineError::NotFound(job_id))?;
    Ok(format!("task:{task}"))
}

/// Expires up to `limit` due jobs inside `tx`; their ids.
pub(crate) fn expire_in(tx: &Transaction<'_>, limit: i64, now_ms: i64) -> SqlResult<Vec<i64>> {
    let expired: Vec<i64> = {
        let mut stmt = tx.prepare_cached(EXPIRE_DUE_SQL)?;
        let rows = stmt.query_map(params![now_ms, limit], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for &id in &expired {
        on_finished(tx, id, Status::Expired, now_ms)?;
    }
    Ok(expired)
}

/// Expires the due jobs a claim must not pick.
pub(crate) fn expire_due_in(tx: &Transaction<'_>, now_ms: i64) -> SqlResult<()> {
    // As with promotion, the update runs only when the earliest expiry came.
    if !crate::first_due(tx, NEXT_EXPIRY_SQL, now_ms)? {
        return Ok(());
    }
    expire_in(tx, EXPIRE_BATCH, now_ms).map(|_| ())
}

/// Drops the results and error histories of up to `limit` finished jobs
/// whose retention ended; how many jobs.
pub(crate) fn purge_retention_in(
    tx: &Transaction<'_>,
    limit: i64,
    now_ms: i64,
) -> SqlResult<usize> {
    let due: Vec<i64> = {
        let mut stmt = tx.prepare_cached(RETENTION_DUE_SQL)?;
        let rows = stmt.query_map(params![now_ms, limit], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut errors = tx.prepare_cached("DELETE FROM errors WHERE job_id = ?1")?;
    let mut results = tx.prepare_cached("DELETE FROM job_results WHERE job_id = ?1")?;
    let mut clear =
        tx.prepare_cached("UPDATE jobs SET result = NULL, result_expires_ms = NULL WHERE id = ?1")?;
    for &id in &due {
        errors.execute([id])?;
        results.execute([id])?;
        clear.execute([id])?;
    }
    Ok(due.len())
}

/// The earliest time a limit or an expiry wants a claim.
pub(crate) fn next_flow_wakeup(tx: &Transaction<'_>) -> SqlResult<Option<i64>> {
    let hint: Option<i64> = tx
        .prepare_cached("SELECT min(wake_ms) FROM flow_limits")?
        .query_row([], |row| row.get(0))?;
    let expiry: Option<i64> = tx
        .prepare_cached(NEXT_EXPIRY_SQL)?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(match (hint, expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

// --- limits: the claim-time gate ---------------------------------------------

fn load_limits(tx: &Transaction<'_>, now_ms: i64) -> SqlResult<HashMap<String, LimitRow>> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {LIMIT_COLUMNS} FROM flow_limits"))?;
    let rows = stmt.query_map([], |row| limit_from_row(&SqlRow(row), now_ms))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The limits as they stand at `now_ms`, for one claim to consult.
pub(crate) fn load_gate(tx: &Transaction<'_>, now_ms: i64) -> SqlResult<Gate> {
    Ok(Gate::new(load_limits(tx, now_ms)?, now_ms))
}

/// How many candidates a claim of `limit` jobs reads per queue.
pub(crate) fn scan_limit(gate: &Gate, limit: usize) -> usize {
    if gate.active() {
        limit.saturating_add(LIMITED_SCAN_EXTRA)
    } else {
        limit
    }
}

/// Whether the pending job `job_id` may be taken now (see [`Gate::admit`]).
/// Without limits, it is, and the job is not read.
pub(crate) fn admit(gate: &mut Gate, tx: &Transaction<'_>, job_id: i64) -> SqlResult<bool> {
    if !gate.active() {
        return Ok(true);
    }
    let (task, queue, prepaid): (String, String, bool) = tx
        .prepare_cached("SELECT task_name, queue, rate_prepaid FROM jobs WHERE id = ?1")?
        .query_row([job_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? != 0))
        })?;
    gate.admit(&task, &queue, prepaid, |task| -> SqlResult<i64> {
        Ok(tx
            .prepare_cached(RUNNING_OF_TASK_SQL)?
            .query_row([task], |row| row.get(0))?)
    })
}

/// Writes back the limits a claim changed.
pub(crate) fn store_gate(gate: &Gate, tx: &Transaction<'_>, now_ms: i64) -> SqlResult<()> {
    store_limits(tx, gate.limits(), now_ms)
}

fn store_limits(
    tx: &Transaction<'_>,
    limits: &HashMap<String, LimitRow>,
    now_ms: i64,
) -> SqlResult<()> {
    let mut update = tx.prepare_cached(
        "UPDATE flow_limits SET tokens = ?2, refilled_ms = ?3, breaker_state = ?4, \
         open_until_ms = ?5, wake_ms = ?6 WHERE key = ?1",
    )?;
    for (key, limit) in limits.iter().filter(|(_, limit)| limit.dirty) {
        update.execute(params![
            key,
            limit.tokens,
            now_ms,
            limit.state.code(),
            limit.open_until_ms,
            limit.wake_ms
        ])?;
    }
    Ok(())
}

/// For an enqueue that fails rather than waits (see
/// [`stoker_engine::decide::admit_at_send`]): whether tokens were taken (the
/// claim then takes none).
fn admit_at_send(tx: &Transaction<'_>, task: &str, queue: &str, now_ms: i64) -> SqlResult<bool> {
    let mut limits = load_limits(tx, now_ms)?;
    let admission = decide::admit_at_send(&mut limits, task, queue, now_ms)?;
    store_limits(tx, &limits, now_ms)?;
    Ok(admission == SendAdmission::Prepaid)
}

// --- FlowStorage --------------------------------------------------------------

impl FlowStorage for SqliteStorage {
    fn set_limits(&self, key: &str, limits: &Limits, now_ms: i64) -> Result<(), EngineError> {
        self.write(|tx| {
            if limits.is_empty() {
                tx.prepare_cached("DELETE FROM flow_limits WHERE key = ?1")?
                    .execute([key])?;
                tx.prepare_cached("DELETE FROM flow_failures WHERE key = ?1")?
                    .execute([key])?;
                return Ok(());
            }
            let current = load_limits(tx, now_ms)?.remove(key);
            let stored = reconfigured(limits, current.as_ref(), now_ms);
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO flow_limits ({LIMIT_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))?
            .execute(params![
                key,
                limits.rate.map(|r| r.count),
                limits.rate.map(|r| r.per_ms),
                limits.rate.map(|r| r.burst),
                stored.tokens,
                stored.refilled_ms,
                limits.concurrency,
                limits.breaker.map(|b| b.failures),
                limits.breaker.map(|b| b.window_ms),
                limits.breaker.map(|b| b.cooldown_ms),
                stored.state.code(),
                stored.open_until_ms,
                stored.wake_ms,
            ])?;
            if limits.breaker.is_none() {
                tx.prepare_cached("DELETE FROM flow_failures WHERE key = ?1")?
                    .execute([key])?;
            }
            Ok(())
        })
    }

    fn limits(&self, now_ms: i64) -> Result<Vec<LimitState>, EngineError> {
        self.read(|tx| {
            let rows = load_limits(tx, now_ms)?;
            let mut states = Vec::with_capacity(rows.len());
            for (key, row) in rows {
                let running = match key.strip_prefix("task:") {
                    Some(task) => tx
                        .prepare_cached(RUNNING_OF_TASK_SQL)?
                        .query_row([task], |r| r.get(0))?,
                    None => 0,
                };
                let recent_failures = match &row.breaker {
                    Some(breaker) => tx
                        .prepare_cached(
                            "SELECT count(*) FROM flow_failures WHERE key = ?1 AND at_ms > ?2",
                        )?
                        .query_row(params![key, now_ms - breaker.window_ms], |r| r.get(0))?,
                    None => 0,
                };
                states.push(row.report(key, running, recent_failures));
            }
            states.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(states)
        })
    }
}
