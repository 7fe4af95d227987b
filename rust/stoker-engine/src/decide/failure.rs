//! What a failed attempt does to its job.

use crate::model::{FailOutcome, FailureKind, FailureReport, Status};
use crate::retry::backoff_ms;
use crate::rows::Columns;
use crate::storage::Jitter;

/// The columns of a job that the failure of one of its attempts depends on,
/// as a backend read them (under a row lock where writers race).
#[derive(Debug, Clone, PartialEq)]
pub struct FailureState {
    pub status: Status,
    pub attempt: i64,
    pub failures: i64,
    pub crashes: i64,
    pub max_retries: i64,
    pub max_crashes: i64,
    pub backoff_base_ms: i64,
    pub backoff_cap_ms: i64,
    pub jitter: f64,
    pub lease_owner: Option<String>,
    pub cancel_requested: bool,
}

/// The columns of `jobs` that [`failure_state_from_row`] reads, in order.
pub const FAILURE_COLUMNS: &str = "status, attempt, failures, crashes, max_retries, max_crashes, \
     backoff_base_ms, backoff_cap_ms, jitter, lease_owner, cancel_requested";

/// The failure state of a job read as [`FAILURE_COLUMNS`].
pub fn failure_state_from_row<R: Columns>(row: &R) -> Result<FailureState, R::Error> {
    Ok(FailureState {
        status: row.status(0)?,
        attempt: row.int(1)?,
        failures: row.int(2)?,
        crashes: row.int(3)?,
        max_retries: row.int(4)?,
        max_crashes: row.int(5)?,
        backoff_base_ms: row.int(6)?,
        backoff_cap_ms: row.int(7)?,
        jitter: row.float(8)?,
        lease_owner: row.opt_text(9)?,
        cancel_requested: row.flag(10)?,
    })
}

/// What a backend writes for a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureDecision {
    /// The token is not the job's running attempt: record a stale outcome
    /// and change nothing.
    Stale,
    /// The job ends with `status` (cancelled, because a cancel was
    /// requested, or dead, its retries spent or the failure not retryable),
    /// finished now, with the counts given; its dependents are then resolved.
    Finish {
        status: Status,
        failures: i64,
        crashes: i64,
    },
    /// The job runs again at `eta_ms`: pending if that is now, scheduled
    /// otherwise.
    Retry {
        status: Status,
        eta_ms: i64,
        failures: i64,
        crashes: i64,
    },
}

impl FailureDecision {
    /// The outcome reported to the caller.
    pub const fn outcome(self) -> FailOutcome {
        match self {
            FailureDecision::Stale => FailOutcome::Stale,
            FailureDecision::Finish {
                status: Status::Cancelled,
                ..
            } => FailOutcome::Cancelled,
            FailureDecision::Finish { .. } => FailOutcome::Dead,
            FailureDecision::Retry { eta_ms, .. } => FailOutcome::Retry { eta_ms },
        }
    }
}

/// Decides what the failure `report` of attempt `token` does to a job in
/// `state`. A crash (or an expired lease) counts against `max_crashes`, any
/// other failure against `max_retries`; a pending cancel request wins over a
/// retry, so a cancel is never lost. `jitter` is drawn once, for a retry only.
pub fn decide_failure(
    state: &FailureState,
    token: i64,
    report: &FailureReport,
    jitter: Jitter<'_>,
    now_ms: i64,
) -> FailureDecision {
    if state.status != Status::Running || state.attempt != token {
        return FailureDecision::Stale;
    }
    let (mut failures, mut crashes) = (state.failures, state.crashes);
    let (count, bound) = if report.kind.is_crash() {
        crashes += 1;
        (crashes, state.max_crashes)
    } else {
        failures += 1;
        (failures, state.max_retries)
    };
    if state.cancel_requested {
        return FailureDecision::Finish {
            status: Status::Cancelled,
            failures,
            crashes,
        };
    }
    if report.retryable && count <= bound {
        let n = u32::try_from(count).unwrap_or(u32::MAX);
        let delay = backoff_ms(
            n,
            state.backoff_base_ms,
            state.backoff_cap_ms,
            state.jitter,
            jitter(),
        );
        let status = if delay == 0 {
            Status::Pending
        } else {
            Status::Scheduled
        };
        return FailureDecision::Retry {
            status,
            eta_ms: now_ms.saturating_add(delay),
            failures,
            crashes,
        };
    }
    FailureDecision::Finish {
        status: Status::Dead,
        failures,
        crashes,
    }
}

/// Whether a failure of `kind` counts against its task's circuit breaker:
/// an expired lease is its supervisor's fault, not the task's.
pub const fn counts_against_breaker(kind: FailureKind) -> bool {
    !matches!(kind, FailureKind::LeaseExpired)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn running() -> FailureState {
        FailureState {
            status: Status::Running,
            attempt: 3,
            failures: 0,
            crashes: 0,
            max_retries: 2,
            max_crashes: 1,
            backoff_base_ms: 100,
            backoff_cap_ms: 10_000,
            jitter: 0.0,
            lease_owner: Some("sup".to_owned()),
            cancel_requested: false,
        }
    }

    fn report(kind: FailureKind, retryable: bool) -> FailureReport {
        FailureReport {
            kind,
            exc_type: "ValueError".to_owned(),
            message: "boom".to_owned(),
            traceback: String::new(),
            exc_pickle: None,
            worker: "w1".to_owned(),
            retryable,
            usage: None,
        }
    }

    fn decide(state: &FailureState, token: i64, report: &FailureReport) -> FailureDecision {
        let mut draws = 0;
        let mut jitter = || {
            draws += 1;
            0.5
        };
        let decision = decide_failure(state, token, report, &mut jitter, NOW);
        let expected_draws = i32::from(matches!(decision, FailureDecision::Retry { .. }));
        assert_eq!(draws, expected_draws, "jitter is drawn for a retry only");
        decision
    }

    #[test]
    fn an_old_token_or_a_job_not_running_is_stale() {
        let error = report(FailureKind::Error, true);
        assert_eq!(decide(&running(), 2, &error), FailureDecision::Stale);
        let done = FailureState {
            status: Status::Complete,
            ..running()
        };
        assert_eq!(decide(&done, 3, &error), FailureDecision::Stale);
        assert_eq!(FailureDecision::Stale.outcome(), FailOutcome::Stale);
    }

    #[test]
    fn a_retryable_error_within_its_bound_retries_after_the_backoff() {
        let decision = decide(&running(), 3, &report(FailureKind::Error, true));
        let delay = backoff_ms(1, 100, 10_000, 0.0, 0.5);
        assert_eq!(
            decision,
            FailureDecision::Retry {
                status: Status::Scheduled,
                eta_ms: NOW + delay,
                failures: 1,
                crashes: 0,
            }
        );
        assert_eq!(
            decision.outcome(),
            FailOutcome::Retry {
                eta_ms: NOW + delay
            }
        );
    }

    #[test]
    fn a_retry_without_backoff_is_pending_at_once() {
        let state = FailureState {
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
            ..running()
        };
        assert_eq!(
            decide(&state, 3, &report(FailureKind::Timeout, true)),
            FailureDecision::Retry {
                status: Status::Pending,
                eta_ms: NOW,
                failures: 1,
                crashes: 0,
            }
        );
    }

    #[test]
    fn retries_spent_or_not_retryable_is_dead() {
        let spent = FailureState {
            failures: 2,
            ..running()
        };
        let dead = FailureDecision::Finish {
            status: Status::Dead,
            failures: 3,
            crashes: 0,
        };
        assert_eq!(decide(&spent, 3, &report(FailureKind::Error, true)), dead);
        assert_eq!(dead.outcome(), FailOutcome::Dead);
        assert_eq!(
            decide(&running(), 3, &report(FailureKind::Error, false)),
            FailureDecision::Finish {
                status: Status::Dead,
                failures: 1,
                crashes: 0,
            }
        );
    }

    #[test]
    fn crashes_count_against_their_own_bound() {
        let once = decide(&running(), 3, &report(FailureKind::Crash, true));
        assert!(matches!(
            once,
            FailureDecision::Retry {
                failures: 0,
                crashes: 1,
                ..
            }
        ));
        let crashed = FailureState {
            crashes: 1,
            ..running()
        };
        assert_eq!(
            decide(&crashed, 3, &report(FailureKind::LeaseExpired, true)),
            FailureDecision::Finish {
                status: Status::Dead,
                failures: 0,
                crashes: 2,
            }
        );
    }

    #[test]
    fn a_cancel_request_wins_over_a_retry() {
        let state = FailureState {
            cancel_requested: true,
            ..running()
        };
        let decision = decide(&state, 3, &report(FailureKind::Error, true));
        assert_eq!(
            decision,
            FailureDecision::Finish {
                status: Status::Cancelled,
                failures: 1,
                crashes: 0,
            }
        );
        assert_eq!(decision.outcome(), FailOutcome::Cancelled);
    }

    #[test]
    fn an_expired_lease_does_not_count_against_the_breaker() {
        assert!(!counts_against_breaker(FailureKind::LeaseExpired));
        assert!(counts_against_breaker(FailureKind::Crash));
        assert!(counts_against_breaker(FailureKind::Error));
    }
}
