//! Schedules on a manual clock: cron, interval and one-shot fires, the
//! missed-fire policies, vetoes, exactly-once fires between two engines, and
//! the schedule lifecycle.

#[macro_use]
mod common;

use std::sync::Arc;

use common::{job, Fixture, START_MS};
use stoker_engine::{
    EngineError, FireOutcome, ManualClock, MissedFires, NewJob, NewSchedule, ScheduleSpec, Status,
    Verdict,
};

fn every(ms: i64) -> ScheduleSpec {
    ScheduleSpec::Interval {
        every_ms: ms,
        start_ms: None,
    }
}

fn schedule(spec: ScheduleSpec, missed: MissedFires) -> NewSchedule {
    NewSchedule {
        name: None,
        spec,
        job: job(0),
        missed,
        source: None,
        labels: String::new(),
    }
}

fn fire_all(fx: &Fixture) -> Vec<(i64, FireOutcome)> {
    fx.engine.fire_due(100, "sup-a").unwrap()
}

fn outcomes(fired: &[(i64, FireOutcome)]) -> Vec<&'static str> {
    fired.iter().map(|(_, outcome)| outcome.as_str()).collect()
}

backend_tests! {
    fn an_interval_schedule_fires_once_per_period(fx) {
        let id = fx
            .engine
            .create_schedule(&schedule(every(1000), MissedFires::Skip))
            .unwrap();
        assert_eq!(fx.engine.next_fire_ms().unwrap(), Some(START_MS + 1000));
        assert!(fire_all(&fx).is_empty(), "not due yet");
        fx.advance(1000);
        let fired = fire_all(&fx);
        assert_eq!(outcomes(&fired), vec!["enqueued"]);
        let job_id = fired[0].1.job_id().unwrap();
        assert_eq!(fx.engine.status(job_id).unwrap(), Status::Pending);
        assert!(fire_all(&fx).is_empty(), "the fire time was claimed");
        fx.advance(1000);
        assert_eq!(outcomes(&fire_all(&fx)), vec!["enqueued"]);
        let record = fx.engine.get_schedule(id).unwrap();
        assert_eq!(record.enqueued, 2);
        assert_eq!(record.next_fire_ms, Some(START_MS + 3000));
        assert_eq!(record.last_fire_ms, Some(START_MS + 2000));
        let fires = fx.engine.schedule_fires(id, 10).unwrap();
        assert_eq!(
            fires.iter().map(|f| f.fire_ms).collect::<Vec<_>>(),
            vec![START_MS + 2000, START_MS + 1000]
        );
        assert_eq!(fires[0].owner, "sup-a");
    }

    fn a_cron_schedule_fires_at_its_matches_in_its_time_zone(fx) {
        // START_MS is 2023-11-14T22:13:20Z; Berlin is UTC+1 then.
        let id = fx
            .engine
            .create_schedule(&schedule(
                ScheduleSpec::Cron {
                    expr: "30 23 * * *".into(),
                    timezone: "Europe/Berlin".into(),
                },
                MissedFires::Skip,
            ))
            .unwrap();
        let first = START_MS + 16 * 60 * 1000 + 40_000; // 22:30:00Z = 23:30 Berlin
        assert_eq!(
            fx.engine.get_schedule(id).unwrap().next_fire_ms,
            Some(first)
        );
        fx.advance(first - START_MS);
        assert_eq!(outcomes(&fire_all(&fx)), vec!["enqueued"]);
        assert_eq!(
            fx.engine.get_schedule(id).unwrap().next_fire_ms,
            Some(first + 86_400_000)
        );
        assert!(matches!(
            fx.engine.create_schedule(&schedule(
                ScheduleSpec::Cron {
                    expr: "not cron".into(),
                    timezone: "UTC".into()
                },
                MissedFires::Skip
            )),
            Err(EngineError::InvalidOption(_))
        ));
    }

    fn a_one_shot_schedule_fires_once_even_late(fx) {
        let id = fx
            .engine
            .create_schedule(&schedule(
                ScheduleSpec::Once {
                    at_ms: START_MS + 500,
                },
                MissedFires::Skip,
            ))
            .unwrap();
        fx.advance(10_000);
        assert_eq!(outcomes(&fire_all(&fx)), vec!["enqueued"]);
        fx.advance(10_000);
        assert!(fire_all(&fx).is_empty());
        let record = fx.engine.get_schedule(id).unwrap();
        assert_eq!((record.next_fire_ms, record.enqueued), (None, 1));
    }

    fn missed_fires_are_skipped_or_caught_up_once(fx) {
        let skip = fx
            .engine
            .create_schedule(&schedule(every(1000), MissedFires::Skip))
            .unwrap();
        let catch_up = fx
            .engine
            .create_schedule(&schedule(every(1000), MissedFires::CatchUp))
            .unwrap();
        // Everything was down from 0 to 4.5 periods: four fire times passed.
        fx.advance(4500);
        let fired = fire_all(&fx);
        assert_eq!(fired.len(), 2);
        for (id, outcome) in fired {
            let fire = &fx.engine.schedule_fires(id, 1).unwrap()[0];
            assert_eq!(
                fire.missed, 3,
                "three fire times after the due one had passed"
            );
            if id == skip {
                assert_eq!(outcome, FireOutcome::Missed);
            } else {
                assert_eq!(id, catch_up);
                assert_eq!(outcome.as_str(), "enqueued", "one job for all of them");
            }
            assert_eq!(
                fx.engine.get_schedule(id).unwrap().next_fire_ms,
                Some(START_MS + 5000),
                "then on schedule again"
            );
        }
        assert_eq!(fx.engine.stats().unwrap()[0], (Status::Pending, 1));
    }

    fn a_veto_skips_one_fire_and_is_recorded(fx) {
        let id = fx
            .engine
            .create_schedule(&NewSchedule {
                source: Some("maintenance".into()),
                ..schedule(every(1000), MissedFires::Skip)
            })
            .unwrap();
        fx.advance(1000);
        assert!(
            fire_all(&fx).is_empty(),
            "fire_due leaves sourced schedules alone"
        );
        let due = fx.engine.due_schedules(10).unwrap();
        assert_eq!(due.len(), 1);
        let fire_ms = due[0].next_fire_ms.unwrap();
        let outcome = fx
            .engine
            .fire_schedule(
                id,
                fire_ms,
                &Verdict::Veto("in maintenance".into()),
                "sup-a",
            )
            .unwrap();
        assert_eq!(outcome, FireOutcome::Vetoed);
        let fire = &fx.engine.schedule_fires(id, 1).unwrap()[0];
        assert_eq!(
            (fire.outcome.as_str(), fire.message.as_str()),
            ("vetoed", "in maintenance")
        );
        assert_eq!(fire.job_id, None);
        fx.advance(1000);
        let fire_ms = fx.engine.due_schedules(10).unwrap()[0]
            .next_fire_ms
            .unwrap();
        let outcome = fx
            .engine
            .fire_schedule(id, fire_ms, &Verdict::Fire, "sup-a")
            .unwrap();
        assert_eq!(outcome.as_str(), "enqueued", "only that fire was skipped");
    }

    fn two_engines_racing_for_one_fire_enqueue_it_once(fx) {
        let other = fx.other_engine(Arc::new(ManualClock::new(START_MS)));
        let id = fx
            .engine
            .create_schedule(&schedule(every(1000), MissedFires::Skip))
            .unwrap();
        for round in 1..=50 {
            fx.advance(1000);
            other.advance_clock(1000).unwrap();
            // Both read the same due fire, then both try to fire it.
            let seen_a = fx.engine.due_schedules(10).unwrap()[0]
                .next_fire_ms
                .unwrap();
            let seen_b = other.due_schedules(10).unwrap()[0].next_fire_ms.unwrap();
            assert_eq!(seen_a, seen_b);
            let a = fx
                .engine
                .fire_schedule(id, seen_a, &Verdict::Fire, "a")
                .unwrap();
            let b = other
                .fire_schedule(id, seen_b, &Verdict::Fire, "b")
                .unwrap();
            let mut names = [a.as_str(), b.as_str()];
            names.sort_unstable();
            assert_eq!(names, ["enqueued", "lost"], "round {round}");
        }
        assert_eq!(fx.engine.get_schedule(id).unwrap().enqueued, 50);
        assert_eq!(fx.engine.stats().unwrap()[0], (Status::Pending, 50));
    }

    fn pause_resume_delete_and_update_by_name(fx) {
        let named = NewSchedule {
            name: Some("nightly".into()),
            ..schedule(every(1000), MissedFires::CatchUp)
        };
        let id = fx.engine.create_schedule(&named).unwrap();
        fx.engine.set_schedule_paused(id, true).unwrap();
        fx.advance(2500);
        assert!(fire_all(&fx).is_empty(), "paused");
        assert_eq!(fx.engine.next_fire_ms().unwrap(), None);
        fx.engine.set_schedule_paused(id, false).unwrap();
        let fired = fire_all(&fx);
        assert_eq!(
            outcomes(&fired),
            vec!["enqueued"],
            "caught up once on resume"
        );

        let again = fx
            .engine
            .create_schedule(&NewSchedule {
                job: NewJob {
                    priority: 7,
                    ..job(0)
                },
                ..named.clone()
            })
            .unwrap();
        assert_eq!(again, id, "the same name updates the schedule");
        assert_eq!(fx.engine.schedules().unwrap().len(), 1);
        assert_eq!(
            fx.engine.get_schedule(id).unwrap().next_fire_ms,
            Some(START_MS + 3000),
            "same timing: the next fire is kept"
        );
        assert_eq!(fx.engine.get_schedule(id).unwrap().job.priority, 7);

        assert!(fx.engine.delete_schedule(id).unwrap());
        assert!(!fx.engine.delete_schedule(id).unwrap());
        assert!(matches!(
            fx.engine.get_schedule(id),
            Err(EngineError::ScheduleNotFound(_))
        ));
        assert!(matches!(
            fx.engine.set_schedule_paused(id, true),
            Err(EngineError::ScheduleNotFound(_))
        ));
    }

    fn a_unique_schedule_does_not_pile_up_jobs(fx) {
        let id = fx
            .engine
            .create_schedule(&NewSchedule {
                job: NewJob {
                    unique_key: Some("report".into()),
                    ..job(0)
                },
                ..schedule(every(1000), MissedFires::Skip)
            })
            .unwrap();
        fx.advance(1000);
        assert_eq!(outcomes(&fire_all(&fx)), vec!["enqueued"]);
        fx.advance(1000);
        assert_eq!(outcomes(&fire_all(&fx)), vec!["duplicate"]);
        assert_eq!(fx.engine.get_schedule(id).unwrap().enqueued, 1);
    }

    fn schedules_reject_what_a_fire_cannot_do(fx) {
        for bad in [
            NewSchedule {
                job: NewJob {
                    depends_on: vec![1],
                    ..job(0)
                },
                ..schedule(every(1000), MissedFires::Skip)
            },
            NewSchedule {
                job: NewJob {
                    fail_when_limited: true,
                    ..job(0)
                },
                ..schedule(every(1000), MissedFires::Skip)
            },
            schedule(every(0), MissedFires::Skip),
        ] {
            assert!(matches!(
                fx.engine.create_schedule(&bad),
                Err(EngineError::InvalidOption(_))
            ));
        }
    }
}
