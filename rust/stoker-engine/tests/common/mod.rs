//! Shared fixtures of the engine's integration tests: a temporary directory
//! and an engine on a manual clock.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stoker_engine::{Completion, Engine, FailureKind, FailureReport, ManualClock, NewJob};

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

/// An engine over a fresh database with a manual clock at [`START_MS`].
pub struct Fixture {
    pub engine: Engine,
    pub clock: ManualClock,
    pub dir: TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = TempDir::new();
        let clock = ManualClock::new(START_MS);
        let engine =
            Engine::open_sqlite(dir.file("jobs.db"), BUSY_TIMEOUT, Arc::new(clock.clone()))
                .expect("open engine")
                .with_seed(7);
        Self { engine, clock, dir }
    }

    pub fn db_path(&self) -> PathBuf {
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
