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
use stoker_engine::decide::attempt::{Attempt, AttemptSteps, Counts, ExpiredLease};
use stoker_engine::decide::dependents;
use stoker_engine::decide::{failure_state_from_row, FailureState, Purge, FAILURE_COLUMNS};
use stoker_engine::error::EngineError;
use stoker_engine::model::{
    ClaimedJob, Completion, ErrorRecord, FailOutcome, FailureKind, FailureReport, JobFilter,
    JobRecord, NewJob, StaleOutcome, Status,
};
use stoker_engine::sql::*;
use stoker_engine::status_code;
use stoker_engine::storage::backend::{self, Backend, GiveBack, JobSteps};
use stoker_engine::storage::{stored_aside, ClaimRequest, Storage, WakeListener};
use stoker_engine::Engine;

mod clock;
mod columns;
mod connection;
pub mod flow;
mod schedules;
pub mod schema;
mod sql;
mod storage;
mod transitions;
pub mod wake;

pub use clock::*;
pub use connection::*;
pub use sql::*;
use transitions::*;

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
