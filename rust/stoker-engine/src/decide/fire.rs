//! One fire of a schedule: the fence, the missed-fire policy and the verdict
//! of the schedule's source, written once over the steps a backend's
//! transaction offers ([`FireSteps`]).

use crate::error::EngineError;
use crate::model::NewJob;
use crate::schedule::{FireOutcome, FirePlan, MissedFires, Planner, ScheduleRecord, Verdict};

/// The statements one fire needs, each run inside the fire's transaction.
pub trait FireSteps {
    /// The backend's error.
    type Error: From<EngineError>;

    /// The schedule, if it still exists (locked where writers race).
    fn schedule(&mut self, id: i64) -> Result<Option<ScheduleRecord>, Self::Error>;

    /// Moves the schedule's next fire from `fire_ms` to `next_fire_ms` if it
    /// is still due at `fire_ms` and not paused; whether it did. This is the
    /// fence: only the writer that still sees this fire time moves it.
    fn move_fire(
        &mut self,
        id: i64,
        fire_ms: i64,
        next_fire_ms: Option<i64>,
    ) -> Result<bool, Self::Error>;

    /// Enqueues `job`; its id, and whether it was created (false when a
    /// live job with its unique key was found).
    fn enqueue(&mut self, job: &NewJob, now_ms: i64) -> Result<(i64, bool), Self::Error>;

    /// Counts one more job enqueued by the schedule.
    fn count_enqueued(&mut self, id: i64) -> Result<(), Self::Error>;

    /// Records the fire and drops the records beyond the kept ones.
    fn record_fire(&mut self, id: i64, fire: &FireLog<'_>) -> Result<(), Self::Error>;
}

/// What is recorded of a fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FireLog<'a> {
    pub fire_ms: i64,
    pub at_ms: i64,
    pub outcome: FireOutcome,
    /// How many later fire times had also passed.
    pub missed: i64,
    pub owner: &'a str,
    pub message: &'a str,
}

/// What a fire that got past its fence does, by the source's verdict and the
/// schedule's missed-fire policy.
// One value per fire, taken apart at once: its size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum FireAction {
    /// Record the fire with this outcome and message; enqueue nothing.
    Skip(FireOutcome, String),
    /// Enqueue this job.
    Enqueue(NewJob),
}

/// Decides what the fire of `schedule` planned as `plan` does.
pub fn fire_action(schedule: &ScheduleRecord, plan: &FirePlan, verdict: &Verdict) -> FireAction {
    match verdict {
        Verdict::Veto(message) => FireAction::Skip(FireOutcome::Vetoed, message.clone()),
        Verdict::Error(message) => FireAction::Skip(FireOutcome::Error, message.clone()),
        Verdict::Fire if plan.later_due > 0 && schedule.missed == MissedFires::Skip => {
            FireAction::Skip(
                FireOutcome::Missed,
                format!(
                    "{} fire(s) were missed while no supervisor ran; skipped",
                    plan.later_due + 1
                ),
            )
        }
        Verdict::Fire => FireAction::Enqueue(NewJob {
            eta_ms: None,
            delay_ms: 0,
            depends_on: Vec::new(),
            fail_when_limited: false,
            ..schedule.job.clone()
        }),
    }
}

/// Fires schedule `id` at `fire_ms` if it is still due then and not paused
/// (otherwise [`FireOutcome::Lost`]): moves it to the planned next fire,
/// enqueues by [`fire_action`], records the fire.
pub fn fire<T: FireSteps>(
    tx: &mut T,
    id: i64,
    fire_ms: i64,
    verdict: &Verdict,
    planner: Planner<'_>,
    owner: &str,
    now_ms: i64,
) -> Result<FireOutcome, T::Error> {
    let Some(schedule) = tx.schedule(id)? else {
        return Ok(FireOutcome::Lost);
    };
    if schedule.paused || schedule.next_fire_ms != Some(fire_ms) {
        return Ok(FireOutcome::Lost);
    }
    let plan = planner(&schedule.spec, fire_ms)?;
    if !tx.move_fire(id, fire_ms, plan.next_fire_ms)? {
        return Ok(FireOutcome::Lost);
    }
    let (outcome, message) = match fire_action(&schedule, &plan, verdict) {
        FireAction::Skip(outcome, message) => (outcome, message),
        FireAction::Enqueue(job) => {
            let (job_id, created) = tx.enqueue(&job, now_ms)?;
            if created {
                tx.count_enqueued(id)?;
            }
            (FireOutcome::Enqueued { job_id, created }, String::new())
        }
    };
    let log = FireLog {
        fire_ms,
        at_ms: now_ms,
        outcome,
        missed: plan.later_due,
        owner,
        message: &message,
    };
    tx.record_fire(id, &log)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleSpec;

    fn schedule(missed: MissedFires) -> ScheduleRecord {
        ScheduleRecord {
            id: 1,
            name: None,
            spec: ScheduleSpec::Interval {
                every_ms: 1000,
                start_ms: None,
            },
            job: NewJob {
                eta_ms: Some(5),
                delay_ms: 7,
                depends_on: vec![3],
                fail_when_limited: true,
                ..NewJob::new("t", vec![1])
            },
            missed,
            source: None,
            labels: String::new(),
            paused: false,
            next_fire_ms: Some(1000),
            last_fire_ms: None,
            enqueued: 0,
            created_ms: 0,
        }
    }

    const ON_TIME: FirePlan = FirePlan {
        later_due: 0,
        next_fire_ms: Some(2000),
    };
    const BEHIND: FirePlan = FirePlan {
        later_due: 2,
        next_fire_ms: Some(4000),
    };

    #[test]
    fn a_fire_enqueues_the_template_as_a_plain_job_due_now() {
        let FireAction::Enqueue(job) =
            fire_action(&schedule(MissedFires::Skip), &ON_TIME, &Verdict::Fire)
        else {
            panic!("expected an enqueue");
        };
        assert_eq!((job.eta_ms, job.delay_ms), (None, 0));
        assert!(job.depends_on.is_empty() && !job.fail_when_limited);
        assert_eq!(job.task_name, "t");
    }

    #[test]
    fn missed_fires_are_skipped_or_caught_up_by_the_policy() {
        assert_eq!(
            fire_action(&schedule(MissedFires::Skip), &BEHIND, &Verdict::Fire),
            FireAction::Skip(
                FireOutcome::Missed,
                "3 fire(s) were missed while no supervisor ran; skipped".to_owned()
            )
        );
        assert!(matches!(
            fire_action(&schedule(MissedFires::CatchUp), &BEHIND, &Verdict::Fire),
            FireAction::Enqueue(_)
        ));
    }

    #[test]
    fn a_veto_or_a_failed_source_skips_the_fire_with_its_message() {
        let record = schedule(MissedFires::CatchUp);
        assert_eq!(
            fire_action(&record, &BEHIND, &Verdict::Veto("no".to_owned())),
            FireAction::Skip(FireOutcome::Vetoed, "no".to_owned())
        );
        assert_eq!(
            fire_action(&record, &ON_TIME, &Verdict::Error("boom".to_owned())),
            FireAction::Skip(FireOutcome::Error, "boom".to_owned())
        );
    }

    /// Steps over one schedule in memory, recording what they did.
    struct Memory {
        schedule: Option<ScheduleRecord>,
        fence_holds: bool,
        created: bool,
        log: Vec<String>,
    }

    impl FireSteps for Memory {
        type Error = EngineError;

        fn schedule(&mut self, _id: i64) -> Result<Option<ScheduleRecord>, EngineError> {
            Ok(self.schedule.clone())
        }

        fn move_fire(
            &mut self,
            _: i64,
            fire_ms: i64,
            next: Option<i64>,
        ) -> Result<bool, EngineError> {
            self.log.push(format!("move {fire_ms} -> {next:?}"));
            Ok(self.fence_holds)
        }

        fn enqueue(&mut self, _job: &NewJob, _now_ms: i64) -> Result<(i64, bool), EngineError> {
            self.log.push("enqueue".to_owned());
            Ok((42, self.created))
        }

        fn count_enqueued(&mut self, _id: i64) -> Result<(), EngineError> {
            self.log.push("count".to_owned());
            Ok(())
        }

        fn record_fire(&mut self, _id: i64, fire: &FireLog<'_>) -> Result<(), EngineError> {
            self.log.push(format!(
                "record {} missed {}",
                fire.outcome.as_str(),
                fire.missed
            ));
            Ok(())
        }
    }

    fn memory(schedule: Option<ScheduleRecord>, fence_holds: bool, created: bool) -> Memory {
        Memory {
            schedule,
            fence_holds,
            created,
            log: Vec::new(),
        }
    }

    fn run(steps: &mut Memory) -> FireOutcome {
        let planner = |_: &ScheduleSpec, _: i64| Ok(ON_TIME);
        fire(steps, 1, 1000, &Verdict::Fire, &planner, "sup", 1500).unwrap()
    }

    #[test]
    fn a_fire_moves_the_schedule_enqueues_counts_and_records() {
        let mut steps = memory(Some(schedule(MissedFires::Skip)), true, true);
        assert_eq!(
            run(&mut steps),
            FireOutcome::Enqueued {
                job_id: 42,
                created: true
            }
        );
        assert_eq!(
            steps.log,
            [
                "move 1000 -> Some(2000)",
                "enqueue",
                "count",
                "record enqueued missed 0"
            ]
        );
        let mut duplicate = memory(Some(schedule(MissedFires::Skip)), true, false);
        run(&mut duplicate);
        assert_eq!(duplicate.log[2], "record duplicate missed 0");
    }

    #[test]
    fn a_fire_that_another_writer_moved_or_that_is_gone_paused_or_changed_is_lost() {
        let mut fenced = memory(Some(schedule(MissedFires::Skip)), false, true);
        assert_eq!(run(&mut fenced), FireOutcome::Lost);
        assert_eq!(fenced.log, ["move 1000 -> Some(2000)"]);
        assert_eq!(run(&mut memory(None, true, true)), FireOutcome::Lost);
        let paused = ScheduleRecord {
            paused: true,
            ..schedule(MissedFires::Skip)
        };
        assert_eq!(
            run(&mut memory(Some(paused), true, true)),
            FireOutcome::Lost
        );
        let moved = ScheduleRecord {
            next_fire_ms: Some(3000),
            ..schedule(MissedFires::Skip)
        };
        let mut steps = memory(Some(moved), true, true);
        assert_eq!(run(&mut steps), FireOutcome::Lost);
        assert!(steps.log.is_empty());
    }
}
