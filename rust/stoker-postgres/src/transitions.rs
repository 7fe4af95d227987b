//! The steps of the job transitions inside one transaction: claim, complete,
//! put back, give back, fail (through the engine's `decide::attempt`).

use crate::schedules::get_schedule_in;
use crate::*;
use stoker_engine::rows::schedule_columns;
use stoker_engine::schedule::{NewSchedule, ScheduleRecord};
use stoker_engine::storage::backend::ScheduleSlot;

pub(crate) fn status_of(code: i64) -> PgResult<Status> {
    Status::from_code(code).ok_or_else(|| {
        PgError::Engine(EngineError::Storage(format!(
            "the database holds an unknown job status code {code}"
        )))
    })
}

pub(crate) fn job_from_row(row: &Row) -> PgResult<JobRecord> {
    rows::job_from_row(&PgRow(row))
}

pub(crate) fn sql_count(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Records an outcome refused for its stale token.
pub(crate) fn record_stale(
    tx: &mut Tx<'_>,
    job_id: i64,
    token: i64,
    owner: &str,
    outcome: &str,
    now_ms: i64,
) -> PgResult<()> {
    tx.execute(
        RECORD_STALE_SQL,
        &[&job_id, &token, &owner, &outcome, &now_ms],
    )?;
    Ok(())
}

/// Records an outcome that carries no owner of its own, naming the job's
/// current lease owner; a missing job is an error rather than a stale outcome.
pub(crate) fn refuse_stale(
    tx: &mut Tx<'_>,
    job_id: i64,
    token: i64,
    outcome: &str,
    now_ms: i64,
) -> PgResult<()> {
    let row = tx
        .query_opt(LEASE_OWNER_SQL, &[&job_id])?
        .ok_or(EngineError::NotFound(job_id))?;
    let owner: Option<String> = row.try_get(0)?;
    record_stale(
        tx,
        job_id,
        token,
        &owner.unwrap_or_default(),
        outcome,
        now_ms,
    )
}

impl AttemptSteps for Tx<'_> {
    type Error = PgError;

    /// Locked: a failure reads the retry state under the job's row lock.
    fn failure_state(&mut self, job_id: i64) -> PgResult<Option<FailureState>> {
        self.query_opt(
            &format!("SELECT {FAILURE_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"),
            &[&job_id],
        )?
        .map(|row| failure_state_from_row(&PgRow(&row)))
        .transpose()
    }

    fn record_stale(&mut self, at: Attempt, owner: &str, outcome: &str) -> PgResult<()> {
        record_stale(self, at.job_id, at.token, owner, outcome, at.now_ms)
    }

    fn record_error(&mut self, at: Attempt, report: &FailureReport) -> PgResult<()> {
        let Attempt {
            job_id,
            token,
            now_ms,
        } = at;
        self.execute(
            RECORD_ERROR_SQL,
            &[
                &job_id,
                &token,
                &report.kind.as_str(),
                &report.exc_type,
                &report.message,
                &report.traceback,
                &report.exc_pickle,
                &now_ms,
                &report.worker,
                &report.usage,
            ],
        )?;
        self.execute(SET_USAGE_SQL, &[&report.usage, &job_id])?;
        Ok(())
    }

    fn count_against_breaker(&mut self, at: Attempt, _: FailureKind) -> PgResult<()> {
        flow::on_attempt_failed(self, at.job_id, at.now_ms)
    }

    fn finish(&mut self, at: Attempt, status: Status, counts: Counts) -> PgResult<()> {
        let row: &Params<'_> = &[
            &status.code(),
            &at.now_ms,
            &counts.failures,
            &counts.crashes,
            &at.job_id,
            &at.token,
        ];
        self.execute(FAILED_FINISH_SQL, row)?;
        dependents::on_finished(self, at.job_id, status, at.now_ms)
    }

    fn retry(&mut self, at: Attempt, status: Status, eta_ms: i64, counts: Counts) -> PgResult<()> {
        self.wake |= status == Status::Pending;
        let row: &Params<'_> = &[
            &status.code(),
            &eta_ms,
            &counts.failures,
            &counts.crashes,
            &at.job_id,
            &at.token,
        ];
        self.execute(FAILED_RETRY_SQL, row)?;
        Ok(())
    }

    /// Gives back an expired job its supervisor held, sent to no worker
    /// ([`RETURN_HELD_SQL`]); None if it is not one (its lease counts as a
    /// crash).
    fn return_held(&mut self, at: Attempt) -> PgResult<Option<FailOutcome>> {
        backend::give_back(self, at, GiveBack::Held)
    }
}

/// An expired lease read as `EXPIRED_SQL` or `ORPHANED_SQL` (id, attempt,
/// owner, deadline).
pub(crate) fn expired_lease(row: &Row, orphaned: bool) -> PgResult<ExpiredLease> {
    Ok(ExpiredLease {
        job_id: row.try_get(0)?,
        token: row.try_get(1)?,
        owner: row.try_get(2)?,
        deadline_ms: row.try_get(3)?,
        orphaned,
    })
}

/// A claimed job read from a claim's RETURNING (id, priority, then
/// [`rows::claimed_from_row`]'s columns), with its priority.
pub(crate) fn claimed_from_row(row: &Row, lease_deadline_ms: i64) -> PgResult<(i64, ClaimedJob)> {
    let job = rows::claimed_from_row(&PgRow(row), 2, row.try_get(0)?, lease_deadline_ms)?;
    Ok((row.try_get(1)?, job))
}

/// Claim order: highest priority first, then lowest id.
pub(crate) fn in_claim_order(mut claimed: Vec<(i64, ClaimedJob)>) -> Vec<ClaimedJob> {
    claimed.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    claimed.into_iter().map(|(_, job)| job).collect()
}

/// Runs one of the statements that put a running attempt back (requeue,
/// release, the give-backs) on `at`: the job's new status, `None` if the
/// statement did not apply. A job pending again wakes idle supervisors.
fn returned_status(tx: &mut Tx<'_>, sql: &str, at: Attempt) -> PgResult<Option<Status>> {
    let row = tx.query_opt(sql, &[&at.now_ms, &at.job_id, &at.token])?;
    let status = match row {
        Some(row) => Some(status_of(row.try_get(0)?)?),
        None => None,
    };
    tx.wake |= status.is_some_and(|status| status != Status::Cancelled);
    Ok(status)
}

/// The body of [`Storage::claim`], inside the caller's transaction.
pub(crate) fn claim_in(
    tx: &mut Tx<'_>,
    claim: &ClaimRequest<'_>,
    now_ms: i64,
) -> PgResult<Vec<ClaimedJob>> {
    let ClaimRequest {
        limit,
        owner,
        lease_ms,
        ..
    } = *claim;
    if limit == 0 || claim.queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut unique: Vec<String> = claim.queues.to_vec();
    unique.sort();
    unique.dedup();
    let lease_deadline_ms = now_ms.saturating_add(lease_ms);
    tx.execute(PROMOTE_DUE_SQL, &[&now_ms, &PROMOTE_BATCH])?;
    // Expired jobs never run; limits decide which picked jobs are taken.
    flow::expire_due_in(tx, now_ms)?;
    if flow::any_limits(tx)? {
        let mut claimed =
            flow::claim_limited(tx, &unique, limit, owner, lease_deadline_ms, now_ms)?;
        fill_payloads_aside(tx, &mut claimed)?;
        return Ok(claimed);
    }
    let rows = if unique.len() == 1 {
        tx.query(
            CLAIM_ONE_QUEUE_SQL,
            &[
                &unique[0],
                &sql_count(limit),
                &now_ms,
                &owner,
                &lease_deadline_ms,
            ],
        )?
    } else {
        tx.query(
            CLAIM_QUEUES_SQL,
            &[
                &unique,
                &sql_count(limit),
                &now_ms,
                &owner,
                &lease_deadline_ms,
            ],
        )?
    };
    let claimed = rows
        .iter()
        .map(|row| claimed_from_row(row, lease_deadline_ms))
        .collect::<PgResult<Vec<_>>>()?;
    let mut claimed = in_claim_order(claimed);
    fill_payloads_aside(tx, &mut claimed)?;
    Ok(claimed)
}

/// Reads the payloads stored aside of the claimed jobs whose rows hold empty
/// ones (in one statement, and only when there are any; an empty payload of
/// its own has no side row).
pub(crate) fn fill_payloads_aside(tx: &mut Tx<'_>, claimed: &mut [ClaimedJob]) -> PgResult<()> {
    let empty: Vec<i64> = claimed
        .iter()
        .filter(|job| job.payload.is_empty())
        .map(|job| job.id)
        .collect();
    if empty.is_empty() {
        return Ok(());
    }
    let rows = tx.query(
        "SELECT job_id, data FROM job_payloads WHERE job_id = ANY($1)",
        &[&empty],
    )?;
    let mut found: HashMap<i64, Vec<u8>> = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(row.try_get(0)?, row.try_get(1)?);
    }
    for job in claimed.iter_mut() {
        if let Some(payload) = found.remove(&job.id) {
            job.payload = payload;
        }
    }
    Ok(())
}

/// The body of [`Storage::complete_many`], inside the caller's transaction:
/// one statement for the batch, then the stale ones recorded.
pub(crate) fn complete_in(
    tx: &mut Tx<'_>,
    completions: &[Completion],
    now_ms: i64,
) -> PgResult<Vec<bool>> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = completions.iter().map(|c| c.job_id).collect();
    let tokens: Vec<i64> = completions.iter().map(|c| c.token).collect();
    // A large result goes to its own table, so the row keeps an empty one.
    let results: Vec<Option<&[u8]>> = completions
        .iter()
        .map(|c| match c.result.as_deref() {
            Some(result) if stored_aside(result.len()) => Some(&[][..]),
            other => other,
        })
        .collect();
    let usages: Vec<Option<&str>> = completions.iter().map(|c| c.usage.as_deref()).collect();
    let rows = tx.query(COMPLETE_SQL, &[&ids, &tokens, &results, &usages, &now_ms])?;
    let mut done: HashMap<i64, bool> = HashMap::with_capacity(rows.len());
    for row in &rows {
        done.insert(row.try_get(0)?, false);
    }
    let mut applied = Vec::with_capacity(completions.len());
    let mut finished = Vec::with_capacity(rows.len());
    for completion in completions {
        // A job named twice in one batch is completed once; the second
        // report is as stale as it would be in a later call.
        let fresh = match done.get_mut(&completion.job_id) {
            Some(used) if !*used => {
                *used = true;
                true
            }
            _ => false,
        };
        if fresh {
            finished.push(completion.job_id);
            if let Some(result) = completion
                .result
                .as_deref()
                .filter(|result| stored_aside(result.len()))
            {
                tx.execute(
                    "INSERT INTO job_results (job_id, data) VALUES ($1, $2)",
                    &[&completion.job_id, &result],
                )?;
            }
        } else {
            refuse_stale(tx, completion.job_id, completion.token, "complete", now_ms)?;
        }
        applied.push(fresh);
    }
    flow::on_completed_many(tx, &finished, now_ms)?;
    Ok(applied)
}

impl JobSteps for Tx<'_> {
    fn insert_job(&mut self, job: &NewJob, now_ms: i64) -> PgResult<i64> {
        Ok(flow::insert_job(self, job, now_ms)?.0)
    }

    fn claim(&mut self, request: &ClaimRequest<'_>, now_ms: i64) -> PgResult<Vec<ClaimedJob>> {
        claim_in(self, request, now_ms)
    }

    fn complete(&mut self, completions: &[Completion], now_ms: i64) -> PgResult<Vec<bool>> {
        complete_in(self, completions, now_ms)
    }

    /// One statement for the batch.
    fn mark_held(&mut self, jobs: &[(i64, i64)], owner: &str, held: bool) -> PgResult<()> {
        if !jobs.is_empty() {
            let ids: Vec<i64> = jobs.iter().map(|job| job.0).collect();
            let tokens: Vec<i64> = jobs.iter().map(|job| job.1).collect();
            let held = i64::from(held);
            self.execute(MARK_HELD_SQL, &[&ids, &tokens, &owner, &held])?;
        }
        Ok(())
    }

    /// Locked: what a cancel or replay decides must still hold at commit.
    fn status(&mut self, job_id: i64) -> PgResult<Option<Status>> {
        match self.query_opt(
            "SELECT status FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job_id],
        )? {
            Some(row) => Ok(Some(status_of(row.try_get(0)?)?)),
            None => Ok(None),
        }
    }

    fn cancel_unstarted(&mut self, job_id: i64, now_ms: i64) -> PgResult<()> {
        self.execute(CANCEL_UNSTARTED_SQL, &[&now_ms, &job_id])?;
        Ok(())
    }

    fn request_cancel(&mut self, job_id: i64) -> PgResult<()> {
        self.execute(REQUEST_CANCEL_SQL, &[&job_id])?;
        // The supervisor running it learns of the request at once.
        self.wake = true;
        Ok(())
    }

    fn end_cancelled(&mut self, at: Attempt) -> PgResult<bool> {
        let changed = self.execute(FINISH_CANCELLED_SQL, &[&at.now_ms, &at.job_id, &at.token])?;
        Ok(changed > 0)
    }

    fn store_progress(&mut self, at: Attempt, progress: &str) -> PgResult<bool> {
        let changed = self.execute(SET_PROGRESS_SQL, &[&progress, &at.job_id, &at.token])?;
        Ok(changed > 0)
    }

    fn put_back(&mut self, at: Attempt, release: bool) -> PgResult<Option<Status>> {
        returned_status(self, if release { RELEASE_SQL } else { REQUEUE_SQL }, at)
    }

    fn give_back(&mut self, at: Attempt, which: GiveBack) -> PgResult<Option<Status>> {
        let sql = match which {
            GiveBack::Held => RETURN_HELD_SQL,
            GiveBack::Unstarted => RETURN_UNSTARTED_SQL,
        };
        returned_status(self, sql, at)
    }

    fn on_finished(&mut self, job_id: i64, status: Status, now_ms: i64) -> PgResult<()> {
        dependents::on_finished(self, job_id, status, now_ms)
    }

    fn refuse_stale(&mut self, at: Attempt, outcome: &str) -> PgResult<()> {
        refuse_stale(self, at.job_id, at.token, outcome, at.now_ms)
    }

    /// The jobs whose own lease ran out, then those of supervisors whose
    /// registration did.
    fn expired(&mut self, limit: usize, now_ms: i64) -> PgResult<Vec<ExpiredLease>> {
        let mut expired: Vec<ExpiredLease> = Vec::new();
        for row in self.query(EXPIRED_SQL, &[&now_ms, &sql_count(limit)])? {
            expired.push(expired_lease(&row, false)?);
        }
        if expired.len() < limit {
            let rest = sql_count(limit - expired.len());
            for row in self.query(ORPHANED_SQL, &[&now_ms, &rest])? {
                let lease = expired_lease(&row, true)?;
                if !expired.iter().any(|e| e.job_id == lease.job_id) {
                    expired.push(lease);
                }
            }
        }
        Ok(expired)
    }

    fn error_records(&mut self, job_id: i64) -> PgResult<Option<Vec<ErrorRecord>>> {
        if self
            .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&job_id])?
            .is_none()
        {
            return Ok(None);
        }
        self.query(
            &format!("SELECT {ERROR_COLUMNS} FROM errors WHERE job_id = $1 ORDER BY id"),
            &[&job_id],
        )?
        .iter()
        .map(|row| error_from_row(&PgRow(row)))
        .collect::<PgResult<_>>()
        .map(Some)
    }

    fn status_counts(&mut self) -> PgResult<Vec<(i64, i64)>> {
        self.query(STATUS_COUNTS_SQL, &[])?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    fn copy_job(&mut self, job_id: i64, now_ms: i64) -> PgResult<i64> {
        let replayed: i64 = self
            .query_one(REPLAY_SQL, &[&now_ms, &job_id])?
            .try_get(0)?;
        self.execute(COPY_PAYLOAD_SQL, &[&replayed, &job_id])?;
        self.wake = true;
        Ok(replayed)
    }

    fn purge(&mut self, purge: &Purge<'_>) -> PgResult<usize> {
        let codes: Vec<i64> = purge.statuses.iter().map(|status| status.code()).collect();
        let rows = self.query(
            "SELECT id FROM jobs WHERE status = ANY($1) AND ($2::bigint IS NULL OR finished_ms < $2) \
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
            &[&codes, &purge.finished_before_ms, &sql_count(purge.limit)],
        )?;
        let ids: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        for sql in purge_references("= ANY($1)") {
            self.execute(&sql, &[&ids])?;
        }
        let removed = self.execute("DELETE FROM jobs WHERE id = ANY($1)", &[&ids])?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Locked: a concurrent creation of the same name waits, then updates.
    fn schedule_named(&mut self, name: &str) -> PgResult<Option<ScheduleRecord>> {
        let sql = "SELECT id FROM schedules WHERE name = $1 FOR UPDATE";
        match self.query_opt(sql, &[&name])? {
            Some(row) => get_schedule_in(self, row.try_get(0)?),
            None => Ok(None),
        }
    }

    fn store_schedule(&mut self, schedule: &NewSchedule, slot: ScheduleSlot) -> PgResult<i64> {
        let tx = self;
        let (cron, timezone, every_ms, at_ms) = schedule_columns(&schedule.spec);
        let job = &schedule.job;
        let kind = schedule.spec.kind();
        let missed = schedule.missed.as_str();
        let id_or_created = slot.id.unwrap_or(slot.now_ms);
        let values: [&(dyn postgres::types::ToSql + Sync); 24] = [
            &schedule.name,
            &kind,
            &cron,
            &timezone,
            &every_ms,
            &at_ms,
            &missed,
            &schedule.source,
            &schedule.labels,
            &slot.next_fire_ms,
            &id_or_created,
            &job.task_name,
            &job.queue,
            &job.priority,
            &job.payload,
            &job.max_retries,
            &job.max_crashes,
            &job.backoff_base_ms,
            &job.backoff_cap_ms,
            &job.jitter,
            &job.timeout_ms,
            &job.result_ttl_ms,
            &job.expires_after_ms,
            &job.unique_key,
        ];
        if let Some(id) = slot.id {
            // The same values as the insert below, with the id in place of created_ms ($11).
            tx.execute(
                "UPDATE schedules SET name = $1, kind = $2, cron = $3, timezone = $4, every_ms = $5, \
                 at_ms = $6, missed = $7, source = $8, labels = $9, next_fire_ms = $10, task_name = $12, \
                 queue = $13, priority = $14, payload = $15, max_retries = $16, max_crashes = $17, \
                 backoff_base_ms = $18, backoff_cap_ms = $19, jitter = $20, timeout_ms = $21, \
                 result_ttl_ms = $22, expires_after_ms = $23, unique_key = $24 WHERE id = $11",
                &values,
            )?;
            return Ok(id);
        }
        let row = tx.query_one(
            "INSERT INTO schedules (name, kind, cron, timezone, every_ms, at_ms, missed, source, labels, \
             next_fire_ms, created_ms, task_name, queue, priority, payload, max_retries, max_crashes, \
             backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, expires_after_ms, unique_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23, $24) RETURNING id",
            &values,
        )?;
        Ok(row.try_get(0)?)
    }

    fn expire(&mut self, limit: usize, now_ms: i64) -> PgResult<Vec<i64>> {
        flow::expire_in(self, sql_count(limit), now_ms)
    }

    fn dependency_statuses(&mut self, job_id: i64) -> PgResult<Option<Vec<(i64, Status)>>> {
        if self
            .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&job_id])?
            .is_none()
        {
            return Ok(None);
        }
        let rows = self.query(DEPENDENCIES_SQL, &[&job_id])?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, status_of(row.try_get(1)?)?)))
            .collect::<PgResult<_>>()
            .map(Some)
    }

    fn purge_retention(&mut self, limit: usize, now_ms: i64) -> PgResult<usize> {
        flow::purge_retention_in(self, sql_count(limit), now_ms)
    }
}
