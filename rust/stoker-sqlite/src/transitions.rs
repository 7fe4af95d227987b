//! The steps of the job transitions inside one transaction: claim, complete,
//! put back, give back, fail (through the engine's `decide::attempt`), and
//! the batch insert of copies.

use crate::schedules::get_schedule_in;
use crate::*;
use stoker_engine::rows::schedule_columns;
use stoker_engine::schedule::{NewSchedule, ScheduleRecord};
use stoker_engine::storage::backend::ScheduleSlot;

/// The body of [`Storage::claim`], inside the caller's transaction.
pub(crate) fn claim_in(
    tx: &Transaction<'_>,
    request: &ClaimRequest<'_>,
    now_ms: i64,
) -> SqlResult<Vec<ClaimedJob>> {
    let (queues, limit, owner) = (request.queues, request.limit, request.owner);
    if limit == 0 || queues.is_empty() {
        return Ok(Vec::new());
    }
    // The promoting update builds a temporary table each time it runs, which
    // costs more than the rest of a claim: it runs only when the earliest eta
    // (one index probe) has come.
    if first_due(tx, NEXT_ETA_SQL, now_ms)? {
        tx.prepare_cached(PROMOTE_DUE_SQL)?
            .execute(params![now_ms, PROMOTE_BATCH])?;
    }
    // Expired jobs never run; limits decide which picked jobs are taken.
    flow::expire_due_in(tx, now_ms)?;
    let mut gate = flow::load_gate(tx, now_ms)?;
    let scan = flow::scan_limit(&gate, limit);
    // Each queue is read through its own slice of the partial index and
    // the slices are merged here: one ordered index range per queue is
    // cheap, while an IN over queues would need a sort.
    let mut picked: Vec<(i64, i64)> = Vec::new();
    {
        let mut pick = tx.prepare_cached(PICK_PENDING_SQL)?;
        let unique: BTreeSet<&str> = queues.iter().map(String::as_str).collect();
        for queue in unique {
            let rows = pick.query_map(params![queue, sql_limit(scan)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            for row in rows {
                picked.push(row?);
            }
        }
    }
    picked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    picked.truncate(scan);
    let lease_deadline_ms = now_ms.saturating_add(request.lease_ms);
    let mut take = tx.prepare_cached(TAKE_SQL)?;
    let mut claimed = Vec::with_capacity(limit.min(picked.len()));
    for (_, id) in picked {
        if claimed.len() >= limit {
            break;
        }
        if !flow::admit(&mut gate, tx, id)? {
            continue;
        }
        let mut job = take.query_row(params![id, now_ms, owner, lease_deadline_ms], |row| {
            rows::claimed_from_row(&SqlRow(row), 0, id, lease_deadline_ms)
        })?;
        if job.payload.is_empty() {
            if let Some(payload) = payload_aside(tx, id)? {
                job.payload = payload;
            }
        }
        claimed.push(job);
    }
    flow::store_gate(&gate, tx, now_ms)?;
    Ok(claimed)
}

/// The payload stored aside for a job whose row holds an empty one, if any
/// (an empty payload of its own has no side row).
pub(crate) fn payload_aside(tx: &Transaction<'_>, job_id: i64) -> SqlResult<Option<Vec<u8>>> {
    Ok(tx
        .prepare_cached(PAYLOAD_ASIDE_SQL)?
        .query_row([job_id], |row| row.get(0))
        .optional()?)
}

/// Whether the first value `sql` (a time, from one index probe) is at or
/// before `now_ms`.
pub(crate) fn first_due(tx: &Transaction<'_>, sql: &str, now_ms: i64) -> SqlResult<bool> {
    let first: Option<i64> = tx
        .prepare_cached(sql)?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(first.is_some_and(|at_ms| at_ms <= now_ms))
}

/// Runs one of the statements that put a running attempt back (requeue,
/// release, the give-backs) on `at`: the job's new status, `None` if the
/// statement did not apply.
fn returned_status(tx: &Transaction<'_>, sql: &str, at: Attempt) -> SqlResult<Option<Status>> {
    let code: Option<i64> = tx
        .prepare_cached(sql)?
        .query_row(params![at.now_ms, at.job_id, at.token], |row| row.get(0))
        .optional()?;
    Ok(code.map(|code| status_from_code(code, 0)).transpose()?)
}

/// The body of [`Storage::complete_many`], inside the caller's transaction.
pub(crate) fn complete_in(
    tx: &Transaction<'_>,
    completions: &[Completion],
    now_ms: i64,
) -> SqlResult<Vec<bool>> {
    let mut complete = tx.prepare_cached(COMPLETE_SQL)?;
    let mut applied = Vec::with_capacity(completions.len());
    for completion in completions {
        // A large result goes to its own table, so the row keeps an empty one.
        let aside = completion
            .result
            .as_deref()
            .filter(|result| stored_aside(result.len()));
        let in_row: Option<&[u8]> = match aside {
            Some(_) => Some(&[]),
            None => completion.result.as_deref(),
        };
        let changed = complete.execute(params![
            completion.job_id,
            completion.token,
            in_row,
            now_ms,
            completion.usage,
        ])?;
        if changed == 0 {
            refuse_stale(tx, completion.job_id, completion.token, "complete", now_ms)?;
        } else {
            if let Some(result) = aside {
                tx.prepare_cached(INSERT_RESULT_SQL)?
                    .execute(params![completion.job_id, result])?;
            }
            flow::on_completed(tx, completion.job_id, now_ms)?;
        }
        applied.push(changed > 0);
    }
    Ok(applied)
}

pub(crate) fn status_from_code(code: i64, column: usize) -> rusqlite::Result<Status> {
    Status::from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(column, code))
}

pub(crate) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    rows::job_from_row(&SqlRow(row))
}

pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Records an outcome refused for its stale token.
pub(crate) fn record_stale(
    tx: &Transaction<'_>,
    job_id: i64,
    token: i64,
    owner: &str,
    outcome: &str,
    now_ms: i64,
) -> SqlResult<()> {
    tx.prepare_cached(RECORD_STALE_SQL)?
        .execute(params![job_id, token, owner, outcome, now_ms])?;
    Ok(())
}

/// Records an outcome that carries no owner of its own, naming the job's
/// current lease owner; a missing job is an error rather than a stale outcome.
pub(crate) fn refuse_stale(
    tx: &Transaction<'_>,
    job_id: i64,
    token: i64,
    outcome: &str,
    now_ms: i64,
) -> SqlResult<()> {
    let owner: Option<Option<String>> = tx
        .prepare_cached(LEASE_OWNER_SQL)?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    let owner = owner
        .ok_or(EngineError::NotFound(job_id))?
        .unwrap_or_default();
    record_stale(tx, job_id, token, &owner, outcome, now_ms)
}

/// The statements of one transaction that the shared operations run (see
/// [`stoker_engine::storage::backend`] and [`stoker_engine::decide::attempt::fail`]).
pub struct Steps<'a, 'c>(pub(crate) &'a Transaction<'c>);

impl AttemptSteps for Steps<'_, '_> {
    type Error = SqlError;

    fn failure_state(&mut self, job_id: i64) -> SqlResult<Option<FailureState>> {
        Ok(self
            .0
            .prepare_cached(&format!("SELECT {FAILURE_COLUMNS} FROM jobs WHERE id = ?1"))?
            .query_row([job_id], |row| failure_state_from_row(&SqlRow(row)))
            .optional()?)
    }

    fn record_stale(&mut self, at: Attempt, owner: &str, outcome: &str) -> SqlResult<()> {
        record_stale(self.0, at.job_id, at.token, owner, outcome, at.now_ms)
    }

    fn record_error(&mut self, at: Attempt, report: &FailureReport) -> SqlResult<()> {
        let Attempt {
            job_id,
            token,
            now_ms,
        } = at;
        self.0.prepare_cached(RECORD_ERROR_SQL)?.execute(params![
            job_id,
            token,
            report.kind.as_str(),
            report.exc_type,
            report.message,
            report.traceback,
            report.exc_pickle,
            now_ms,
            report.worker,
            report.usage,
        ])?;
        self.0
            .prepare_cached(SET_USAGE_SQL)?
            .execute(params![report.usage, job_id])?;
        Ok(())
    }

    fn count_against_breaker(&mut self, at: Attempt, _: FailureKind) -> SqlResult<()> {
        flow::on_attempt_failed(self.0, at.job_id, at.now_ms)
    }

    fn finish(&mut self, at: Attempt, status: Status, counts: Counts) -> SqlResult<()> {
        let Counts { failures, crashes } = counts;
        let (code, job_id, now_ms) = (status.code(), at.job_id, at.now_ms);
        self.0
            .prepare_cached(FAILED_FINISH_SQL)?
            .execute(params![code, now_ms, failures, crashes, job_id, at.token])?;
        flow::on_finished(self.0, job_id, status, now_ms)
    }

    fn retry(&mut self, at: Attempt, status: Status, eta_ms: i64, counts: Counts) -> SqlResult<()> {
        let Counts { failures, crashes } = counts;
        let (code, job_id) = (status.code(), at.job_id);
        self.0
            .prepare_cached(FAILED_RETRY_SQL)?
            .execute(params![code, eta_ms, failures, crashes, job_id, at.token])?;
        Ok(())
    }

    /// Gives back an expired job its supervisor held, sent to no worker
    /// ([`RETURN_HELD_SQL`]); None if it is not one (its lease counts as a
    /// crash).
    fn return_held(&mut self, at: Attempt) -> SqlResult<Option<FailOutcome>> {
        backend::give_back(self, at, GiveBack::Held)
    }
}

impl JobSteps for Steps<'_, '_> {
    fn insert_job(&mut self, job: &NewJob, now_ms: i64) -> SqlResult<i64> {
        Ok(flow::insert_job(self.0, job, now_ms)?.0)
    }

    fn claim(&mut self, request: &ClaimRequest<'_>, now_ms: i64) -> SqlResult<Vec<ClaimedJob>> {
        claim_in(self.0, request, now_ms)
    }

    fn complete(&mut self, completions: &[Completion], now_ms: i64) -> SqlResult<Vec<bool>> {
        complete_in(self.0, completions, now_ms)
    }

    fn mark_held(&mut self, jobs: &[(i64, i64)], owner: &str, held: bool) -> SqlResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut mark = self.0.prepare_cached(MARK_HELD_SQL)?;
        for &(job_id, token) in jobs {
            mark.execute(params![job_id, token, owner, i64::from(held)])?;
        }
        Ok(())
    }

    fn status(&mut self, job_id: i64) -> SqlResult<Option<Status>> {
        let code: Option<i64> = self
            .0
            .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
            .query_row([job_id], |row| row.get(0))
            .optional()?;
        Ok(code.map(|code| status_from_code(code, 0)).transpose()?)
    }

    fn cancel_unstarted(&mut self, job_id: i64, now_ms: i64) -> SqlResult<()> {
        self.0
            .prepare_cached(CANCEL_UNSTARTED_SQL)?
            .execute(params![now_ms, job_id])?;
        Ok(())
    }

    fn request_cancel(&mut self, job_id: i64) -> SqlResult<()> {
        self.0
            .prepare_cached(REQUEST_CANCEL_SQL)?
            .execute([job_id])?;
        Ok(())
    }

    fn end_cancelled(&mut self, at: Attempt) -> SqlResult<bool> {
        let changed = self
            .0
            .prepare_cached(FINISH_CANCELLED_SQL)?
            .execute(params![at.now_ms, at.job_id, at.token])?;
        Ok(changed > 0)
    }

    fn store_progress(&mut self, at: Attempt, progress: &str) -> SqlResult<bool> {
        let changed = self
            .0
            .prepare_cached(SET_PROGRESS_SQL)?
            .execute(params![progress, at.job_id, at.token])?;
        Ok(changed > 0)
    }

    fn put_back(&mut self, at: Attempt, release: bool) -> SqlResult<Option<Status>> {
        returned_status(self.0, if release { RELEASE_SQL } else { REQUEUE_SQL }, at)
    }

    fn give_back(&mut self, at: Attempt, which: GiveBack) -> SqlResult<Option<Status>> {
        let sql = match which {
            GiveBack::Held => RETURN_HELD_SQL,
            GiveBack::Unstarted => RETURN_UNSTARTED_SQL,
        };
        returned_status(self.0, sql, at)
    }

    fn on_finished(&mut self, job_id: i64, status: Status, now_ms: i64) -> SqlResult<()> {
        flow::on_finished(self.0, job_id, status, now_ms)
    }

    fn refuse_stale(&mut self, at: Attempt, outcome: &str) -> SqlResult<()> {
        refuse_stale(self.0, at.job_id, at.token, outcome, at.now_ms)
    }

    fn expired(&mut self, limit: usize, now_ms: i64) -> SqlResult<Vec<ExpiredLease>> {
        let mut stmt = self.0.prepare_cached(EXPIRED_SQL)?;
        let rows = stmt.query_map(params![now_ms, sql_limit(limit)], |row| {
            Ok(ExpiredLease {
                job_id: row.get(0)?,
                token: row.get(1)?,
                owner: row.get(2)?,
                deadline_ms: row.get(3)?,
                orphaned: false,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn error_records(&mut self, job_id: i64) -> SqlResult<Option<Vec<ErrorRecord>>> {
        let exists = self
            .0
            .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
            .query_row([job_id], |_| Ok(()))
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {ERROR_COLUMNS} FROM errors WHERE job_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([job_id], |row| error_from_row(&SqlRow(row)))?;
        Ok(Some(rows.collect::<Result<Vec<_>, _>>()?))
    }

    fn status_counts(&mut self) -> SqlResult<Vec<(i64, i64)>> {
        let mut stmt = self.0.prepare_cached(STATUS_COUNTS_SQL)?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn copy_job(&mut self, job_id: i64, now_ms: i64) -> SqlResult<i64> {
        let tx = self.0;
        let replayed: i64 = tx
            .prepare_cached(REPLAY_SQL)?
            .query_row(params![now_ms, job_id], |row| row.get(0))?;
        tx.prepare_cached(COPY_PAYLOAD_SQL)?
            .execute(params![replayed, job_id])?;
        Ok(replayed)
    }

    fn purge(&mut self, purge: &Purge<'_>) -> SqlResult<usize> {
        let tx = self.0;
        let codes = purge
            .statuses
            .iter()
            .map(|status| status.code().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS purged (id INTEGER PRIMARY KEY)")?;
        tx.execute("DELETE FROM temp.purged", [])?;
        tx.prepare(&format!(
            "INSERT INTO temp.purged SELECT id FROM jobs WHERE status IN ({codes}) \
             AND (?1 IS NULL OR finished_ms < ?1) ORDER BY id LIMIT ?2"
        ))?
        .execute(params![purge.finished_before_ms, sql_limit(purge.limit)])?;
        for sql in purge_references("IN (SELECT id FROM temp.purged)") {
            tx.execute(&sql, [])?;
        }
        let removed = tx.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM temp.purged)",
            [],
        )?;
        tx.execute("DELETE FROM temp.purged", [])?;
        Ok(removed)
    }

    fn schedule_named(&mut self, name: &str) -> SqlResult<Option<ScheduleRecord>> {
        let id: Option<i64> = self
            .0
            .prepare_cached("SELECT id FROM schedules WHERE name = ?1")?
            .query_row([name], |row| row.get(0))
            .optional()?;
        match id {
            Some(id) => get_schedule_in(self.0, id),
            None => Ok(None),
        }
    }

    fn store_schedule(&mut self, schedule: &NewSchedule, slot: ScheduleSlot) -> SqlResult<i64> {
        let tx = self.0;
        let (cron, timezone, every_ms, at_ms) = schedule_columns(&schedule.spec);
        let job = &schedule.job;
        let values = params![
            schedule.name,
            schedule.spec.kind(),
            cron,
            timezone,
            every_ms,
            at_ms,
            schedule.missed.as_str(),
            schedule.source,
            schedule.labels,
            slot.next_fire_ms,
            slot.now_ms,
            job.task_name,
            job.queue,
            job.priority,
            job.payload,
            job.max_retries,
            job.max_crashes,
            job.backoff_base_ms,
            job.backoff_cap_ms,
            job.jitter,
            job.timeout_ms,
            job.result_ttl_ms,
            job.expires_after_ms,
            job.unique_key,
        ];
        if let Some(id) = slot.id {
            // The same values as the insert below, with the id in place of created_ms (?11).
            tx.prepare_cached(
                "UPDATE schedules SET name = ?1, kind = ?2, cron = ?3, timezone = ?4, every_ms = ?5, \
                 at_ms = ?6, missed = ?7, source = ?8, labels = ?9, next_fire_ms = ?10, task_name = ?12, \
                 queue = ?13, priority = ?14, payload = ?15, max_retries = ?16, max_crashes = ?17, \
                 backoff_base_ms = ?18, backoff_cap_ms = ?19, jitter = ?20, timeout_ms = ?21, \
                 result_ttl_ms = ?22, expires_after_ms = ?23, unique_key = ?24 WHERE id = ?11",
            )?
            .execute(rusqlite::params_from_iter(
                values
                    .iter()
                    .enumerate()
                    .map(|(index, value)| if index == 10 { &id } else { *value }),
            ))?;
            return Ok(id);
        }
        tx.prepare_cached(
            "INSERT INTO schedules (name, kind, cron, timezone, every_ms, at_ms, missed, source, labels, \
             next_fire_ms, created_ms, task_name, queue, priority, payload, max_retries, max_crashes, \
             backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, expires_after_ms, unique_key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
             ?20, ?21, ?22, ?23, ?24)",
        )?
        .execute(values)?;
        Ok(tx.last_insert_rowid())
    }

    fn expire(&mut self, limit: usize, now_ms: i64) -> SqlResult<Vec<i64>> {
        flow::expire_in(self.0, sql_limit(limit), now_ms)
    }

    fn dependency_statuses(&mut self, job_id: i64) -> SqlResult<Option<Vec<(i64, Status)>>> {
        let exists = self
            .0
            .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
            .query_row([job_id], |_| Ok(()))
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut stmt = self.0.prepare_cached(DEPENDENCIES_SQL)?;
        let rows = stmt.query_map([job_id], |row| {
            Ok((row.get(0)?, status_from_code(row.get(1)?, 1)?))
        })?;
        Ok(Some(rows.collect::<Result<_, _>>()?))
    }

    fn purge_retention(&mut self, limit: usize, now_ms: i64) -> SqlResult<usize> {
        flow::purge_retention_in(self.0, sql_limit(limit), now_ms)
    }
}

/// The row counts of the multi-row INSERT statements of [`insert_copies`],
/// largest first; a batch is cut into as many of the largest as fit, then of
/// the next. One statement opens a cursor on the table and on each of its
/// indexes and reads and writes the AUTOINCREMENT counter once, whatever its
/// row count, which costs more than writing one small row. Larger chunks save
/// more of that per row but make longer statements, each prepared once per
/// connection and kept in its statement cache (one entry per size).
pub(crate) const COPY_CHUNK_ROWS: [usize; 3] = [64, 8, 1];

/// Copies with a payload larger than this are stored one at a time by
/// [`flow::insert_job`], the path every other job takes. Writing a
/// large payload costs far more than the per-statement work a multi-row
/// statement saves, so only small rows gain from it.
pub(crate) const COPY_PAYLOAD_MAX_BYTES: usize = 1024;

// A multi-row statement keeps each payload in its job's row, so it must only
// take payloads that are not stored aside.
const _: () = assert!(COPY_PAYLOAD_MAX_BYTES <= INLINE_BLOB_MAX_BYTES);

/// The multi-row INSERT of `rows` copies: the template's values are the
/// parameters ?1 to ?15, shared by every row, and the payloads follow, one
/// per row.
pub(crate) fn copies_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        COPY_CHUNK_ROWS
            .iter()
            .map(|&count| {
                let values: Vec<String> = (0..count)
                    .map(|row| {
                        format!(
                            "(?1, ?2, ?3, ?{}, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL, ?14, 0, ?15)",
                            COPY_SHARED_PARAMS + 1 + row
                        )
                    })
                    .collect();
                format!(
                    "INSERT INTO jobs (task_name, queue, priority, payload, status, max_retries, \
                     max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, created_ms, \
                     eta_ms, unique_key, expires_ms, rate_prepaid, labels) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    });
    let index = COPY_CHUNK_ROWS
        .iter()
        .position(|&count| count == rows)
        .expect("a row count of COPY_CHUNK_ROWS");
    &all[index]
}

/// The parameters of [`copies_sql`] that every row shares.
pub(crate) const COPY_SHARED_PARAMS: usize = 15;

/// Stores one copy of `template` per payload inside `tx`, as
/// [`flow::insert_job`] would store each; their ids, in order.
///
/// Copies of a template with no per-job work (a uniqueness key, dependencies,
/// a rate-limit check at send) differ only in their payload, so runs of small
/// ones are written by multi-row statements; any other copy goes through
/// `insert_job`.
pub(crate) fn insert_copies(
    tx: &Transaction<'_>,
    template: &NewJob,
    payloads: &[&[u8]],
    now_ms: i64,
) -> SqlResult<Vec<i64>> {
    let plain = template.unique_key.is_none()
        && template.depends_on.is_empty()
        && !template.fail_when_limited;
    let eta_ms = template.eta_at(now_ms);
    let status = if eta_ms <= now_ms {
        Status::Pending
    } else {
        Status::Scheduled
    };
    let expires_ms = template
        .expires_after_ms
        .map(|ms| now_ms.saturating_add(ms));
    let mut ids = Vec::with_capacity(payloads.len());
    let mut rest = payloads;
    while let Some(first) = rest.first() {
        let small = if plain {
            rest.iter()
                .take_while(|payload| payload.len() <= COPY_PAYLOAD_MAX_BYTES)
                .count()
        } else {
            0
        };
        if small == 0 {
            let job = NewJob {
                payload: first.to_vec(),
                ..template.clone()
            };
            ids.push(flow::insert_job(tx, &job, now_ms)?.0);
            rest = &rest[1..];
            continue;
        }
        let rows = COPY_CHUNK_ROWS
            .iter()
            .copied()
            .find(|&count| count <= small)
            .unwrap_or(1);
        let (chunk, after) = rest.split_at(rows);
        let mut stmt = tx.prepare_cached(copies_sql(rows))?;
        stmt.raw_bind_parameter(1, &template.task_name)?;
        stmt.raw_bind_parameter(2, &template.queue)?;
        stmt.raw_bind_parameter(3, template.priority)?;
        stmt.raw_bind_parameter(4, status.code())?;
        stmt.raw_bind_parameter(5, template.max_retries)?;
        stmt.raw_bind_parameter(6, template.max_crashes)?;
        stmt.raw_bind_parameter(7, template.backoff_base_ms)?;
        stmt.raw_bind_parameter(8, template.backoff_cap_ms)?;
        stmt.raw_bind_parameter(9, template.jitter)?;
        stmt.raw_bind_parameter(10, template.timeout_ms)?;
        stmt.raw_bind_parameter(11, template.result_ttl_ms)?;
        stmt.raw_bind_parameter(12, now_ms)?;
        stmt.raw_bind_parameter(13, eta_ms)?;
        stmt.raw_bind_parameter(14, expires_ms)?;
        stmt.raw_bind_parameter(15, &template.labels)?;
        for (row, payload) in chunk.iter().enumerate() {
            stmt.raw_bind_parameter(COPY_SHARED_PARAMS + 1 + row, payload)?;
        }
        let inserted = stmt.raw_execute()?;
        if inserted != rows {
            return Err(EngineError::Storage(format!(
                "a multi-row insert of {rows} jobs inserted {inserted}"
            ))
            .into());
        }
        // The rows are inserted in the order of VALUES, and AUTOINCREMENT
        // gives each the next id after the largest ever used, under the write
        // lock this transaction holds: the ids of the chunk are consecutive
        // and end at the last one inserted. (RETURNING would say the same at
        // the cost of a temporary table of every row.)
        let last = tx.last_insert_rowid();
        let first_id = last - i64::try_from(rows - 1).unwrap_or(i64::MAX);
        ids.extend(first_id..=last);
        rest = after;
    }
    Ok(ids)
}
