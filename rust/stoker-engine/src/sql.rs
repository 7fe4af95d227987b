//! SQL text that reads the same in SQLite and PostgreSQL, written once.
//!
//! Parameters are written `$1`, `$2`, ... and numbered in the order they
//! first appear: PostgreSQL numbers them by their digits, SQLite takes `$1`
//! for a name and numbers names in order of appearance, so in that order the
//! two agree (the SQLite backend's tests check every statement of
//! [`SHARED_STATEMENTS`]). Status codes are literals (`status_code!`), which
//! SQLite needs to use its partial indexes.

/// The statement that moves up to `$2` scheduled jobs whose eta came by `$1`
/// to pending, earliest first; `$lock` is how the backend locks the rows it
/// picks (PostgreSQL skips those another claimer is promoting).
#[macro_export]
macro_rules! promote_due_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE jobs SET status = ",
            $crate::status_code!(pending),
            " WHERE id IN (SELECT id FROM jobs WHERE status = ",
            $crate::status_code!(scheduled),
            " AND eta_ms <= $1 ORDER BY eta_ms LIMIT $2",
            $lock,
            ")"
        )
    };
}

/// The statement that reads up to `$2` running jobs whose own lease ran out
/// before `$1`, oldest deadline first, then lowest id (the order of SQLite's
/// index): id, attempt, owner, deadline; `$lock` as in [`promote_due_sql!`].
#[macro_export]
macro_rules! expired_sql {
    ($lock:literal) => {
        concat!(
            "SELECT id, attempt, lease_owner, lease_deadline_ms FROM jobs WHERE status = ",
            $crate::status_code!(running),
            " AND lease_deadline_ms < $1 ORDER BY lease_deadline_ms, id LIMIT $2",
            $lock
        )
    };
}

/// Ends a job that has not started as cancelled at `$1`: job `$2`.
pub const CANCEL_UNSTARTED_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(cancelled),
    ", finished_ms = $1 WHERE id = $2"
);

/// Asks for the running job `$1` to be stopped.
pub const REQUEST_CANCEL_SQL: &str = "UPDATE jobs SET cancel_requested = 1 WHERE id = $1";

/// Ends, at `$1`, the running attempt `$3` of job `$2` as cancelled.
pub const FINISH_CANCELLED_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(cancelled),
    ", finished_ms = $1, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $2 AND attempt = $3 AND status = ",
    status_code!(running)
);

/// Stores the progress `$1` of the running attempt `$3` of job `$2`.
pub const SET_PROGRESS_SQL: &str = concat!(
    "UPDATE jobs SET progress = $1 WHERE id = $2 AND attempt = $3 AND status = ",
    status_code!(running)
);

/// `(status, count)` of the statuses that have jobs.
pub const STATUS_COUNTS_SQL: &str = "SELECT status, count(*) FROM jobs GROUP BY status";

/// A new pending job, created at `$1`, with the task, payload and options of
/// job `$2`; its id.
pub const REPLAY_SQL: &str = "INSERT INTO jobs (task_name, queue, priority, payload, status, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, \
     created_ms, eta_ms, replayed_from, labels) \
     SELECT task_name, queue, priority, payload, 0, max_retries, max_crashes, backoff_base_ms, \
     backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, $1, $1, id, labels FROM jobs WHERE id = $2 \
     RETURNING id";

/// Copies to job `$1` the payload stored aside of job `$2`: the new job of a
/// replay gets its own copy, so that either job can be purged without the
/// other.
pub const COPY_PAYLOAD_SQL: &str =
    "INSERT INTO job_payloads (job_id, data) SELECT $1, data FROM job_payloads WHERE job_id = $2";

/// Records an outcome refused for its stale token: job, token, owner,
/// outcome, time.
pub const RECORD_STALE_SQL: &str = "INSERT INTO stale_outcomes (job_id, token, owner, outcome, \
     at_ms) VALUES ($1, $2, $3, $4, $5)";

/// The current lease owner of job `$1`.
pub const LEASE_OWNER_SQL: &str = "SELECT lease_owner FROM jobs WHERE id = $1";

/// Adds a failed attempt to the error history (the columns in order).
pub const RECORD_ERROR_SQL: &str = "INSERT INTO errors (job_id, attempt, kind, exc_type, message, \
     traceback, exc_pickle, failed_ms, worker, usage) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Stores the usage `$1` of job `$2`.
pub const SET_USAGE_SQL: &str = "UPDATE jobs SET usage = $1 WHERE id = $2";

/// The columns of a [`crate::model::JobRecord`], in the order
/// [`crate::rows::job_from_row`] reads them, from `jobs`. An empty payload or
/// result in the row stands for one stored aside (see
/// [`crate::storage::INLINE_BLOB_MAX_BYTES`]), read from its table;
/// `octet_length` reads neither a blob's content nor a value PostgreSQL
/// stores out of line.
pub const JOB_COLUMNS: &str = "id, task_name, queue, priority, status, \
     CASE WHEN octet_length(payload) = 0 THEN \
     coalesce((SELECT data FROM job_payloads WHERE job_id = jobs.id), payload) ELSE payload END, \
     attempt, failures, crashes, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, \
     created_ms, eta_ms, started_ms, finished_ms, lease_owner, lease_deadline_ms, cancel_requested, \
     CASE WHEN octet_length(result) = 0 THEN \
     coalesce((SELECT data FROM job_results WHERE job_id = jobs.id), result) ELSE result END, \
     result_expires_ms, replayed_from, labels, progress, usage, unique_key, expires_ms";

/// Ends a failed running attempt: `$1` is the final status (dead or
/// cancelled), at `$2`, with `$3` failures and `$4` crashes, for attempt
/// `$6` of job `$5`.
pub const FAILED_FINISH_SQL: &str = concat!(
    "UPDATE jobs SET status = $1, finished_ms = $2, failures = $3, crashes = $4, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = $5 AND attempt = $6 AND status = ",
    status_code!(running)
);

/// Puts a failed running attempt back: `$1` is pending or scheduled, due at
/// `$2`, the rest as in [`FAILED_FINISH_SQL`].
pub const FAILED_RETRY_SQL: &str = concat!(
    "UPDATE jobs SET status = $1, eta_ms = $2, failures = $3, crashes = $4, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = $5 AND attempt = $6 AND status = ",
    status_code!(running)
);

/// Puts, at `$1`, the running attempt `$3` of job `$2` back to pending (the
/// attempt stays counted). A job whose cancel was requested ends cancelled
/// rather than going back, so the request is never lost.
pub const REQUEUE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ",
    status_code!(cancelled),
    " ELSE ",
    status_code!(pending),
    " END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN $1 ELSE finished_ms END, \
     eta_ms = $1, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $2 AND attempt = $3 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Undoes a claim whose job never started: as [`REQUEUE_SQL`], and the
/// attempt is taken back, so the job reads as if it had never been claimed.
/// The token was never handed to a worker, so no outcome can carry it.
pub const RELEASE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ",
    status_code!(cancelled),
    " ELSE ",
    status_code!(pending),
    " END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN $1 ELSE finished_ms END, \
     started_ms = CASE attempt WHEN 1 THEN NULL ELSE started_ms END, \
     attempt = attempt - 1, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $2 AND attempt = $3 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// A give-back statement: at `$1`, pending again (cancelled if a cancel was
/// requested), no failure or crash counted, the lease dropped, for the job
/// (`$2`) still running the attempt (`$3`) when `$condition` holds.
macro_rules! give_back_sql {
    ($condition:literal) => {
        concat!(
            "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ",
            status_code!(cancelled),
            " ELSE ",
            status_code!(pending),
            " END, \
             finished_ms = CASE cancel_requested WHEN 1 THEN $1 ELSE finished_ms END, \
             eta_ms = $1, lease_owner = NULL, lease_deadline_ms = NULL, held = 0 \
             WHERE id = $2 AND attempt = $3 AND status = ",
            status_code!(running),
            " AND ",
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
pub const RETURN_HELD_SQL: &str = give_back_sql!("held = 1");

/// Gives back an expired job that its dead supervisor's workers never
/// started (see [`crate::storage::Transitions::return_unstarted`]), as
/// [`RETURN_HELD_SQL`] does.
pub const RETURN_UNSTARTED_SQL: &str = give_back_sql!("lease_deadline_ms < $1");

/// The running jobs of owner `$1` with a cancel request.
pub const CANCEL_REQUESTS_SQL: &str = concat!(
    "SELECT id, attempt FROM jobs WHERE status = ",
    status_code!(running),
    " AND cancel_requested = 1 AND lease_owner = $1 ORDER BY id"
);

/// The jobs job `$1` depends on, in the order given, with their statuses.
pub const DEPENDENCIES_SQL: &str = "SELECT d.dep_id, j.status FROM job_deps d \
     JOIN jobs j ON j.id = d.dep_id WHERE d.job_id = $1 ORDER BY d.position";

/// Starts the retention of the result of the finished job `$1`.
pub const START_RETENTION_SQL: &str =
    "UPDATE jobs SET result_expires_ms = finished_ms + result_ttl_ms \
     WHERE id = $1 AND result_ttl_ms IS NOT NULL AND finished_ms IS NOT NULL";

/// How many dependencies of job `$1` are not complete.
pub const UNFINISHED_DEPENDENCIES_SQL: &str = concat!(
    "SELECT count(*) FROM job_deps d JOIN jobs j ON j.id = d.dep_id WHERE d.job_id = $1 AND j.status != ",
    status_code!(complete)
);

/// Releases job `$2` if it is still waiting: pending if its eta has come by
/// `$1`, scheduled otherwise; its new status.
pub const RELEASE_WAITING_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE WHEN eta_ms <= $1 THEN ",
    status_code!(pending),
    " ELSE ",
    status_code!(scheduled),
    " END WHERE id = $2 AND status = ",
    status_code!(waiting),
    " RETURNING status"
);

/// Ends, at `$1`, the waiting job `$2` dead (a dependency of it failed).
pub const FAIL_WAITING_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(dead),
    ", finished_ms = $1 WHERE id = $2 AND status = ",
    status_code!(waiting)
);

/// Records why a waiting job died: exception type `$1`, message `$2`, at
/// `$3`, for job `$4`.
pub const DEPENDENCY_ERROR_SQL: &str =
    "INSERT INTO errors (job_id, attempt, kind, exc_type, message, \
     traceback, exc_pickle, failed_ms, worker) \
     SELECT id, attempt, 'dependency', $1, $2, '', NULL, $3, '' FROM jobs WHERE id = $4";

/// The statements that clear what refers to purged jobs before the jobs go,
/// `{purged}` standing for the backend's test of a job id against the purged
/// set. A replay keeps pointing at its origin only while the origin exists;
/// dependency links of a finished job are history only (they were resolved
/// when it finished), and they would keep it by their foreign keys.
pub const PURGE_REFERENCES_SQL: [&str; 5] = [
    "UPDATE jobs SET replayed_from = NULL WHERE replayed_from {purged}",
    "DELETE FROM errors WHERE job_id {purged}",
    "DELETE FROM job_deps WHERE job_id {purged} OR dep_id {purged}",
    "DELETE FROM job_payloads WHERE job_id {purged}",
    "DELETE FROM job_results WHERE job_id {purged}",
];

/// The statements above that take parameters, for the check of their
/// numbering.
pub const SHARED_STATEMENTS: &[&str] = &[
    CANCEL_UNSTARTED_SQL,
    REQUEST_CANCEL_SQL,
    FINISH_CANCELLED_SQL,
    SET_PROGRESS_SQL,
    REPLAY_SQL,
    COPY_PAYLOAD_SQL,
    RECORD_STALE_SQL,
    LEASE_OWNER_SQL,
    RECORD_ERROR_SQL,
    SET_USAGE_SQL,
    promote_due_sql!(""),
    expired_sql!(""),
    FAILED_FINISH_SQL,
    FAILED_RETRY_SQL,
    REQUEUE_SQL,
    RELEASE_SQL,
    RETURN_HELD_SQL,
    RETURN_UNSTARTED_SQL,
    CANCEL_REQUESTS_SQL,
    DEPENDENCIES_SQL,
    START_RETENTION_SQL,
    UNFINISHED_DEPENDENCIES_SQL,
    RELEASE_WAITING_SQL,
    FAIL_WAITING_SQL,
    DEPENDENCY_ERROR_SQL,
];

/// [`PURGE_REFERENCES_SQL`] with `purged` for `{purged}`.
pub fn purge_references(purged: &str) -> impl Iterator<Item = String> + '_ {
    PURGE_REFERENCES_SQL
        .iter()
        .map(move |sql| sql.replace("{purged}", purged))
}

/// At most this many table names are listed in the error about a database
/// that is not stoker's: enough to recognise it, short enough to read.
const SHOWN_TABLES: usize = 5;

/// The tables of a database that is not stoker's, as its error lists them:
/// `"N table(s) (a, b, ...)"`.
pub fn shown_tables(tables: &[String]) -> String {
    let mut shown = tables
        .iter()
        .take(SHOWN_TABLES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > SHOWN_TABLES {
        shown.push_str(", ...");
    }
    format!("{} table(s) ({shown})", tables.len())
}
