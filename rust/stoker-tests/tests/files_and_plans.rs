//! Opening database files (ours, foreign, corrupt, of another schema
//! version), option validation, and the query plans of the hot statements.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{job, Fixture, TempDir, BUSY_TIMEOUT};
use rusqlite::Connection;
use stoker_engine::{Engine, EngineError, ManualClock, NewJob};
use stoker_sqlite::{SqliteStorage, APPLICATION_ID, HOT_STATEMENTS, SCHEMA_VERSION};

fn open(path: &std::path::Path) -> Result<Engine, EngineError> {
    stoker_sqlite::open_engine(path, BUSY_TIMEOUT, Arc::new(ManualClock::new(0)))
}

#[test]
fn a_new_file_is_created_and_marked_as_ours() {
    let dir = TempDir::new();
    let path = dir.file("new.db");
    open(&path).unwrap().enqueue(&[job(0)]).unwrap();
    let conn = Connection::open(&path).unwrap();
    let application_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    let user_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (application_id, user_version, journal.as_str()),
        (APPLICATION_ID, SCHEMA_VERSION, "wal")
    );
    drop(conn);
    let reopened = open(&path).unwrap();
    assert_eq!(
        reopened.stats().unwrap()[0].1,
        1,
        "the job survives reopening"
    );
}

#[test]
fn an_empty_existing_file_is_initialised() {
    let dir = TempDir::new();
    let path = dir.file("empty.db");
    std::fs::write(&path, b"").unwrap();
    open(&path).unwrap().enqueue(&[job(0)]).unwrap();
}

#[test]
fn a_missing_directory_is_a_clear_storage_error() {
    let dir = TempDir::new();
    let path = dir.file("nope").join("jobs.db");
    match open(&path) {
        Err(EngineError::Storage(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert!(matches!(open(dir.path()), Err(EngineError::Storage(m)) if m.contains("directory")));
}

#[test]
fn random_bytes_are_not_a_database() {
    let dir = TempDir::new();
    let path = dir.file("noise.db");
    let mut rng = fastrand::Rng::with_seed(1);
    std::fs::write(&path, (0..8192).map(|_| rng.u8(..)).collect::<Vec<u8>>()).unwrap();
    match open(&path) {
        Err(EngineError::NotOurDatabase {
            path: shown,
            reason,
        }) => {
            assert_eq!(shown, path.display().to_string());
            assert!(reason.contains("not an SQLite database"), "{reason}");
        }
        other => panic!("expected NotOurDatabase, got {other:?}"),
    }
}

#[test]
fn a_foreign_sqlite_database_is_refused_and_left_alone() {
    let dir = TempDir::new();
    let path = dir.file("foreign.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        .unwrap();
    drop(conn);
    match open(&path) {
        Err(EngineError::NotOurDatabase { reason, .. }) => {
            assert!(reason.contains("customers"), "{reason}");
            assert!(reason.contains("application_id"), "{reason}");
        }
        other => panic!("expected NotOurDatabase, got {other:?}"),
    }
    let conn = Connection::open(&path).unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        journal, "delete",
        "a foreign database is not switched to WAL"
    );
}

#[test]
fn another_application_id_is_refused() {
    let dir = TempDir::new();
    let path = dir.file("other-app.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA application_id = 1234")
        .unwrap();
    assert!(
        matches!(open(&path), Err(EngineError::NotOurDatabase { reason, .. }) if reason.contains("0x000004d2"))
    );
}

#[test]
fn another_schema_version_is_refused() {
    let fx = Fixture::new();
    let path = fx.db_path();
    drop(fx.engine);
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    match open(&path) {
        Err(EngineError::SchemaVersion {
            found, expected, ..
        }) => assert_eq!((found, expected), (99, SCHEMA_VERSION)),
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
}

backend_tests! {
    fn enqueue_validation_names_the_option_and_value(fx) {
        let cases: Vec<(NewJob, &str)> = vec![
            (
                NewJob {
                    task_name: String::new(),
                    ..job(0)
                },
                "task_name",
            ),
            (
                NewJob {
                    queue: String::new(),
                    ..job(0)
                },
                "queue",
            ),
            (
                NewJob {
                    max_retries: -1,
                    ..job(0)
                },
                "max_retries",
            ),
            (
                NewJob {
                    max_crashes: -2,
                    ..job(0)
                },
                "max_crashes",
            ),
            (
                NewJob {
                    delay_ms: -3,
                    ..job(0)
                },
                "delay_ms",
            ),
            (
                NewJob {
                    timeout_ms: Some(-4),
                    ..job(0)
                },
                "timeout_ms",
            ),
            (
                NewJob {
                    timeout_ms: Some(0),
                    ..job(0)
                },
                "timeout_ms",
            ),
            (
                NewJob {
                    backoff_base_ms: -5,
                    ..job(0)
                },
                "backoff_base_ms",
            ),
            (
                NewJob {
                    backoff_cap_ms: -6,
                    backoff_base_ms: -6,
                    ..job(0)
                },
                "backoff_base_ms",
            ),
            (
                NewJob {
                    backoff_base_ms: 10,
                    backoff_cap_ms: 5,
                    ..job(0)
                },
                "backoff_cap_ms",
            ),
            (
                NewJob {
                    jitter: 1.5,
                    ..job(0)
                },
                "jitter",
            ),
            (
                NewJob {
                    jitter: -0.1,
                    ..job(0)
                },
                "jitter",
            ),
            (
                NewJob {
                    jitter: f64::NAN,
                    ..job(0)
                },
                "jitter",
            ),
            (
                NewJob {
                    delay_ms: 5,
                    eta_ms: Some(10),
                    ..job(0)
                },
                "eta_ms",
            ),
            (
                NewJob {
                    result_ttl_ms: Some(-7),
                    ..job(0)
                },
                "result_ttl_ms",
            ),
            (
                NewJob {
                    delay_ms: i64::MAX,
                    ..job(0)
                },
                "delay_ms",
            ),
        ];
        for (bad, option) in cases {
            let expected_value = format!("{:?}", bad);
            match fx.engine.enqueue(&[job(0), bad]) {
                Err(EngineError::InvalidOption(message)) => {
                    assert!(
                        message.contains(option),
                        "{message:?} should name {option} ({expected_value})"
                    );
                }
                other => panic!("expected an invalid option for {option}, got {other:?}"),
            }
        }
        assert_eq!(
            fx.engine.stats().unwrap()[0].1,
            0,
            "a batch with a bad job stores nothing"
        );
        match fx.engine.enqueue(&[NewJob {
            max_retries: -1,
            ..job(0)
        }]) {
            Err(EngineError::InvalidOption(message)) => assert!(message.contains("-1"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}

/// Fills the database with enough rows of every kind that SQLite's planner
/// sees realistic statistics-free sizes, then checks every hot statement.
#[test]
fn hot_statements_use_indexes_without_scans_or_sorts() {
    let dir = TempDir::new();
    let storage = SqliteStorage::open(dir.file("plans.db"), BUSY_TIMEOUT).unwrap();
    let flow = stoker_sqlite::flow::HOT_STATEMENTS;
    for (name, sql) in HOT_STATEMENTS.iter().chain(flow) {
        let plan = storage.explain_query_plan(sql).unwrap();
        let text = plan.join(" | ");
        println!("{name}: {text}");
        // Walking a partial index in order and stopping at LIMIT is what these
        // statements want; walking the table itself is not.
        for step in &plan {
            let table_scan = step.starts_with("SCAN jobs") && !step.contains("USING");
            assert!(!table_scan, "{name} scans the jobs table: {text}");
        }
        assert!(
            !text.contains("TEMP B-TREE"),
            "{name} sorts in a temp b-tree: {text}"
        );
        assert!(
            !text.contains("SCAN errors"),
            "{name} scans the errors table: {text}"
        );
    }
    let pick = storage
        .explain_query_plan(stoker_sqlite::PICK_PENDING_SQL)
        .unwrap()
        .join(" | ");
    assert!(
        pick.contains("jobs_pending"),
        "the claim reads the pending index: {pick}"
    );
    let promote = storage
        .explain_query_plan(stoker_sqlite::PROMOTE_DUE_SQL)
        .unwrap()
        .join(" | ");
    assert!(
        promote.contains("jobs_scheduled"),
        "promotion reads the scheduled index: {promote}"
    );
}

#[test]
fn hot_statements_are_not_compiled_again_for_new_values() {
    let dir = TempDir::new();
    let storage = SqliteStorage::open(dir.file("plans.db"), BUSY_TIMEOUT).unwrap();
    let flow = stoker_sqlite::flow::HOT_STATEMENTS;
    for (name, sql) in HOT_STATEMENTS.iter().chain(flow) {
        // Each run binds a new time, as successive claims do.
        let runs: Vec<i64> = (1..=5).map(|i| 1_700_000_000_000 + i * 1_000).collect();
        assert_eq!(
            storage.recompilations(sql, &runs).unwrap(),
            0,
            "{name} is compiled again when its parameters change"
        );
    }
}

#[test]
fn compact_log_truncates_the_wal_unless_a_reader_holds_it() {
    let dir = TempDir::new();
    let path = dir.file("wal.db");
    let engine = open(&path).unwrap();
    let wal = dir.file("wal.db-wal");
    let jobs: Vec<NewJob> = (0..200)
        .map(|_| NewJob::new("t", vec![7u8; 4096]))
        .collect();
    engine.enqueue(&jobs).unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    // A reader in the middle of a transaction keeps the log in use.
    let mut reader = Connection::open(&path).unwrap();
    let snapshot = reader.transaction().unwrap();
    let _: i64 = snapshot
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    engine.enqueue(&[job(0)]).unwrap();
    assert!(!engine.compact_log(Duration::from_millis(5)).unwrap());
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    drop(snapshot);

    assert!(engine.compact_log(Duration::from_millis(5)).unwrap());
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    // Writers go on as before, with the busy timeout they had.
    engine.enqueue(&[job(0)]).unwrap();
    assert_eq!(
        engine.stats().unwrap().iter().map(|(_, n)| n).sum::<i64>(),
        202
    );
}

#[test]
fn commits_leave_checkpoints_to_the_background_thread() {
    use stoker_engine::Transitions;
    use stoker_sqlite::checkpoint::CHECKPOINT_PAGES;

    let dir = TempDir::new();
    let storage = SqliteStorage::open(dir.file("checkpoint.db"), BUSY_TIMEOUT).unwrap();
    let checkpointer = storage.checkpointer();
    // Each job fills a page of its own, so the log grows by at least a page
    // per job.
    let page_jobs =
        |n: usize| -> Vec<NewJob> { (0..n).map(|_| NewJob::new("t", vec![7u8; 4096])).collect() };

    // With checkpoints held back, the log grows well past the size at which
    // SQLite's automatic checkpoint would have copied and reset it inside a
    // commit: no commit checkpoints by itself.
    checkpointer.set_paused(true);
    let pages = usize::try_from(CHECKPOINT_PAGES).unwrap();
    for _ in 0..4 {
        storage.enqueue(&page_jobs(pages / 2), 0).unwrap();
    }
    let grown = checkpointer.last_wal_pages();
    assert!(
        grown >= 2 * i64::from(CHECKPOINT_PAGES),
        "the log holds {grown} pages"
    );
    assert_eq!(checkpointer.runs(), 0);

    // Released, the thread checkpoints the whole log, and the next commit
    // starts it again from its beginning.
    checkpointer.set_paused(false);
    let runs = checkpointer.wait_for_run_after(0, Duration::from_secs(30));
    assert!(runs >= 1, "no checkpoint ran");
    storage.enqueue(&page_jobs(1), 0).unwrap();
    let restarted = checkpointer.last_wal_pages();
    assert!(
        restarted < i64::from(CHECKPOINT_PAGES) / 10,
        "the log still holds {restarted} pages after a checkpoint"
    );
    assert_eq!(
        storage.stats().unwrap().iter().map(|(_, n)| n).sum::<i64>(),
        i64::try_from(2 * pages + 1).unwrap()
    );
}

#[test]
fn a_writer_retries_a_held_lock_for_its_busy_timeout_then_fails_busy() {
    use std::time::Instant;
    use stoker_engine::Transitions;

    let dir = TempDir::new();
    let path = dir.file("busy.db");
    let timeout = Duration::from_millis(40);
    let storage = SqliteStorage::open(&path, timeout).unwrap();
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let error = storage.enqueue(&[job(0)], 0).unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, EngineError::Busy(_)), "{error:?}");
    // It gave up only once its whole busy timeout was spent.
    assert!(waited >= timeout, "gave up after {waited:?}");

    // The lock released while a writer waits: that writer goes on.
    let release = std::thread::spawn(move || {
        holder.execute_batch("COMMIT").unwrap();
    });
    let storage = SqliteStorage::open(&path, Duration::from_secs(30)).unwrap();
    storage.enqueue(&[job(0)], 0).unwrap();
    release.join().unwrap();
    assert_eq!(
        storage.stats().unwrap().iter().map(|(_, n)| n).sum::<i64>(),
        1
    );
}

#[test]
fn closing_the_last_connection_folds_the_log_into_the_file_and_removes_it() {
    use stoker_engine::{Storage, Transitions};

    let dir = TempDir::new();
    let path = dir.file("closed.db");
    let storage = SqliteStorage::open(&path, BUSY_TIMEOUT).unwrap();
    storage.enqueue(&[job(0), job(1)], 0).unwrap();
    let wal = dir.file("closed.db-wal");
    let shm = dir.file("closed.db-shm");
    assert!(wal.exists() && shm.exists());

    storage.close().unwrap();
    assert!(!wal.exists() && !shm.exists());
    // Every commit is in the file itself now: a copy of it alone has them.
    let copy = dir.file("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let jobs: i64 = Connection::open(&copy)
        .unwrap()
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 2);

    let error = storage.stats().unwrap_err();
    assert!(
        matches!(&error, EngineError::Storage(message) if message.contains("closed")),
        "{error:?}"
    );
    storage.close().unwrap();
}

#[test]
fn closing_while_another_connection_is_open_keeps_the_log_for_it() {
    use stoker_engine::{Storage, Transitions};

    let dir = TempDir::new();
    let path = dir.file("shared.db");
    let first = SqliteStorage::open(&path, BUSY_TIMEOUT).unwrap();
    let second = SqliteStorage::open(&path, BUSY_TIMEOUT).unwrap();
    first.enqueue(&[job(0)], 0).unwrap();
    first.close().unwrap();
    second.enqueue(&[job(0)], 0).unwrap();
    assert_eq!(
        second.stats().unwrap().iter().map(|(_, n)| n).sum::<i64>(),
        2
    );
    second.close().unwrap();
    assert!(!dir.file("shared.db-wal").exists());
}
