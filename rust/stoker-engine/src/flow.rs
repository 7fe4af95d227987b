//! Flow control: rate limits, concurrency limits, circuit breakers, unique
//! jobs, expiry, dependencies between jobs, and retention.
//!
//! All of this state lives in the database, next to the jobs, and every
//! decision is taken inside the transaction that acts on it: a claim consults
//! the limits of the jobs it picks (and skips, without failing, the ones that
//! must wait), an enqueue looks up uniqueness keys and dependencies, and the
//! transitions that finish a job resolve the jobs that depend on it. Nothing
//! that matters is kept in memory, so the limits hold across every supervisor
//! that shares the database, and survive restarts.
//!
//! - **Rate limits** are token buckets keyed `task:NAME` or `queue:NAME`:
//!   `count` tokens per `per_ms`, at most `burst` stored. A claimed job takes
//!   one token from its task's bucket and one from its queue's; a job whose
//!   bucket is empty stays pending, and the bucket's refill time becomes a
//!   wake-up hint ([`crate::Engine::next_wakeup_ms`]). Tokens are fixed-point
//!   integers ([`TOKEN_SCALE`] per token), so refills are exact.
//! - **Concurrency limits** cap the running jobs of a task across all
//!   supervisors; a claim counts them through a partial index.
//! - **Circuit breakers**: `failures` counted failed attempts of a task (errors,
//!   timeouts, crashes; an expired lease is its supervisor's fault, not the
//!   task's) within `window_ms` open the breaker for `cooldown_ms`. Then it is
//!   half-open: one job at a time runs as a probe; its success closes the
//!   breaker, its failure opens it again.
//! - **Unique jobs**: an enqueue whose `unique_key` matches a job that is still
//!   waiting, pending, scheduled or running returns that job instead (a partial
//!   unique index guards the rule).
//! - **Expiry**: a job not started `expires_after_ms` after enqueue ends
//!   `expired`; claims expire due jobs before they pick, so one never runs.
//! - **Dependencies**: a job enqueued with `depends_on` waits until all of them
//!   are complete; if one ends dead, cancelled or expired, it ends dead with a
//!   `dependency` error record naming it, and so, in turn, do its dependents.
//! - **Retention**: a finished job's result and error history are dropped
//!   `result_ttl_ms` after it finished, in bounded batches.

use crate::engine::Engine;
use crate::error::EngineError;
use crate::model::{check_duration, NewJob, Status};

/// Tokens are stored as integers in units of 1/TOKEN_SCALE of a token.
pub const TOKEN_SCALE: i64 = 1_000_000;

/// The exception type recorded when a dependency failed.
pub const DEPENDENCY_FAILED_EXC_TYPE: &str = "stoker.errors.DependencyFailedError";

/// A job may depend on at most this many jobs.
pub const MAX_DEPENDENCIES: usize = 1000;

/// Where a limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The jobs of one task (by task name).
    Task,
    /// The jobs of one queue.
    Queue,
}

impl LimitScope {
    /// The key of a limit: `task:NAME` or `queue:NAME`.
    pub fn key(self, name: &str) -> String {
        match self {
            LimitScope::Task => format!("task:{name}"),
            LimitScope::Queue => format!("queue:{name}"),
        }
    }

    /// `"task"` or `"queue"`; anything else is an invalid option.
    pub fn parse(scope: &str) -> Result<LimitScope, EngineError> {
        match scope {
            "task" => Ok(LimitScope::Task),
            "queue" => Ok(LimitScope::Queue),
            other => Err(EngineError::invalid(format!(
                "scope must be task or queue, got {other:?}"
            ))),
        }
    }
}

/// A token bucket: `count` tokens every `per_ms`, at most `burst` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per period.
    pub count: i64,
    /// The period.
    pub per_ms: i64,
    /// The most tokens the bucket holds (1: evenly spaced, no burst).
    pub burst: i64,
}

impl RateLimit {
    /// The bucket's tokens (scaled) `elapsed_ms` after it held `tokens`.
    pub fn refill(&self, tokens: i64, elapsed_ms: i64) -> i64 {
        let full = i128::from(self.burst) * i128::from(TOKEN_SCALE);
        let added =
            i128::from(elapsed_ms.max(0)) * i128::from(self.count) * i128::from(TOKEN_SCALE)
                / i128::from(self.per_ms);
        let total = (i128::from(tokens) + added).min(full);
        i64::try_from(total).unwrap_or(i64::MAX)
    }

    /// How long until a bucket holding `tokens` (scaled) has a whole token.
    pub fn ms_until_token(&self, tokens: i64) -> i64 {
        let missing = i128::from(TOKEN_SCALE - tokens);
        if missing <= 0 {
            return 0;
        }
        let per_token = i128::from(self.count) * i128::from(TOKEN_SCALE);
        let ms = (missing * i128::from(self.per_ms) + per_token - 1) / per_token;
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    fn validate(&self) -> Result<(), EngineError> {
        if self.count < 1 {
            return Err(EngineError::invalid(format!(
                "rate limit count must be >= 1, got {}",
                self.count
            )));
        }
        if self.per_ms < 1 {
            return Err(EngineError::invalid(format!(
                "rate limit per_ms must be >= 1, got {}",
                self.per_ms
            )));
        }
        check_duration("rate limit per_ms", self.per_ms)?;
        if !(1..=1_000_000_000).contains(&self.burst) {
            return Err(EngineError::invalid(format!(
                "rate limit burst must be between 1 and 1e9, got {}",
                self.burst
            )));
        }
        if self.count > 1_000_000_000 {
            return Err(EngineError::invalid(format!(
                "rate limit count must be at most 1e9, got {}",
                self.count
            )));
        }
        Ok(())
    }
}

/// When a task's circuit breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failed attempts within the window that open the breaker.
    pub failures: i64,
    /// The window failures are counted in.
    pub window_ms: i64,
    /// How long the breaker stays open before a probe may run.
    pub cooldown_ms: i64,
}

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Jobs run.
    Closed,
    /// Jobs wait (or their enqueue fails, by option).
    Open,
    /// One job at a time runs as a probe.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The stored code.
    pub const fn code(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// The state stored as `code` (unknown codes read as closed).
    pub const fn from_code(code: i64) -> BreakerState {
        match code {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// The limits of one task or queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// A token bucket.
    pub rate: Option<RateLimit>,
    /// At most this many running at once (tasks only).
    pub concurrency: Option<i64>,
    /// A circuit breaker (tasks only).
    pub breaker: Option<BreakerConfig>,
}

impl Limits {
    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.concurrency.is_none() && self.breaker.is_none()
    }

    /// Checks every value; the error names the first wrong one.
    pub fn validate(&self, scope: LimitScope) -> Result<(), EngineError> {
        if let Some(rate) = &self.rate {
            rate.validate()?;
        }
        if scope == LimitScope::Queue && (self.concurrency.is_some() || self.breaker.is_some()) {
            return Err(EngineError::invalid(
                "a queue takes only a rate limit; concurrency limits and circuit breakers are per task",
            ));
        }
        if let Some(concurrency) = self.concurrency {
            if concurrency < 1 {
                return Err(EngineError::invalid(format!(
                    "concurrency must be >= 1, got {concurrency}"
                )));
            }
        }
        if let Some(breaker) = &self.breaker {
            if breaker.failures < 1 {
                return Err(EngineError::invalid(format!(
                    "breaker failures must be >= 1, got {}",
                    breaker.failures
                )));
            }
            if breaker.window_ms < 1 {
                return Err(EngineError::invalid(format!(
                    "breaker window_ms must be >= 1, got {}",
                    breaker.window_ms
                )));
            }
            check_duration("breaker window_ms", breaker.window_ms)?;
            check_duration("breaker cooldown_ms", breaker.cooldown_ms)?;
        }
        Ok(())
    }
}

/// The configuration and current state of one limit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    /// `task:NAME` or `queue:NAME`.
    pub key: String,
    /// What is limited.
    pub limits: Limits,
    /// Whole tokens in the bucket now (rounded down), if rate limited.
    pub tokens: Option<i64>,
    /// Running jobs of the task now (tasks only).
    pub running: i64,
    /// The breaker's state now (closed when there is no breaker).
    pub breaker_state: BreakerState,
    /// Counted failures within the breaker's window now.
    pub recent_failures: i64,
    /// While open: when a probe may run.
    pub open_until_ms: Option<i64>,
}

/// Checks the flow-control fields of a job (called by [`NewJob::validate`]).
pub fn validate_job(job: &NewJob) -> Result<(), EngineError> {
    if let Some(key) = &job.unique_key {
        if key.is_empty() {
            return Err(EngineError::invalid(
                "unique_key must not be empty (None for no key)",
            ));
        }
    }
    if let Some(expires) = job.expires_after_ms {
        check_duration("expires_after_ms", expires)?;
    }
    if job.depends_on.len() > MAX_DEPENDENCIES {
        return Err(EngineError::invalid(format!(
            "depends_on holds at most {MAX_DEPENDENCIES} jobs, got {}",
            job.depends_on.len()
        )));
    }
    Ok(())
}

impl Engine {
    /// Sets (or, with empty limits, removes) the limits of a task or queue.
    /// A bucket that already exists keeps its tokens (at most the new burst);
    /// a new one starts full.
    pub fn set_limits(
        &self,
        scope: LimitScope,
        name: &str,
        limits: &Limits,
    ) -> Result<(), EngineError> {
        if name.is_empty() {
            return Err(EngineError::invalid("name must not be empty"));
        }
        limits.validate(scope)?;
        self.storage
            .set_limits(&scope.key(name), limits, self.now_ms())
    }

    /// Every limit with its state now, by key.
    pub fn limits(&self) -> Result<Vec<LimitState>, EngineError> {
        self.storage.limits(self.now_ms())
    }

    /// Ends as expired up to `limit` jobs whose expiry passed; their ids.
    pub fn expire_due(&self, limit: usize) -> Result<Vec<i64>, EngineError> {
        self.storage.expire_due(limit, self.now_ms())
    }

    /// The jobs `job_id` depends on, with their statuses, in the order given.
    pub fn dependencies(&self, job_id: i64) -> Result<Vec<(i64, Status)>, EngineError> {
        self.storage.dependencies(job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_SECOND_10: RateLimit = RateLimit {
        count: 10,
        per_ms: 1000,
        burst: 1,
    };

    #[test]
    fn refill_is_exact_and_capped_at_the_burst() {
        assert_eq!(PER_SECOND_10.refill(0, 100), TOKEN_SCALE);
        assert_eq!(PER_SECOND_10.refill(0, 50), TOKEN_SCALE / 2);
        assert_eq!(PER_SECOND_10.refill(0, 10_000), TOKEN_SCALE, "burst 1");
        let burst = RateLimit {
            burst: 5,
            ..PER_SECOND_10
        };
        assert_eq!(burst.refill(0, 10_000), 5 * TOKEN_SCALE);
        assert_eq!(
            burst.refill(TOKEN_SCALE, -5),
            TOKEN_SCALE,
            "time never runs back"
        );
    }

    #[test]
    fn the_next_token_is_rounded_up_to_a_millisecond() {
        assert_eq!(PER_SECOND_10.ms_until_token(0), 100);
        assert_eq!(PER_SECOND_10.ms_until_token(TOKEN_SCALE / 2), 50);
        assert_eq!(PER_SECOND_10.ms_until_token(TOKEN_SCALE), 0);
        let thirds = RateLimit {
            count: 3,
            per_ms: 1000,
            burst: 1,
        };
        assert_eq!(thirds.ms_until_token(0), 334);
        assert!(thirds.refill(0, 334) >= TOKEN_SCALE);
        assert!(thirds.refill(0, 333) < TOKEN_SCALE);
    }

    #[test]
    fn limits_are_validated_by_scope() {
        let breaker = Limits {
            breaker: Some(BreakerConfig {
                failures: 3,
                window_ms: 1000,
                cooldown_ms: 500,
            }),
            ..Limits::default()
        };
        assert!(breaker.validate(LimitScope::Task).is_ok());
        assert!(breaker.validate(LimitScope::Queue).is_err());
        let zero = Limits {
            concurrency: Some(0),
            ..Limits::default()
        };
        assert!(zero.validate(LimitScope::Task).is_err());
    }
}
