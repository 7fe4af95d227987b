//! A failed attempt and the reaping of expired leases, written once over the
//! statements a backend's transaction offers ([`AttemptSteps`]): read the
//! state, let [`decide_failure`] rule, write the result.

use crate::decide::failure::{
    counts_against_breaker, decide_failure, FailureDecision, FailureState,
};
use crate::error::EngineError;
use crate::model::{FailOutcome, FailureKind, FailureReport, Status};
use crate::storage::{Jitter, LEASE_EXPIRED_EXC_TYPE};

/// The attempt a step is for, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub job_id: i64,
    /// The attempt's fencing token.
    pub token: i64,
    pub now_ms: i64,
}

/// A job's failed attempts and crashes, as counted against its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub failures: i64,
    pub crashes: i64,
}

/// The statements of a failed attempt, each run inside its transaction.
pub trait AttemptSteps {
    /// The backend's error.
    type Error: From<EngineError>;

    /// The job's failure state (locked where writers race), if it exists.
    fn failure_state(&mut self, job_id: i64) -> Result<Option<FailureState>, Self::Error>;

    /// Records the outcome `outcome` of the attempt as refused: stale.
    fn record_stale(&mut self, at: Attempt, owner: &str, outcome: &str) -> Result<(), Self::Error>;

    /// Adds the failure to the job's error history and stores its usage.
    fn record_error(&mut self, at: Attempt, report: &FailureReport) -> Result<(), Self::Error>;

    /// Counts the failure against its task's circuit breaker (called only
    /// for a kind that counts, see [`counts_against_breaker`]).
    fn count_against_breaker(&mut self, at: Attempt, kind: FailureKind) -> Result<(), Self::Error>;

    /// Ends the running attempt with `status`, with these counts, and
    /// resolves what depends on the job.
    fn finish(&mut self, at: Attempt, status: Status, counts: Counts) -> Result<(), Self::Error>;

    /// Puts the running attempt back as `status` (pending or scheduled) due
    /// at `eta_ms`, with these counts.
    fn retry(
        &mut self,
        at: Attempt,
        status: Status,
        eta_ms: i64,
        counts: Counts,
    ) -> Result<(), Self::Error>;

    /// Gives a job that its supervisor held, sent to no worker, back to
    /// pending ([`FailOutcome::Returned`]); `None` if it was not held.
    fn return_held(&mut self, at: Attempt) -> Result<Option<FailOutcome>, Self::Error>;
}

/// Records the failure `report` of attempt `token` and applies the retry
/// policy.
pub fn fail<T: AttemptSteps>(
    tx: &mut T,
    job_id: i64,
    token: i64,
    report: &FailureReport,
    jitter: Jitter<'_>,
    now_ms: i64,
) -> Result<FailOutcome, T::Error> {
    let state = tx
        .failure_state(job_id)?
        .ok_or(EngineError::NotFound(job_id))?;
    let decision = decide_failure(&state, token, report, jitter, now_ms);
    let at = Attempt {
        job_id,
        token,
        now_ms,
    };
    if decision == FailureDecision::Stale {
        let owner = state.lease_owner.unwrap_or_default();
        tx.record_stale(at, &owner, "fail")?;
        return Ok(FailOutcome::Stale);
    }
    tx.record_error(at, report)?;
    if counts_against_breaker(report.kind) {
        tx.count_against_breaker(at, report.kind)?;
    }
    match decision {
        FailureDecision::Stale => {}
        FailureDecision::Finish {
            status,
            failures,
            crashes,
        } => tx.finish(at, status, Counts { failures, crashes })?,
        FailureDecision::Retry {
            status,
            eta_ms,
            failures,
            crashes,
        } => tx.retry(at, status, eta_ms, Counts { failures, crashes })?,
    }
    Ok(decision.outcome())
}

/// A running attempt whose lease ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub job_id: i64,
    pub token: i64,
    pub owner: Option<String>,
    /// When the lease (or, for an orphaned job, its supervisor's
    /// registration) ran out.
    pub deadline_ms: i64,
    /// Whether it is the supervisor's registration that expired, not the
    /// job's own lease (PostgreSQL's supervisors register).
    pub orphaned: bool,
}

/// The failure recorded for an expired lease, reaped at `now_ms`.
pub fn lease_expired_report(lease: &ExpiredLease, now_ms: i64) -> FailureReport {
    let ExpiredLease {
        token, deadline_ms, ..
    } = lease;
    let owner = lease.owner.clone().unwrap_or_default();
    let message = if lease.orphaned {
        format!(
            "the supervisor {owner:?} running attempt {token} stopped renewing its registration, \
             which expired at {deadline_ms} ms (reaped at {now_ms} ms): its host or process was lost"
        )
    } else {
        format!(
            "the lease of {owner:?} on attempt {token} expired at {deadline_ms} ms without a \
             heartbeat (reaped at {now_ms} ms)"
        )
    };
    FailureReport {
        kind: FailureKind::LeaseExpired,
        exc_type: LEASE_EXPIRED_EXC_TYPE.to_owned(),
        message,
        traceback: String::new(),
        exc_pickle: None,
        worker: owner,
        retryable: true,
        usage: None,
    }
}

/// Reaps the `expired` leases: a job its supervisor held goes back to
/// pending, any other fails as lease_expired.
pub fn reap<T: AttemptSteps>(
    tx: &mut T,
    expired: Vec<ExpiredLease>,
    jitter: Jitter<'_>,
    now_ms: i64,
) -> Result<Vec<(i64, FailOutcome)>, T::Error> {
    let mut reaped = Vec::with_capacity(expired.len());
    for lease in expired {
        let (job_id, token) = (lease.job_id, lease.token);
        let at = Attempt {
            job_id,
            token,
            now_ms,
        };
        if let Some(outcome) = tx.return_held(at)? {
            reaped.push((job_id, outcome));
            continue;
        }
        let report = lease_expired_report(&lease, now_ms);
        let outcome = fail(tx, job_id, token, &report, &mut *jitter, now_ms)?;
        reaped.push((job_id, outcome));
    }
    Ok(reaped)
}

/// `give_back(job_id, token)` for each of `jobs`: the outcomes of the ones
/// given back.
pub fn give_back_each<E>(
    jobs: &[(i64, i64)],
    mut give_back: impl FnMut(i64, i64) -> Result<Option<FailOutcome>, E>,
) -> Result<Vec<(i64, FailOutcome)>, E> {
    let mut returned = Vec::new();
    for &(job_id, token) in jobs {
        if let Some(outcome) = give_back(job_id, token)? {
            returned.push((job_id, outcome));
        }
    }
    Ok(returned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One job in memory; the steps log what they write.
    struct Memory {
        state: Option<FailureState>,
        held: bool,
        log: Vec<String>,
    }

    impl AttemptSteps for Memory {
        type Error = EngineError;

        fn failure_state(&mut self, _: i64) -> Result<Option<FailureState>, EngineError> {
            Ok(self.state.clone())
        }

        fn record_stale(
            &mut self,
            at: Attempt,
            owner: &str,
            outcome: &str,
        ) -> Result<(), EngineError> {
            self.log
                .push(format!("stale {outcome} {} {owner}", at.token));
            Ok(())
        }

        fn record_error(&mut self, _: Attempt, report: &FailureReport) -> Result<(), EngineError> {
            self.log.push(format!("error {}", report.kind.as_str()));
            Ok(())
        }

        fn count_against_breaker(&mut self, _: Attempt, _: FailureKind) -> Result<(), EngineError> {
            self.log.push("breaker".to_owned());
            Ok(())
        }

        fn finish(
            &mut self,
            _: Attempt,
            status: Status,
            counts: Counts,
        ) -> Result<(), EngineError> {
            let Counts { failures, crashes } = counts;
            self.log.push(format!(
                "finish {} {:?}",
                status.as_str(),
                (failures, crashes)
            ));
            Ok(())
        }

        fn retry(
            &mut self,
            _: Attempt,
            status: Status,
            eta_ms: i64,
            counts: Counts,
        ) -> Result<(), EngineError> {
            let Counts { failures, crashes } = counts;
            self.log.push(format!(
                "retry {} {eta_ms} {:?}",
                status.as_str(),
                (failures, crashes)
            ));
            Ok(())
        }

        fn return_held(&mut self, _: Attempt) -> Result<Option<FailOutcome>, EngineError> {
            Ok(self.held.then_some(FailOutcome::Returned))
        }
    }

    fn running() -> FailureState {
        FailureState {
            status: Status::Running,
            attempt: 1,
            failures: 0,
            crashes: 0,
            max_retries: 0,
            max_crashes: 3,
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
            jitter: 0.0,
            lease_owner: Some("sup".to_owned()),
            cancel_requested: false,
        }
    }

    fn lease(orphaned: bool) -> ExpiredLease {
        ExpiredLease {
            job_id: 9,
            token: 1,
            owner: Some("sup".to_owned()),
            deadline_ms: 100,
            orphaned,
        }
    }

    fn no_jitter() -> f64 {
        0.0
    }

    #[test]
    fn a_failure_is_recorded_counted_and_decided() {
        let mut job = Memory {
            state: Some(running()),
            held: false,
            log: Vec::new(),
        };
        let report = lease_expired_report(&lease(false), 200);
        let outcome = fail(&mut job, 9, 1, &report, &mut no_jitter, 200).unwrap();
        assert_eq!(outcome, FailOutcome::Retry { eta_ms: 200 });
        assert_eq!(job.log, ["error lease_expired", "retry pending 200 (0, 1)"]);
    }

    #[test]
    fn a_stale_failure_writes_nothing_but_its_record_and_a_missing_job_is_an_error() {
        let mut job = Memory {
            state: Some(running()),
            held: false,
            log: Vec::new(),
        };
        let report = lease_expired_report(&lease(false), 200);
        assert_eq!(
            fail(&mut job, 9, 7, &report, &mut no_jitter, 200),
            Ok(FailOutcome::Stale)
        );
        assert_eq!(job.log, ["stale fail 7 sup"]);
        let mut gone = Memory {
            state: None,
            held: false,
            log: Vec::new(),
        };
        assert_eq!(
            fail(&mut gone, 9, 1, &report, &mut no_jitter, 200),
            Err(EngineError::NotFound(9))
        );
    }

    #[test]
    fn reaping_returns_a_held_job_and_fails_the_others_as_lease_expired() {
        let mut held = Memory {
            state: Some(running()),
            held: true,
            log: Vec::new(),
        };
        let reaped = reap(&mut held, vec![lease(false)], &mut no_jitter, 200).unwrap();
        assert_eq!(reaped, [(9, FailOutcome::Returned)]);
        assert!(held.log.is_empty());
        let mut lost = Memory {
            state: Some(running()),
            held: false,
            log: Vec::new(),
        };
        let reaped = reap(&mut lost, vec![lease(true)], &mut no_jitter, 200).unwrap();
        assert_eq!(reaped, [(9, FailOutcome::Retry { eta_ms: 200 })]);
    }

    #[test]
    fn the_report_of_an_expired_lease_says_whose_lease_and_when() {
        let own = lease_expired_report(&lease(false), 200);
        assert_eq!(own.kind, FailureKind::LeaseExpired);
        assert_eq!(own.exc_type, LEASE_EXPIRED_EXC_TYPE);
        assert_eq!(own.worker, "sup");
        assert_eq!(
            own.message,
            "the lease of \"sup\" on attempt 1 expired at 100 ms without a heartbeat (reaped at 200 ms)"
        );
        assert!(lease_expired_report(&lease(true), 200)
            .message
            .contains("stopped renewing its registration"));
    }

    #[test]
    fn give_back_each_keeps_the_outcomes_of_the_jobs_given_back() {
        let returned = give_back_each(&[(1, 1), (2, 1)], |job_id, _| {
            Ok::<_, EngineError>((job_id == 2).then_some(FailOutcome::Returned))
        });
        assert_eq!(returned, Ok(vec![(2, FailOutcome::Returned)]));
    }
}
