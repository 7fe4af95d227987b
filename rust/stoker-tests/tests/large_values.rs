//! Large payloads and results: stored beside the job row, written once, and
//! read, copied and deleted wherever the job is; and the migration of
//! databases of the schema before them.

#[macro_use]
mod common;

use std::sync::Arc;

use common::{report, Backend, Fixture, TempDir, BUSY_TIMEOUT};
use rusqlite::Connection;
use stoker_engine::storage::INLINE_BLOB_MAX_BYTES;
use stoker_engine::{Completion, FailureKind, JobFilter, ManualClock, NewJob, Status};
use stoker_sqlite::{APPLICATION_ID, SCHEMA_VERSION};

/// A value well above the inline limit, as a task's large argument would be.
const LARGE: usize = 1 << 20;

/// `len` random bytes, so that no layer can shrink them.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn job_with(payload: Vec<u8>) -> NewJob {
    NewJob::new("t", payload)
}

/// Runs one statement that returns one integer, on either backend.
fn query_i64(fx: &Fixture, sql: &str, id: i64) -> i64 {
    match fx.backend {
        Backend::Sqlite => Connection::open(fx.db_path())
            .unwrap()
            .query_row(
                &sql.replace("$1", "?1").replace("octet_length(", "length("),
                [id],
                |row| row.get(0),
            )
            .unwrap(),
        Backend::Postgres => fx
            .schema
            .as_ref()
            .unwrap()
            .client()
            .query_one(sql, &[&id])
            .unwrap()
            .get(0),
    }
}

/// How many rows of `table` belong to job `id`.
fn side_rows(fx: &Fixture, table: &str, id: i64) -> i64 {
    query_i64(
        fx,
        &format!("SELECT count(*) FROM {table} WHERE job_id = $1"),
        id,
    )
}

/// The size of the payload and of the result held in the job's own row.
fn sizes_in_row(fx: &Fixture, id: i64) -> (i64, Option<i64>) {
    let payload = query_i64(
        fx,
        "SELECT CAST(octet_length(payload) AS BIGINT) FROM jobs WHERE id = $1",
        id,
    );
    let result = query_i64(
        fx,
        "SELECT CAST(coalesce(octet_length(result), -1) AS BIGINT) FROM jobs WHERE id = $1",
        id,
    );
    (payload, (result >= 0).then_some(result))
}

backend_tests! {
    fn a_large_payload_and_result_round_trip_and_live_beside_the_row(fx) {
        let payload = random_bytes(LARGE, 1);
        let result = random_bytes(LARGE + 7, 2);
        let id = fx.enqueue_one(job_with(payload.clone()));
        assert_eq!(side_rows(&fx, "job_payloads", id), 1);
        assert_eq!(sizes_in_row(&fx, id), (0, None), "the row keeps no copy of the payload");

        let claimed = fx.claim(1);
        assert_eq!(claimed.len(), 1);
        assert!(claimed[0].payload == payload, "the claim returns the payload stored aside");
        assert!(fx.engine.complete(id, claimed[0].token, Some(result.clone())).unwrap());
        assert_eq!(side_rows(&fx, "job_results", id), 1);
        assert_eq!(sizes_in_row(&fx, id), (0, Some(0)), "the row keeps no copy of the result");

        let record = fx.engine.get(id).unwrap();
        assert_eq!(record.status, Status::Complete);
        assert!(record.payload == payload, "the record's payload is the one stored aside");
        assert!(record.result.as_deref() == Some(&result[..]), "the record's result too");
        let listed = fx.engine.list_jobs(&JobFilter::default(), 10, 0).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].payload == payload && listed[0].result.as_deref() == Some(&result[..]));
    }

    fn values_up_to_the_limit_stay_in_the_row_and_empty_ones_read_back_empty(fx) {
        let at_limit = random_bytes(INLINE_BLOB_MAX_BYTES, 3);
        let above = random_bytes(INLINE_BLOB_MAX_BYTES + 1, 4);
        let ids = fx
            .engine
            .enqueue(&[job_with(at_limit.clone()), job_with(above.clone()), job_with(Vec::new())])
            .unwrap();
        let limit_len = i64::try_from(INLINE_BLOB_MAX_BYTES).unwrap();
        assert_eq!(sizes_in_row(&fx, ids[0]), (limit_len, None));
        assert_eq!(side_rows(&fx, "job_payloads", ids[0]), 0);
        assert_eq!(sizes_in_row(&fx, ids[1]), (0, None));
        assert_eq!(side_rows(&fx, "job_payloads", ids[1]), 1);
        assert_eq!(side_rows(&fx, "job_payloads", ids[2]), 0, "an empty payload is not stored aside");

        let claimed = fx.claim(3);
        let payloads: Vec<&[u8]> = claimed.iter().map(|job| &job.payload[..]).collect();
        assert!(payloads == vec![&at_limit[..], &above[..], &[][..]]);
        let completions: Vec<Completion> = claimed
            .iter()
            .zip([Some(at_limit.clone()), Some(Vec::new()), None])
            .map(|(job, result)| Completion { job_id: job.id, token: job.token, result, usage: None })
            .collect();
        assert_eq!(fx.engine.complete_many(&completions).unwrap(), vec![true; 3]);
        let results: Vec<Option<Vec<u8>>> =
            ids.iter().map(|&id| fx.engine.get(id).unwrap().result).collect();
        assert_eq!(results, vec![Some(at_limit.clone()), Some(Vec::new()), None]);
        assert!(ids.iter().all(|&id| side_rows(&fx, "job_results", id) == 0));
        assert!(fx.engine.get(ids[1]).unwrap().payload == above);
        assert!(fx.engine.get(ids[2]).unwrap().payload.is_empty());
    }

    fn a_replay_copies_a_large_payload_that_outlives_its_origin(fx) {
        let payload = random_bytes(LARGE, 5);
        let id = fx.enqueue_one(NewJob { max_retries: 0, ..job_with(payload.clone()) });
        let claimed = fx.claim(1);
        fx.engine
            .fail(id, claimed[0].token, &report(FailureKind::Error, false))
            .unwrap();
        assert_eq!(fx.engine.status(id).unwrap(), Status::Dead);
        assert!(fx.engine.dead_letters(10, 0).unwrap()[0].payload == payload);

        let replayed = fx.engine.replay(id).unwrap();
        assert_eq!(side_rows(&fx, "job_payloads", replayed), 1, "the replay has its own copy");
        assert_eq!(fx.engine.purge_jobs(&[Status::Dead], None, 10).unwrap(), 1);
        assert_eq!(side_rows(&fx, "job_payloads", id), 0);
        let claimed = fx.claim(1);
        assert_eq!(claimed[0].id, replayed);
        assert!(claimed[0].payload == payload, "the replay runs with the original payload");
        assert!(fx.engine.get(replayed).unwrap().payload == payload);
    }

    fn purging_jobs_deletes_their_payloads_and_results(fx) {
        let ids = fx
            .engine
            .enqueue(&[job_with(random_bytes(LARGE, 6)), job_with(random_bytes(LARGE, 7))])
            .unwrap();
        for job in fx.claim(2) {
            assert!(fx.engine.complete(job.id, job.token, Some(random_bytes(LARGE, 8))).unwrap());
        }
        assert_eq!(fx.engine.purge_jobs(&[Status::Complete], None, 10).unwrap(), 2);
        for id in ids {
            assert_eq!(side_rows(&fx, "job_payloads", id), 0);
            assert_eq!(side_rows(&fx, "job_results", id), 0);
        }
    }

    fn retention_drops_a_large_result_and_keeps_the_payload(fx) {
        let payload = random_bytes(LARGE, 9);
        let id = fx.enqueue_one(NewJob { result_ttl_ms: Some(1_000), ..job_with(payload.clone()) });
        let claimed = fx.claim(1);
        assert!(fx.engine.complete(id, claimed[0].token, Some(random_bytes(LARGE, 10))).unwrap());
        fx.advance(1_000);
        assert_eq!(fx.engine.purge_expired_results(10).unwrap(), 1);
        assert_eq!(side_rows(&fx, "job_results", id), 0);
        let record = fx.engine.get(id).unwrap();
        assert_eq!(record.result, None);
        assert!(record.payload == payload);
    }
}

/// The size of the SQLite file's write-ahead log.
fn wal_bytes(fx: &Fixture) -> u64 {
    let mut wal = fx.db_path().into_os_string();
    wal.push("-wal");
    std::fs::metadata(wal).map(|meta| meta.len()).unwrap_or(0)
}

#[test]
fn status_changes_of_a_job_do_not_rewrite_its_large_payload() {
    // The log grows by what each transaction writes until a checkpoint
    // resets it, and SQLite checkpoints on its own only past 1000 pages
    // (4 MiB): far more than this test writes, so growth counts bytes.
    let fx = Fixture::sqlite();
    let id = fx.enqueue_one(job_with(random_bytes(LARGE, 11)));
    let after_enqueue = wal_bytes(&fx);
    assert!(
        after_enqueue >= LARGE as u64,
        "the enqueue wrote the payload once ({after_enqueue} bytes of log)"
    );
    let claimed = fx.claim(1);
    let token = claimed[0].token;
    fx.engine
        .heartbeat("owner-a", &[(id, token)], 30_000)
        .unwrap();
    fx.engine.set_progress(id, token, "{\"done\": 1}").unwrap();
    assert!(fx.engine.complete(id, token, Some(b"ok".to_vec())).unwrap());
    let written = wal_bytes(&fx) - after_enqueue;
    assert!(
        written < (LARGE / 16) as u64,
        "a claim, a heartbeat, a progress report and a completion wrote {written} bytes of log \
         for a job with a {LARGE}-byte payload"
    );
}

/// The schema of version 2 (the jobs table and the flow tables), as it was
/// before large payloads and results got tables of their own.
const SCHEMA_V2: &str = "
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_name TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, payload BLOB NOT NULL, status INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0, max_retries INTEGER NOT NULL, max_crashes INTEGER NOT NULL,
    backoff_base_ms INTEGER NOT NULL, backoff_cap_ms INTEGER NOT NULL, jitter REAL NOT NULL,
    timeout_ms INTEGER, result_ttl_ms INTEGER, created_ms INTEGER NOT NULL, eta_ms INTEGER NOT NULL,
    started_ms INTEGER, finished_ms INTEGER, lease_owner TEXT, lease_deadline_ms INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0, result BLOB, result_expires_ms INTEGER,
    replayed_from INTEGER REFERENCES jobs (id), labels TEXT, progress TEXT, usage TEXT
) STRICT;
CREATE INDEX jobs_pending ON jobs (queue, priority DESC, id) WHERE status = 0;
CREATE INDEX jobs_scheduled ON jobs (eta_ms) WHERE status = 1;
CREATE INDEX jobs_running_lease ON jobs (lease_deadline_ms) WHERE status = 2;
CREATE INDEX jobs_cancel_requests ON jobs (lease_owner) WHERE status = 2 AND cancel_requested = 1;
CREATE INDEX jobs_dead ON jobs (finished_ms DESC, id DESC) WHERE status = 4;
CREATE INDEX jobs_result_expiry ON jobs (result_expires_ms) WHERE result_expires_ms IS NOT NULL;
CREATE TABLE errors (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id), attempt INTEGER NOT NULL,
    kind TEXT NOT NULL, exc_type TEXT NOT NULL, message TEXT NOT NULL, traceback TEXT NOT NULL,
    exc_pickle BLOB, failed_ms INTEGER NOT NULL, worker TEXT NOT NULL, usage TEXT
) STRICT;
CREATE INDEX errors_job ON errors (job_id, id);
CREATE TABLE stale_outcomes (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, token INTEGER NOT NULL, owner TEXT NOT NULL,
    outcome TEXT NOT NULL, at_ms INTEGER NOT NULL
) STRICT;
ALTER TABLE jobs ADD COLUMN unique_key TEXT;
ALTER TABLE jobs ADD COLUMN expires_ms INTEGER;
ALTER TABLE jobs ADD COLUMN rate_prepaid INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key) WHERE unique_key IS NOT NULL AND status IN (0, 1, 2, 7);
CREATE INDEX jobs_expiry ON jobs (expires_ms) WHERE expires_ms IS NOT NULL AND status IN (0, 1, 7);
CREATE INDEX jobs_running_task ON jobs (task_name) WHERE status = 2;
CREATE TABLE job_deps (
    job_id INTEGER NOT NULL REFERENCES jobs (id), dep_id INTEGER NOT NULL REFERENCES jobs (id),
    position INTEGER NOT NULL, PRIMARY KEY (job_id, dep_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX job_deps_dep ON job_deps (dep_id);
CREATE TABLE flow_limits (
    key TEXT PRIMARY KEY, rate_count INTEGER, rate_per_ms INTEGER, burst INTEGER,
    tokens INTEGER NOT NULL DEFAULT 0, refilled_ms INTEGER NOT NULL DEFAULT 0, concurrency INTEGER,
    breaker_failures INTEGER, breaker_window_ms INTEGER, breaker_cooldown_ms INTEGER,
    breaker_state INTEGER NOT NULL DEFAULT 0, open_until_ms INTEGER, wake_ms INTEGER
) STRICT;
CREATE TABLE flow_failures (id INTEGER PRIMARY KEY, key TEXT NOT NULL, at_ms INTEGER NOT NULL) STRICT;
CREATE INDEX flow_failures_key ON flow_failures (key, at_ms);
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, kind TEXT NOT NULL, cron TEXT,
    timezone TEXT, every_ms INTEGER, at_ms INTEGER, missed TEXT NOT NULL, source TEXT,
    labels TEXT NOT NULL, paused INTEGER NOT NULL DEFAULT 0, next_fire_ms INTEGER,
    last_fire_ms INTEGER, enqueued INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL,
    task_name TEXT NOT NULL, queue TEXT NOT NULL, priority INTEGER NOT NULL, payload BLOB NOT NULL,
    max_retries INTEGER NOT NULL, max_crashes INTEGER NOT NULL, backoff_base_ms INTEGER NOT NULL,
    backoff_cap_ms INTEGER NOT NULL, jitter REAL NOT NULL, timeout_ms INTEGER, result_ttl_ms INTEGER,
    expires_after_ms INTEGER, unique_key TEXT
) STRICT;
CREATE INDEX schedules_due ON schedules (next_fire_ms) WHERE paused = 0 AND next_fire_ms IS NOT NULL;
CREATE TABLE schedule_fires (
    id INTEGER PRIMARY KEY, schedule_id INTEGER NOT NULL, fire_ms INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, outcome TEXT NOT NULL, job_id INTEGER, missed INTEGER NOT NULL,
    owner TEXT NOT NULL, message TEXT NOT NULL
) STRICT;
CREATE INDEX schedule_fires_schedule ON schedule_fires (schedule_id, id);
";

/// Creates a version-2 stoker file at `path`.
fn create_v2_file(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    conn.execute_batch(SCHEMA_V2).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 2;"
    ))
    .unwrap();
    conn
}

/// Inserts a job row the way the version-2 engine did, values in the row.
fn insert_v2_job(
    conn: &Connection,
    status: i64,
    payload: &[u8],
    result: Option<&[u8]>,
    finished_ms: Option<i64>,
) -> i64 {
    conn.execute(
        "INSERT INTO jobs (task_name, queue, priority, payload, status, max_retries, max_crashes, \
         backoff_base_ms, backoff_cap_ms, jitter, created_ms, eta_ms, result, finished_ms) \
         VALUES ('t', 'default', 0, ?1, ?2, 0, 1, 1000, 300000, 0.0, 1, 1, ?3, ?4)",
        rusqlite::params![payload, status, result, finished_ms],
    )
    .unwrap();
    conn.last_insert_rowid()
}

#[test]
fn a_version_2_file_is_migrated_in_place_and_keeps_its_jobs() {
    let dir = TempDir::new();
    let path = dir.file("v2.db");
    let conn = create_v2_file(&path);
    let large_pending = random_bytes(LARGE, 12);
    let large_done = random_bytes(LARGE, 13);
    let large_result = random_bytes(LARGE, 14);
    let pending = insert_v2_job(&conn, 0, &large_pending, None, None);
    let small = insert_v2_job(&conn, 0, b"small", None, None);
    let done = insert_v2_job(&conn, 3, &large_done, Some(&large_result), Some(5));
    drop(conn);

    let engine =
        stoker_sqlite::open_engine(&path, BUSY_TIMEOUT, Arc::new(ManualClock::new(10))).unwrap();
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let moved: Vec<i64> = conn
        .prepare("SELECT job_id FROM job_payloads ORDER BY job_id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        moved,
        vec![pending],
        "the large payload of the unfinished job moved aside; a finished job keeps its own"
    );

    let finished = engine.get(done).unwrap();
    assert_eq!(finished.status, Status::Complete);
    assert!(finished.payload == large_done);
    assert!(finished.result.as_deref() == Some(&large_result[..]));
    let claimed = engine
        .claim(&["default".to_owned()], 2, "owner-a", 30_000)
        .unwrap();
    let claimed: Vec<(i64, &[u8])> = claimed
        .iter()
        .map(|job| (job.id, &job.payload[..]))
        .collect();
    assert!(claimed == vec![(pending, &large_pending[..]), (small, &b"small"[..])]);
    drop(engine);
    // Opening again finds the current version and changes nothing.
    stoker_sqlite::open_engine(&path, BUSY_TIMEOUT, Arc::new(ManualClock::new(10))).unwrap();
}

#[test]
fn a_version_1_file_is_still_refused() {
    let dir = TempDir::new();
    let path = dir.file("v1.db");
    let conn = create_v2_file(&path);
    conn.execute_batch("PRAGMA user_version = 1").unwrap();
    drop(conn);
    match stoker_sqlite::open_engine(&path, BUSY_TIMEOUT, Arc::new(ManualClock::new(0))) {
        Err(stoker_engine::EngineError::SchemaVersion {
            found, expected, ..
        }) => assert_eq!((found, expected), (1, SCHEMA_VERSION)),
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
}
