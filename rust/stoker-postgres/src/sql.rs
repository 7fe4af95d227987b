//! The statements of the job transitions, with status codes written as
//! literals (`status_code!`), as the SQLite backend writes them.

use crate::*;

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

/// Ends a failed running attempt: `$2` is the final status (dead or
/// cancelled), `$4` and `$5` the failure and crash counts.
pub(crate) const FAILED_FINISH_SQL: &str = concat!(
    "UPDATE jobs SET status = $2, finished_ms = $3, failures = $4, crashes = $5, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = $1 AND attempt = $6 AND status = ",
    status_code!(running)
);

/// Puts a failed running attempt back: `$2` is pending or scheduled.
pub(crate) const FAILED_RETRY_SQL: &str = concat!(
    "UPDATE jobs SET status = $2, eta_ms = $3, failures = $4, crashes = $5, lease_owner = NULL, \
     lease_deadline_ms = NULL WHERE id = $1 AND attempt = $6 AND status = ",
    status_code!(running)
);

/// Puts a running attempt back to pending; a job whose cancel was requested
/// ends cancelled rather than going back, so the request is never lost.
pub(crate) const REQUEUE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ",
    status_code!(cancelled),
    " ELSE ",
    status_code!(pending),
    " END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN $3 ELSE finished_ms END, \
     eta_ms = $3, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $1 AND attempt = $2 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Undoes a claim whose job never started: as [`REQUEUE_SQL`], and the
/// attempt is taken back, so the job reads as if it had never been claimed.
/// The token was never handed to a worker, so no outcome can carry it.
pub(crate) const RELEASE_SQL: &str = concat!(
    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ",
    status_code!(cancelled),
    " ELSE ",
    status_code!(pending),
    " END, \
     finished_ms = CASE cancel_requested WHEN 1 THEN $3 ELSE finished_ms END, \
     started_ms = CASE attempt WHEN 1 THEN NULL ELSE started_ms END, \
     attempt = attempt - 1, lease_owner = NULL, lease_deadline_ms = NULL \
     WHERE id = $1 AND attempt = $2 AND status = ",
    status_code!(running),
    " RETURNING status"
);

/// Marks ($4 = 1) or unmarks ($4 = 0) running jobs their owner ($3) holds,
/// sent to no worker, whose tokens are current.
pub(crate) const MARK_HELD_SQL: &str = concat!(
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
                "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ",
                status_code!(cancelled),
                " ELSE ",
                status_code!(pending),
                " END, \
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
pub(crate) const RETURN_HELD_SQL: &str = give_back_sql!("held = 1");

/// Gives back an expired job that its dead supervisor's workers never
/// started (see [`Storage::return_unstarted`]), as [`RETURN_HELD_SQL`] does.
pub(crate) const RETURN_UNSTARTED_SQL: &str = give_back_sql!("lease_deadline_ms < $3");
