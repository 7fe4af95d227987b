//! [`Storage`] for [`PostgresStorage`]: each operation one transaction over
//! the steps of `transitions.rs`, run again from the start when it loses a
//! race; the shared job transitions come from [`Backend`] (see
//! [`stoker_engine::storage::backend`]).

use crate::*;

impl Backend for PostgresStorage {
    type Error = PgError;
    type Tx<'t> = Tx<'t>;

    fn write_tx<T>(
        &self,
        f: impl FnMut(&mut Self::Tx<'_>) -> PgResult<T>,
    ) -> Result<T, EngineError> {
        self.write(f)
    }

    fn read_tx<T>(
        &self,
        f: impl FnMut(&mut Self::Tx<'_>) -> PgResult<T>,
    ) -> Result<T, EngineError> {
        self.read(f)
    }
}

impl Storage for PostgresStorage {
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

    fn cancel_requests(&self, owner: &str) -> Result<Vec<(i64, i64)>, EngineError> {
        self.read(|tx| {
            let rows = tx.query(CANCEL_REQUESTS_SQL, &[&owner])?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
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
