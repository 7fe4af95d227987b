//! The SQLite schema: what a stoker database holds, how an opened file is
//! recognised as one, and how an older one is migrated in place.

use crate::*;

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

/// The schema, created in one transaction on an empty file.
pub(crate) const SCHEMA: &str = concat!(
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
pub(crate) const HELD_COLUMN: &str = "
-- 1 while its supervisor holds the running job, sent to no worker.
ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
";

/// The tables of payloads and results too large for the job's row (see
/// [`INLINE_BLOB_MAX_BYTES`]): one row per job, keyed by the job's id, written
/// when the job is enqueued or completed and deleted with the job or its
/// result. Part of the schema since version 3.
pub(crate) const BLOB_TABLES: &str = "
CREATE TABLE job_payloads (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
    data BLOB NOT NULL
) STRICT;
CREATE TABLE job_results (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
    data BLOB NOT NULL
) STRICT;
";

/// What an opened file turned out to be.
pub(crate) enum Identity {
    /// A stoker database of this schema version.
    Ours,
    /// A stoker database of an older schema version this engine migrates.
    Older(i64),
    /// An empty database, to be initialised.
    Empty,
}

/// Brings a database of schema `version` to [`SCHEMA_VERSION`] inside `tx`
/// (a `BEGIN IMMEDIATE` transaction): either all of it happens or none.
pub(crate) fn migrate(tx: &Transaction<'_>, version: i64) -> SqlResult<()> {
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
                unfinished_codes!(),
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
pub(crate) fn identify(conn: &Connection, path: &str) -> SqlResult<Identity> {
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
        return Err(not_ours(format!(
            "it is an SQLite database with {} but no stoker application_id",
            stoker_engine::sql::shown_tables(&tables)
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
