//! Shared fixtures of the engine's integration tests: a temporary directory,
//! an engine on a manual clock over either backend, and the
//! [`backend_tests!`] macro that runs one test body on both.
//!
//! PostgreSQL tests need a server: `STOKER_PG_URL` names it (`make test`
//! starts one). Each test works in a fresh schema of that database, dropped
//! at the end. Without the variable they are skipped, unless
//! `STOKER_REQUIRE_PG=1`, when they fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stoker_engine::{
    Clock, Completion, Engine, EngineError, FailureKind, FailureReport, ManualClock, NewJob,
};

/// The time the manual clock starts at: an arbitrary realistic epoch time.
pub const START_MS: i64 = 1_700_000_000_000;

/// The busy timeout of test engines; tests never contend, so it only matters
/// if something is badly wrong.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "stoker-engine-test-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            fastrand::u64(..)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The storage implementations the contract tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An engine over `backend`'s database at `target` (a file path or a URL),
/// reading `clock`.
pub fn open_engine(
    backend: Backend,
    target: &str,
    clock: Arc<dyn Clock>,
) -> Result<Engine, EngineError> {
    match backend {
        Backend::Sqlite => stoker_sqlite::open_engine(target, BUSY_TIMEOUT, clock),
        Backend::Postgres => stoker_postgres::open_engine(target, Some(clock)),
    }
}

/// The server URL for PostgreSQL tests, or `None` to skip them; panics when
/// PostgreSQL is required (`STOKER_REQUIRE_PG=1`) and no URL is given.
pub fn pg_url() -> Option<String> {
    match std::env::var("STOKER_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("STOKER_REQUIRE_PG").as_deref() == Ok("1") {
                panic!(
                    "STOKER_REQUIRE_PG=1 but STOKER_PG_URL is not set: PostgreSQL tests cannot run"
                );
            }
            eprintln!("skipped: set STOKER_PG_URL to run the PostgreSQL tests");
            None
        }
    }
}

/// A fresh, empty schema in the test database, dropped when this is dropped.
pub struct PgSchema {
    pub base_url: String,
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Option<Self> {
        let base_url = pg_url()?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            fastrand::u32(..)
        );
        let mut client = postgres::Client::connect(&base_url, postgres::NoTls)
            .unwrap_or_else(|error| panic!("cannot connect to STOKER_PG_URL: {error}"));
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        Some(Self { base_url, name })
    }

    /// The URL of the test database with this schema first in the search path.
    pub fn url(&self) -> String {
        let separator = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.base_url, self.name
        )
    }

    /// A plain connection working in this schema.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.base_url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

/// An engine over a fresh database with a manual clock at [`START_MS`].
pub struct Fixture {
    pub engine: Engine,
    pub clock: ManualClock,
    pub dir: TempDir,
    pub backend: Backend,
    /// The path or URL the engine was opened at.
    pub target: String,
    pub schema: Option<PgSchema>,
}

impl Fixture {
    /// A SQLite fixture.
    pub fn new() -> Self {
        Self::sqlite()
    }

    pub fn sqlite() -> Self {
        let dir = TempDir::new();
        let target = dir.file("jobs.db").display().to_string();
        Self::open(Backend::Sqlite, dir, target, None)
    }

    /// A PostgreSQL fixture in a fresh schema; `None` when skipped.
    pub fn postgres() -> Option<Self> {
        let schema = PgSchema::new()?;
        let target = schema.url();
        Some(Self::open(
            Backend::Postgres,
            TempDir::new(),
            target,
            Some(schema),
        ))
    }

    /// A fixture of `backend`; `None` when PostgreSQL tests are skipped.
    pub fn of(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres(),
        }
    }

    fn open(backend: Backend, dir: TempDir, target: String, schema: Option<PgSchema>) -> Self {
        let clock = ManualClock::new(START_MS);
        let engine = open_engine(backend, &target, Arc::new(clock.clone()))
            .expect("open engine")
            .with_seed(7);
        Self {
            engine,
            clock,
            dir,
            backend,
            target,
            schema,
        }
    }

    /// Another engine (another connection, as another process would have)
    /// over the same database, reading `clock`.
    pub fn other_engine(&self, clock: Arc<dyn stoker_engine::Clock>) -> Engine {
        open_engine(self.backend, &self.target, clock).expect("open another engine")
    }

    pub fn db_path(&self) -> PathBuf {
        assert_eq!(self.backend, Backend::Sqlite, "only SQLite has a file");
        self.dir.file("jobs.db")
    }

    pub fn advance(&self, ms: i64) {
        self.engine.advance_clock(ms).expect("advance clock");
    }

    pub fn now(&self) -> i64 {
        self.engine.now_ms()
    }

    pub fn enqueue_one(&self, job: NewJob) -> i64 {
        self.engine.enqueue(&[job]).expect("enqueue")[0]
    }

    /// Claims from the default queue.
    pub fn claim(&self, limit: usize) -> Vec<stoker_engine::ClaimedJob> {
        self.engine
            .claim(&["default".to_owned()], limit, "owner-a", 30_000)
            .expect("claim")
    }

    pub fn claim_ids(&self, limit: usize) -> Vec<i64> {
        self.claim(limit).into_iter().map(|job| job.id).collect()
    }

    pub fn complete(&self, id: i64, token: i64) -> bool {
        self.engine
            .complete(id, token, Some(b"result".to_vec()))
            .expect("complete")
    }

    pub fn complete_many(&self, outcomes: &[(i64, i64)]) -> Vec<bool> {
        let completions: Vec<Completion> = outcomes
            .iter()
            .map(|&(job_id, token)| Completion {
                job_id,
                token,
                result: None,
                usage: None,
            })
            .collect();
        self.engine
            .complete_many(&completions)
            .expect("complete_many")
    }
}

/// A job of task `t` on the default queue with `priority`.
pub fn job(priority: i64) -> NewJob {
    NewJob {
        priority,
        ..NewJob::new("t", b"payload".to_vec())
    }
}

/// A failure report of `kind`.
pub fn report(kind: FailureKind, retryable: bool) -> FailureReport {
    FailureReport {
        kind,
        exc_type: "builtins.ValueError".to_owned(),
        message: format!("boom ({})", kind.as_str()),
        traceback: "Traceback (most recent call last): ...".to_owned(),
        exc_pickle: Some(b"pickled".to_vec()),
        worker: "host:1:0".to_owned(),
        retryable,
        usage: Some(r#"{"cpu_user_s": 0.5}"#.to_owned()),
    }
}

/// Runs each test body once per backend: `fn name(fx) { ... }` becomes the
/// tests `on_sqlite::name` and `on_postgres::name`, each with its own fresh
/// [`Fixture`] bound to `fx`.
macro_rules! backend_tests {
    ($(fn $name:ident($fx:ident) $body:block)*) => {
        mod on_sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let $fx = crate::common::Fixture::sqlite();
                    $body
                }
            )*
        }
        mod on_postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let Some($fx) = crate::common::Fixture::postgres() else {
                        return;
                    };
                    $body
                }
            )*
        }
    };
}
