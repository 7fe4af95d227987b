//! [`Storage`] for [`PostgresStorage`]: each operation one transaction over
//! the steps of `transitions.rs`, run again from the start when it loses a
//! race.

use crate::*;

impl Storage for PostgresStorage {
    fn enqueue(&self, jobs: &[NewJob], now_ms: i64) -> Result<Vec<i64>, EngineError> {
        self.write(|tx| {
            let mut ids = Vec::with_capacity(jobs.len());
            for job in jobs {
                ids.push(flow::insert_job(tx, job, now_ms)?.0);
            }
            Ok(ids)
        })
    }

    fn claim(
        &self,
        queues: &[String],
        limit: usize,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<ClaimedJob>, EngineError> {
        if limit == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| claim_in(tx, queues, limit, owner, lease_ms, now_ms))
    }

    fn complete_and_claim(
        &self,
        completions: &[Completion],
        claim: &ClaimRequest<'_>,
        now_ms: i64,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), EngineError> {
        self.write(|tx| {
            for (jobs, held) in [(claim.sent, 0_i64), (claim.held, 1)] {
                if !jobs.is_empty() {
                    let ids: Vec<i64> = jobs.iter().map(|job| job.0).collect();
                    let tokens: Vec<i64> = jobs.iter().map(|job| job.1).collect();
                    tx.execute(MARK_HELD_SQL, &[&ids, &tokens, &claim.owner, &held])?;
                }
            }
            let applied = complete_in(tx, completions, now_ms)?;
            let claimed = claim_in(
                tx,
                claim.queues,
                claim.limit,
                claim.owner,
                claim.lease_ms,
                now_ms,
            )?;
            Ok((applied, claimed))
        })
    }

    fn heartbeat(
        &self,
        owner: &str,
        leases: &[(i64, i64)],
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<i64>, EngineError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let lease_deadline_ms = now_ms.saturating_add(lease_ms);
        let ids: Vec<i64> = leases.iter().map(|lease| lease.0).collect();
        let tokens: Vec<i64> = leases.iter().map(|lease| lease.1).collect();
        self.write(|tx| {
            let rows = tx.query(HEARTBEAT_SQL, &[&ids, &tokens, &owner, &lease_deadline_ms])?;
            let mut renewed: HashMap<i64, bool> = HashMap::with_capacity(rows.len());
            for row in &rows {
                renewed.insert(row.try_get(0)?, row.try_get::<_, i64>(1)? != 0);
            }
            let mut cancel_requested = Vec::new();
            for &(job_id, token) in leases {
                match renewed.get(&job_id) {
                    Some(true) => cancel_requested.push(job_id),
                    Some(false) => {}
                    None => record_stale(tx, job_id, token, owner, "heartbeat", now_ms)?,
                }
            }
            Ok(cancel_requested)
        })
    }

    fn complete_many(
        &self,
        completions: &[Completion],
        now_ms: i64,
    ) -> Result<Vec<bool>, EngineError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| complete_in(tx, completions, now_ms))
    }

    fn fail(
        &self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<FailOutcome, EngineError> {
        self.write(|tx| {
            attempt::fail(
                &mut AttemptTx(tx),
                job_id,
                token,
                report,
                &mut *jitter,
                now_ms,
            )
        })
    }

    fn cancel(&self, job_id: i64, now_ms: i64) -> Result<CancelOutcome, EngineError> {
        self.write(|tx| {
            let row = tx
                .query_opt(
                    "SELECT status FROM jobs WHERE id = $1 FOR UPDATE",
                    &[&job_id],
                )?
                .ok_or(EngineError::NotFound(job_id))?;
            match status_of(row.try_get(0)?)? {
                Status::Pending | Status::Scheduled | Status::Waiting => {
                    tx.execute(
                        concat!(
                            "UPDATE jobs SET status = ",
                            status_code!(cancelled),
                            ", finished_ms = $2 WHERE id = $1"
                        ),
                        &[&job_id, &now_ms],
                    )?;
                    flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
                    Ok(CancelOutcome::Cancelled)
                }
                Status::Running => {
                    tx.execute(
                        "UPDATE jobs SET cancel_requested = 1 WHERE id = $1",
                        &[&job_id],
                    )?;
                    // The supervisor running it learns of the request at once.
                    tx.wake = true;
                    Ok(CancelOutcome::Requested)
                }
                finished => Ok(CancelOutcome::Finished(finished)),
            }
        })
    }

    fn cancel_requests(&self, owner: &str) -> Result<Vec<(i64, i64)>, EngineError> {
        self.read(|tx| {
            let rows = tx.query(
                concat!(
                    "SELECT id, attempt FROM jobs WHERE status = ",
                    status_code!(running),
                    " AND cancel_requested = 1 AND lease_owner = $1 \
                 ORDER BY id"
                ),
                &[&owner],
            )?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    fn finish_cancelled(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        self.write(|tx| {
            let changed = tx.execute(
                concat!(
                    "UPDATE jobs SET status = ",
                    status_code!(cancelled),
                    ", finished_ms = $3, lease_owner = NULL, lease_deadline_ms = NULL \
                 WHERE id = $1 AND attempt = $2 AND status = ",
                    status_code!(running)
                ),
                &[&job_id, &token, &now_ms],
            )?;
            if changed == 0 {
                refuse_stale(tx, job_id, token, "cancel", now_ms)?;
            } else {
                flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
            }
            Ok(changed > 0)
        })
    }

    fn requeue(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        self.write(|tx| put_back(tx, REQUEUE_SQL, "requeue", job_id, token, now_ms))
    }

    fn release(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        self.write(|tx| put_back(tx, RELEASE_SQL, "release", job_id, token, now_ms))
    }

    fn reap_expired(
        &self,
        limit: usize,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut expired: Vec<ExpiredLease> = Vec::new();
            for row in tx.query(EXPIRED_SQL, &[&now_ms, &sql_count(limit)])? {
                expired.push(expired_lease(&row, false)?);
            }
            if expired.len() < limit {
                let rest = sql_count(limit - expired.len());
                for row in tx.query(ORPHANED_SQL, &[&now_ms, &rest])? {
                    let lease = expired_lease(&row, true)?;
                    if !expired.iter().any(|e| e.job_id == lease.job_id) {
                        expired.push(lease);
                    }
                }
            }
            attempt::reap(&mut AttemptTx(tx), expired, jitter, now_ms)
        })
    }

    fn expired_leases(
        &self,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<(i64, i64, String)>, EngineError> {
        self.read(|tx| {
            let mut expired = Vec::new();
            for row in tx.query(EXPIRED_SQL, &[&now_ms, &sql_count(limit)])? {
                let owner: Option<String> = row.try_get(2)?;
                expired.push((row.try_get(0)?, row.try_get(1)?, owner.unwrap_or_default()));
            }
            Ok(expired)
        })
    }

    fn return_unstarted(
        &self,
        jobs: &[(i64, i64)],
        now_ms: i64,
    ) -> Result<Vec<(i64, FailOutcome)>, EngineError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            give_back_each(jobs, |job_id, token| {
                give_back(tx, RETURN_UNSTARTED_SQL, job_id, token, now_ms)
            })
        })
    }

    fn get(&self, job_id: i64) -> Result<JobRecord, EngineError> {
        self.read(|tx| {
            let row = tx
                .query_opt(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                    &[&job_id],
                )?
                .ok_or(EngineError::NotFound(job_id))?;
            job_from_row(&row)
        })
    }

    fn statuses(&self, job_ids: &[i64]) -> Result<Vec<Status>, EngineError> {
        self.read(|tx| {
            let rows = tx.query(
                "SELECT id, status FROM jobs WHERE id = ANY($1)",
                &[&job_ids],
            )?;
            let mut found: HashMap<i64, i64> = HashMap::with_capacity(rows.len());
            for row in &rows {
                found.insert(row.try_get(0)?, row.try_get(1)?);
            }
            job_ids
                .iter()
                .map(|id| {
                    let code = found.get(id).ok_or(EngineError::NotFound(*id))?;
                    status_of(*code)
                })
                .collect()
        })
    }

    fn errors(&self, job_id: i64) -> Result<Vec<ErrorRecord>, EngineError> {
        self.read(|tx| {
            tx.query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&job_id])?
                .ok_or(EngineError::NotFound(job_id))?;
            tx.query(
                &format!("SELECT {ERROR_COLUMNS} FROM errors WHERE job_id = $1 ORDER BY id"),
                &[&job_id],
            )?
            .iter()
            .map(|row| error_from_row(&PgRow(row)))
            .collect()
        })
    }

    fn stats(&self) -> Result<Vec<(Status, i64)>, EngineError> {
        // This counts every row; it serves dashboards and tests, never claims.
        self.read(|tx| {
            let rows = tx.query("SELECT status, count(*) FROM jobs GROUP BY status", &[])?;
            let mut counts: Vec<(Status, i64)> =
                Status::ALL.iter().map(|&status| (status, 0)).collect();
            for row in &rows {
                let status = status_of(row.try_get(0)?)?;
                let count: i64 = row.try_get(1)?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                    slot.1 = count;
                }
            }
            Ok(counts)
        })
    }

    fn dead_letters(&self, limit: usize, offset: usize) -> Result<Vec<JobRecord>, EngineError> {
        self.read(|tx| {
            let rows = tx.query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE status = {DEAD} ORDER BY finished_ms DESC, id DESC \
                     LIMIT $1 OFFSET $2"
                ),
                &[&sql_count(limit), &sql_count(offset)],
            )?;
            rows.iter().map(job_from_row).collect()
        })
    }

    fn replay(&self, job_id: i64, now_ms: i64) -> Result<i64, EngineError> {
        self.write(|tx| {
            let row = tx
                .query_opt("SELECT status FROM jobs WHERE id = $1", &[&job_id])?
                .ok_or(EngineError::NotFound(job_id))?;
            let status = status_of(row.try_get(0)?)?;
            if status != Status::Dead {
                return Err(EngineError::JobState {
                    job_id,
                    status: status.as_str().to_owned(),
                    operation: "replay".to_owned(),
                }
                .into());
            }
            let row = tx.query_one(
                "INSERT INTO jobs (task_name, queue, priority, payload, status, max_retries, max_crashes, \
                 backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, created_ms, eta_ms, \
                 replayed_from, labels) \
                 SELECT task_name, queue, priority, payload, 0, max_retries, max_crashes, backoff_base_ms, \
                 backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, $2, $2, id, labels FROM jobs WHERE id = $1 \
                 RETURNING id",
                &[&job_id, &now_ms],
            )?;
            let replayed: i64 = row.try_get(0)?;
            // The new job gets its own copy of a payload stored aside, so that
            // either job can be purged without the other.
            tx.execute(
                "INSERT INTO job_payloads (job_id, data) SELECT $2, data FROM job_payloads WHERE job_id = $1",
                &[&job_id, &replayed],
            )?;
            tx.wake = true;
            Ok(replayed)
        })
    }

    fn stale_outcomes(&self, limit: usize) -> Result<Vec<StaleOutcome>, EngineError> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {STALE_COLUMNS} FROM stale_outcomes ORDER BY id DESC LIMIT $1"),
                &[&sql_count(limit)],
            )?
            .iter()
            .map(|row| stale_from_row(&PgRow(row)))
            .collect()
        })
    }

    fn next_wakeup_ms(&self) -> Result<Option<i64>, EngineError> {
        self.read(|tx| {
            let row = tx.query_one(
                concat!(
                    "SELECT (SELECT eta_ms FROM jobs WHERE status = ",
                    status_code!(scheduled),
                    " ORDER BY eta_ms LIMIT 1), \
                 (SELECT lease_deadline_ms FROM jobs WHERE status = ",
                    status_code!(running),
                    " ORDER BY lease_deadline_ms LIMIT 1), \
                 (SELECT min(lease_until_ms) FROM supervisors s WHERE EXISTS \
                    (SELECT 1 FROM jobs j WHERE j.status = ",
                    status_code!(running),
                    " AND j.lease_owner = s.owner))"
                ),
                &[],
            )?;
            let eta: Option<i64> = row.try_get(0)?;
            let deadline: Option<i64> = row.try_get(1)?;
            let orphaned: Option<i64> = row.try_get(2)?;
            let flow = flow::next_flow_wakeup(tx)?;
            Ok([eta, deadline, orphaned, flow].into_iter().flatten().min())
        })
    }

    fn data_version(&self) -> Result<i64, EngineError> {
        // PostgreSQL has no commit counter that a reader may trust: a
        // sequence's nextval is not transactional, so a waiter could read a
        // new number before the commit it stands for is visible, read the old
        // state, and then see the number stand still. The transaction
        // snapshot is exact instead: it lists the transactions in progress and
        // the next transaction id, so it changes when a writer starts and again
        // when it commits, and two equal snapshots see the same committed data.
        // Its hash is the version; read-only transactions, which take no
        // transaction id, do not move it.
        self.read(|tx| {
            let row = tx.query_one(
                "SELECT hashtextextended(pg_current_snapshot()::text, 0)",
                &[],
            )?;
            Ok(row.try_get(0)?)
        })
    }

    fn set_progress(
        &self,
        job_id: i64,
        token: i64,
        progress: &str,
        now_ms: i64,
    ) -> Result<bool, EngineError> {
        self.write(|tx| {
            let changed = tx.execute(
                concat!(
                    "UPDATE jobs SET progress = $3 WHERE id = $1 AND attempt = $2 AND status = ",
                    status_code!(running)
                ),
                &[&job_id, &token, &progress],
            )?;
            if changed == 0 {
                refuse_stale(tx, job_id, token, "progress", now_ms)?;
            }
            Ok(changed > 0)
        })
    }

    fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<JobRecord>, EngineError> {
        let status = filter.status.map(Status::code);
        self.read(|tx| {
            let rows = tx.query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::bigint IS NULL OR status = $1) \
                     AND ($2::text IS NULL OR task_name = $2) AND ($3::text IS NULL OR queue = $3) \
                     ORDER BY id DESC LIMIT $4 OFFSET $5"
                ),
                &[
                    &status,
                    &filter.task_name,
                    &filter.queue,
                    &sql_count(limit),
                    &sql_count(offset),
                ],
            )?;
            rows.iter().map(job_from_row).collect()
        })
    }

    fn purge_jobs(
        &self,
        statuses: &[Status],
        finished_before_ms: Option<i64>,
        limit: usize,
    ) -> Result<usize, EngineError> {
        if !purgeable(statuses, limit)? {
            return Ok(0);
        }
        let codes: Vec<i64> = statuses.iter().map(|status| status.code()).collect();
        self.write(|tx| {
            let rows = tx.query(
                "SELECT id FROM jobs WHERE status = ANY($1) AND ($2::bigint IS NULL OR finished_ms < $2) \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[&codes, &finished_before_ms, &sql_count(limit)],
            )?;
            let ids: Vec<i64> = rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(0);
            }
            // A replay keeps pointing at its origin only while the origin exists.
            tx.execute(
                "UPDATE jobs SET replayed_from = NULL WHERE replayed_from = ANY($1)",
                &[&ids],
            )?;
            tx.execute("DELETE FROM errors WHERE job_id = ANY($1)", &[&ids])?;
            tx.execute("DELETE FROM job_payloads WHERE job_id = ANY($1)", &[&ids])?;
            tx.execute("DELETE FROM job_results WHERE job_id = ANY($1)", &[&ids])?;
            tx.execute(
                "DELETE FROM job_deps WHERE job_id = ANY($1) OR dep_id = ANY($1)",
                &[&ids],
            )?;
            let removed = tx.execute("DELETE FROM jobs WHERE id = ANY($1)", &[&ids])?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn purge_expired_results(&self, limit: usize, now_ms: i64) -> Result<usize, EngineError> {
        if limit == 0 {
            return Ok(0);
        }
        self.write(|tx| flow::purge_retention_in(tx, sql_count(limit), now_ms))
    }

    fn register_supervisor(
        &self,
        owner: &str,
        host: &str,
        pid: i64,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let until = now_ms.saturating_add(lease_ms);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO supervisors (owner, host, pid, started_ms, renewed_ms, lease_until_ms) \
                 VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (owner) DO UPDATE SET host = EXCLUDED.host, \
                 pid = EXCLUDED.pid, renewed_ms = EXCLUDED.renewed_ms, lease_until_ms = EXCLUDED.lease_until_ms",
                &[&owner, &host, &pid, &now_ms, &until],
            )?;
            Ok(())
        })
    }

    fn deregister_supervisor(&self, owner: &str) -> Result<(), EngineError> {
        self.write(|tx| {
            tx.execute("DELETE FROM supervisors WHERE owner = $1", &[&owner])?;
            Ok(())
        })
    }

    fn start_wake_listener(&self) -> Result<Option<Box<dyn WakeListener>>, EngineError> {
        let source = WakeSource {
            shared: Arc::clone(&self.shared),
            channel: self.channel.clone(),
        };
        Ok(Some(Box::new(wake::PgWakeListener::start(source)?)))
    }
}
