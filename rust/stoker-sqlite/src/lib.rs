//! The SQLite implementation of [`Storage`]: one database file in WAL mode,
//! shared by the supervisors and clients of one machine.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, so a transaction takes
//! the write lock up front and never fails half-way with a lock upgrade error;
//! a transaction that is not committed rolls back when dropped. The hot
//! statements are prepared once per connection (`prepare_cached`) and each one
//! is served by a partial index, so the cost of a claim depends on the batch
//! size, not on how many jobs are pending or finished.
//!
//! Statuses are written into the SQL as integer literals (see
//! [`Status::code`]): SQLite uses a partial index only when the query's WHERE
//! clause visibly implies the index's, which a bound parameter does not.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior,
};

use stoker_engine::codes::DEAD;
use stoker_engine::decide::attempt::{self, give_back_each, AttemptSteps, ExpiredLease};
use stoker_engine::decide::{failure_state_from_row, purgeable, FailureState, FAILURE_COLUMNS};
use stoker_engine::error::EngineError;
use stoker_engine::model::{
    CancelOutcome, ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureKind, FailureReport,
    JobFilter, JobRecord, NewJob, StaleOutcome, Status,
};
use stoker_engine::status_code;
use stoker_engine::storage::{stored_aside, ClaimRequest, Jitter, Storage, INLINE_BLOB_MAX_BYTES};
use stoker_engine::{Clock, Engine};

use crate::checkpoint::Checkpointer;
use crate::columns::SqlRow;
use crate::send_log::SendLog;
use stoker_engine::rows::{self, error_from_row, stale_from_row, ERROR_COLUMNS, STALE_COLUMNS};

pub mod checkpoint;
mod columns;
pub mod flow;
pub mod locks;
pub mod send_log;

/// Marks a SQLite file as stoker's (`PRAGMA application_id`): the bytes "STKR".
pub const APPLICATION_ID: i64 = 0x5354_4B52;

/// The schema version this engine writes and reads (`PRAGMA user_version`).
/// Version 3 keeps large payloads and results in tables of their own;
/// version 4 adds the high-water marks of the send logs; version 5 marks the
/// running jobs their supervisor holds, sent to no worker.
pub const SCHEMA_VERSION: i64 = 5;

/// The oldest schema version that opening migrates in place rather than
/// refuses.
pub const MIGRATABLE_SINCE: i64 = 2;

/// At most this many scheduled jobs are promoted to pending by one claim. A
/// larger batch makes priority order exact even after a burst of jobs falls due
/// at once; a smaller one bounds how long one claim holds the write lock. The
/// rest are promoted by the following claims, earliest eta first.
const PROMOTE_BATCH: i64 = 1000;

/// Prepared statements kept per connection. It must hold every hot statement
/// at once, or they would be re-prepared on every call; memory per statement is
/// a few kilobytes.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// SQLite's page cache for each connection, in KiB. The hot pages of a claim
/// (the top of the pending index and the rows just written) then stay in
/// memory even in a database of millions of jobs; the cost is up to this much
/// memory per open engine. SQLite's default is 2 MiB.
const CACHE_SIZE_KIB: i64 = 16 * 1024;

/// A writer that finds the database locked sleeps this long before its first
/// retry, then twice as long each time up to [`BUSY_MAX_PAUSE`], until its
/// busy timeout is spent. A transaction of the hot path holds the lock for
/// 50 to 200 µs, so the first retries come that soon; SQLite's own handler
/// sleeps 1 ms at once, then 2, 5, 10 ms, which made a send that met a
/// supervisor's commit wait ten times longer than the commit took. Shorter
/// pauses mean more wake-ups of a waiting writer while a long transaction
/// (a batch of thousands of jobs) holds the lock.
pub const BUSY_FIRST_PAUSE: Duration = Duration::from_micros(25);
/// The longest sleep between two retries of a locked database.
pub const BUSY_MAX_PAUSE: Duration = Duration::from_millis(2);

/// The size the WAL file is truncated to when SQLite resets it after a
/// checkpoint (`PRAGMA journal_size_limit`). Without it, the file keeps the
/// size of the largest transaction it ever held.
pub const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The schema, created in one transaction on an empty file.
const SCHEMA: &str = concat!(
    "
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_name TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    status INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL,
    max_crashes INTEGER NOT NULL,
    backoff_base_ms INTEGER NOT NULL,
    backoff_cap_ms INTEGER NOT NULL,
    jitter REAL NOT NULL,
    timeout_ms INTEGER,
    result_ttl_ms INTEGER,
    created_ms INTEGER NOT NULL,
    eta_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    lease_owner TEXT,
    lease_deadline_ms INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    result_expires_ms INTEGER,
    replayed_from INTEGER REFERENCES jobs (id),
    labels TEXT,
    progress TEXT,
    usage TEXT
) STRICT;

-- Claims: the runnable jobs of one queue in claim order.
CREATE INDEX jobs_pending ON jobs (queue, priority DESC, id) WHERE status = ",
    status_code!(pending),
    ";
-- Promotion of due jobs and the next wake-up.
CREATE INDEX jobs_scheduled ON jobs (eta_ms) WHERE status = ",
    status_code!(scheduled),
    ";
-- Reaping of expired leases and the next wake-up.
CREATE INDEX jobs_running_lease ON jobs (lease_deadline_ms) WHERE status = ",
    status_code!(running),
    ";
-- Cancel requests a supervisor polls for.
CREATE INDEX jobs_cancel_requests ON jobs (lease_owner) WHERE status = ",
    status_code!(running),
    " AND cancel_requested = 1;
-- The dead-letter queue, most recent first.
CREATE INDEX jobs_dead ON jobs (finished_ms DESC, id DESC) WHERE status = ",
    status_code!(dead),
    ";
-- Finished jobs whose result and error history wait for their retention to end.
CREATE INDEX jobs_result_expiry ON jobs (result_expires_ms) WHERE result_expires_ms IS NOT NULL;

CREATE TABLE errors (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    exc_type TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    exc_pickle BLOB,
    failed_ms INTEGER NOT NULL,
    worker TEXT NOT NULL,
    usage TEXT
) STRICT;
CREATE INDEX errors_job ON errors (job_id, id);

-- Stale outcomes may name jobs that never existed (a confused heartbeat), so
-- job_id is deliberately not a foreign key.
CREATE TABLE stale_outcomes (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    token INTEGER NOT NULL,
    owner TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
"
);

/// The column of `jobs` that marks a running job its supervisor holds,
/// claimed ahead and sent to no worker ([`ClaimRequest::held`]): the lease
/// reaper gives such a job back without counting a crash. Part of the schema
/// since version 5.
const HELD_COLUMN: &str = "
-- 1 while its supervisor holds the running job, sent to no worker.
ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
";

/// The tables of payloads and results too large for the job's row (see
/// [`INLINE_BLOB_MAX_BYTES`]): one row per job, keyed by the job's id, written
/// when the job is enqueued or completed and deleted with the job or its
/// result. Part of the schema since version 3.
const BLOB_TABLES: &str = "
CREATE TABLE job_payloads (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
    data BLOB NOT NULL
) STRICT;
CREATE TABLE job_results (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
    data BLOB NOT NULL
) STRICT;
";

/// The columns of a [`JobRecord`], in the order [`job_from_row`] reads them,
/// from `jobs`. An empty payload or result in the row stands for one stored
/// aside, read from its table; `length` of a blob does not read its content.
const JOB_COLUMNS: &str = "id, task_name, queue, priority, status, \
     CASE WHEN length(payload) = 0 THEN \
     coalesce((SELECT data FROM job_payloads WHERE job_id = jobs.id), payload) ELSE payload END, \
     attempt, failures, crashes, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, \
     created_ms, eta_ms, started_ms, finished_ms, lease_owner, lease_deadline_ms, cancel_requested, \
     CASE WHEN length(result) = 0 THEN \
     coalesce((SELECT data FROM job_results WHERE job_id = jobs.id), result) ELSE result END, \
     result_expires_ms, replayed_from, labels, progress, usage, unique_key, expires_ms";

/// The payload stored aside for a job.
const PAYLOAD_ASIDE_SQL: &str = "SELECT data FROM job_payloads WHERE job_id = ?1";

/// Stores a payload aside.
pub(crate) const INSERT_PAYLOAD_SQL: &str =
    "INSERT INTO job_payloads (job_id, data) VALUES (?1, ?2)";

/// Stores a result aside.
const INSERT_RESULT_SQL: &str = "INSERT INTO job_results (job_id, data) VALUES (?1, ?2)";

/// Inserts one job row; a NULL id (?1) takes the next one.
pub(crate) const INSERT_JOB_SQL: &str = "INSERT INTO jobs (id, task_name, queue, priority, payload, status, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, created_ms, \
     eta_ms, unique_key, expires_ms, rate_prepaid, labels) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

/// Moves the scheduled jobs whose eta has come to pending, earliest first.
pub const PROMOTE_DUE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(pending),
    " WHERE id IN \
     (SELECT id FROM jobs WHERE status = ",
    status_code!(scheduled),
    " AND eta_ms <= ?1 ORDER BY eta_ms LIMIT ?2)"
);

/// The next claimable jobs of one queue, in claim order.
pub const PICK_PENDING_SQL: &str = concat!(
    "SELECT priority, id FROM jobs WHERE status = ",
    status_code!(pending),
    " AND queue = ?1 ORDER BY priority DESC, id LIMIT ?2"
);

/// Leases one picked job; the `status = 0` fence makes it a no-op on a row that
/// another writer took first.
pub const TAKE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(running),
    ", attempt = attempt + 1, started_ms = ?2, \
     lease_owner = ?3, lease_deadline_ms = ?4, cancel_requested = 0, progress = NULL, held = 0 \
     WHERE id = ?1 AND status = ",
    status_code!(pending),
    " RETURNING attempt, task_name, queue, payload, timeout_ms, labels"
);

/// Puts a running attempt back to pending (the attempt stays counted). A job
/// whose cancel was requested ends cancelled rather than going back to
/// pending, so the request is never lost.
const REQUEUE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN 5 ELSE 0 END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN ?3 ELSE finished_ms END, \
     eta_ms = ?3, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Undoes a claim whose job never started: as [`REQUEUE_SQL`], and the attempt
/// is taken back, so the job reads as if it had never been claimed.
const RELEASE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN 5 ELSE 0 END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN ?3 ELSE finished_ms END, \
     started_ms = CASE attempt WHEN 1 THEN NULL ELSE started_ms END, \
     attempt = attempt - 1, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Marks (?4 = 1) or unmarks (?4 = 0) a running job its owner (?3) holds,
/// sent to no worker, if its token (?2) is current.
const MARK_HELD_SQL: &str = concat!(
    "UPDATE jobs SET held = ?4 WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running),
    " AND lease_owner = ?3"
);

/// A give-back statement: pending again (cancelled if a cancel was
/// requested), no failure or crash counted, the lease dropped, for the job
/// (?1) still running the attempt (?2) when `$condition` holds.
macro_rules! give_back_sql {
    ($condition:literal) => {
        concat!(
            concat!(
                "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN 5 ELSE 0 END, \
             finished_ms = CASE cancel_requested WHEN 1 THEN ?3 ELSE finished_ms END, \
             eta_ms = ?3, lease_owner = NULL, lease_deadline_ms = NULL, held = 0 \
             WHERE id = ?1 AND attempt = ?2 AND status = ",
                status_code!(running),
                " AND "
            ),
            $condition,
            " RETURNING status"
        )
    };
}

/// Gives back an expired job its supervisor held, sent to no worker: pending
/// again (cancelled if a cancel was requested), no failure or crash counted.
/// The attempt stays taken, unlike [`RELEASE_SQL`]: the supervisor that holds
/// the token may still be alive (stopped, cut off), and the next claim must
/// give a token it has never seen.
const RETURN_HELD_SQL: &str = give_back_sql!("held = 1");

/// Gives back an expired job that its dead supervisor's workers never
/// started (see [`Storage::return_unstarted`]), as [`RETURN_HELD_SQL`] does.
const RETURN_UNSTARTED_SQL: &str = give_back_sql!("lease_deadline_ms < ?3");

/// Completes one attempt if its token is current.
pub const COMPLETE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(complete),
    ", result = ?3, finished_ms = ?4, usage = ?5, \
     result_expires_ms = ?4 + result_ttl_ms, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running)
);

/// Renews one lease if the owner and token are current.
pub const HEARTBEAT_SQL: &str = concat!(
    "UPDATE jobs SET lease_deadline_ms = ?4 \
     WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running),
    " AND lease_owner = ?3 RETURNING cancel_requested"
);

/// The running jobs whose lease ran out, oldest deadline first.
pub const EXPIRED_SQL: &str = concat!(
    "SELECT id, attempt, lease_owner, lease_deadline_ms FROM jobs \
     WHERE status = ",
    status_code!(running),
    " AND lease_deadline_ms < ?1 ORDER BY lease_deadline_ms LIMIT ?2"
);

/// The cancel requests of one owner.
pub const CANCEL_REQUESTS_SQL: &str = concat!(
    "SELECT id, attempt FROM jobs \
     WHERE status = ",
    status_code!(running),
    " AND cancel_requested = 1 AND lease_owner = ?1 ORDER BY id"
);

/// The earliest eta of a scheduled job.
pub const NEXT_ETA_SQL: &str = concat!(
    "SELECT eta_ms FROM jobs WHERE status = ",
    status_code!(scheduled),
    " ORDER BY eta_ms LIMIT 1"
);

/// The earliest lease deadline of a running job.
pub const NEXT_DEADLINE_SQL: &str = concat!(
    "SELECT lease_deadline_ms FROM jobs WHERE status = ",
    status_code!(running),
    " ORDER BY lease_deadline_ms LIMIT 1"
);

/// The statements whose cost must not grow with the number of jobs, by name;
/// tests check their query plans.
pub const HOT_STATEMENTS: &[(&str, &str)] = &[
    ("promote_due", PROMOTE_DUE_SQL),
    ("pick_pending", PICK_PENDING_SQL),
    ("take", TAKE_SQL),
    ("complete", COMPLETE_SQL),
    ("heartbeat", HEARTBEAT_SQL),
    ("expired", EXPIRED_SQL),
    ("cancel_requests", CANCEL_REQUESTS_SQL),
    ("next_eta", NEXT_ETA_SQL),
    ("next_deadline", NEXT_DEADLINE_SQL),
];

/// An error of this storage: SQLite's own, or the engine's.
#[derive(Debug)]
pub(crate) enum SqlError {
    Db(rusqlite::Error),
    Engine(EngineError),
}

impl From<rusqlite::Error> for SqlError {
    fn from(error: rusqlite::Error) -> Self {
        SqlError::Db(error)
    }
}

impl From<EngineError> for SqlError {
    fn from(error: EngineError) -> Self {
        SqlError::Engine(error)
    }
}

impl From<SqlError> for EngineError {
    fn from(error: SqlError) -> Self {
        match error {
            SqlError::Db(error) => engine_error(error),
            SqlError::Engine(error) => error,
        }
    }
}

/// The results of this storage's internal steps.
pub(crate) type SqlResult<T> = Result<T, SqlError>;

/// SQLite's error as the engine's: a lock held past the busy timeout is
/// [`EngineError::Busy`], anything else [`EngineError::Storage`].
pub(crate) fn engine_error(error: rusqlite::Error) -> EngineError {
    {
        match error.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                EngineError::Busy(format!(
                    "the database stayed locked by another writer past the busy timeout: {error}"
                ))
            }
            _ => EngineError::Storage(format!("SQLite error: {error}")),
        }
    }
}

/// What an opened file turned out to be.
enum Identity {
    /// A stoker database of this schema version.
    Ours,
    /// A stoker database of an older schema version this engine migrates.
    Older(i64),
    /// An empty database, to be initialised.
    Empty,
}

/// Job state in one SQLite database file.
#[derive(Debug)]
pub struct SqliteStorage {
    /// One connection serves every thread of the process: SQLite allows a
    /// single writer anyway, and the mutex makes the engine safe to share.
    conn: Mutex<Connection>,
    path: String,
    /// How long writers wait for the lock, in microseconds (see
    /// [`Storage::set_busy_timeout`]).
    busy_timeout: AtomicU64,
    /// How long, in microseconds, the connection's busy handler retries a
    /// locked database: `busy_timeout`, except while `compact_log` waits.
    busy_limit: Arc<AtomicU64>,
    /// Runs the WAL checkpoints that SQLite would otherwise run inside a
    /// commit. Declared after `conn`, so the connection (whose hook refers to
    /// it) is closed first.
    checkpointer: Arc<Checkpointer>,
    /// The send log this process keeps for the database (none in memory).
    send_log: Option<Arc<SendLog>>,
    /// Set by [`Storage::close`]: the file's connection is closed, and every
    /// later call fails.
    closed: AtomicBool,
}

/// An engine over the SQLite database at `path` (created if missing) that
/// reads the time from `clock`; writers wait up to `busy_timeout` for the lock.
pub fn open_engine(
    path: impl AsRef<Path>,
    busy_timeout: Duration,
    clock: Arc<dyn Clock>,
) -> Result<Engine, EngineError> {
    Ok(Engine::new(
        Box::new(SqliteStorage::open(path, busy_timeout)?),
        clock,
    ))
}

impl SqliteStorage {
    /// Opens the database at `path`, creating it if the file does not exist
    /// (its directory must), and checks that it is a stoker database of this
    /// schema version. Writers wait up to `busy_timeout` for the lock.
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<Self, EngineError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if path.is_dir() {
            return Err(EngineError::Storage(format!(
                "cannot open the database {shown:?}: it is a directory"
            )));
        }
        if !path.exists() {
            if let Some(parent) = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                if !parent.is_dir() {
                    return Err(EngineError::Storage(format!(
                        "cannot create the database {shown:?}: the directory {:?} does not exist",
                        parent.display().to_string()
                    )));
                }
            }
        }
        // Before the first connection of the process: every lock it takes
        // must hold against another SQLite in the process too.
        locks::install();
        let mut conn = Connection::open(path).map_err(|error| {
            EngineError::Storage(format!("cannot open the database {shown:?}: {error}"))
        })?;
        let busy_limit = Arc::new(AtomicU64::new(duration_micros(busy_timeout)));
        conn.busy_handler(Some(busy_waiter(Arc::clone(&busy_limit))))
            .map_err(engine_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        // Plans must not depend on the values bound to a statement: without
        // this, SQLite compiles a statement again whenever a bound value (the
        // current time, on every claim) could let it pick another plan, and
        // that compilation cost more than the rest of a claim.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(engine_error)?;
        // The checkpoint thread opens its own connection, so it needs a path that
        // still names the file if the process changes directory.
        let absolute = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let in_memory = shown == ":memory:" || shown.is_empty();
        let send_log = (!in_memory).then(|| send_log::for_database(&absolute));
        let checkpointer = Checkpointer::install(&mut conn, absolute).map_err(engine_error)?;
        let mut storage = Self {
            conn: Mutex::new(conn),
            path: shown,
            busy_timeout: AtomicU64::new(duration_micros(busy_timeout)),
            busy_limit,
            checkpointer,
            send_log,
            closed: AtomicBool::new(false),
        };
        storage.initialize()?;
        // Sends of a process that died before they were moved into the
        // database are moved now.
        storage.recover_send_logs()?;
        Ok(storage)
    }

    /// The path the database was opened at.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The background WAL checkpoint of this storage's connection.
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.checkpointer
    }

    /// The query plan SQLite chooses for `sql` on this database, one line per
    /// step (the `detail` column of `EXPLAIN QUERY PLAN`).
    pub fn explain_query_plan(&self, sql: &str) -> Result<Vec<String>, EngineError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            // The plan does not depend on parameter values here (there are no
            // statistics to consult), so every parameter is bound to NULL.
            for index in 1..=stmt.parameter_count() {
                stmt.raw_bind_parameter(index, rusqlite::types::Null)?;
            }
            let mut rows = stmt.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = rows.next()? {
                plan.push(row.get::<_, String>(3)?);
            }
            Ok(plan)
        })
    }

    /// How many times SQLite compiled `sql` again while running it once per
    /// value of `runs`, every parameter bound to that value, inside a
    /// transaction that is rolled back. A statement compiled again on every
    /// run pays for its compilation on every call.
    pub fn recompilations(&self, sql: &str, runs: &[i64]) -> Result<i32, EngineError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let mut stmt = tx.prepare(sql)?;
            for &value in runs {
                for index in 1..=stmt.parameter_count() {
                    stmt.raw_bind_parameter(index, value)?;
                }
                let mut rows = stmt.raw_query();
                while rows.next()?.is_some() {}
            }
            Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
        })
    }

    /// Checks what the file is, creates the schema in an empty one, and sets
    /// the connection's pragmas.
    fn initialize(&mut self) -> SqlResult<()> {
        let path = self.path.clone();
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Nothing is written before the file is known to be ours or empty, so a
        // foreign database is never switched to WAL or otherwise touched.
        let identity = identify(conn, &path)?;
        // WAL lets readers proceed while one writer commits, and is a property of
        // the file that persists; it must be set outside any transaction.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(EngineError::Storage(format!(
                "cannot switch the database {path:?} to WAL mode (it stays in {mode} mode)"
            ))
            .into());
        }
        // With WAL, synchronous=NORMAL syncs at checkpoints rather than at every
        // commit: after a power loss or OS crash the last transactions may roll
        // back, but the database is never corrupted. A process crash loses
        // nothing. The fsync saved per commit is most of the cost of a write.
        // The WAL must hold a whole transaction (a burst of large payloads can
        // make it hundreds of megabytes), and SQLite never shrinks the file on its
        // own: journal_size_limit truncates it back when it is next reset.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -{CACHE_SIZE_KIB}; \
             PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};"
        ))?;
        if !matches!(identity, Identity::Ours) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have created or migrated the schema while
            // this one waited for the write lock, so look again under the lock.
            match identify(&tx, &path)? {
                Identity::Ours => {}
                Identity::Empty => {
                    tx.execute_batch(SCHEMA)?;
                    tx.execute_batch(flow::SCHEMA)?;
                    tx.execute_batch(BLOB_TABLES)?;
                    tx.execute_batch(send_log::SCHEMA)?;
                    tx.execute_batch(HELD_COLUMN)?;
                    tx.execute_batch(&format!(
                        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
                    ))?;
                }
                Identity::Older(version) => migrate(&tx, version)?,
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Appends a send of one copy of `template` to the send log, if the log
    /// takes it; its id. Without `reserve`, a log with no id left in its
    /// block does not take it either, so that the call never waits for the
    /// database.
    fn log_send(
        &self,
        template: &NewJob,
        payload: &[u8],
        now_ms: i64,
        reserve: bool,
    ) -> SqlResult<Option<i64>> {
        let Some(log) = self.send_log.as_deref() else {
            return Ok(None);
        };
        if !send_log::loggable(template) || !log.accepting() {
            return Ok(None);
        }
        let id = match log.take_id() {
            Some(id) => id,
            None if !reserve => return Ok(None),
            None => {
                let (first, last) =
                    self.write(|tx| send_log::reserve_ids(tx, send_log::ID_BLOCK))?;
                log.add_ids(first, last);
                match log.take_id() {
                    Some(id) => id,
                    None => return Ok(None),
                }
            }
        };
        let job = NewJob {
            payload: payload.to_vec(),
            ..template.clone()
        };
        Ok(log.append(id, now_ms, &job)?.then_some(id))
    }

    /// The connection, for a read outside a transaction, once this process's
    /// logged sends are in the database.
    pub(crate) fn reader(&self) -> SqlResult<MutexGuard<'_, Connection>> {
        if self.send_log.as_deref().is_some_and(SendLog::has_pending) {
            self.write(|_| Ok(()))?;
        }
        self.lock()
    }

    /// The connection, unless the storage was closed.
    pub(crate) fn lock(&self) -> SqlResult<MutexGuard<'_, Connection>> {
        // A panic while the lock was held dropped its transaction, which rolled
        // back, so the connection is still in a clean state.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Storage(format!(
                "the database {:?} was closed in this process",
                self.path
            ))
            .into());
        }
        Ok(conn)
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> SqlResult<T>,
    ) -> Result<T, EngineError> {
        // The sends this process logged are inserted first, by whichever of
        // its transactions comes next (see `send_log`).
        let log = self.send_log.as_deref();
        let moving = log.and_then(SendLog::lock_for_moving);
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(engine_error)?;
        let batch = match (log, &moving) {
            (Some(log), Some(_)) => log.take_pending(),
            _ => None,
        };
        if let Some(batch) = &batch {
            batch.insert(&tx)?;
        }
        let value = f(&tx)?;
        tx.commit().map_err(engine_error)?;
        if let (Some(log), Some(batch)) = (log, &batch) {
            log.moved(batch);
        }
        Ok(value)
    }

    /// Runs `f` on the connection, after this process's logged sends are
    /// moved into the database (see [`SqliteStorage::reader`]).
    pub(crate) fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> SqlResult<T>,
    ) -> Result<T, EngineError> {
        let conn = self.reader()?;
        Ok(f(&conn)?)
    }

    /// Runs `f` on the connection, unless the storage was closed.
    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> SqlResult<T>,
    ) -> Result<T, EngineError> {
        let mut conn = self.lock()?;
        Ok(f(&mut conn)?)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> SqlResult<T>,
    ) -> Result<T, EngineError> {
        // This process reads its own logged sends: they are moved first.
        let mut conn = self.reader()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(engine_error)?;
        let value = f(&tx)?;
        tx.commit().map_err(engine_error)?;
        Ok(value)
    }
}

fn duration_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The busy handler of a connection: retries a locked database with pauses
/// from [`BUSY_FIRST_PAUSE`] doubling up to [`BUSY_MAX_PAUSE`], for at most the
/// microseconds in `limit` from the first attempt.
fn busy_waiter(limit: Arc<AtomicU64>) -> impl FnMut(i32) -> bool + Send + 'static {
    let mut first_attempt = Instant::now();
    move |retries: i32| {
        // SQLite counts the retries of one wait from 0.
        if retries == 0 {
            first_attempt = Instant::now();
        }
        let limit = Duration::from_micros(limit.load(Ordering::Relaxed));
        let waited = first_attempt.elapsed();
        if waited >= limit {
            return false;
        }
        let doublings = u32::try_from(retries.clamp(0, 16)).unwrap_or(16);
        let pause = BUSY_FIRST_PAUSE
            .saturating_mul(1 << doublings)
            .min(BUSY_MAX_PAUSE)
            .min(limit - waited);
        std::thread::sleep(pause);
        true
    }
}

/// The body of [`Storage::claim`], inside the caller's transaction.
fn claim_in(
    tx: &Transaction<'_>,
    queues: &[String],
    limit: usize,
    owner: &str,
    lease_ms: i64,
    now_ms: i64,
) -> SqlResult<Vec<ClaimedJob>> {
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
    let lease_deadline_ms = now_ms.saturating_add(lease_ms);
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
            let attempt: i64 = row.get(0)?;
            Ok(ClaimedJob {
                id,
                token: attempt,
                attempt,
                task_name: row.get(1)?,
                queue: row.get(2)?,
                payload: row.get(3)?,
                timeout_ms: row.get(4)?,
                lease_deadline_ms,
                labels: row.get(5)?,
            })
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
fn payload_aside(tx: &Transaction<'_>, job_id: i64) -> SqlResult<Option<Vec<u8>>> {
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

/// Puts a running attempt back with `sql` (requeue or release); false, and
/// recorded as a stale `outcome`, if the token is not current.
fn put_back(
    tx: &Transaction<'_>,
    sql: &str,
    outcome: &str,
    job_id: i64,
    token: i64,
    now_ms: i64,
) -> SqlResult<bool> {
    let changed = tx
        .prepare_cached(sql)?
        .query_row(params![job_id, token, now_ms], |row| row.get::<_, i64>(0))
        .optional()?;
    match changed {
        None => refuse_stale(tx, job_id, token, outcome, now_ms)?,
        Some(code) if code == Status::Cancelled.code() => {
            flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
        }
        Some(_) => {}
    }
    Ok(changed.is_some())
}

/// Runs one of the give-back statements ([`RETURN_HELD_SQL`],
/// [`RETURN_UNSTARTED_SQL`]) on one job: pending again (cancelled if a cancel
/// was requested) with nothing counted; None if the statement did not apply.
fn give_back(
    tx: &Transaction<'_>,
    sql: &str,
    job_id: i64,
    token: i64,
    now_ms: i64,
) -> SqlResult<Option<FailOutcome>> {
    let returned = tx
        .prepare_cached(sql)?
        .query_row(params![job_id, token, now_ms], |row| row.get::<_, i64>(0))
        .optional()?;
    Ok(match returned {
        None => None,
        Some(code) if code == Status::Cancelled.code() => {
            flow::on_finished(tx, job_id, Status::Cancelled, now_ms)?;
            Some(FailOutcome::Cancelled)
        }
        Some(_) => Some(FailOutcome::Returned),
    })
}

/// The body of [`Storage::complete_many`], inside the caller's transaction.
fn complete_in(
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

/// Brings a database of schema `version` to [`SCHEMA_VERSION`] inside `tx`
/// (a `BEGIN IMMEDIATE` transaction): either all of it happens or none.
fn migrate(tx: &Transaction<'_>, version: i64) -> SqlResult<()> {
    if version == 2 {
        // Version 3 adds the tables of large payloads and results. The large
        // payloads of jobs that have not finished move there, because their
        // rows will still be rewritten by status changes; finished jobs keep
        // theirs in the row (readers take both), so that migrating a file
        // with many large results does not copy all of them.
        tx.execute_batch(BLOB_TABLES)?;
        tx.execute(
            concat!(
                "INSERT INTO job_payloads (job_id, data) SELECT id, payload FROM jobs \
             WHERE status IN (",
                status_code!(pending),
                ", ",
                status_code!(scheduled),
                ", ",
                status_code!(running),
                ", ",
                status_code!(waiting),
                ")",
                " AND length(payload) > ?1"
            ),
            [sql_limit(INLINE_BLOB_MAX_BYTES)],
        )?;
        tx.execute(
            "UPDATE jobs SET payload = x'' WHERE id IN (SELECT job_id FROM job_payloads)",
            [],
        )?;
    }
    // Version 4 adds the send logs' marks (to any older version).
    tx.execute_batch(send_log::SCHEMA)?;
    // Version 5 marks the jobs their supervisor holds. The running jobs of
    // the older version count as sent to a worker, as they did there.
    tx.execute_batch(HELD_COLUMN)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    Ok(())
}

/// Reads the identity of the file without writing to it.
fn identify(conn: &Connection, path: &str) -> SqlResult<Identity> {
    let read = || -> rusqlite::Result<(i64, i64, Vec<String>)> {
        let application_id: i64 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
        let user_version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
        let tables = stmt
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok((application_id, user_version, tables))
    };
    let not_ours = |reason: String| EngineError::NotOurDatabase {
        path: path.to_owned(),
        reason,
    };
    let (application_id, user_version, tables) = match read() {
        Ok(found) => found,
        Err(error) if error.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            return Err(not_ours("the file is not an SQLite database".to_owned()).into());
        }
        Err(error) => return Err(error.into()),
    };
    if application_id == APPLICATION_ID {
        if user_version == SCHEMA_VERSION {
            return Ok(Identity::Ours);
        }
        if (MIGRATABLE_SINCE..SCHEMA_VERSION).contains(&user_version) {
            return Ok(Identity::Older(user_version));
        }
        return Err(EngineError::SchemaVersion {
            path: path.to_owned(),
            found: user_version,
            expected: SCHEMA_VERSION,
        }
        .into());
    }
    if application_id != 0 {
        return Err(not_ours(format!(
            "it is an SQLite database of another application (application_id {application_id:#010x}, \
             stoker's is {APPLICATION_ID:#010x})"
        )).into());
    }
    if !tables.is_empty() {
        const SHOWN_TABLES: usize = 5;
        let mut shown = tables
            .iter()
            .take(SHOWN_TABLES)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if tables.len() > SHOWN_TABLES {
            shown.push_str(", ...");
        }
        return Err(not_ours(format!(
            "it is an SQLite database with {} table(s) ({shown}) but no stoker application_id",
            tables.len()
        ))
        .into());
    }
    if user_version != 0 {
        return Err(not_ours(format!(
            "it is an SQLite database with user_version {user_version} but no stoker application_id"
        ))
        .into());
    }
    Ok(Identity::Empty)
}

pub(crate) fn status_from_code(code: i64, column: usize) -> rusqlite::Result<Status> {
    Status::from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(column, code))
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    rows::job_from_row(&SqlRow(row))
}

pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Records an outcome refused for its stale token.
fn record_stale(
    tx: &Transaction<'_>,
    job_id: i64,
    token: i64,
    owner: &str,
    outcome: &str,
    now_ms: i64,
) -> SqlResult<()> {
    tx.prepare_cached(
        "INSERT INTO stale_outcomes (job_id, token, owner, outcome, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![job_id, token, owner, outcome, now_ms])?;
    Ok(())
}

/// Records an outcome that carries no owner of its own, naming the job's
/// current lease owner; a missing job is an error rather than a stale outcome.
fn refuse_stale(
    tx: &Transaction<'_>,
    job_id: i64,
    token: i64,
    outcome: &str,
    now_ms: i64,
) -> SqlResult<()> {
    let owner: Option<Option<String>> = tx
        .prepare_cached("SELECT lease_owner FROM jobs WHERE id = ?1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    let owner = owner
        .ok_or(EngineError::NotFound(job_id))?
        .unwrap_or_default();
    record_stale(tx, job_id, token, &owner, outcome, now_ms)
}

/// The statements of a failed attempt (see [`attempt::fail`]).
struct Attempt<'a, 'c>(&'a Transaction<'c>);

impl AttemptSteps for Attempt<'_, '_> {
    type Error = SqlError;

    fn failure_state(&mut self, job_id: i64) -> SqlResult<Option<FailureState>> {
        Ok(self
            .0
            .prepare_cached(&format!("SELECT {FAILURE_COLUMNS} FROM jobs WHERE id = ?1"))?
            .query_row([job_id], |row| failure_state_from_row(&SqlRow(row)))
            .optional()?)
    }

    fn record_stale(
        &mut self,
        job_id: i64,
        token: i64,
        owner: &str,
        outcome: &str,
        now_ms: i64,
    ) -> SqlResult<()> {
        record_stale(self.0, job_id, token, owner, outcome, now_ms)
    }

    fn record_error(
        &mut self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
        now_ms: i64,
    ) -> SqlResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO errors (job_id, attempt, kind, exc_type, message, traceback, exc_pickle, failed_ms, \
                 worker, usage) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
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
            .prepare_cached("UPDATE jobs SET usage = ?2 WHERE id = ?1")?
            .execute(params![job_id, report.usage])?;
        Ok(())
    }

    fn count_against_breaker(
        &mut self,
        job_id: i64,
        kind: FailureKind,
        now_ms: i64,
    ) -> SqlResult<()> {
        flow::on_attempt_failed(self.0, job_id, kind, now_ms)
    }

    fn finish(
        &mut self,
        job_id: i64,
        token: i64,
        status: Status,
        (failures, crashes): (i64, i64),
        now_ms: i64,
    ) -> SqlResult<()> {
        self.0.prepare_cached(FAILED_FINISH_SQL)?.execute(params![
            job_id,
            status.code(),
            now_ms,
            failures,
            crashes,
            token
        ])?;
        flow::on_finished(self.0, job_id, status, now_ms)
    }

    fn retry(
        &mut self,
        job_id: i64,
        token: i64,
        status: Status,
        eta_ms: i64,
        (failures, crashes): (i64, i64),
    ) -> SqlResult<()> {
        self.0.prepare_cached(FAILED_RETRY_SQL)?.execute(params![
            job_id,
            status.code(),
            eta_ms,
            failures,
            crashes,
            token
        ])?;
        Ok(())
    }

    /// Gives back an expired job its supervisor held, sent to no worker
    /// ([`RETURN_HELD_SQL`]); None if it is not one (its lease counts as a
    /// crash).
    fn return_held(
        &mut self,
        job_id: i64,
        token: i64,
        now_ms: i64,
    ) -> SqlResult<Option<FailOutcome>> {
        give_back(self.0, RETURN_HELD_SQL, job_id, token, now_ms)
    }
}

/// Ends a failed running attempt: `?2` is the final status (dead or
/// cancelled), `?4` and `?5` the failure and crash counts.
const FAILED_FINISH_SQL: &str = concat!(
    "UPDATE jobs SET status = ?2, finished_ms = ?3, failures = ?4, crashes = ?5, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = ?1 AND attempt = ?6 AND status = ",
    status_code!(running)
);

/// Puts a failed running attempt back: `?2` is pending or scheduled.
const FAILED_RETRY_SQL: &str = concat!(
    "UPDATE jobs SET status = ?2, eta_ms = ?3, failures = ?4, crashes = ?5, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = ?1 AND attempt = ?6 AND status = ",
    status_code!(running)
);

/// The row counts of the multi-row INSERT statements of [`insert_copies`],
/// largest first; a batch is cut into as many of the largest as fit, then of
/// the next. One statement opens a cursor on the table and on each of its
/// indexes and reads and writes the AUTOINCREMENT counter once, whatever its
/// row count, which costs more than writing one small row. Larger chunks save
/// more of that per row but make longer statements, each prepared once per
/// connection and kept in its statement cache (one entry per size).
const COPY_CHUNK_ROWS: [usize; 3] = [64, 8, 1];

/// Copies with a payload larger than this are stored one at a time by
/// [`flow::insert_job`], the path every other job takes. Writing a
/// large payload costs far more than the per-statement work a multi-row
/// statement saves, so only small rows gain from it.
const COPY_PAYLOAD_MAX_BYTES: usize = 1024;

// A multi-row statement keeps each payload in its job's row, so it must only
// take payloads that are not stored aside.
const _: () = assert!(COPY_PAYLOAD_MAX_BYTES <= INLINE_BLOB_MAX_BYTES);

/// The multi-row INSERT of `rows` copies: the template's values are the
/// parameters ?1 to ?15, shared by every row, and the payloads follow, one
/// per row.
fn copies_sql(rows: usize) -> &'static str {
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
const COPY_SHARED_PARAMS: usize = 15;

/// Stores one copy of `template` per payload inside `tx`, as
/// [`flow::insert_job`] would store each; their ids, in order.
///
/// Copies of a template with no per-job work (a uniqueness key, dependencies,
/// a rate-limit check at send) differ only in their payload, so runs of small
/// ones are written by multi-row statements; any other copy goes through
/// `insert_job`.
fn insert_copies(
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
        self.write(|tx| attempt::fail(&mut Attempt(tx), job_id, token, report, jitter, now_ms))
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
            attempt::reap(&mut Attempt(tx), expired, jitter, now_ms)
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

#[cfg(test)]
mod tests {
    use stoker_engine::model::Status;

    /// The SQL of this module writes status codes as literals; they must match.
    #[test]
    fn status_codes_match_the_sql_literals() {
        let codes: Vec<i64> = Status::ALL.iter().map(|status| status.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        for status in Status::ALL {
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
    }
}
