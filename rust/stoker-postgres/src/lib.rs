//! The PostgreSQL implementation of [`Storage`]: one database shared by the
//! supervisors and clients of many hosts.
//!
//! Transactions run at READ COMMITTED, where every statement sees what was
//! committed before it started, and what SQLite gets from `BEGIN IMMEDIATE`
//! (one writer at a time) is obtained here with row locks taken where a
//! decision depends on rows another transaction may change at the same time:
//! - a claim leases rows with `FOR UPDATE SKIP LOCKED` in one statement, so
//!   claimers never wait for each other and never take the same row;
//! - every outcome writes with `WHERE id = .. AND attempt = token AND status =
//!   running`, so a stale writer changes nothing (the attempt is bumped by
//!   every claim, so it names the claim, and with it its owner);
//! - a failure locks the job row (`FOR UPDATE`) before it reads the retry
//!   state; dependency resolution locks the dependent row before counting its
//!   unfinished dependencies; an enqueue locks the rows it depends on (`FOR
//!   SHARE`), so a completion and a new dependent can never miss each other;
//! - claims of a database with limits lock the `flow_limits` rows, which
//!   serialises exactly the claims whose admission depends on shared counts
//!   and token buckets.
//!
//! A transaction that fails with a serialization failure, a deadlock or a
//! unique-key race is retried from the start (see [`RETRIES`]).
//!
//! Connections come from a small pool; each keeps its prepared statements
//! (keyed by their SQL text), so a hot statement is parsed once per
//! connection. A broken connection is dropped and the next call opens a new
//! one, so a restarted server costs the calls in flight, not the engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, Statement};

use stoker_engine::clock::{Clock, SystemClock};
use stoker_engine::codes::DEAD;
use stoker_engine::decide::attempt::{self, give_back_each, AttemptSteps, ExpiredLease};
use stoker_engine::decide::{failure_state_from_row, purgeable, FailureState, FAILURE_COLUMNS};
use stoker_engine::error::EngineError;
use stoker_engine::model::{
    CancelOutcome, ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureKind, FailureReport,
    JobFilter, JobRecord, NewJob, StaleOutcome, Status,
};
use stoker_engine::status_code;
use stoker_engine::storage::{stored_aside, ClaimRequest, Jitter, Storage, WakeListener};
use stoker_engine::Engine;

mod columns;
pub mod flow;
pub mod schema;
pub mod wake;

use crate::columns::PgRow;
use stoker_engine::rows::{self, error_from_row, stale_from_row, ERROR_COLUMNS, STALE_COLUMNS};

pub use schema::{PG_APPLICATION, PG_SCHEMA_VERSION};

/// How many times a transaction that lost a race (serialization failure,
/// deadlock, unique-key conflict) is run again before the error is returned
/// as [`EngineError::Busy`]. Each retry re-reads everything, so a few are
/// enough; more would only hide a livelock.
const RETRIES: u32 = 20;

/// Idle connections kept per engine. More connections let more threads of
/// one process work at once; each costs a server backend (a few MB).
const POOL_IDLE_MAX: usize = 8;

/// How long opening a connection may take before it is an error. Long enough
/// for a loaded server; short enough that an unreachable host is reported
/// while the caller still waits for an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many scheduled jobs are promoted to pending by one claim (as
/// for SQLite): a bound on the work one claim does.
const PROMOTE_BATCH: i64 = 1000;

/// The channel name prefix of wake-up notifications; the schema name follows,
/// so that engines on different schemas of one database do not wake each
/// other.
const CHANNEL_PREFIX: &str = "stoker_wake_";

/// How often the server clock offset is measured again. The offset drifts
/// only as fast as the host's clock does (parts per million), so refreshing
/// rarely is enough; a refresh costs one round trip.
const CLOCK_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// The columns of a [`JobRecord`], in the order [`job_from_row`] reads them,
/// from `jobs`. An empty payload or result in the row stands for one stored
/// aside (see [`stoker_engine::storage::INLINE_BLOB_MAX_BYTES`]), read from its
/// table; `octet_length` does not fetch a value stored out of line.
pub(crate) const JOB_COLUMNS: &str = "id, task_name, queue, priority, status, \
     CASE WHEN octet_length(payload) = 0 THEN \
     coalesce((SELECT data FROM job_payloads WHERE job_id = jobs.id), payload) ELSE payload END, \
     attempt, failures, crashes, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, \
     created_ms, eta_ms, started_ms, finished_ms, lease_owner, lease_deadline_ms, cancel_requested, \
     CASE WHEN octet_length(result) = 0 THEN \
     coalesce((SELECT data FROM job_results WHERE job_id = jobs.id), result) ELSE result END, \
     result_expires_ms, replayed_from, labels, progress, usage, unique_key, expires_ms";

/// Moves the scheduled jobs whose eta has come to pending, earliest first;
/// rows another claimer is promoting are skipped, not waited for.
pub const PROMOTE_DUE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(pending),
    " WHERE id IN \
     (SELECT id FROM jobs WHERE status = ",
    status_code!(scheduled),
    " AND eta_ms <= $1 ORDER BY eta_ms LIMIT $2 FOR UPDATE SKIP LOCKED)"
);

/// The claim of one queue: one statement that locks exactly `$2` runnable
/// rows (skipping those another claimer holds) in priority-then-id order
/// through the partial index of pending jobs, and leases them. The CTE is
/// materialised so that the planner cannot re-run the locking subquery for
/// every row of the update (which could lease more rows than the limit).
pub const CLAIM_ONE_QUEUE_SQL: &str = concat!("WITH picked AS MATERIALIZED ( \
     SELECT id FROM jobs WHERE status = ", status_code!(pending), " AND queue = $1 ORDER BY priority DESC, id LIMIT $2 \
     FOR UPDATE SKIP LOCKED) \
     UPDATE jobs j SET status = ", status_code!(running), ", attempt = j.attempt + 1, started_ms = $3, lease_owner = $4, \
     lease_deadline_ms = $5, cancel_requested = 0, progress = NULL, held = 0 \
     FROM picked WHERE j.id = picked.id \
     RETURNING j.id, j.priority, j.attempt, j.task_name, j.queue, j.payload, j.timeout_ms, j.labels");

/// The claim of several queues at once; as [`CLAIM_ONE_QUEUE_SQL`].
pub const CLAIM_QUEUES_SQL: &str = concat!("WITH picked AS MATERIALIZED ( \
     SELECT id FROM jobs WHERE status = ", status_code!(pending), " AND queue = ANY($1) ORDER BY priority DESC, id LIMIT $2 \
     FOR UPDATE SKIP LOCKED) \
     UPDATE jobs j SET status = ", status_code!(running), ", attempt = j.attempt + 1, started_ms = $3, lease_owner = $4, \
     lease_deadline_ms = $5, cancel_requested = 0, progress = NULL, held = 0 \
     FROM picked WHERE j.id = picked.id \
     RETURNING j.id, j.priority, j.attempt, j.task_name, j.queue, j.payload, j.timeout_ms, j.labels");

/// Completes a batch of attempts whose tokens are current, in one statement.
pub const COMPLETE_SQL: &str = concat!("UPDATE jobs j SET status = ", status_code!(complete), ", result = c.result, finished_ms = $5, \
     usage = c.usage, result_expires_ms = $5 + j.result_ttl_ms, lease_owner = NULL, lease_deadline_ms = NULL \
     FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::text[]) AS c (id, token, result, usage) \
     WHERE j.id = c.id AND j.attempt = c.token AND j.status = ", status_code!(running), " RETURNING j.id");

/// Renews a batch of leases whose owner and token are current.
pub const HEARTBEAT_SQL: &str = concat!(
    "UPDATE jobs j SET lease_deadline_ms = $4 \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS l (id, token) \
     WHERE j.id = l.id AND j.attempt = l.token AND j.status = ",
    status_code!(running),
    " AND j.lease_owner = $3 \
     RETURNING j.id, j.cancel_requested"
);

/// The running jobs whose own lease ran out, oldest deadline first, then
/// lowest id (the order SQLite's index gives).
pub const EXPIRED_SQL: &str = concat!(
    "SELECT id, attempt, lease_owner, lease_deadline_ms FROM jobs \
     WHERE status = ",
    status_code!(running),
    " AND lease_deadline_ms < $1 ORDER BY lease_deadline_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED"
);

/// The running jobs of supervisors whose registration lease ran out.
pub const ORPHANED_SQL: &str = concat!(
    "SELECT j.id, j.attempt, j.lease_owner, s.lease_until_ms \
     FROM supervisors s JOIN jobs j ON j.lease_owner = s.owner AND j.status = ",
    status_code!(running),
    " \
     WHERE s.lease_until_ms < $1 ORDER BY j.id LIMIT $2 FOR UPDATE OF j SKIP LOCKED"
);

/// The statements whose cost must not grow with the number of jobs, by name;
/// tests check their plans.
pub const HOT_STATEMENTS: &[(&str, &str)] = &[
    ("promote_due", PROMOTE_DUE_SQL),
    ("claim_one_queue", CLAIM_ONE_QUEUE_SQL),
    ("expired", EXPIRED_SQL),
];

/// A failure inside a transaction: the engine's own, or the database's (which
/// may be a lost race worth retrying).
#[derive(Debug)]
pub(crate) enum PgError {
    Engine(EngineError),
    Db(postgres::Error),
    /// The transaction could not even begin: nothing was written, so it may
    /// run again on a fresh connection (the pooled one was broken, for
    /// example by a server restart).
    Begin(postgres::Error),
}

impl From<EngineError> for PgError {
    fn from(error: EngineError) -> Self {
        PgError::Engine(error)
    }
}

impl From<postgres::Error> for PgError {
    fn from(error: postgres::Error) -> Self {
        PgError::Db(error)
    }
}

pub(crate) type PgResult<T> = Result<T, PgError>;

/// Whether the error is a lost race that a new run of the transaction can win.
fn is_retryable(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::UNIQUE_VIOLATION
    )
}

/// A connection with its prepared statements.
struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// One transaction on a pooled connection, with cached statements.
pub(crate) struct Tx<'a> {
    tx: postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    /// Set when the transaction made a job runnable; the commit then wakes
    /// idle supervisors.
    pub(crate) wake: bool,
}

pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    fn statement(&mut self, sql: &str) -> PgResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(&mut self, sql: &str, params: &Params<'_>) -> PgResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.tx.query(&statement, params)?)
    }

    pub(crate) fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> PgResult<Option<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.tx.query_opt(&statement, params)?)
    }

    pub(crate) fn query_one(&mut self, sql: &str, params: &Params<'_>) -> PgResult<Row> {
        let statement = self.statement(sql)?;
        Ok(self.tx.query_one(&statement, params)?)
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &Params<'_>) -> PgResult<u64> {
        let statement = self.statement(sql)?;
        Ok(self.tx.execute(&statement, params)?)
    }

    /// Runs statements without parameters or results (DDL), unprepared.
    pub(crate) fn batch(&mut self, sql: &str) -> PgResult<()> {
        Ok(self.tx.batch_execute(sql)?)
    }
}

/// The pool and the identity of the server, shared with the server clock and
/// the listener.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The URL with its password masked, for messages.
    pub(crate) shown: String,
    /// `host:port` of the server, for messages.
    pub(crate) endpoint: String,
    pool: Mutex<Vec<PgConnBox>>,
}

/// A pooled connection; boxed so that the pool's `Debug` stays short.
struct PgConnBox(Box<PgConn>);

impl std::fmt::Debug for PgConnBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgConn")
    }
}

impl Shared {
    /// Opens a new connection.
    pub(crate) fn connect(&self) -> Result<Client, EngineError> {
        self.config.connect(NoTls).map_err(|error| {
            EngineError::Storage(format!(
                "cannot connect to the PostgreSQL server at {} ({}): {}",
                self.endpoint,
                self.shown,
                describe(&error)
            ))
        })
    }

    fn checkout(&self) -> Result<Box<PgConn>, EngineError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(conn) if !conn.0.client.is_closed() => Ok(conn.0),
            _ => Ok(Box::new(PgConn {
                client: self.connect()?,
                statements: HashMap::new(),
            })),
        }
    }

    fn checkin(&self, conn: Box<PgConn>) {
        if conn.client.is_closed() {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_IDLE_MAX {
            pool.push(PgConnBox(conn));
        }
    }

    /// The error of a failed database call, in the engine's terms.
    fn engine_error(&self, error: &postgres::Error, attempts: u32) -> EngineError {
        if is_retryable(error) {
            return EngineError::Busy(format!(
                "PostgreSQL at {}: a transaction lost a race with another writer {attempts} times in a row: {}",
                self.endpoint,
                describe(error)
            ));
        }
        if error.is_closed() || error.as_db_error().is_none() {
            return EngineError::Storage(format!(
                "lost the connection to the PostgreSQL server at {}: {}",
                self.endpoint,
                describe(error)
            ));
        }
        EngineError::Storage(format!(
            "PostgreSQL error at {}: {}",
            self.endpoint,
            describe(error)
        ))
    }

    /// Runs `f` in one transaction, again from the start after a lost race.
    pub(crate) fn transaction<T>(
        &self,
        channel: &str,
        mut f: impl FnMut(&mut Tx<'_>) -> PgResult<T>,
    ) -> Result<T, EngineError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut conn = self.checkout()?;
            let outcome = run_once(&mut conn, channel, &mut f);
            if let Err(PgError::Begin(_)) = outcome {
                // A connection that cannot begin is broken, and so, most
                // likely, are the other idle ones (a restarted server): drop
                // them all rather than fail once per pooled connection.
                self.pool
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            } else {
                // A connection whose transaction failed half-way was rolled
                // back by the drop of the transaction, so it can serve again
                // unless closed.
                self.checkin(conn);
            }
            match outcome {
                Ok(value) => return Ok(value),
                Err(PgError::Engine(error)) => return Err(error),
                Err(PgError::Db(error)) if is_retryable(&error) && attempts < RETRIES => {
                    // A short random pause lets the winner of the race finish.
                    std::thread::sleep(Duration::from_micros(fastrand::u64(100..2000)));
                }
                Err(PgError::Db(error)) => return Err(self.engine_error(&error, attempts)),
                Err(PgError::Begin(error)) if attempts < 2 => {
                    // The broken connection was not put back; the next round
                    // takes or opens another.
                    let _ = error;
                }
                Err(PgError::Begin(error)) => return Err(self.engine_error(&error, attempts)),
            }
        }
    }
}

fn run_once<T>(
    conn: &mut PgConn,
    channel: &str,
    f: &mut impl FnMut(&mut Tx<'_>) -> PgResult<T>,
) -> PgResult<T> {
    let PgConn { client, statements } = conn;
    let tx = client.transaction().map_err(PgError::Begin)?;
    let mut tx = Tx {
        tx,
        statements,
        wake: false,
    };
    let value = f(&mut tx)?;
    if tx.wake {
        // NOTIFY is transactional (sent at commit) and identical notifications
        // of one transaction are sent once, so this is one wake-up per
        // transaction however many jobs it made runnable.
        tx.execute("SELECT pg_notify($1, '')", &[&channel])?;
    }
    tx.tx.commit()?;
    Ok(value)
}

/// The message of a database error, with its detail and hint when present.
pub(crate) fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// An engine over the PostgreSQL database at `url`; without a `clock`, it
/// follows the server's clock (see [`ServerClock`]).
pub fn open_engine(url: &str, clock: Option<Arc<dyn Clock>>) -> Result<Engine, EngineError> {
    let storage = PostgresStorage::open(url)?;
    let clock: Arc<dyn Clock> = match clock {
        Some(clock) => clock,
        None => Arc::new(ServerClock::new(&storage, Arc::new(SystemClock))?),
    };
    Ok(Engine::new(Box::new(storage), clock))
}

/// Whether `target` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(target: &str) -> bool {
    target.starts_with("postgresql://") || target.starts_with("postgres://")
}

/// The URL with its password replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// Job state in one PostgreSQL database (in the schema the connection's
/// `search_path` names first).
#[derive(Debug)]
pub struct PostgresStorage {
    pub(crate) shared: Arc<Shared>,
    /// The NOTIFY channel of this schema.
    pub(crate) channel: String,
}

impl PostgresStorage {
    /// Connects to the database at `url`, creates the schema in an empty one
    /// and checks that a non-empty one is stoker's, of this schema version.
    pub fn open(url: &str) -> Result<Self, EngineError> {
        let shown = mask_password(url);
        let mut config: Config = url.parse().map_err(|error: postgres::Error| {
            EngineError::invalid(format!(
                "invalid PostgreSQL URL {shown:?}: {}",
                describe(&error)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("stoker");
        }
        let host = config
            .get_hosts()
            .first()
            .map(|host| match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_owned());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shared = Arc::new(Shared {
            config,
            shown,
            endpoint: format!("{host}:{port}"),
            pool: Mutex::new(Vec::new()),
        });
        let schema = schema::initialize(&shared)?;
        Ok(Self {
            shared,
            channel: format!("{CHANNEL_PREFIX}{schema}"),
        })
    }

    /// The URL it was opened with, password masked.
    pub fn url(&self) -> &str {
        &self.shared.shown
    }

    /// The NOTIFY channel on which this schema's wake-ups are sent.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> PgResult<T>,
    ) -> Result<T, EngineError> {
        self.shared.transaction(&self.channel, f)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> PgResult<T>,
    ) -> Result<T, EngineError> {
        self.shared.transaction(&self.channel, f)
    }

    /// The plan PostgreSQL chooses for `sql` (`EXPLAIN` of a generic plan,
    /// every parameter unknown), one line per step.
    pub fn explain(&self, sql: &str) -> Result<Vec<String>, EngineError> {
        self.read(|tx| {
            tx.batch("SET LOCAL plan_cache_mode = force_generic_plan")?;
            let name = format!("stoker_explain_{}", fastrand::u32(..));
            tx.batch(&format!("PREPARE {name} AS {sql}"))?;
            let count = sql.matches('$').count();
            let nulls = vec!["NULL"; count].join(", ");
            let args = if count == 0 {
                String::new()
            } else {
                format!("({nulls})")
            };
            let rows = tx.tx.query(&format!("EXPLAIN EXECUTE {name}{args}"), &[])?;
            tx.batch(&format!("DEALLOCATE {name}"))?;
            rows.iter()
                .map(|row| Ok(row.try_get::<_, String>(0)?))
                .collect()
        })
    }

    /// The server's clock, in milliseconds since the epoch.
    pub fn server_time_ms(&self) -> Result<i64, EngineError> {
        server_time_ms(&self.shared, &self.channel)
    }
}

fn server_time_ms(shared: &Shared, channel: &str) -> Result<i64, EngineError> {
    shared.transaction(channel, |tx| {
        let row = tx.query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )?;
        Ok(row.try_get(0)?)
    })
}

/// The engine clock of a PostgreSQL engine: the host's clock corrected by its
/// measured offset to the server's `clock_timestamp()`, so that every lease
/// and eta is judged on one clock for all hosts, however wrong their own
/// clocks are. The offset is measured when the engine opens and again every
/// [`CLOCK_SYNC_INTERVAL`]; a failed measurement keeps the last offset.
#[derive(Debug)]
pub struct ServerClock {
    local: Arc<dyn Clock>,
    shared: Arc<Shared>,
    channel: String,
    state: Mutex<(i64, Instant)>,
}

impl ServerClock {
    /// A clock that follows the server of `storage`, measured against `local`.
    pub fn new(storage: &PostgresStorage, local: Arc<dyn Clock>) -> Result<Self, EngineError> {
        let offset = measure_offset(&storage.shared, &storage.channel, &*local)?;
        Ok(Self {
            local,
            shared: Arc::clone(&storage.shared),
            channel: storage.channel.clone(),
            state: Mutex::new((offset, Instant::now())),
        })
    }

    /// The last measured offset of the server's clock to the local one.
    pub fn offset_ms(&self) -> i64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

fn measure_offset(shared: &Shared, channel: &str, local: &dyn Clock) -> Result<i64, EngineError> {
    let before = local.now_ms();
    let server = server_time_ms(shared, channel)?;
    let after = local.now_ms();
    // The server read its clock somewhere in the round trip; the middle of it
    // is off by at most half the round trip.
    Ok(server - (before + (after - before) / 2))
}

impl Clock for ServerClock {
    fn now_ms(&self) -> i64 {
        let stale = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.1.elapsed() >= CLOCK_SYNC_INTERVAL
        };
        if stale {
            let measured = measure_offset(&self.shared, &self.channel, &*self.local);
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Ok(offset) = measured {
                state.0 = offset;
            }
            // Even a failed measurement waits for the next interval, so an
            // unreachable server does not cost a connection attempt per read.
            state.1 = Instant::now();
        }
        self.local.now_ms() + self.offset_ms()
    }
}

// --- rows ----------------------------------------------------------------------

pub(crate) fn status_of(code: i64) -> PgResult<Status> {
    Status::from_code(code).ok_or_else(|| {
        PgError::Engine(EngineError::Storage(format!(
            "the database holds an unknown job status code {code}"
        )))
    })
}

fn job_from_row(row: &Row) -> PgResult<JobRecord> {
    rows::job_from_row(&PgRow(row))
}

pub(crate) fn sql_count(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Records an outcome refused for its stale token.
fn record_stale(
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
fn refuse_stale(
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
struct Attempt<'a, 'c>(&'a mut Tx<'c>);

impl AttemptSteps for Attempt<'_, '_> {
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

    fn record_stale(
        &mut self,
        job_id: i64,
        token: i64,
        owner: &str,
        outcome: &str,
        now_ms: i64,
    ) -> PgResult<()> {
        record_stale(self.0, job_id, token, owner, outcome, now_ms)
    }

    fn record_error(
        &mut self,
        job_id: i64,
        token: i64,
        report: &FailureReport,
        now_ms: i64,
    ) -> PgResult<()> {
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

    fn count_against_breaker(
        &mut self,
        job_id: i64,
        kind: FailureKind,
        now_ms: i64,
    ) -> PgResult<()> {
        flow::on_attempt_failed(self.0, job_id, kind, now_ms)
    }

    fn finish(
        &mut self,
        job_id: i64,
        token: i64,
        status: Status,
        (failures, crashes): (i64, i64),
        now_ms: i64,
    ) -> PgResult<()> {
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

    fn retry(
        &mut self,
        job_id: i64,
        token: i64,
        status: Status,
        eta_ms: i64,
        (failures, crashes): (i64, i64),
    ) -> PgResult<()> {
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
    fn return_held(
        &mut self,
        job_id: i64,
        token: i64,
        now_ms: i64,
    ) -> PgResult<Option<FailOutcome>> {
        give_back(self.0, RETURN_HELD_SQL, job_id, token, now_ms)
    }
}

/// Ends a failed running attempt: `$2` is the final status (dead or
/// cancelled), `$4` and `$5` the failure and crash counts.
const FAILED_FINISH_SQL: &str = concat!(
    "UPDATE jobs SET status = $2, finished_ms = $3, failures = $4, crashes = $5, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = $1 AND attempt = $6 AND status = ",
    status_code!(running)
);

/// Puts a failed running attempt back: `$2` is pending or scheduled.
const FAILED_RETRY_SQL: &str = concat!(
    "UPDATE jobs SET status = $2, eta_ms = $3, failures = $4, crashes = $5, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = $1 AND attempt = $6 AND status = ",
    status_code!(running)
);

/// An expired lease read as `EXPIRED_SQL` or `ORPHANED_SQL` (id, attempt,
/// owner, deadline).
fn expired_lease(row: &Row, orphaned: bool) -> PgResult<ExpiredLease> {
    Ok(ExpiredLease {
        job_id: row.try_get(0)?,
        token: row.try_get(1)?,
        owner: row.try_get(2)?,
        deadline_ms: row.try_get(3)?,
        orphaned,
    })
}

fn claimed_from_row(row: &Row, lease_deadline_ms: i64) -> PgResult<(i64, ClaimedJob)> {
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
fn in_claim_order(mut claimed: Vec<(i64, ClaimedJob)>) -> Vec<ClaimedJob> {
    claimed.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    claimed.into_iter().map(|(_, job)| job).collect()
}

/// Puts a running attempt back to pending; a job whose cancel was requested
/// ends cancelled rather than going back, so the request is never lost.
const REQUEUE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN 5 ELSE 0 END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN $3 ELSE finished_ms END, \
     eta_ms = $3, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $1 AND attempt = $2 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Undoes a claim whose job never started: as [`REQUEUE_SQL`], and the
/// attempt is taken back, so the job reads as if it had never been claimed.
/// The token was never handed to a worker, so no outcome can carry it.
const RELEASE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN 5 ELSE 0 END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN $3 ELSE finished_ms END, \
     started_ms = CASE attempt WHEN 1 THEN NULL ELSE started_ms END, \
     attempt = attempt - 1, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $1 AND attempt = $2 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Marks ($4 = 1) or unmarks ($4 = 0) running jobs their owner ($3) holds,
/// sent to no worker, whose tokens are current.
const MARK_HELD_SQL: &str = concat!(
    "UPDATE jobs j SET held = $4 \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS h (id, token) \
     WHERE j.id = h.id AND j.attempt = h.token AND j.status = ",
    status_code!(running),
    " AND j.lease_owner = $3"
);

/// A give-back statement: pending again (cancelled if a cancel was
/// requested), no failure or crash counted, the lease dropped, for the job
/// ($1) still running the attempt ($2) when `$condition` holds.
macro_rules! give_back_sql {
    ($condition:literal) => {
        concat!(
            concat!(
                "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN 5 ELSE 0 END, \
             finished_ms = CASE cancel_requested WHEN 1 THEN $3 ELSE finished_ms END, \
             eta_ms = $3, lease_owner = NULL, lease_deadline_ms = NULL, held = 0 \
             WHERE id = $1 AND attempt = $2 AND status = ",
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
/// the token may still be alive, and the next claim must give a token it has
/// never seen.
const RETURN_HELD_SQL: &str = give_back_sql!("held = 1");

/// Gives back an expired job that its dead supervisor's workers never
/// started (see [`Storage::return_unstarted`]), as [`RETURN_HELD_SQL`] does.
const RETURN_UNSTARTED_SQL: &str = give_back_sql!("lease_deadline_ms < $3");

/// Runs one of the give-back statements ([`RETURN_HELD_SQL`],
/// [`RETURN_UNSTARTED_SQL`]) on one job; None if it did not apply.
fn give_back(
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

fn put_back(
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
fn claim_in(
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
fn fill_payloads_aside(tx: &mut Tx<'_>, claimed: &mut [ClaimedJob]) -> PgResult<()> {
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
fn complete_in(tx: &mut Tx<'_>, completions: &[Completion], now_ms: i64) -> PgResult<Vec<bool>> {
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
                &mut Attempt(tx),
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
            attempt::reap(&mut Attempt(tx), expired, jitter, now_ms)
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

/// What a wake-up listener needs: how to connect, and the channel to LISTEN on.
#[derive(Debug, Clone)]
pub struct WakeSource {
    pub(crate) shared: Arc<Shared>,
    pub(crate) channel: String,
}

impl WakeSource {
    /// Opens a new connection to the server of the storage.
    pub fn connect(&self) -> Result<Client, EngineError> {
        self.shared.connect()
    }

    /// The NOTIFY channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

#[cfg(test)]
mod tests {
    use super::mask_password;

    #[test]
    fn passwords_are_masked_in_urls() {
        assert_eq!(
            mask_password("postgresql://user:secret@host:5432/db"),
            "postgresql://user:***@host:5432/db"
        );
        assert_eq!(
            mask_password("postgresql://user@host/db"),
            "postgresql://user@host/db"
        );
        assert_eq!(
            mask_password("postgres://u:p%40ss@h/db?sslmode=disable"),
            "postgres://u:***@h/db?sslmode=disable"
        );
        assert_eq!(mask_password("postgres://h/db"), "postgres://h/db");
    }
}
