//! Durable schedules: a job template fired by cron expression (in a time
//! zone), at a fixed interval, or once.
//!
//! A schedule row holds its next fire time. Firing claims that time and
//! enqueues the job in one transaction, fenced on the fire time it read
//! (`UPDATE schedules SET next_fire_ms = next WHERE id = ? AND next_fire_ms =
//! fire`), so when several supervisors race for one fire, exactly one enqueues
//! and the others learn they lost; a supervisor killed mid-fire has committed
//! all of it or nothing.
//!
//! A fire is *missed* when the next fire time after it has also passed: the
//! schedule fell a whole period behind, because no supervisor ran. Each
//! schedule picks what then happens ([`MissedFires`]). A one-shot schedule has
//! no later fire, so it is never missed: late, it fires at once.
//!
//! A schedule may name a *source*, a condition the supervisor evaluates before
//! each fire; a veto is passed to [`Engine::fire_schedule`], which then
//! advances the schedule and records the veto instead of enqueueing.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::model::{check_duration, NewJob};

/// When counting missed cron fires, stop after this many and jump ahead.
const MAX_COUNTED_MISSES: i64 = 10_000;

/// A schedule keeps at most this many fire records (the newest).
pub const FIRE_LOG_KEEP: i64 = 1000;

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleSpec {
    /// A cron expression (5 fields, or 6 with seconds first) evaluated in an
    /// IANA time zone (`UTC`, `Europe/Berlin`).
    Cron {
        /// The expression.
        expr: String,
        /// The time zone.
        timezone: String,
    },
    /// Every `every_ms`, the first time `every_ms` after creation (or at
    /// `start_ms`).
    Interval {
        /// The period.
        every_ms: i64,
        /// The first fire, if not one period after creation.
        start_ms: Option<i64>,
    },
    /// Once, at `at_ms`.
    Once {
        /// The fire time.
        at_ms: i64,
    },
}

impl ScheduleSpec {
    /// `cron`, `interval` or `once`.
    pub const fn kind(&self) -> &'static str {
        match self {
            ScheduleSpec::Cron { .. } => "cron",
            ScheduleSpec::Interval { .. } => "interval",
            ScheduleSpec::Once { .. } => "once",
        }
    }

    /// Checks the spec; the error names what is wrong.
    pub fn validate(&self) -> Result<(), EngineError> {
        match self {
            ScheduleSpec::Cron { expr, timezone } => {
                parse_cron(expr)?;
                parse_timezone(timezone)?;
            }
            ScheduleSpec::Interval { every_ms, start_ms } => {
                if *every_ms < 1 {
                    return Err(EngineError::invalid(format!(
                        "every_ms must be >= 1, got {every_ms}"
                    )));
                }
                check_duration("every_ms", *every_ms)?;
                if let Some(start) = start_ms {
                    if *start < 0 {
                        return Err(EngineError::invalid(format!(
                            "start_ms must be >= 0, got {start}"
                        )));
                    }
                }
            }
            ScheduleSpec::Once { at_ms } => {
                if *at_ms < 0 {
                    return Err(EngineError::invalid(format!(
                        "at_ms must be >= 0, got {at_ms}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first fire of a schedule created at `now_ms`.
    pub fn first_fire_ms(&self, now_ms: i64) -> Result<Option<i64>, EngineError> {
        match self {
            ScheduleSpec::Interval {
                every_ms,
                start_ms: Some(start),
            } => {
                let _ = every_ms;
                Ok(Some(*start))
            }
            ScheduleSpec::Once { at_ms } => Ok(Some(*at_ms)),
            _ => self.next_after(now_ms),
        }
    }

    /// The first fire strictly after `after_ms`; None when there is none.
    pub fn next_after(&self, after_ms: i64) -> Result<Option<i64>, EngineError> {
        match self {
            ScheduleSpec::Cron { expr, timezone } => {
                let cron = parse_cron(expr)?;
                let tz = parse_timezone(timezone)?;
                let start = utc_from_ms(after_ms)?.with_timezone(&tz);
                let next = cron.find_next_occurrence(&start, false).map_err(|error| {
                    EngineError::invalid(format!(
                        "cron {expr:?} has no fire after {start}: {error}"
                    ))
                })?;
                Ok(Some(next.timestamp_millis()))
            }
            ScheduleSpec::Interval { every_ms, .. } => Ok(Some(after_ms.saturating_add(*every_ms))),
            ScheduleSpec::Once { .. } => Ok(None),
        }
    }

    /// What to do with the fire due at `fire_ms`, seen at `now_ms`: how many
    /// later fire times have also passed, and the next fire after `now_ms`.
    pub fn plan(&self, fire_ms: i64, now_ms: i64) -> Result<FirePlan, EngineError> {
        if let ScheduleSpec::Interval { every_ms, .. } = self {
            // Arithmetic, so that a long outage costs nothing to count.
            let behind = (now_ms - fire_ms).max(0) / every_ms;
            return Ok(FirePlan {
                later_due: behind,
                next_fire_ms: Some(fire_ms.saturating_add((behind + 1).saturating_mul(*every_ms))),
            });
        }
        let mut later_due = 0;
        let mut next = self.next_after(fire_ms)?;
        while let Some(at) = next {
            if at > now_ms {
                break;
            }
            later_due += 1;
            next = if later_due >= MAX_COUNTED_MISSES {
                self.next_after(now_ms)?
            } else {
                self.next_after(at)?
            };
            if later_due >= MAX_COUNTED_MISSES {
                break;
            }
        }
        Ok(FirePlan {
            later_due,
            next_fire_ms: next,
        })
    }
}

/// What a fire does, worked out from the schedule's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirePlan {
    /// Fire times after the due one that have also passed (0: on time).
    pub later_due: i64,
    /// The schedule's next fire, after now; None when it is finished.
    pub next_fire_ms: Option<i64>,
}

/// What happens to fires that were missed while no supervisor ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissedFires {
    /// Drop them: nothing is enqueued until the next fire time to come.
    Skip,
    /// Enqueue one job for all of them, at once, then go on as scheduled.
    CatchUp,
}

impl MissedFires {
    /// `skip` or `catch_up`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MissedFires::Skip => "skip",
            MissedFires::CatchUp => "catch_up",
        }
    }

    /// The policy named `name`; anything else is an invalid option.
    pub fn parse(name: &str) -> Result<MissedFires, EngineError> {
        match name {
            "skip" => Ok(MissedFires::Skip),
            "catch_up" => Ok(MissedFires::CatchUp),
            other => Err(EngineError::invalid(format!(
                "missed must be skip or catch_up, got {other:?}"
            ))),
        }
    }
}

/// A schedule to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    /// A unique name: creating a schedule with the name of an existing one
    /// updates that one instead (so a program can declare its schedules at
    /// every start). None for an anonymous schedule.
    pub name: Option<String>,
    /// When it fires.
    pub spec: ScheduleSpec,
    /// The job each fire enqueues (its delay, eta, dependencies and
    /// fail-when-limited are not used: a fire enqueues a job runnable now).
    pub job: NewJob,
    /// What happens to missed fires.
    pub missed: MissedFires,
    /// The condition the supervisor evaluates before each fire, by name.
    pub source: Option<String>,
    /// Opaque labels, kept for the source and for listings.
    pub labels: String,
}

impl NewSchedule {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), EngineError> {
        if matches!(&self.name, Some(name) if name.is_empty()) {
            return Err(EngineError::invalid(
                "schedule name must not be empty (None for no name)",
            ));
        }
        if matches!(&self.source, Some(source) if source.is_empty()) {
            return Err(EngineError::invalid(
                "schedule source must not be empty (None for no source)",
            ));
        }
        self.spec.validate()?;
        self.job.validate()?;
        if !self.job.depends_on.is_empty() {
            return Err(EngineError::invalid(
                "a scheduled job cannot depend on other jobs",
            ));
        }
        if self.job.fail_when_limited {
            return Err(EngineError::invalid(
                "a scheduled job cannot fail when limited: it waits for its limits",
            ));
        }
        Ok(())
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub struct ScheduleRecord {
    pub id: i64,
    pub name: Option<String>,
    pub spec: ScheduleSpec,
    /// The job template.
    pub job: NewJob,
    pub missed: MissedFires,
    pub source: Option<String>,
    pub labels: String,
    pub paused: bool,
    /// The next fire; None once a one-shot schedule has fired.
    pub next_fire_ms: Option<i64>,
    pub last_fire_ms: Option<i64>,
    /// Jobs enqueued by this schedule.
    pub enqueued: i64,
    pub created_ms: i64,
}

/// One fire of a schedule, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireRecord {
    /// The record's id.
    pub id: i64,
    /// The schedule.
    pub schedule_id: i64,
    /// The fire time that was due.
    pub fire_ms: i64,
    /// When it was handled.
    pub at_ms: i64,
    /// `enqueued`, `duplicate` (a unique job was still live), `missed`,
    /// `vetoed` or `error` (the source failed).
    pub outcome: String,
    /// The job enqueued (or found, for a duplicate).
    pub job_id: Option<i64>,
    /// Later fire times that had also passed (see [`MissedFires`]).
    pub missed: i64,
    /// The supervisor that handled it.
    pub owner: String,
    /// The veto's or error's message.
    pub message: String,
}

/// A source's verdict on one fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fire.
    Fire,
    /// The source vetoed this fire (recorded as `vetoed`).
    Veto(String),
    /// The source failed (recorded as `error`); the fire is skipped.
    Error(String),
}

/// What became of a fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    /// A job was enqueued (`created`), or an existing unique job found.
    Enqueued {
        /// The job.
        job_id: i64,
        /// False when a live job with the template's unique key was found.
        created: bool,
    },
    /// Missed fires were skipped.
    Missed,
    /// Vetoed by the source.
    Vetoed,
    /// The source failed; the fire was skipped.
    Error,
    /// Another supervisor fired it first, or it was paused, changed or
    /// deleted meanwhile: nothing was done.
    Lost,
}

impl FireOutcome {
    /// `enqueued`, `duplicate`, `missed`, `vetoed`, `error` or `lost`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Enqueued { created: true, .. } => "enqueued",
            FireOutcome::Enqueued { created: false, .. } => "duplicate",
            FireOutcome::Missed => "missed",
            FireOutcome::Vetoed => "vetoed",
            FireOutcome::Error => "error",
            FireOutcome::Lost => "lost",
        }
    }

    /// The job enqueued or found.
    pub const fn job_id(self) -> Option<i64> {
        match self {
            FireOutcome::Enqueued { job_id, .. } => Some(job_id),
            _ => None,
        }
    }
}

/// Works out a fire's plan from the schedule row, inside the fire's
/// transaction.
pub type Planner<'a> = &'a dyn Fn(&ScheduleSpec, i64) -> Result<FirePlan, EngineError>;

fn parse_cron(expr: &str) -> Result<Cron, EngineError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|error| EngineError::invalid(format!("cron {expr:?} is not valid: {error}")))
}

fn parse_timezone(timezone: &str) -> Result<Tz, EngineError> {
    Tz::from_str(timezone).map_err(|_| {
        EngineError::invalid(format!(
            "timezone must be an IANA time zone name like UTC or Europe/Berlin, got {timezone:?}"
        ))
    })
}

fn utc_from_ms(ms: i64) -> Result<DateTime<Utc>, EngineError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| EngineError::invalid(format!("time {ms} ms is out of range")))
}

impl Engine {
    /// Creates a schedule (or updates the one with the same name); its id.
    pub fn create_schedule(&self, schedule: &NewSchedule) -> Result<i64, EngineError> {
        schedule.validate()?;
        let now_ms = self.now_ms();
        let first = schedule.spec.first_fire_ms(now_ms)?;
        self.storage.create_schedule(schedule, first, now_ms)
    }

    /// Every schedule, by id.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.storage.schedules()
    }

    /// One schedule; [`EngineError::ScheduleNotFound`] if there is none.
    pub fn get_schedule(&self, id: i64) -> Result<ScheduleRecord, EngineError> {
        self.storage.get_schedule(id)
    }

    /// Pauses or resumes a schedule. A resumed schedule keeps its next fire
    /// time; if that passed meanwhile, its missed-fire policy applies.
    pub fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<(), EngineError> {
        self.storage.set_schedule_paused(id, paused)
    }

    /// Deletes a schedule and its fire records; false if there was none.
    pub fn delete_schedule(&self, id: i64) -> Result<bool, EngineError> {
        self.storage.delete_schedule(id)
    }

    /// Schedules whose next fire has come (not paused), earliest first.
    pub fn due_schedules(&self, limit: usize) -> Result<Vec<ScheduleRecord>, EngineError> {
        self.storage.due_schedules(limit, self.now_ms())
    }

    /// Fires the schedule's fire due at `fire_ms` (as read from a due
    /// schedule): claims the fire time and, by the verdict and the missed-fire
    /// policy, enqueues one job, all in one transaction.
    pub fn fire_schedule(
        &self,
        id: i64,
        fire_ms: i64,
        verdict: &Verdict,
        owner: &str,
    ) -> Result<FireOutcome, EngineError> {
        if owner.is_empty() {
            return Err(EngineError::invalid("owner must not be empty"));
        }
        let now_ms = self.now_ms();
        let planner = |spec: &ScheduleSpec, fire: i64| spec.plan(fire, now_ms);
        self.storage
            .fire_schedule(id, fire_ms, verdict, &planner, owner, now_ms)
    }

    /// Fires every due schedule that has no source (up to `limit`); the
    /// outcomes by schedule id.
    pub fn fire_due(
        &self,
        limit: usize,
        owner: &str,
    ) -> Result<Vec<(i64, FireOutcome)>, EngineError> {
        let mut outcomes = Vec::new();
        for schedule in self.due_schedules(limit)? {
            if schedule.source.is_some() {
                continue;
            }
            if let Some(fire_ms) = schedule.next_fire_ms {
                let outcome = self.fire_schedule(schedule.id, fire_ms, &Verdict::Fire, owner)?;
                outcomes.push((schedule.id, outcome));
            }
        }
        Ok(outcomes)
    }

    /// The fire records of a schedule, newest first.
    pub fn schedule_fires(&self, id: i64, limit: usize) -> Result<Vec<FireRecord>, EngineError> {
        self.storage.schedule_fires(id, limit)
    }

    /// The earliest next fire of a schedule that is not paused.
    pub fn next_fire_ms(&self) -> Result<Option<i64>, EngineError> {
        self.storage.next_fire_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2023-11-14T22:13:20Z
    const T0: i64 = 1_700_000_000_000;

    fn cron(expr: &str, timezone: &str) -> ScheduleSpec {
        ScheduleSpec::Cron {
            expr: expr.to_owned(),
            timezone: timezone.to_owned(),
        }
    }

    #[test]
    fn cron_fires_at_the_next_match_in_its_time_zone() {
        // Next 03:00 after 2023-11-14T22:13:20Z: in UTC, 2023-11-15T03:00Z;
        // in Berlin (UTC+1 in November), 2023-11-15T02:00Z.
        assert_eq!(
            cron("0 3 * * *", "UTC").next_after(T0).unwrap(),
            Some(1_700_017_200_000)
        );
        assert_eq!(
            cron("0 3 * * *", "Europe/Berlin").next_after(T0).unwrap(),
            Some(1_700_013_600_000)
        );
        // Six fields: seconds first. Strictly after a time that is a match.
        assert_eq!(
            cron("*/10 * * * * *", "UTC").next_after(T0).unwrap(),
            Some(T0 + 10_000)
        );
        assert_eq!(
            cron("* * * * * *", "UTC").next_after(T0 + 500).unwrap(),
            Some(T0 + 1000)
        );
    }

    #[test]
    fn bad_cron_and_zone_are_invalid_options_naming_them() {
        let error = cron("61 * * * *", "UTC").validate().unwrap_err();
        assert!(error.to_string().contains("61 * * * *"), "{error}");
        let error = cron("* * * * *", "Mars/Olympus").validate().unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
    }

    #[test]
    fn plans_count_the_later_fires_that_passed() {
        let every = ScheduleSpec::Interval {
            every_ms: 1000,
            start_ms: None,
        };
        assert_eq!(
            every.plan(T0, T0 + 10).unwrap(),
            FirePlan {
                later_due: 0,
                next_fire_ms: Some(T0 + 1000)
            }
        );
        assert_eq!(
            every.plan(T0, T0 + 3500).unwrap(),
            FirePlan {
                later_due: 3,
                next_fire_ms: Some(T0 + 4000)
            }
        );
        let minutely = cron("* * * * *", "UTC");
        // T0 is 22:13:20; the due fire 22:14:00, seen at 22:16:30.
        let fire = T0 + 40_000;
        assert_eq!(
            minutely.plan(fire, fire + 150_000).unwrap(),
            FirePlan {
                later_due: 2,
                next_fire_ms: Some(fire + 180_000)
            }
        );
        let once = ScheduleSpec::Once { at_ms: T0 };
        assert_eq!(
            once.plan(T0, T0 + 1_000_000).unwrap(),
            FirePlan {
                later_due: 0,
                next_fire_ms: None
            }
        );
    }

    #[test]
    fn a_long_cron_outage_is_counted_up_to_a_bound() {
        let secondly = cron("* * * * * *", "UTC");
        let plan = secondly.plan(T0, T0 + 30 * 86_400_000).unwrap();
        assert_eq!(plan.later_due, MAX_COUNTED_MISSES);
        assert_eq!(plan.next_fire_ms, Some(T0 + 30 * 86_400_000 + 1000));
    }
}
