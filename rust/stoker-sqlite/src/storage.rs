//! [`Storage`] for [`SqliteStorage`]: each operation one transaction over
//! the steps of `transitions.rs`.

use crate::*;

impl Storage for SqliteStorage {
    fn enqueue(&self, jobs: &[NewJob], now_ms: i64) -> Result<Vec<i64>, EngineError> {
        self.write(|tx| {
            let mut ids = Vec::with_capacity(jobs.len());
            for job in jobs {
                ids.push(flow::insert_job(tx, job, now_ms)?.0);
            }
            Ok(ids)
        })
    }

    fn enqueue_copies(
        &self,
        template: &NewJob,
        payloads: &[&[u8]],
        now_ms: i64,
    ) -> Result<Vec<i64>, EngineError> {
        if let [payload] = payloads {
            if let Some(id) = self.log_send(template, payload, now_ms, true)? {
                return Ok(vec![id]);
            }
        }
        self.write(|tx| insert_copies(tx, template, payloads, now_ms))
    }

    fn try_log_send(
        &self,
        template: &NewJob,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Option<i64>, EngineError> {
        Ok(self.log_send(template, payload, now_ms, false)?)
    }

    fn open_send_log(&self) -> Result<(), EngineError> {
        if let Some(log) = &self.send_log {
            log.acquire();
        }
        Ok(())
    }

    fn close_send_log(&self) -> Result<(), EngineError> {
        let Some(log) = &self.send_log else {
            return Ok(());
        };
        if log.release() {
            self.write(|_| Ok(()))?;
            if let Some(name) = log.close() {
                self.write(|tx| send_log::forget(tx, &name))?;
            }
        }
        Ok(())
    }

    fn recover_send_logs(&self) -> Result<usize, EngineError> {
        let Some(log) = &self.send_log else {
            return Ok(0);
        };
        let mut recovered = 0;
        for orphan in send_log::orphans(log.dir())? {
            recovered += self.write(|tx| orphan.insert(tx))?;
            let name = orphan.name.clone();
            // The mark goes after the file: a crash in between leaves a mark
            // that names no file, never a file without its mark.
            orphan.remove();
            self.write(|tx| send_log::forget(tx, &name))?;
        }
        Ok(recovered)
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

    fn heartbeat(
        &self,
        owner: &str,
        leases: &[(i64, i64)],
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<i64>, EngineError> {
        let lease_deadline_ms = now_ms.saturating_add(lease_ms);
        self.write(|tx| {
            let mut renew = tx.prepare_cached(HEARTBEAT_SQL)?;
            let mut cancel_requested = Vec::new();
            for &(job_id, token) in leases {
                let renewed: Option<i64> = renew
                    .query_row(params![job_id, token, owner, lease_deadline_ms], |row| {
                        row.get(0)
                    })
                    .optional()?;
                match renewed {
                    Some(0) => {}
                    Some(_) => cancel_requested.push(job_id),
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
        self.write(|tx| complete_in(tx, completions, now_ms))
    }

    fn complete_and_claim(
        &self,
        completions: &[Completion],
        claim: &ClaimRequest<'_>,
        now_ms: i64,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), EngineError> {
        self.write(|tx| {
            if !claim.held.is_empty() || !claim.sent.is_empty() {
                let mut mark = tx.prepare_cached(MARK_HELD_SQL)?;
                for (jobs, held) in [(claim.sent, 0_i64), (claim.held, 1)] {
                    for &(job_id, token) in jobs {
                        mark.execute(params![job_id, token, claim.owner, held])?;
                    }
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

    fn fail(
        &self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
        jitter: Jitter<'_>,
        now_ms: i64,
    ) -> Result<FailOutcome, EngineError> {
        self.write(|tx| attempt::fail(&mut AttemptTx(tx), job_id, token, report, jitter, now_ms))
    }

    fn cancel(&self, job_id: i64, now_ms: i64) -> Result<CancelOutcome, EngineError> {
        self.write(|tx| {
            let code: i64 = tx
                .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
                .query_row([job_id], |row| row.get(0))
                .optional()?
                .ok_or(EngineError::NotFound(job_id))?;
            match status_from_code(code, 0)? {
                Status::Pending | Status::Scheduled | Status::Waiting => {
                    tx.prepare_cached(concat!(
                        "UPDATE jobs SET status = ",
                        status_code!(cancelled),
                        ", finished_ms = ?2 WHERE id = ?1"
                    ))?
                    .execute(params![job_id, now_ms])?;
                    flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
                    Ok(CancelOutcome::Cancelled)
                }
                Status::Running => {
                    tx.prepare_cached("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")?
                        .execute([job_id])?;
                    Ok(CancelOutcome::Requested)
                }
                finished => Ok(CancelOutcome::Finished(finished)),
            }
        })
    }

    fn cancel_requests(&self, owner: &str) -> Result<Vec<(i64, i64)>, EngineError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(CANCEL_REQUESTS_SQL)?;
            let rows = stmt.query_map([owner], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn finish_cancelled(&self, job_id: i64, token: i64, now_ms: i64) -> Result<bool, EngineError> {
        self.write(|tx| {
            let changed = tx
                .prepare_cached(concat!(
                    "UPDATE jobs SET status = ",
                    status_code!(cancelled),
                    ", finished_ms = ?3, lease_owner = NULL, lease_deadline_ms = NULL \
                     WHERE id = ?1 AND attempt = ?2 AND status = ",
                    status_code!(running)
                ))?
                .execute(params![job_id, token, now_ms])?;
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
            let expired: Vec<ExpiredLease> = {
                let mut stmt = tx.prepare_cached(EXPIRED_SQL)?;
                let rows = stmt.query_map(params![now_ms, sql_limit(limit)], |row| {
                    Ok(ExpiredLease {
                        job_id: row.get(0)?,
                        token: row.get(1)?,
                        owner: row.get(2)?,
                        deadline_ms: row.get(3)?,
                        orphaned: false,
                    })
                })?;
                rows.collect::<Result<_, _>>()?
            };
            attempt::reap(&mut AttemptTx(tx), expired, jitter, now_ms)
        })
    }

    fn expired_leases(
        &self,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<(i64, i64, String)>, EngineError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(EXPIRED_SQL)?;
            let rows = stmt.query_map(params![now_ms, sql_limit(limit)], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
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
        self.with_reader(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?;
            stmt.query_row([job_id], job_from_row)
                .optional()?
                .ok_or(EngineError::NotFound(job_id).into())
        })
    }

    fn statuses(&self, job_ids: &[i64]) -> Result<Vec<Status>, EngineError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached("SELECT status FROM jobs WHERE id = ?1")?;
            let mut statuses = Vec::with_capacity(job_ids.len());
            for &job_id in job_ids {
                let code: i64 = stmt
                    .query_row([job_id], |row| row.get(0))
                    .optional()?
                    .ok_or(EngineError::NotFound(job_id))?;
                statuses.push(status_from_code(code, 0)?);
            }
            Ok(statuses)
        })
    }

    fn errors(&self, job_id: i64) -> Result<Vec<ErrorRecord>, EngineError> {
        self.read(|tx| {
            let exists = tx
                .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
                .query_row([job_id], |_| Ok(()))
                .optional()?;
            exists.ok_or(EngineError::NotFound(job_id))?;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {ERROR_COLUMNS} FROM errors WHERE job_id = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map([job_id], |row| error_from_row(&SqlRow(row)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn stats(&self) -> Result<Vec<(Status, i64)>, EngineError> {
        // This counts every row, so its cost grows with the table; it serves
        // dashboards and tests, never the claim path.
        self.with_reader(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT status, count(*) FROM jobs GROUP BY status")?;
            let rows =
                stmt.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))?;
            let mut counts: Vec<(Status, i64)> =
                Status::ALL.iter().map(|&status| (status, 0)).collect();
            for row in rows {
                let (code, count) = row?;
                let status = status_from_code(code, 0)?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                    slot.1 = count;
                }
            }
            Ok(counts)
        })
    }

    fn dead_letters(&self, limit: usize, offset: usize) -> Result<Vec<JobRecord>, EngineError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = {DEAD} ORDER BY finished_ms DESC, id DESC LIMIT ?1 OFFSET ?2"
            ))?;
            let rows = stmt.query_map(params![sql_limit(limit), sql_limit(offset)], job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn replay(&self, job_id: i64, now_ms: i64) -> Result<i64, EngineError> {
        self.write(|tx| {
            let code: i64 = tx
                .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
                .query_row([job_id], |row| row.get(0))
                .optional()?
                .ok_or(EngineError::NotFound(job_id))?;
            let status = status_from_code(code, 0)?;
            if status != Status::Dead {
                return Err(EngineError::JobState {
                    job_id,
                    status: status.as_str().to_owned(),
                    operation: "replay".to_owned(),
                }.into());
            }
            tx.prepare_cached(
                "INSERT INTO jobs (task_name, queue, priority, payload, status, max_retries, max_crashes, \
                 backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, created_ms, eta_ms, \
                 replayed_from, labels) \
                 SELECT task_name, queue, priority, payload, 0, max_retries, max_crashes, backoff_base_ms, \
                 backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, ?2, ?2, id, labels FROM jobs WHERE id = ?1",
            )?
            .execute(params![job_id, now_ms])?;
            let replayed = tx.last_insert_rowid();
            // The new job gets its own copy of a payload stored aside, so that
            // either job can be purged without the other.
            tx.prepare_cached(
                "INSERT INTO job_payloads (job_id, data) SELECT ?2, data FROM job_payloads WHERE job_id = ?1",
            )?
            .execute(params![job_id, replayed])?;
            Ok(replayed)
        })
    }

    fn stale_outcomes(&self, limit: usize) -> Result<Vec<StaleOutcome>, EngineError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {STALE_COLUMNS} FROM stale_outcomes ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([sql_limit(limit)], |row| stale_from_row(&SqlRow(row)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn next_wakeup_ms(&self) -> Result<Option<i64>, EngineError> {
        self.read(|tx| {
            let eta: Option<i64> = tx
                .prepare_cached(NEXT_ETA_SQL)?
                .query_row([], |row| row.get(0))
                .optional()?;
            let deadline: Option<i64> = tx
                .prepare_cached(NEXT_DEADLINE_SQL)?
                .query_row([], |row| row.get(0))
                .optional()?;
            let flow = flow::next_flow_wakeup(tx)?;
            Ok([eta, deadline, flow].into_iter().flatten().min())
        })
    }

    fn data_version(&self) -> Result<i64, EngineError> {
        self.with_conn(|conn| Ok(conn.query_row("PRAGMA data_version", [], |row| row.get(0))?))
    }

    fn set_busy_timeout(&self, timeout: Duration) {
        let micros = duration_micros(timeout);
        self.busy_timeout.store(micros, Ordering::Relaxed);
        self.busy_limit.store(micros, Ordering::Relaxed);
    }

    fn close(&self) -> Result<(), EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(log) = self.send_log.as_deref() {
            if log.has_pending() {
                self.write(|_| Ok(()))?;
            }
            // Another storage of this process may still log to it; then it
            // stays open, and its last user removes it.
            if let Some(name) = log.close() {
                self.write(|tx| send_log::forget(tx, &name))?;
            }
        }
        let mut conn = self.lock()?;
        // The checkpoint thread's connection goes first: SQLite removes the
        // -wal and -shm files only when it closes the last connection.
        self.checkpointer.stop();
        let in_memory = Connection::open_in_memory().map_err(engine_error)?;
        let file = std::mem::replace(&mut *conn, in_memory);
        self.closed.store(true, Ordering::Release);
        drop(conn);
        file.close().map_err(|(_, error)| engine_error(error))
    }

    fn compact_log(&self, wait: Duration) -> Result<bool, EngineError> {
        self.with_conn(|conn| {
            // A truncating checkpoint waits for readers still using the log and
            // holds new writers back meanwhile, so it gets a short wait of its
            // own instead of the writers' busy timeout.
            self.busy_limit
                .store(duration_micros(wait), Ordering::Relaxed);
            let outcome = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
            self.busy_limit
                .store(self.busy_timeout.load(Ordering::Relaxed), Ordering::Relaxed);
            match outcome {
                Ok(busy) => Ok(busy == 0),
                Err(error) if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                    Ok(false)
                }
                Err(error) => Err(error.into()),
            }
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
            let changed = tx
                .prepare_cached(concat!(
                    "UPDATE jobs SET progress = ?3 WHERE id = ?1 AND attempt = ?2 AND status = ",
                    status_code!(running)
                ))?
                .execute(params![job_id, token, progress])?;
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
        // A listing serves people and scripts, not the claim path: it may scan.
        // No index is kept for it, because every index is paid for by every
        // status change of every job.
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR status = ?1) \
                 AND (?2 IS NULL OR task_name = ?2) AND (?3 IS NULL OR queue = ?3) \
                 ORDER BY id DESC LIMIT ?4 OFFSET ?5"
            ))?;
            let rows = stmt.query_map(
                params![
                    filter.status.map(Status::code),
                    filter.task_name,
                    filter.queue,
                    sql_limit(limit),
                    sql_limit(offset)
                ],
                job_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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
        let codes = statuses
            .iter()
            .map(|status| status.code().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        self.write(|tx| {
            tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS purged (id INTEGER PRIMARY KEY)")?;
            tx.execute("DELETE FROM temp.purged", [])?;
            tx.prepare(&format!(
                "INSERT INTO temp.purged SELECT id FROM jobs WHERE status IN ({codes}) \
                 AND (?1 IS NULL OR finished_ms < ?1) ORDER BY id LIMIT ?2"
            ))?
            .execute(params![finished_before_ms, sql_limit(limit)])?;
            // A replay keeps pointing at its origin only while the origin exists.
            tx.execute(
                "UPDATE jobs SET replayed_from = NULL WHERE replayed_from IN (SELECT id FROM temp.purged)",
                [],
            )?;
            tx.execute("DELETE FROM errors WHERE job_id IN (SELECT id FROM temp.purged)", [])?;
            // Dependency links of a finished job are history only (they were
            // resolved when it finished), and they would keep it by their
            // foreign keys.
            tx.execute(
                "DELETE FROM job_deps WHERE job_id IN (SELECT id FROM temp.purged) \
                 OR dep_id IN (SELECT id FROM temp.purged)",
                [],
            )?;
            tx.execute(
                "DELETE FROM job_payloads WHERE job_id IN (SELECT id FROM temp.purged)",
                [],
            )?;
            tx.execute(
                "DELETE FROM job_results WHERE job_id IN (SELECT id FROM temp.purged)",
                [],
            )?;
            let removed = tx.execute("DELETE FROM jobs WHERE id IN (SELECT id FROM temp.purged)", [])?;
            tx.execute("DELETE FROM temp.purged", [])?;
            Ok(removed)
        })
    }

    fn purge_expired_results(&self, limit: usize, now_ms: i64) -> Result<usize, EngineError> {
        if limit == 0 {
            return Ok(0);
        }
        self.write(|tx| flow::purge_retention_in(tx, sql_limit(limit), now_ms))
    }
}
