//! [`Storage`] for [`SqliteStorage`]: each operation one transaction over
//! the steps of `transitions.rs`; the shared job transitions come from
//! [`Backend`] (see [`stoker_engine::storage::backend`]).

use crate::*;

impl Backend for SqliteStorage {
    type Error = SqlError;
    type Tx<'t> = Steps<'t, 't>;

    fn write_tx<T>(
        &self,
        mut f: impl FnMut(&mut Self::Tx<'_>) -> SqlResult<T>,
    ) -> Result<T, EngineError> {
        self.write(|tx| f(&mut Steps(tx)))
    }

    fn read_tx<T>(
        &self,
        mut f: impl FnMut(&mut Self::Tx<'_>) -> SqlResult<T>,
    ) -> Result<T, EngineError> {
        self.read(|tx| f(&mut Steps(tx)))
    }
}

impl Storage for SqliteStorage {
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

    fn cancel_requests(&self, owner: &str) -> Result<Vec<(i64, i64)>, EngineError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(CANCEL_REQUESTS_SQL)?;
            let rows = stmt.query_map([owner], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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

    fn dead_letters(&self, limit: usize, offset: usize) -> Result<Vec<JobRecord>, EngineError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = {DEAD} ORDER BY finished_ms DESC, id DESC LIMIT ?1 OFFSET ?2"
            ))?;
            let rows = stmt.query_map(params![sql_limit(limit), sql_limit(offset)], job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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
}
