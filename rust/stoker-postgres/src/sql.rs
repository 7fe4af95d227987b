//! The statements of the job transitions, with status codes written as
//! literals (`status_code!`), as the SQLite backend writes them.

use crate::*;

/// Moves the scheduled jobs whose eta has come to pending, earliest first;
/// rows another claimer is promoting are skipped, not waited for.
pub const PROMOTE_DUE_SQL: &str = stoker_engine::promote_due_sql!(" FOR UPDATE SKIP LOCKED");

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
pub const EXPIRED_SQL: &str = stoker_engine::expired_sql!(" FOR UPDATE SKIP LOCKED");

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

/// Marks ($4 = 1) or unmarks ($4 = 0) running jobs their owner ($3) holds,
/// sent to no worker, whose tokens are current.
pub(crate) const MARK_HELD_SQL: &str = concat!(
    "UPDATE jobs j SET held = $4 \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS h (id, token) \
     WHERE j.id = h.id AND j.attempt = h.token AND j.status = ",
    status_code!(running),
    " AND j.lease_owner = $3"
);
