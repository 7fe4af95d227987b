//! Opening an engine from what the user named: a PostgreSQL URL or the path
//! of a SQLite file. This is the one module of stoker that names both
//! storages; everything else speaks to an [`Engine`] over `dyn Storage`.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use stoker_engine::{Clock, Engine, EngineError, SystemClock};

/// The kind of database an engine was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend's name as Python sees it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }

    /// The schema version this build reads and writes for the backend.
    pub(crate) fn schema_version(self) -> i64 {
        match self {
            Backend::Sqlite => stoker_sqlite::SCHEMA_VERSION,
            Backend::Postgres => stoker_postgres::PG_SCHEMA_VERSION,
        }
    }
}

/// An opened engine, with its backend and the target as it may be shown
/// (a PostgreSQL URL without its password).
pub(crate) struct Opened {
    pub(crate) engine: Engine,
    pub(crate) backend: Backend,
    pub(crate) shown: String,
}

/// Opens the database `target` names. Without a `clock`, a SQLite engine
/// reads the system clock and a PostgreSQL engine the server's;
/// `busy_timeout` applies to SQLite only.
pub(crate) fn open(
    target: &str,
    busy_timeout: Duration,
    clock: Option<Arc<dyn Clock>>,
) -> Result<Opened, EngineError> {
    if stoker_postgres::is_postgres_url(target) {
        return Ok(Opened {
            engine: stoker_postgres::open_engine(target, clock)?,
            backend: Backend::Postgres,
            shown: stoker_postgres::mask_password(target),
        });
    }
    let clock = clock.unwrap_or_else(|| Arc::new(SystemClock));
    Ok(Opened {
        engine: stoker_sqlite::open_engine(target, busy_timeout, clock)?,
        backend: Backend::Sqlite,
        shown: target.to_owned(),
    })
}

/// What the module holds for the storages at import: SQLite's process-wide
/// locks, installed before any database is opened (see
/// `stoker-sqlite/src/locks.rs`), and both schema versions.
pub(crate) fn init_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    stoker_sqlite::locks::install();
    m.add("SCHEMA_VERSION", stoker_sqlite::SCHEMA_VERSION)?;
    m.add("PG_SCHEMA_VERSION", stoker_postgres::PG_SCHEMA_VERSION)?;
    Ok(())
}
