//! The value classes of schedules and flow control in `stoker._core`, and the
//! argument conversions their `Engine` methods share.

use pyo3::prelude::*;

use crate::records::record_class;
use pyo3::types::PyBytes;
use stoker_engine::{
    BreakerConfig, EngineError, FireOutcome, Limits, RateLimit, ScheduleSpec, Verdict,
};

/// A stored schedule.
#[pyclass(frozen, module = "stoker._core")]
pub struct Schedule {
    pub(crate) inner: stoker_engine::ScheduleRecord,
}

record_class! {
    Schedule {
        copy id: i64,
        opt_str name,
        opt_str source,
        str labels,
        copy paused: bool,
        /// None once a one-shot schedule has fired.
        copy next_fire_ms: Option<i64>,
        copy last_fire_ms: Option<i64>,
        /// Jobs this schedule enqueued.
        copy enqueued: i64,
        copy created_ms: i64,
    }
    {
        /// cron, interval or once.
        #[getter]
        fn kind(&self) -> &'static str {
            self.inner.spec.kind()
        }

        #[getter]
        fn cron(&self) -> Option<&str> {
            match &self.inner.spec {
                ScheduleSpec::Cron { expr, .. } => Some(expr),
                _ => None,
            }
        }

        #[getter]
        fn timezone(&self) -> Option<&str> {
            match &self.inner.spec {
                ScheduleSpec::Cron { timezone, .. } => Some(timezone),
                _ => None,
            }
        }

        #[getter]
        fn every_ms(&self) -> Option<i64> {
            match &self.inner.spec {
                ScheduleSpec::Interval { every_ms, .. } => Some(*every_ms),
                _ => None,
            }
        }

        /// The fire time of a one-shot schedule, or the first fire of an interval.
        #[getter]
        fn at_ms(&self) -> Option<i64> {
            match &self.inner.spec {
                ScheduleSpec::Interval { start_ms, .. } => *start_ms,
                ScheduleSpec::Once { at_ms } => Some(*at_ms),
                ScheduleSpec::Cron { .. } => None,
            }
        }

        /// skip or catch_up.
        #[getter]
        fn missed(&self) -> &'static str {
            self.inner.missed.as_str()
        }

        #[getter]
        fn task_name(&self) -> &str {
            &self.inner.job.task_name
        }

        #[getter]
        fn queue(&self) -> &str {
            &self.inner.job.queue
        }

        #[getter]
        fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.inner.job.payload)
        }

        fn __repr__(&self) -> String {
            format!(
                "Schedule(id={}, name={:?}, kind={:?}, task_name={:?}, next_fire_ms={:?}, paused={})",
                self.inner.id,
                self.inner.name,
                self.inner.spec.kind(),
                self.inner.job.task_name,
                self.inner.next_fire_ms,
                self.inner.paused
            )
        }
    }
}

/// One recorded fire of a schedule.
#[pyclass(frozen, module = "stoker._core")]
pub struct ScheduleFire {
    pub(crate) inner: stoker_engine::FireRecord,
}

record_class! {
    ScheduleFire {
        copy schedule_id: i64,
        /// The fire time that was due.
        copy fire_ms: i64,
        /// When it was handled.
        copy at_ms: i64,
        /// enqueued, duplicate, missed, vetoed or error.
        str outcome,
        copy job_id: Option<i64>,
        /// Later fire times that had also passed.
        copy missed: i64,
        str owner,
        str message,
    }
    {
        fn __repr__(&self) -> String {
            format!(
                "ScheduleFire(schedule_id={}, fire_ms={}, outcome={:?}, job_id={:?}, missed={})",
                self.inner.schedule_id,
                self.inner.fire_ms,
                self.inner.outcome,
                self.inner.job_id,
                self.inner.missed
            )
        }
    }
}

/// The limits of one task or queue and their state.
#[pyclass(frozen, module = "stoker._core")]
pub struct LimitState {
    pub(crate) inner: stoker_engine::LimitState,
}

record_class! {
    LimitState {
        /// ``task:NAME`` or ``queue:NAME``.
        str key,
        /// Whole tokens in the bucket now.
        copy tokens: Option<i64>,
        /// Running jobs of the task now.
        copy running: i64,
        /// Counted failures within the breaker's window.
        copy recent_failures: i64,
        copy open_until_ms: Option<i64>,
    }
    {
        /// ``(count, per_ms, burst)`` of the token bucket.
        #[getter]
        fn rate(&self) -> Option<(i64, i64, i64)> {
            self.inner
                .limits
                .rate
                .map(|rate| (rate.count, rate.per_ms, rate.burst))
        }

        #[getter]
        fn concurrency(&self) -> Option<i64> {
            self.inner.limits.concurrency
        }

        /// ``(failures, window_ms, cooldown_ms)`` of the circuit breaker.
        #[getter]
        fn breaker(&self) -> Option<(i64, i64, i64)> {
            self.inner
                .limits
                .breaker
                .map(|b| (b.failures, b.window_ms, b.cooldown_ms))
        }

        /// closed, open or half_open.
        #[getter]
        fn breaker_state(&self) -> &'static str {
            self.inner.breaker_state.as_str()
        }

        fn __repr__(&self) -> String {
            format!(
                "LimitState(key={:?}, tokens={:?}, running={}, breaker_state={:?})",
                self.inner.key,
                self.inner.tokens,
                self.inner.running,
                self.inner.breaker_state.as_str()
            )
        }
    }
}

/// Limits from the keyword arguments of ``Engine.set_limits``.
pub fn limits(
    rate: Option<(i64, i64, i64)>,
    concurrency: Option<i64>,
    breaker: Option<(i64, i64, i64)>,
) -> Limits {
    Limits {
        rate: rate.map(|(count, per_ms, burst)| RateLimit {
            count,
            per_ms,
            burst,
        }),
        concurrency,
        breaker: breaker.map(|(failures, window_ms, cooldown_ms)| BreakerConfig {
            failures,
            window_ms,
            cooldown_ms,
        }),
    }
}

/// A schedule spec from the keyword arguments of ``Engine.create_schedule``.
pub fn spec(
    kind: &str,
    cron: Option<String>,
    timezone: String,
    every_ms: Option<i64>,
    at_ms: Option<i64>,
) -> Result<ScheduleSpec, EngineError> {
    let missing = |what: &str| EngineError::invalid(format!("a {kind} schedule needs {what}"));
    match kind {
        "cron" => Ok(ScheduleSpec::Cron {
            expr: cron.ok_or_else(|| missing("cron"))?,
            timezone,
        }),
        "interval" => Ok(ScheduleSpec::Interval {
            every_ms: every_ms.ok_or_else(|| missing("every_ms"))?,
            start_ms: at_ms,
        }),
        "once" => Ok(ScheduleSpec::Once {
            at_ms: at_ms.ok_or_else(|| missing("at_ms"))?,
        }),
        other => Err(EngineError::invalid(format!(
            "kind must be cron, interval or once, got {other:?}"
        ))),
    }
}

/// The verdict from ``veto`` and ``error`` (at most one of them).
pub fn verdict(veto: Option<String>, error: Option<String>) -> Result<Verdict, EngineError> {
    match (veto, error) {
        (None, None) => Ok(Verdict::Fire),
        (Some(message), None) => Ok(Verdict::Veto(message)),
        (None, Some(message)) => Ok(Verdict::Error(message)),
        (Some(_), Some(_)) => Err(EngineError::invalid("give veto or error, not both")),
    }
}

/// ``(outcome, job_id)`` of a fire.
pub fn outcome(outcome: FireOutcome) -> (&'static str, Option<i64>) {
    (outcome.as_str(), outcome.job_id())
}
