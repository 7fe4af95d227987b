//! Rate limits, concurrency limits and circuit breakers: the decisions a
//! claim and a send take on a task's and a queue's limits.
//!
//! A backend loads the `flow_limits` rows ([`LIMIT_COLUMNS`], decoded by
//! [`limit_from_row`]) inside its transaction, lets a [`Gate`] decide which
//! picked jobs run, and writes back the rows the gate changed
//! ([`LimitRow::dirty`]).

use std::collections::HashMap;

use crate::error::EngineError;
use crate::flow::{BreakerConfig, BreakerState, LimitState, Limits, RateLimit, TOKEN_SCALE};
use crate::rows::Columns;

/// The columns of `flow_limits` that [`limit_from_row`] reads, in order.
pub const LIMIT_COLUMNS: &str = "key, rate_count, rate_per_ms, burst, tokens, refilled_ms, concurrency, \
     breaker_failures, breaker_window_ms, breaker_cooldown_ms, breaker_state, open_until_ms, wake_ms";

/// One task's or queue's limits as they stand at the time of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRow {
    pub rate: Option<RateLimit>,
    /// The bucket's tokens (scaled by [`TOKEN_SCALE`]), refilled up to now.
    pub tokens: i64,
    pub concurrency: Option<i64>,
    pub breaker: Option<BreakerConfig>,
    pub state: BreakerState,
    pub open_until_ms: Option<i64>,
    /// When a held-back job may run: a wake-up hint for supervisors.
    pub wake_ms: Option<i64>,
    /// Whether this claim already let a half-open breaker's probe through.
    pub probe_taken: bool,
    /// Whether the row must be written back.
    pub dirty: bool,
}

/// A `flow_limits` row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLimit {
    pub rate: Option<RateLimit>,
    pub tokens: i64,
    pub refilled_ms: i64,
    pub concurrency: Option<i64>,
    pub breaker: Option<BreakerConfig>,
    pub state: BreakerState,
    pub open_until_ms: Option<i64>,
    pub wake_ms: Option<i64>,
}

impl LimitRow {
    /// The limits of `stored` at `now_ms`: the bucket refilled, an open
    /// breaker whose cooldown ended half-open, a wake-up hint that passed
    /// dropped (the last two mark the row to be written back).
    pub fn at(stored: StoredLimit, now_ms: i64) -> LimitRow {
        let tokens = stored.rate.map_or(stored.tokens, |rate| {
            rate.refill(stored.tokens, now_ms - stored.refilled_ms)
        });
        let mut limit = LimitRow {
            rate: stored.rate,
            tokens,
            concurrency: stored.concurrency,
            breaker: stored.breaker,
            state: stored.state,
            open_until_ms: stored.open_until_ms,
            wake_ms: stored.wake_ms,
            probe_taken: false,
            dirty: false,
        };
        if limit.state == BreakerState::Open
            && !matches!(limit.open_until_ms, Some(t) if t > now_ms)
        {
            limit.state = BreakerState::HalfOpen;
            limit.open_until_ms = None;
            limit.dirty = true;
        }
        if limit.wake_ms.is_some_and(|t| t <= now_ms) {
            limit.wake_ms = None;
            limit.dirty = true;
        }
        limit
    }

    /// Notes that a held-back job may run at `at_ms`, unless an earlier
    /// hint stands.
    pub fn hint(&mut self, at_ms: i64) {
        if !matches!(self.wake_ms, Some(t) if t <= at_ms) {
            self.wake_ms = Some(at_ms);
            self.dirty = true;
        }
    }
}

impl LimitRow {
    /// What the limits of `key` look like to people: whole tokens, the
    /// running jobs of the task and the failures within the breaker's window
    /// (counted by the caller).
    pub fn report(&self, key: String, running: i64, recent_failures: i64) -> LimitState {
        LimitState {
            limits: Limits {
                rate: self.rate,
                concurrency: self.concurrency,
                breaker: self.breaker,
            },
            tokens: self.rate.map(|_| self.tokens / TOKEN_SCALE),
            running,
            breaker_state: self.state,
            recent_failures,
            open_until_ms: self.open_until_ms,
            key,
        }
    }
}

/// The row to store when a key's limits are set to `limits` at `now_ms`,
/// over its `current` ones: a bucket keeps its tokens (up to the new burst)
/// or starts full, a breaker keeps its state or starts closed, and a pending
/// wake-up hint stays.
pub fn reconfigured(limits: &Limits, current: Option<&LimitRow>, now_ms: i64) -> StoredLimit {
    let tokens = match (&limits.rate, current) {
        (Some(rate), Some(row)) if row.rate.is_some() => row.tokens.min(rate.burst * TOKEN_SCALE),
        (Some(rate), _) => rate.burst * TOKEN_SCALE,
        (None, _) => 0,
    };
    let (state, open_until_ms) = match (&limits.breaker, current) {
        (Some(_), Some(row)) => (row.state, row.open_until_ms),
        _ => (BreakerState::Closed, None),
    };
    StoredLimit {
        rate: limits.rate,
        tokens,
        refilled_ms: now_ms,
        concurrency: limits.concurrency,
        breaker: limits.breaker,
        state,
        open_until_ms,
        wake_ms: current.and_then(|row| row.wake_ms),
    }
}

/// The key and limits of a `flow_limits` row read as [`LIMIT_COLUMNS`], at
/// `now_ms` (see [`LimitRow::at`]).
pub fn limit_from_row<R: Columns>(row: &R, now_ms: i64) -> Result<(String, LimitRow), R::Error> {
    let rate = match (row.opt_int(1)?, row.opt_int(2)?, row.opt_int(3)?) {
        (Some(count), Some(per_ms), Some(burst)) => Some(RateLimit {
            count,
            per_ms,
            burst,
        }),
        _ => None,
    };
    let breaker = match (row.opt_int(7)?, row.opt_int(8)?, row.opt_int(9)?) {
        (Some(failures), Some(window_ms), Some(cooldown_ms)) => Some(BreakerConfig {
            failures,
            window_ms,
            cooldown_ms,
        }),
        _ => None,
    };
    let stored = StoredLimit {
        rate,
        tokens: row.int(4)?,
        refilled_ms: row.int(5)?,
        concurrency: row.opt_int(6)?,
        breaker,
        state: BreakerState::from_code(row.int(10)?),
        open_until_ms: row.opt_int(11)?,
        wake_ms: row.opt_int(12)?,
    };
    Ok((row.text(0)?, LimitRow::at(stored, now_ms)))
}

/// Decides, inside one claim, which picked jobs their limits let run.
#[derive(Debug)]
pub struct Gate {
    limits: HashMap<String, LimitRow>,
    running: HashMap<String, i64>,
    now_ms: i64,
}

impl Gate {
    /// A gate over `limits` (by key) at `now_ms`.
    pub fn new(limits: HashMap<String, LimitRow>, now_ms: i64) -> Gate {
        Gate {
            limits,
            running: HashMap::new(),
            now_ms,
        }
    }

    /// Whether any limit is configured (otherwise every job is admitted).
    pub fn active(&self) -> bool {
        !self.limits.is_empty()
    }

    /// Whether the pending job of `task` in `queue` may be taken now; if so,
    /// its tokens are taken (none if it `prepaid` them at send) and it counts
    /// as running. `running_of` counts the running jobs of the task; it is
    /// asked once per task and claim, and only if the task has limits.
    pub fn admit<E>(
        &mut self,
        task: &str,
        queue: &str,
        prepaid: bool,
        running_of: impl FnOnce(&str) -> Result<i64, E>,
    ) -> Result<bool, E> {
        if !self.active() {
            return Ok(true);
        }
        let task_key = format!("task:{task}");
        let queue_key = format!("queue:{queue}");
        let now_ms = self.now_ms;
        let mut probe = false;
        if self.limits.contains_key(&task_key) {
            let running = match self.running.get(task) {
                Some(&count) => count,
                None => {
                    let count = running_of(task)?;
                    self.running.insert(task.to_owned(), count);
                    count
                }
            };
            let Some(limit) = self.limits.get_mut(&task_key) else {
                return Ok(false);
            };
            if limit.breaker.is_some() {
                match limit.state {
                    BreakerState::Open => {
                        if let Some(until) = limit.open_until_ms {
                            limit.hint(until);
                        }
                        return Ok(false);
                    }
                    BreakerState::HalfOpen => {
                        if running > 0 || limit.probe_taken {
                            return Ok(false);
                        }
                        probe = true;
                    }
                    BreakerState::Closed => {}
                }
            }
            if limit.concurrency.is_some_and(|k| running >= k) {
                return Ok(false);
            }
        }
        if !prepaid {
            for key in [&task_key, &queue_key] {
                if let Some(limit) = self.limits.get_mut(key) {
                    if let Some(rate) = limit.rate {
                        if limit.tokens < TOKEN_SCALE {
                            let wait = rate.ms_until_token(limit.tokens);
                            limit.hint(now_ms.saturating_add(wait));
                            return Ok(false);
                        }
                    }
                }
            }
            take_tokens(&mut self.limits, &task_key, &queue_key);
        }
        if let Some(limit) = self.limits.get_mut(&task_key) {
            if probe {
                limit.probe_taken = true;
                limit.dirty = true;
            }
        }
        *self.running.entry(task.to_owned()).or_insert(0) += 1;
        Ok(true)
    }

    /// The limits, changed ones marked [`LimitRow::dirty`], to write back.
    pub fn limits(&self) -> &HashMap<String, LimitRow> {
        &self.limits
    }
}

/// One token from each bucket of `keys` that has a rate limit.
fn take_tokens(limits: &mut HashMap<String, LimitRow>, task_key: &str, queue_key: &str) {
    for key in [task_key, queue_key] {
        if let Some(limit) = limits.get_mut(key) {
            if limit.rate.is_some() {
                limit.tokens -= TOKEN_SCALE;
                limit.dirty = true;
            }
        }
    }
}

/// What a send that fails rather than waits found in the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAdmission {
    /// No bucket applies: nothing was taken, the claim takes the tokens.
    Free,
    /// Tokens were taken now (the job is prepaid; the claim takes none).
    Prepaid,
}

/// For an enqueue of `task` in `queue` that fails rather than waits: refuses
/// it if the task's breaker is open or a bucket is empty, else takes the
/// tokens now (the changed rows are marked dirty for the caller to store).
pub fn admit_at_send(
    limits: &mut HashMap<String, LimitRow>,
    task: &str,
    queue: &str,
    now_ms: i64,
) -> Result<SendAdmission, EngineError> {
    let task_key = format!("task:{task}");
    let queue_key = format!("queue:{queue}");
    if let Some(limit) = limits.get(&task_key) {
        if limit.breaker.is_some() && limit.state == BreakerState::Open {
            return Err(EngineError::BreakerOpen {
                task_name: task.to_owned(),
                open_until_ms: limit.open_until_ms.unwrap_or(now_ms),
            });
        }
    }
    let mut admission = SendAdmission::Free;
    for key in [&task_key, &queue_key] {
        if let Some(limit) = limits.get(key) {
            if let Some(rate) = limit.rate {
                if limit.tokens < TOKEN_SCALE {
                    return Err(EngineError::RateLimited {
                        key: key.clone(),
                        retry_after_ms: rate.ms_until_token(limit.tokens),
                    });
                }
                admission = SendAdmission::Prepaid;
            }
        }
    }
    take_tokens(limits, &task_key, &queue_key);
    Ok(admission)
}

/// Whether a counted failure opens a breaker in `state`: an open one stays
/// as it is, a half-open one's probe failed and it opens again, and a closed
/// one opens when the failures within its window (`recent_failures`, asked
/// only then) reach `threshold`.
pub fn breaker_opens<E>(
    state: BreakerState,
    threshold: i64,
    recent_failures: impl FnOnce() -> Result<i64, E>,
) -> Result<bool, E> {
    Ok(match state {
        BreakerState::Open => false,
        BreakerState::HalfOpen => true,
        BreakerState::Closed => recent_failures()? >= threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    const NOW: i64 = 50_000;

    fn stored() -> StoredLimit {
        StoredLimit {
            rate: None,
            tokens: 0,
            refilled_ms: NOW,
            concurrency: None,
            breaker: None,
            state: BreakerState::Closed,
            open_until_ms: None,
            wake_ms: None,
        }
    }

    fn rate(count: i64, per_ms: i64, burst: i64) -> Option<RateLimit> {
        Some(RateLimit {
            count,
            per_ms,
            burst,
        })
    }

    fn breaker() -> Option<BreakerConfig> {
        Some(BreakerConfig {
            failures: 2,
            window_ms: 1000,
            cooldown_ms: 5000,
        })
    }

    fn gate(rows: &[(&str, StoredLimit)]) -> Gate {
        let limits = rows
            .iter()
            .map(|(key, stored)| ((*key).to_owned(), LimitRow::at(*stored, NOW)))
            .collect();
        Gate::new(limits, NOW)
    }

    fn none_running(_: &str) -> Result<i64, Infallible> {
        Ok(0)
    }

    #[test]
    fn tokens_refill_up_to_the_burst() {
        let half = LimitRow::at(
            StoredLimit {
                rate: rate(1, 1000, 3),
                tokens: 0,
                refilled_ms: NOW - 500,
                ..stored()
            },
            NOW,
        );
        assert_eq!(half.tokens, TOKEN_SCALE / 2);
        let full = LimitRow::at(
            StoredLimit {
                rate: rate(1, 1000, 3),
                tokens: 0,
                refilled_ms: NOW - 60_000,
                ..stored()
            },
            NOW,
        );
        assert_eq!(full.tokens, 3 * TOKEN_SCALE);
        assert!(!full.dirty, "a refill alone is written with the next take");
    }

    #[test]
    fn an_open_breaker_past_its_cooldown_is_half_open_and_a_passed_hint_goes() {
        let limit = LimitRow::at(
            StoredLimit {
                breaker: breaker(),
                state: BreakerState::Open,
                open_until_ms: Some(NOW),
                wake_ms: Some(NOW - 1),
                ..stored()
            },
            NOW,
        );
        assert_eq!(limit.state, BreakerState::HalfOpen);
        assert_eq!((limit.open_until_ms, limit.wake_ms), (None, None));
        assert!(limit.dirty);
    }

    #[test]
    fn without_limits_every_job_is_admitted_and_nothing_is_counted() {
        let mut gate = gate(&[]);
        let admitted = gate.admit("t", "q", false, |_| -> Result<i64, Infallible> {
            panic!("no count without limits")
        });
        assert_eq!(admitted, Ok(true));
    }

    #[test]
    fn a_concurrency_limit_admits_up_to_its_bound_counting_once() {
        let mut gate = gate(&[(
            "task:t",
            StoredLimit {
                concurrency: Some(2),
                ..stored()
            },
        )]);
        let mut counts = 0;
        let mut admit = |gate: &mut Gate| {
            gate.admit("t", "q", false, |_| -> Result<i64, Infallible> {
                counts += 1;
                Ok(1)
            })
        };
        assert_eq!(admit(&mut gate), Ok(true));
        assert_eq!(admit(&mut gate), Ok(false));
        assert_eq!(counts, 1, "the running count is read once per claim");
        assert_eq!(gate.admit("other", "q", false, none_running), Ok(true));
    }

    #[test]
    fn an_empty_bucket_holds_the_job_back_and_hints_when_a_token_comes() {
        let mut gate = gate(&[(
            "queue:q",
            StoredLimit {
                rate: rate(1, 1000, 1),
                tokens: TOKEN_SCALE,
                ..stored()
            },
        )]);
        assert_eq!(gate.admit("t", "q", false, none_running), Ok(true));
        assert_eq!(gate.admit("t", "q", false, none_running), Ok(false));
        let limit = &gate.limits()["queue:q"];
        assert_eq!(limit.tokens, 0);
        assert_eq!(limit.wake_ms, Some(NOW + 1000));
        assert!(limit.dirty);
        assert_eq!(
            gate.admit("t", "q", true, none_running),
            Ok(true),
            "a job that prepaid at send takes no token"
        );
    }

    #[test]
    fn an_open_breaker_holds_jobs_back_and_a_half_open_one_lets_one_probe_through() {
        let mut open = gate(&[(
            "task:t",
            StoredLimit {
                breaker: breaker(),
                state: BreakerState::Open,
                open_until_ms: Some(NOW + 5000),
                ..stored()
            },
        )]);
        assert_eq!(open.admit("t", "q", false, none_running), Ok(false));
        assert_eq!(open.limits()["task:t"].wake_ms, Some(NOW + 5000));

        let mut half = gate(&[(
            "task:t",
            StoredLimit {
                breaker: breaker(),
                state: BreakerState::HalfOpen,
                ..stored()
            },
        )]);
        assert_eq!(half.admit("t", "q", false, none_running), Ok(true));
        assert_eq!(half.admit("t", "q", false, none_running), Ok(false));
        assert!(half.limits()["task:t"].probe_taken);
    }

    #[test]
    fn a_send_is_refused_by_an_open_breaker_or_an_empty_bucket_else_prepaid() {
        let at = |stored: StoredLimit| {
            let mut limits = HashMap::new();
            limits.insert("task:t".to_owned(), LimitRow::at(stored, NOW));
            limits
        };
        let mut open = at(StoredLimit {
            breaker: breaker(),
            state: BreakerState::Open,
            open_until_ms: Some(NOW + 10),
            ..stored()
        });
        assert_eq!(
            admit_at_send(&mut open, "t", "q", NOW),
            Err(EngineError::BreakerOpen {
                task_name: "t".to_owned(),
                open_until_ms: NOW + 10
            })
        );
        let mut bucket = at(StoredLimit {
            rate: rate(1, 1000, 1),
            tokens: TOKEN_SCALE,
            ..stored()
        });
        assert_eq!(
            admit_at_send(&mut bucket, "t", "q", NOW),
            Ok(SendAdmission::Prepaid)
        );
        assert_eq!(bucket["task:t"].tokens, 0);
        assert_eq!(
            admit_at_send(&mut bucket, "t", "q", NOW),
            Err(EngineError::RateLimited {
                key: "task:t".to_owned(),
                retry_after_ms: 1000
            })
        );
        let mut none = HashMap::new();
        assert_eq!(
            admit_at_send(&mut none, "t", "q", NOW),
            Ok(SendAdmission::Free)
        );
    }

    #[test]
    fn new_limits_keep_the_tokens_and_breaker_state_they_can() {
        let limits = Limits {
            rate: rate(1, 1000, 2),
            concurrency: Some(3),
            breaker: breaker(),
        };
        let fresh = reconfigured(&limits, None, NOW);
        assert_eq!(fresh.tokens, 2 * TOKEN_SCALE, "a new bucket starts full");
        assert_eq!(
            (fresh.state, fresh.refilled_ms),
            (BreakerState::Closed, NOW)
        );
        let current = LimitRow::at(
            StoredLimit {
                rate: rate(1, 1000, 9),
                tokens: 5 * TOKEN_SCALE,
                breaker: breaker(),
                state: BreakerState::Open,
                open_until_ms: Some(NOW + 10),
                wake_ms: Some(NOW + 10),
                ..stored()
            },
            NOW,
        );
        let kept = reconfigured(&limits, Some(&current), NOW);
        assert_eq!(
            kept.tokens,
            2 * TOKEN_SCALE,
            "tokens above the new burst are cut"
        );
        assert_eq!(
            (kept.state, kept.open_until_ms, kept.wake_ms),
            (BreakerState::Open, Some(NOW + 10), Some(NOW + 10))
        );
        let without = reconfigured(&Limits::default(), Some(&current), NOW);
        assert_eq!((without.tokens, without.state), (0, BreakerState::Closed));
        let report = current.report("task:t".to_owned(), 1, 2);
        assert_eq!(report.tokens, Some(5));
        assert_eq!((report.running, report.recent_failures), (1, 2));
    }

    #[test]
    fn a_breaker_opens_on_its_threshold_or_a_failed_probe() {
        let never = || -> Result<i64, Infallible> { panic!("not counted") };
        assert_eq!(breaker_opens(BreakerState::Open, 2, never), Ok(false));
        assert_eq!(breaker_opens(BreakerState::HalfOpen, 2, never), Ok(true));
        assert_eq!(
            breaker_opens(BreakerState::Closed, 2, || Ok::<_, Infallible>(1)),
            Ok(false)
        );
        assert_eq!(
            breaker_opens(BreakerState::Closed, 2, || Ok::<_, Infallible>(2)),
            Ok(true)
        );
    }
}
