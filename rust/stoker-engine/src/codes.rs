//! The codes a job's status is stored as, for the SQL text of both backends.
//!
//! SQLite uses a partial index only when the query's WHERE clause visibly
//! implies the index's, which a bound parameter does not, so the SQL writes
//! status codes as literals. They come from here: [`status_code!`] expands to
//! the literal (for `concat!`, at compile time), and the constants below are
//! for `format!` strings. [`crate::Status::code`] is defined through the same
//! macro, and a test pins every code to its name: they are stored in
//! databases and must never change.

/// The literal code of a status named in lower case:
/// `concat!("... WHERE status = ", status_code!(running))`.
#[macro_export]
macro_rules! status_code {
    (pending) => {
        0
    };
    (scheduled) => {
        1
    };
    (running) => {
        2
    };
    (complete) => {
        3
    };
    (dead) => {
        4
    };
    (cancelled) => {
        5
    };
    (expired) => {
        6
    };
    (waiting) => {
        7
    };
}

/// The codes of the statuses of a job that has not finished (pending,
/// scheduled, running, waiting), as the text of an SQL list:
/// `concat!("status IN (", unfinished_codes!(), ")")`.
#[macro_export]
macro_rules! unfinished_codes {
    () => {
        concat!(
            $crate::status_code!(pending),
            ", ",
            $crate::status_code!(scheduled),
            ", ",
            $crate::status_code!(running),
            ", ",
            $crate::status_code!(waiting)
        )
    };
}

/// The codes of the statuses of a job that has not started (pending,
/// scheduled, waiting), as the text of an SQL list.
#[macro_export]
macro_rules! unstarted_codes {
    () => {
        concat!(
            $crate::status_code!(pending),
            ", ",
            $crate::status_code!(scheduled),
            ", ",
            $crate::status_code!(waiting)
        )
    };
}

/// The code of [`crate::Status::Pending`], for `format!` strings.
pub const PENDING: i64 = status_code!(pending);
/// The code of [`crate::Status::Scheduled`].
pub const SCHEDULED: i64 = status_code!(scheduled);
/// The code of [`crate::Status::Running`].
pub const RUNNING: i64 = status_code!(running);
/// The code of [`crate::Status::Complete`].
pub const COMPLETE: i64 = status_code!(complete);
/// The code of [`crate::Status::Dead`].
pub const DEAD: i64 = status_code!(dead);
/// The code of [`crate::Status::Cancelled`].
pub const CANCELLED: i64 = status_code!(cancelled);
/// The code of [`crate::Status::Expired`].
pub const EXPIRED: i64 = status_code!(expired);
/// The code of [`crate::Status::Waiting`].
pub const WAITING: i64 = status_code!(waiting);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    /// The codes in databases written by every stoker so far: changing one
    /// would make stored jobs read as another status.
    const PINNED: [(&str, i64); 8] = [
        ("pending", 0),
        ("scheduled", 1),
        ("running", 2),
        ("complete", 3),
        ("dead", 4),
        ("cancelled", 5),
        ("expired", 6),
        ("waiting", 7),
    ];

    #[test]
    fn every_status_code_is_pinned_to_its_name() {
        let stored: Vec<(&str, i64)> = Status::ALL
            .iter()
            .map(|status| (status.as_str(), status.code()))
            .collect();
        assert_eq!(stored, PINNED);
        for (name, code) in PINNED {
            assert_eq!(Status::from_code(code).map(Status::as_str), Some(name));
        }
        assert_eq!(
            [PENDING, SCHEDULED, RUNNING, COMPLETE, DEAD, CANCELLED, EXPIRED, WAITING],
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(concat!("status = ", status_code!(waiting)), "status = 7");
        let list = |text: &str| -> Vec<Status> {
            text.split(", ")
                .map(|code| Status::from_code(code.parse().unwrap()).unwrap())
                .collect()
        };
        let unfinished: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|status| !status.is_terminal())
            .collect();
        assert_eq!(list(unfinished_codes!()), unfinished);
        let unstarted: Vec<Status> = unfinished
            .into_iter()
            .filter(|status| *status != Status::Running)
            .collect();
        assert_eq!(list(unstarted_codes!()), unstarted);
    }
}
