//! The statements of the job transitions. Each hot one is served by a
//! partial index, which SQLite uses only when the statement's WHERE clause
//! visibly implies the index's: status codes are literals (`status_code!`).

use crate::*;

/// The payload stored aside for a job.
pub(crate) const PAYLOAD_ASIDE_SQL: &str = "SELECT data FROM job_payloads WHERE job_id = ?1";

/// Stores a payload aside.
pub(crate) const INSERT_PAYLOAD_SQL: &str =
    "INSERT INTO job_payloads (job_id, data) VALUES (?1, ?2)";

/// Stores a result aside.
pub(crate) const INSERT_RESULT_SQL: &str = "INSERT INTO job_results (job_id, data) VALUES (?1, ?2)";

/// Inserts one job row; a NULL id (?1) takes the next one.
pub(crate) const INSERT_JOB_SQL: &str = "INSERT INTO jobs (id, task_name, queue, priority, payload, status, \
     max_retries, max_crashes, backoff_base_ms, backoff_cap_ms, jitter, timeout_ms, result_ttl_ms, created_ms, \
     eta_ms, unique_key, expires_ms, rate_prepaid, labels) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

/// Moves the scheduled jobs whose eta has come to pending, earliest first.
pub const PROMOTE_DUE_SQL: &str = stoker_engine::promote_due_sql!("");

/// The next claimable jobs of one queue, in claim order.
pub const PICK_PENDING_SQL: &str = concat!(
    "SELECT priority, id FROM jobs WHERE status = ",
    status_code!(pending),
    " AND queue = ?1 ORDER BY priority DESC, id LIMIT ?2"
);

/// Leases one picked job; the `status = 0` fence makes it a no-op on a row that
/// another writer took first.
pub const TAKE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(running),
    ", attempt = attempt + 1, started_ms = ?2, \
     lease_owner = ?3, lease_deadline_ms = ?4, cancel_requested = 0, progress = NULL, held = 0 \
     WHERE id = ?1 AND status = ",
    status_code!(pending),
    " RETURNING attempt, task_name, queue, payload, timeout_ms, labels"
);

/// Marks (?4 = 1) or unmarks (?4 = 0) a running job its owner (?3) holds,
/// sent to no worker, if its token (?2) is current.
pub(crate) const MARK_HELD_SQL: &str = concat!(
    "UPDATE jobs SET held = ?4 WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running),
    " AND lease_owner = ?3"
);

/// Completes one attempt if its token is current.
pub const COMPLETE_SQL: &str = concat!(
    "UPDATE jobs SET status = ",
    status_code!(complete),
    ", result = ?3, finished_ms = ?4, usage = ?5, \
     result_expires_ms = ?4 + result_ttl_ms, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running)
);

/// Renews one lease if the owner and token are current.
pub const HEARTBEAT_SQL: &str = concat!(
    "UPDATE jobs SET lease_deadline_ms = ?4 \
     WHERE id = ?1 AND attempt = ?2 AND status = ",
    status_code!(running),
    " AND lease_owner = ?3 RETURNING cancel_requested"
);

/// The running jobs whose lease ran out, oldest deadline first.
pub const EXPIRED_SQL: &str = stoker_engine::expired_sql!("");

/// The earliest eta of a scheduled job.
pub const NEXT_ETA_SQL: &str = concat!(
    "SELECT eta_ms FROM jobs WHERE status = ",
    status_code!(scheduled),
    " ORDER BY eta_ms LIMIT 1"
);

/// The earliest lease deadline of a running job.
pub const NEXT_DEADLINE_SQL: &str = concat!(
    "SELECT lease_deadline_ms FROM jobs WHERE status = ",
    status_code!(running),
    " ORDER BY lease_deadline_ms LIMIT 1"
);

/// The statements whose cost must not grow with the number of jobs, by name;
/// tests check their query plans.
pub const HOT_STATEMENTS: &[(&str, &str)] = &[
    ("promote_due", PROMOTE_DUE_SQL),
    ("pick_pending", PICK_PENDING_SQL),
    ("take", TAKE_SQL),
    ("complete", COMPLETE_SQL),
    ("heartbeat", HEARTBEAT_SQL),
    ("expired", EXPIRED_SQL),
    ("cancel_requests", CANCEL_REQUESTS_SQL),
    ("next_eta", NEXT_ETA_SQL),
    ("next_deadline", NEXT_DEADLINE_SQL),
];
