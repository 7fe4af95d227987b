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
use stoker_engine::decide::attempt::{Attempt, AttemptSteps, Counts, ExpiredLease};
use stoker_engine::decide::{failure_state_from_row, FailureState, Purge, FAILURE_COLUMNS};
use stoker_engine::error::EngineError;
use stoker_engine::model::{
    ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureKind, FailureReport, JobFilter,
    JobRecord, NewJob, StaleOutcome, Status,
};
use stoker_engine::sql::*;
use stoker_engine::storage::backend::{self, Backend, GiveBack, JobSteps};
use stoker_engine::storage::{stored_aside, ClaimRequest, Storage, INLINE_BLOB_MAX_BYTES};
use stoker_engine::{status_code, unfinished_codes};
use stoker_engine::{Clock, Engine};

use crate::checkpoint::Checkpointer;
use crate::columns::SqlRow;
use crate::send_log::SendLog;
use stoker_engine::rows::{self, error_from_row, stale_from_row, ERROR_COLUMNS, STALE_COLUMNS};

pub mod checkpoint;
mod columns;
pub mod flow;
pub mod locks;
mod schedules;
mod schema;
pub mod send_log;
mod sql;
mod storage;
mod transitions;

pub use schema::*;
pub use sql::*;
use transitions::*;

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

/// An error of this storage: SQLite's own, or the engine's.
#[derive(Debug)]
pub enum SqlError {
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
pub type SqlResult<T> = Result<T, SqlError>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use stoker_engine::model::Status;

    /// SQLite numbers `$1`-style parameters in the order they first appear,
    /// so the statements written once for both backends must name them in
    /// that order to be bound by position (see `stoker_engine::sql`).
    #[test]
    fn shared_statements_number_their_parameters_in_order() {
        let storage = SqliteStorage::open(":memory:", Duration::from_secs(1)).unwrap();
        let mut statements: Vec<String> = SHARED_STATEMENTS.iter().map(|s| s.to_string()).collect();
        statements.extend(purge_references("= $1"));
        storage
            .with_conn(|conn| {
                for sql in &statements {
                    let stmt = conn.prepare(sql)?;
                    assert!(stmt.parameter_count() > 0, "{sql}");
                    for index in 1..=stmt.parameter_count() {
                        let expected = format!("${index}");
                        assert_eq!(stmt.parameter_name(index), Some(expected.as_str()), "{sql}");
                    }
                }
                Ok(())
            })
            .unwrap();
    }

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
