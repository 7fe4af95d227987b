//! The steps of the job transitions inside one transaction: claim, complete,
//! put back, give back, fail (through the engine's `decide::attempt`).

use crate::*;

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
        "INSERT INTO stale_outcomes (job_id, token, owner, outcome, at_ms) VALUES ($1, $2, $3, $4, $5)",
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
        .query_opt("SELECT lease_owner FROM jobs WHERE id = $1", &[&job_id])?
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

/// The statements of a failed attempt (see [`attempt::fail`]).
pub(crate) struct AttemptTx<'a, 'c>(pub(crate) &'a mut Tx<'c>);

impl AttemptSteps for AttemptTx<'_, '_> {
    type Error = PgError;

    /// Locked: a failure reads the retry state under the job's row lock.
    fn failure_state(&mut self, job_id: i64) -> PgResult<Option<FailureState>> {
        self.0
            .query_opt(
                &format!("SELECT {FAILURE_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"),
                &[&job_id],
            )?
            .map(|row| failure_state_from_row(&PgRow(&row)))
            .transpose()
    }

    fn record_stale(&mut self, at: Attempt, owner: &str, outcome: &str) -> PgResult<()> {
        record_stale(self.0, at.job_id, at.token, owner, outcome, at.now_ms)
    }

    fn record_error(&mut self, at: Attempt, report: &FailureReport) -> PgResult<()> {
        let Attempt {
            job_id,
            token,
            now_ms,
        } = at;
        self.0.execute(
            "INSERT INTO errors (job_id, attempt, kind, exc_type, message, traceback, exc_pickle, failed_ms, \
             worker, usage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        self.0.execute(
            "UPDATE jobs SET usage = $2 WHERE id = $1",
            &[&job_id, &report.usage],
        )?;
        Ok(())
    }

    fn count_against_breaker(&mut self, at: Attempt, kind: FailureKind) -> PgResult<()> {
        flow::on_attempt_failed(self.0, at.job_id, kind, at.now_ms)
    }

    fn finish(&mut self, at: Attempt, status: Status, counts: Counts) -> PgResult<()> {
        let Attempt {
            job_id,
            token,
            now_ms,
        } = at;
        let Counts { failures, crashes } = counts;
        self.0.execute(
            FAILED_FINISH_SQL,
            &[
                &job_id,
                &status.code(),
                &now_ms,
                &failures,
                &crashes,
                &token,
            ],
        )?;
        flow::on_finished(self.0, job_id, status, now_ms)
    }

    fn retry(&mut self, at: Attempt, status: Status, eta_ms: i64, counts: Counts) -> PgResult<()> {
        let (job_id, token) = (at.job_id, at.token);
        let Counts { failures, crashes } = counts;
        self.0.wake |= status == Status::Pending;
        self.0.execute(
            FAILED_RETRY_SQL,
            &[
                &job_id,
                &status.code(),
                &eta_ms,
                &failures,
                &crashes,
                &token,
            ],
        )?;
        Ok(())
    }

    /// Gives back an expired job its supervisor held, sent to no worker
    /// ([`RETURN_HELD_SQL`]); None if it is not one (its lease counts as a
    /// crash).
    fn return_held(&mut self, at: Attempt) -> PgResult<Option<FailOutcome>> {
        give_back(self.0, RETURN_HELD_SQL, at.job_id, at.token, at.now_ms)
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

pub(crate) fn claimed_from_row(row: &Row, lease_deadline_ms: i64) -> PgResult<(i64, ClaimedJob)> {
    let attempt: i64 = row.try_get(2)?;
    Ok((
        row.try_get(1)?,
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
    ))
}

/// Claim order: highest priority first, then lowest id.
pub(crate) fn in_claim_order(mut claimed: Vec<(i64, ClaimedJob)>) -> Vec<ClaimedJob> {
    claimed.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    claimed.into_iter().map(|(_, job)| job).collect()
}

/// Runs one of the give-back statements ([`RETURN_HELD_SQL`],
/// [`RETURN_UNSTARTED_SQL`]) on one job; None if it did not apply.
pub(crate) fn give_back(
    tx: &mut Tx<'_>,
    sql: &str,
    job_id: i64,
    token: i64,
    now_ms: i64,
) -> PgResult<Option<FailOutcome>> {
    let returned = tx.query_opt(sql, &[&job_id, &token, &now_ms])?;
    let code: Option<i64> = returned.as_ref().map(|row| row.try_get(0)).transpose()?;
    Ok(match code {
        None => None,
        Some(code) if code == Status::Cancelled.code() => {
            flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
            Some(FailOutcome::Cancelled)
        }
        Some(_) => {
            tx.wake = true;
            Some(FailOutcome::Returned)
        }
    })
}

pub(crate) fn put_back(
    tx: &mut Tx<'_>,
    sql: &str,
    outcome: &str,
    job_id: i64,
    token: i64,
    now_ms: i64,
) -> PgResult<bool> {
    let changed = tx.query_opt(sql, &[&job_id, &token, &now_ms])?;
    let code: Option<i64> = changed.as_ref().map(|row| row.try_get(0)).transpose()?;
    match code {
        None => refuse_stale(tx, job_id, token, outcome, now_ms)?,
        Some(code) if code == Status::Cancelled.code() => {
            flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
        }
        Some(_) => tx.wake = true,
    }
    Ok(code.is_some())
}

/// The body of [`Storage::claim`], inside the caller's transaction.
pub(crate) fn claim_in(
    tx: &mut Tx<'_>,
    queues: &[String],
    limit: usize,
    owner: &str,
    lease_ms: i64,
    now_ms: i64,
) -> PgResult<Vec<ClaimedJob>> {
    if limit == 0 || queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut unique: Vec<String> = queues.to_vec();
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
