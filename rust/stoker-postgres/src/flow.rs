//! The PostgreSQL side of flow control and schedules: the same rules as
//! `stoker-sqlite/src/flow.rs` (see the engine's `flow.rs` and `schedule.rs`), with the row locks
//! that make them hold across concurrent transactions of many hosts:
//! - claims of a database with limits lock every `flow_limits` row first, so
//!   the running counts and token buckets they read cannot change under them
//!   (a global concurrency limit is never exceeded);
//! - a failure that counts against a breaker locks the breaker's row;
//! - a dependent job is locked before its unfinished dependencies are
//!   counted, and an enqueue locks the jobs it depends on, so a dependency
//!   that completes is never missed by a new or a waiting dependent;
//! - a schedule's fire is fenced by `UPDATE .. WHERE next_fire_ms = fire`,
//!   which a concurrent fire waits on and then finds moved.

use std::collections::{BTreeSet, HashMap};

use crate::columns::PgRow;
use crate::PgError;
use crate::{sql_count, status_of, Params, PgResult, PostgresStorage, Tx};
use stoker_engine::decide::dependents::{self, dependency_failed_message, FinishSteps};
use stoker_engine::decide::{
    self, breaker_opens, limit_from_row, reconfigured, Gate, LimitRow, SendAdmission, LIMIT_COLUMNS,
};
use stoker_engine::error::EngineError;
use stoker_engine::flow::{BreakerState, LimitState, Limits, DEPENDENCY_FAILED_EXC_TYPE};
use stoker_engine::model::{ClaimedJob, NewJob, Status};
use stoker_engine::sql::*;
use stoker_engine::storage::flow_storage::FlowStorage;
use stoker_engine::storage::stored_aside;
use stoker_engine::storage::LIMITED_SCAN_EXTRA;
use stoker_engine::{status_code, unfinished_codes, unstarted_codes};

/// At most this many jobs are expired by one claim.
const EXPIRE_BATCH: i64 = 1000;

const INSERT_JOB_SQL: &str = "INSERT INTO jobs (task_name, queue, priority, payload, status, max_retries, \
     max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, created_ms, eta_ms, \
     unique_key, expires_ms, rate_prepaid, labels) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id";

// --- jobs: enqueue -----------------------------------------------------------

/// Inserts one job inside `tx`, applying its flow options; its id, and
/// whether it was created (false: a live job with its unique key exists).
pub(crate) fn insert_job(tx: &mut Tx<'_>, job: &NewJob, now_ms: i64) -> PgResult<(i64, bool)> {
    if let Some(key) = &job.unique_key {
        // Two enqueues of one key racing both find none; the unique index
        // makes the second insert fail and its transaction run again, when it
        // finds the first one's job.
        let existing = tx.query_opt(
            concat!(
                "SELECT id FROM jobs WHERE unique_key = $1 AND status IN (",
                unfinished_codes!(),
                ")"
            ),
            &[key],
        )?;
        if let Some(row) = existing {
            return Ok((row.try_get(0)?, false));
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
    if !job.depends_on.is_empty() {
        let mut seen = BTreeSet::new();
        for &dep in &job.depends_on {
            if seen.insert(dep) {
                deps.push(dep);
            }
        }
        // FOR SHARE waits for a transaction finishing a dependency, and keeps
        // one from finishing until this job and its edges are committed.
        let rows = tx.query(
            "SELECT id, status FROM jobs WHERE id = ANY($1) ORDER BY id FOR SHARE",
            &[&deps],
        )?;
        let mut status_of_dep: HashMap<i64, Status> = HashMap::with_capacity(rows.len());
        for row in &rows {
            status_of_dep.insert(row.try_get(0)?, status_of(row.try_get(1)?)?);
        }
        for &dep in &deps {
            match status_of_dep.get(&dep) {
                None => return Err(EngineError::NotFound(dep).into()),
                Some(Status::Complete) => {}
                Some(&status @ (Status::Dead | Status::Cancelled | Status::Expired)) => {
                    failed = failed.or(Some((dep, status)));
                }
                Some(_) => unfinished = true,
            }
        }
    }
    let eta_ms = job.eta_at(now_ms);
    let status = if failed.is_some() || unfinished {
        Status::Waiting
    } else if eta_ms <= now_ms {
        tx.wake = true;
        Status::Pending
    } else {
        Status::Scheduled
    };
    let expires_ms = job.expires_after_ms.map(|ms| now_ms.saturating_add(ms));
    // A large payload goes to its own table, so the row keeps an empty one.
    let aside = stored_aside(job.payload.len());
    let in_row: &[u8] = if aside { &[] } else { &job.payload };
    let row = tx.query_one(
        INSERT_JOB_SQL,
        &[
            &job.task_name,
            &job.queue,
            &job.priority,
            &in_row,
            &status.code(),
            &job.max_retries,
            &job.max_crashes,
            &job.backoff_base_ms,
            &job.backoff_cap_ms,
            &job.jitter,
            &job.timeout_ms,
            &job.result_ttl_ms,
            &now_ms,
            &eta_ms,
            &job.unique_key,
            &expires_ms,
            &i64::from(prepaid),
            &job.labels,
        ],
    )?;
    let id: i64 = row.try_get(0)?;
    if aside {
        tx.execute(
            "INSERT INTO job_payloads (job_id, data) VALUES ($1, $2)",
            &[&id, &job.payload],
        )?;
    }
    for (position, dep) in deps.iter().enumerate() {
        tx.execute(
            "INSERT INTO job_deps (job_id, dep_id, position) VALUES ($1, $2, $3)",
            &[&id, dep, &sql_count(position)],
        )?;
    }
    if let Some((dep, dep_status)) = failed {
        if tx.fail_waiting(id, (dep, dep_status), now_ms)? {
            dependents::on_finished(tx, id, Status::Dead, now_ms)?;
        }
    }
    Ok((id, true))
}

// --- jobs: finishing ---------------------------------------------------------

/// The statements that resolve a finished job's dependents (see
/// [`dependents::on_finished`], which every transition that finishes a job
/// calls).
impl FinishSteps for Tx<'_> {
    type Error = PgError;

    fn start_retention(&mut self, job_id: i64) -> PgResult<()> {
        self.execute(START_RETENTION_SQL, &[&job_id])?;
        Ok(())
    }

    fn dependents(&mut self, job_id: i64) -> PgResult<Vec<i64>> {
        self.query(
            "SELECT job_id FROM job_deps WHERE dep_id = $1 ORDER BY job_id",
            &[&job_id],
        )?
        .iter()
        .map(|row| Ok(row.try_get(0)?))
        .collect()
    }

    fn lock_dependent(&mut self, dependent: i64) -> PgResult<()> {
        self.query_opt("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&dependent])?;
        Ok(())
    }

    fn unfinished_dependencies(&mut self, dependent: i64) -> PgResult<i64> {
        Ok(self
            .query_one(UNFINISHED_DEPENDENCIES_SQL, &[&dependent])?
            .try_get(0)?)
    }

    /// A job pending again wakes idle supervisors.
    fn release_waiting(&mut self, dependent: i64, now_ms: i64) -> PgResult<()> {
        if let Some(row) = self.query_opt(RELEASE_WAITING_SQL, &[&now_ms, &dependent])? {
            self.wake |= row.try_get::<_, i64>(0)? == Status::Pending.code();
        }
        Ok(())
    }

    /// Ends a waiting job dead because `dep` ended as `how`; false if it
    /// was not waiting.
    fn fail_waiting(&mut self, job: i64, (dep, how): (i64, Status), at_ms: i64) -> PgResult<bool> {
        if self.execute(FAIL_WAITING_SQL, &[&at_ms, &job])? == 0 {
            return Ok(false);
        }
        let message = dependency_failed_message(job, dep, how);
        let row: &Params<'_> = &[&DEPENDENCY_FAILED_EXC_TYPE, &message, &at_ms, &job];
        self.execute(DEPENDENCY_ERROR_SQL, row)?;
        Ok(true)
    }
}

/// Called when attempts completed: a half-open breaker of their tasks closes,
/// and their dependents are resolved.
pub(crate) fn on_completed_many(tx: &mut Tx<'_>, job_ids: &[i64], now_ms: i64) -> PgResult<()> {
    if job_ids.is_empty() {
        return Ok(());
    }
    let row = tx.query_one(
        "SELECT EXISTS (SELECT 1 FROM flow_limits WHERE breaker_state = 2), \
         EXISTS (SELECT 1 FROM job_deps WHERE dep_id = ANY($1))",
        &[&job_ids],
    )?;
    let any_half_open: bool = row.try_get(0)?;
    let any_dependents: bool = row.try_get(1)?;
    if !any_half_open && !any_dependents {
        return Ok(());
    }
    for &job_id in job_ids {
        if any_half_open {
            let key = task_key_of(tx, job_id)?;
            let closed = tx.execute(
                "UPDATE flow_limits SET breaker_state = 0, open_until_ms = NULL \
                 WHERE key = $1 AND breaker_state = 2",
                &[&key],
            )?;
            if closed > 0 {
                tx.execute("DELETE FROM flow_failures WHERE key = $1", &[&key])?;
            }
        }
        if any_dependents {
            dependents::on_finished(tx, job_id, Status::Complete, now_ms)?;
        }
    }
    Ok(())
}

/// Called when an attempt failed (before the retry policy is applied): counts
/// the failure against its task's breaker, which may open.
pub(crate) fn on_attempt_failed(tx: &mut Tx<'_>, job_id: i64, now_ms: i64) -> PgResult<()> {
    let any_breaker: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM flow_limits WHERE breaker_failures IS NOT NULL)",
            &[],
        )?
        .try_get(0)?;
    if !any_breaker {
        return Ok(());
    }
    let key = task_key_of(tx, job_id)?;
    let breaker = tx.query_opt(
        "SELECT breaker_failures, breaker_window_ms, breaker_cooldown_ms, breaker_state \
         FROM flow_limits WHERE key = $1 AND breaker_failures IS NOT NULL FOR UPDATE",
        &[&key],
    )?;
    let Some(breaker) = breaker else {
        return Ok(());
    };
    let threshold: i64 = breaker.try_get(0)?;
    let window_ms: i64 = breaker.try_get(1)?;
    let cooldown_ms: i64 = breaker.try_get(2)?;
    let state: i64 = breaker.try_get(3)?;
    tx.execute(
        "INSERT INTO flow_failures (key, at_ms) VALUES ($1, $2)",
        &[&key, &now_ms],
    )?;
    tx.execute(
        "DELETE FROM flow_failures WHERE key = $1 AND at_ms <= $2",
        &[&key, &now_ms.saturating_sub(window_ms)],
    )?;
    let open = breaker_opens(
        BreakerState::from_code(state),
        threshold,
        || -> PgResult<i64> {
            Ok(tx
                .query_one("SELECT count(*) FROM flow_failures WHERE key = $1", &[&key])?
                .try_get(0)?)
        },
    )?;
    if open {
        let until = now_ms.saturating_add(cooldown_ms);
        tx.execute(
            "UPDATE flow_limits SET breaker_state = 1, open_until_ms = $2, \
             wake_ms = least(coalesce(wake_ms, $2), $2) WHERE key = $1",
            &[&key, &until],
        )?;
    }
    Ok(())
}

fn task_key_of(tx: &mut Tx<'_>, job_id: i64) -> PgResult<String> {
    let row = tx
        .query_opt("SELECT task_name FROM jobs WHERE id = $1", &[&job_id])?
        .ok_or(EngineError::NotFound(job_id))?;
    let task: String = row.try_get(0)?;
    Ok(format!("task:{task}"))
}

/// Expires up to `limit` due jobs inside `tx`; their ids.
pub(crate) fn expire_in(tx: &mut Tx<'_>, limit: i64, now_ms: i64) -> PgResult<Vec<i64>> {
    let expired: Vec<i64> = tx
        .query(
            concat!(
                "UPDATE jobs SET status = ",
                status_code!(expired),
                ", finished_ms = $1 WHERE id IN \
             (SELECT id FROM jobs WHERE expires_ms IS NOT NULL AND status IN (",
                unstarted_codes!(),
                ")",
                " AND expires_ms <= $1 \
             ORDER BY expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id"
            ),
            &[&now_ms, &limit],
        )?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for &id in &expired {
        dependents::on_finished(tx, id, Status::Expired, now_ms)?;
    }
    Ok(expired)
}

/// Expires the due jobs a claim must not pick.
pub(crate) fn expire_due_in(tx: &mut Tx<'_>, now_ms: i64) -> PgResult<()> {
    expire_in(tx, EXPIRE_BATCH, now_ms).map(|_| ())
}

/// Drops the results and error histories of up to `limit` finished jobs
/// whose retention ended; how many jobs.
pub(crate) fn purge_retention_in(tx: &mut Tx<'_>, limit: i64, now_ms: i64) -> PgResult<usize> {
    let due: Vec<i64> = tx
        .query(
            "SELECT id FROM jobs WHERE result_expires_ms IS NOT NULL AND result_expires_ms <= $1 \
             ORDER BY result_expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now_ms, &limit],
        )?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if due.is_empty() {
        return Ok(0);
    }
    tx.execute("DELETE FROM errors WHERE job_id = ANY($1)", &[&due])?;
    tx.execute("DELETE FROM job_results WHERE job_id = ANY($1)", &[&due])?;
    tx.execute(
        "UPDATE jobs SET result = NULL, result_expires_ms = NULL WHERE id = ANY($1)",
        &[&due],
    )?;
    Ok(due.len())
}

/// The earliest time a limit or an expiry wants a claim.
pub(crate) fn next_flow_wakeup(tx: &mut Tx<'_>) -> PgResult<Option<i64>> {
    let row = tx.query_one(
        concat!(
            "SELECT (SELECT min(wake_ms) FROM flow_limits), \
         (SELECT expires_ms FROM jobs WHERE expires_ms IS NOT NULL AND status IN (",
            unstarted_codes!(),
            ")",
            " \
          ORDER BY expires_ms LIMIT 1)"
        ),
        &[],
    )?;
    let hint: Option<i64> = row.try_get(0)?;
    let expiry: Option<i64> = row.try_get(1)?;
    Ok([hint, expiry].into_iter().flatten().min())
}

// --- limits: the claim-time gate ---------------------------------------------

fn load_limits(tx: &mut Tx<'_>, now_ms: i64, lock: bool) -> PgResult<HashMap<String, LimitRow>> {
    let sql = if lock {
        format!("SELECT {LIMIT_COLUMNS} FROM flow_limits ORDER BY key FOR UPDATE")
    } else {
        format!("SELECT {LIMIT_COLUMNS} FROM flow_limits")
    };
    tx.query(&sql, &[])?
        .iter()
        .map(|row| limit_from_row(&PgRow(row), now_ms))
        .collect()
}

/// Whether any limit is configured; claims without limits need no lock.
pub(crate) fn any_limits(tx: &mut Tx<'_>) -> PgResult<bool> {
    Ok(tx
        .query_one("SELECT EXISTS (SELECT 1 FROM flow_limits)", &[])?
        .try_get(0)?)
}

fn store_limits(tx: &mut Tx<'_>, limits: &HashMap<String, LimitRow>, now_ms: i64) -> PgResult<()> {
    for (key, limit) in limits.iter().filter(|(_, limit)| limit.dirty) {
        tx.execute(
            "UPDATE flow_limits SET tokens = $2, refilled_ms = $3, breaker_state = $4, \
             open_until_ms = $5, wake_ms = $6 WHERE key = $1",
            &[
                key,
                &limit.tokens,
                &now_ms,
                &limit.state.code(),
                &limit.open_until_ms,
                &limit.wake_ms,
            ],
        )?;
    }
    Ok(())
}

/// The claim of a database with limits: the limit rows are locked, so claims
/// that consult them take turns; candidates are locked with SKIP LOCKED, read
/// up to [`LIMITED_SCAN_EXTRA`] beyond the limit so that held-back jobs do not
/// hide others, passed through the gate, and the admitted ones leased in one
/// statement.
pub(crate) fn claim_limited(
    tx: &mut Tx<'_>,
    queues: &[String],
    limit: usize,
    owner: &str,
    lease_deadline_ms: i64,
    now_ms: i64,
) -> PgResult<Vec<ClaimedJob>> {
    let mut gate = Gate::new(load_limits(tx, now_ms, true)?, now_ms);
    let scan = limit.saturating_add(LIMITED_SCAN_EXTRA);
    let mut picked: Vec<(i64, i64, String, String, bool)> = Vec::new();
    for queue in queues {
        let rows = tx.query(
            concat!(
                "SELECT priority, id, task_name, queue, rate_prepaid FROM jobs WHERE status = ",
                status_code!(pending),
                " AND queue = $1 \
             ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            &[queue, &sql_count(scan)],
        )?;
        for row in &rows {
            picked.push((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get::<_, i64>(4)? != 0,
            ));
        }
    }
    picked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    picked.truncate(scan);
    let mut admitted: Vec<i64> = Vec::with_capacity(limit.min(picked.len()));
    for (_, id, task, queue, prepaid) in &picked {
        if admitted.len() >= limit {
            break;
        }
        let admit = gate.admit(task, queue, *prepaid, |task| -> PgResult<i64> {
            Ok(tx
                .query_one(
                    concat!(
                        "SELECT count(*) FROM jobs WHERE status = ",
                        status_code!(running),
                        " AND task_name = $1"
                    ),
                    &[&task],
                )?
                .try_get(0)?)
        })?;
        if admit {
            admitted.push(*id);
        }
    }
    store_limits(tx, gate.limits(), now_ms)?;
    if admitted.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx.query(
        concat!(
            "UPDATE jobs SET status = ",
            status_code!(running),
            ", attempt = attempt + 1, started_ms = $2, lease_owner = $3, \
         lease_deadline_ms = $4, cancel_requested = 0, progress = NULL, held = 0 \
         WHERE id = ANY($1) AND status = ",
            status_code!(pending),
            " \
         RETURNING id, priority, attempt, task_name, queue, payload, timeout_ms, labels"
        ),
        &[&admitted, &now_ms, &owner, &lease_deadline_ms],
    )?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let attempt: i64 = row.try_get(2)?;
        claimed.push((
            row.try_get::<_, i64>(1)?,
            ClaimedJob {
                id: row.try_get(0)?,
                token: attempt,
                attempt,
                task_name: row.try_get(3)?,
                queue: row.try_get(4)?,
                payload: row.try_get(5)?,
                timeout_ms: row.try_get(6)?,
                lease_deadline_ms,
                labels: row.try_get(7)?,
            },
        ));
    }
    claimed.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    Ok(claimed.into_iter().map(|(_, job)| job).collect())
}

/// For an enqueue that fails rather than waits (see
/// [`stoker_engine::decide::admit_at_send`]): whether tokens were taken (the
/// claim then takes none).
fn admit_at_send(tx: &mut Tx<'_>, task: &str, queue: &str, now_ms: i64) -> PgResult<bool> {
    let mut limits = load_limits(tx, now_ms, true)?;
    let admission = decide::admit_at_send(&mut limits, task, queue, now_ms)?;
    store_limits(tx, &limits, now_ms)?;
    Ok(admission == SendAdmission::Prepaid)
}

// --- FlowStorage --------------------------------------------------------------

impl FlowStorage for PostgresStorage {
    fn set_limits(&self, key: &str, limits: &Limits, now_ms: i64) -> Result<(), EngineError> {
        self.write(|tx| {
            if limits.is_empty() {
                tx.execute("DELETE FROM flow_limits WHERE key = $1", &[&key])?;
                tx.execute("DELETE FROM flow_failures WHERE key = $1", &[&key])?;
                return Ok(());
            }
            let current = load_limits(tx, now_ms, true)?.remove(key);
            let stored = reconfigured(limits, current.as_ref(), now_ms);
            tx.execute(
                &format!(
                    "INSERT INTO flow_limits ({LIMIT_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (key) DO UPDATE SET rate_count = EXCLUDED.rate_count, \
                     rate_per_ms = EXCLUDED.rate_per_ms, burst = EXCLUDED.burst, tokens = EXCLUDED.tokens, \
                     refilled_ms = EXCLUDED.refilled_ms, concurrency = EXCLUDED.concurrency, \
                     breaker_failures = EXCLUDED.breaker_failures, breaker_window_ms = EXCLUDED.breaker_window_ms, \
                     breaker_cooldown_ms = EXCLUDED.breaker_cooldown_ms, breaker_state = EXCLUDED.breaker_state, \
                     open_until_ms = EXCLUDED.open_until_ms, wake_ms = EXCLUDED.wake_ms"
                ),
                &[
                    &key,
                    &limits.rate.map(|r| r.count),
                    &limits.rate.map(|r| r.per_ms),
                    &limits.rate.map(|r| r.burst),
                    &stored.tokens,
                    &stored.refilled_ms,
                    &limits.concurrency,
                    &limits.breaker.map(|b| b.failures),
                    &limits.breaker.map(|b| b.window_ms),
                    &limits.breaker.map(|b| b.cooldown_ms),
                    &stored.state.code(),
                    &stored.open_until_ms,
                    &stored.wake_ms,
                ],
            )?;
            if limits.breaker.is_none() {
                tx.execute("DELETE FROM flow_failures WHERE key = $1", &[&key])?;
            }
            // Jobs held back by the old limits may run under the new ones.
            tx.wake = true;
            Ok(())
        })
    }

    fn limits(&self, now_ms: i64) -> Result<Vec<LimitState>, EngineError> {
        self.read(|tx| {
            let rows = load_limits(tx, now_ms, false)?;
            let mut states = Vec::with_capacity(rows.len());
            for (key, row) in rows {
                let running: i64 = match key.strip_prefix("task:") {
                    Some(task) => tx
                        .query_one(
                            concat!(
                                "SELECT count(*) FROM jobs WHERE status = ",
                                status_code!(running),
                                " AND task_name = $1"
                            ),
                            &[&task],
                        )?
                        .try_get(0)?,
                    None => 0,
                };
                let recent_failures: i64 = match &row.breaker {
                    Some(breaker) => tx
                        .query_one(
                            "SELECT count(*) FROM flow_failures WHERE key = $1 AND at_ms > $2",
                            &[&key, &(now_ms - breaker.window_ms)],
                        )?
                        .try_get(0)?,
                    None => 0,
                };
                states.push(row.report(key, running, recent_failures));
            }
            states.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(states)
        })
    }
}
