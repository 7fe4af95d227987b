//! Flow control on a manual clock: token buckets, concurrency limits, circuit
//! breakers, unique jobs, expiry, dependencies and retention.

#[macro_use]
mod common;

use common::{job, report, Fixture, START_MS};
use std::sync::Arc;
use stoker_engine::{
    BreakerConfig, BreakerState, EngineError, FailureKind, LimitScope, Limits, NewJob, RateLimit,
    Status,
};

fn task(name: &str) -> NewJob {
    NewJob::new(name, b"payload".to_vec())
}

fn rate(count: i64, per_ms: i64, burst: i64) -> Limits {
    Limits {
        rate: Some(RateLimit {
            count,
            per_ms,
            burst,
        }),
        ..Limits::default()
    }
}

fn breaker(failures: i64, window_ms: i64, cooldown_ms: i64) -> Limits {
    Limits {
        breaker: Some(BreakerConfig {
            failures,
            window_ms,
            cooldown_ms,
        }),
        ..Limits::default()
    }
}

fn fail_error(fx: &Fixture, id: i64, token: i64) {
    fx.engine
        .fail(id, token, &report(FailureKind::Error, false))
        .unwrap();
}

fn breaker_state(fx: &Fixture, key: &str) -> BreakerState {
    fx.engine
        .limits()
        .unwrap()
        .into_iter()
        .find(|limit| limit.key == key)
        .unwrap()
        .breaker_state
}

backend_tests! {
    fn a_token_bucket_holds_jobs_back_without_failing_them(fx) {
        fx.engine
            .set_limits(LimitScope::Task, "t", &rate(10, 1000, 2))
            .unwrap();
        let ids = fx.engine.enqueue(&vec![job(0); 5]).unwrap();
        assert_eq!(fx.claim_ids(10), ids[..2].to_vec(), "a full bucket of 2");
        assert!(fx.claim_ids(10).is_empty());
        assert_eq!(fx.engine.status(ids[2]).unwrap(), Status::Pending);
        assert_eq!(
            fx.engine.next_wakeup_ms().unwrap(),
            Some(START_MS + 100),
            "the refill time of the next token is a wake-up"
        );
        fx.advance(99);
        assert!(fx.claim_ids(10).is_empty());
        fx.advance(1);
        assert_eq!(fx.claim_ids(10), vec![ids[2]]);
        fx.advance(1000);
        assert_eq!(
            fx.claim_ids(10),
            ids[3..].to_vec(),
            "refilled up to the burst only"
        );
    }

    fn held_back_jobs_do_not_hide_other_tasks(fx) {
        fx.engine
            .set_limits(LimitScope::Task, "slow", &rate(1, 60_000, 1))
            .unwrap();
        let slow = fx.engine.enqueue(&vec![task("slow"); 20]).unwrap();
        let fast = fx.enqueue_one(task("fast"));
        assert_eq!(fx.claim_ids(10), vec![slow[0], fast]);
    }

    fn queue_and_task_buckets_both_take_a_token(fx) {
        fx.engine
            .set_limits(LimitScope::Queue, "default", &rate(1, 1000, 3))
            .unwrap();
        fx.engine
            .set_limits(LimitScope::Task, "a", &rate(1, 1000, 1))
            .unwrap();
        let a = fx.engine.enqueue(&[task("a"), task("a")]).unwrap();
        let b = fx
            .engine
            .enqueue(&[task("b"), task("b"), task("b")])
            .unwrap();
        assert_eq!(fx.claim_ids(10), vec![a[0], b[0], b[1]], "queue burst of 3");
        let limits = fx.engine.limits().unwrap();
        assert_eq!(limits[0].key, "queue:default");
        assert_eq!(limits[0].tokens, Some(0));
        assert!(
            fx.engine
                .set_limits(LimitScope::Queue, "default", &breaker(1, 1, 1))
                .is_err(),
            "queues take rate limits only"
        );
    }

    fn fail_when_limited_refuses_the_send_and_prepaid_jobs_run(fx) {
        fx.engine
            .set_limits(LimitScope::Task, "t", &rate(1, 1000, 1))
            .unwrap();
        let eager = NewJob {
            fail_when_limited: true,
            ..job(0)
        };
        let first = fx.enqueue_one(eager.clone());
        match fx.engine.enqueue(std::slice::from_ref(&eager)) {
            Err(EngineError::RateLimited {
                key,
                retry_after_ms,
            }) => assert_eq!((key.as_str(), retry_after_ms), ("task:t", 1000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fx.engine.stats().unwrap()[0],
            (Status::Pending, 1),
            "nothing stored"
        );
        assert_eq!(fx.claim_ids(10), vec![first], "its token was taken at send");
    }

    fn concurrency_limits_running_jobs_across_supervisors(fx) {
        fx.engine
            .set_limits(
                LimitScope::Task,
                "t",
                &Limits {
                    concurrency: Some(2),
                    ..Limits::default()
                },
            )
            .unwrap();
        let ids = fx.engine.enqueue(&vec![job(0); 4]).unwrap();
        let other = fx.other_engine(Arc::new(stoker_engine::ManualClock::new(START_MS)));
        let first = fx.claim(1);
        let second = other
            .claim(&["default".to_owned()], 10, "owner-b", 30_000)
            .unwrap();
        assert_eq!(second.len(), 1, "one slot was left");
        assert!(fx.claim_ids(10).is_empty());
        assert_eq!(fx.engine.limits().unwrap()[0].running, 2);
        assert!(fx.complete(first[0].id, first[0].token));
        assert_eq!(fx.claim_ids(10), vec![ids[2]]);
    }

    fn a_breaker_opens_probes_and_closes(fx) {
        fx.engine
            .set_limits(LimitScope::Task, "t", &breaker(2, 10_000, 5_000))
            .unwrap();
        let ids = fx.engine.enqueue(&vec![job(0); 6]).unwrap();
        for claimed in fx.claim(2) {
            fail_error(&fx, claimed.id, claimed.token);
        }
        assert_eq!(breaker_state(&fx, "task:t"), BreakerState::Open);
        assert!(fx.claim_ids(10).is_empty(), "open: jobs wait");
        assert_eq!(fx.engine.status(ids[2]).unwrap(), Status::Pending);
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 5_000));
        match fx.engine.enqueue(&[NewJob {
            fail_when_limited: true,
            ..job(0)
        }]) {
            Err(EngineError::BreakerOpen {
                task_name,
                open_until_ms,
            }) => assert_eq!((task_name.as_str(), open_until_ms), ("t", START_MS + 5_000)),
            other => panic!("{other:?}"),
        }

        fx.advance(5_000);
        let probe = fx.claim(10);
        assert_eq!(probe.len(), 1, "half-open: one probe at a time");
        assert_eq!(breaker_state(&fx, "task:t"), BreakerState::HalfOpen);
        assert!(fx.claim_ids(10).is_empty());
        fail_error(&fx, probe[0].id, probe[0].token);
        assert_eq!(
            breaker_state(&fx, "task:t"),
            BreakerState::Open,
            "a failed probe reopens"
        );

        fx.advance(5_000);
        let probe = fx.claim(10);
        assert_eq!(probe.len(), 1);
        assert!(fx.complete(probe[0].id, probe[0].token));
        assert_eq!(breaker_state(&fx, "task:t"), BreakerState::Closed);
        assert_eq!(fx.claim_ids(10).len(), 2, "closed: the rest run");
    }

    fn breaker_failures_outside_the_window_do_not_count_nor_do_lost_leases(fx) {
        fx.engine
            .set_limits(LimitScope::Task, "t", &breaker(2, 1_000, 1_000))
            .unwrap();
        fx.engine.enqueue(&vec![job(0); 4]).unwrap();
        let first = fx.claim(1);
        fail_error(&fx, first[0].id, first[0].token);
        fx.advance(1_000);
        let second = fx.claim(1);
        fail_error(&fx, second[0].id, second[0].token);
        assert_eq!(breaker_state(&fx, "task:t"), BreakerState::Closed);
        let third = fx.claim(1);
        fx.engine
            .fail(
                third[0].id,
                third[0].token,
                &report(FailureKind::LeaseExpired, true),
            )
            .unwrap();
        assert_eq!(breaker_state(&fx, "task:t"), BreakerState::Closed);
        let limits = fx.engine.limits().unwrap();
        assert_eq!(limits[0].recent_failures, 1);
    }

    fn unique_keys_return_the_live_job(fx) {
        let keyed = NewJob {
            unique_key: Some("k".into()),
            ..job(0)
        };
        let ids = fx
            .engine
            .enqueue(&[keyed.clone(), keyed.clone(), job(0)])
            .unwrap();
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        let claimed = fx.claim(1);
        assert_eq!(
            fx.enqueue_one(keyed.clone()),
            ids[0],
            "running counts as live"
        );
        assert!(fx.complete(claimed[0].id, claimed[0].token));
        let again = fx.enqueue_one(keyed.clone());
        assert_ne!(again, ids[0], "a finished job frees its key");
        assert_eq!(
            fx.engine.get(again).unwrap().unique_key.as_deref(),
            Some("k")
        );
    }

    fn expired_jobs_never_run(fx) {
        let soon = fx.enqueue_one(NewJob {
            expires_after_ms: Some(1000),
            ..job(0)
        });
        let later = fx.enqueue_one(NewJob {
            expires_after_ms: Some(5000),
            delay_ms: 6000,
            ..job(0)
        });
        assert_eq!(
            fx.engine.get(soon).unwrap().expires_ms,
            Some(START_MS + 1000)
        );
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 1000));
        fx.advance(1000);
        assert!(fx.claim_ids(10).is_empty());
        assert_eq!(fx.engine.status(soon).unwrap(), Status::Expired);
        assert_eq!(
            fx.engine.get(soon).unwrap().finished_ms,
            Some(START_MS + 1000)
        );
        fx.advance(4000);
        assert_eq!(fx.engine.expire_due(10).unwrap(), vec![later]);
        assert_eq!(fx.engine.expire_due(10).unwrap(), Vec::<i64>::new());
        let stats = fx.engine.stats().unwrap();
        assert!(stats.contains(&(Status::Expired, 2)));
        assert!(Status::Expired.is_terminal());
    }

    fn a_job_waits_for_its_dependencies(fx) {
        let a = fx.enqueue_one(job(0));
        let b = fx.enqueue_one(job(0));
        let fan_in = fx.enqueue_one(NewJob {
            depends_on: vec![a, b],
            ..job(0)
        });
        assert_eq!(fx.engine.status(fan_in).unwrap(), Status::Waiting);
        let claimed = fx.claim(10);
        assert_eq!(claimed.len(), 2, "the waiting job is not claimable");
        assert!(fx.complete(claimed[0].id, claimed[0].token));
        assert_eq!(fx.engine.status(fan_in).unwrap(), Status::Waiting);
        assert!(fx.complete(claimed[1].id, claimed[1].token));
        assert_eq!(fx.engine.status(fan_in).unwrap(), Status::Pending);
        assert_eq!(
            fx.engine.dependencies(fan_in).unwrap(),
            vec![(a, Status::Complete), (b, Status::Complete)]
        );
        assert_eq!(fx.claim_ids(10), vec![fan_in]);
        let after_done = fx.enqueue_one(NewJob {
            depends_on: vec![a],
            ..job(0)
        });
        assert_eq!(fx.engine.status(after_done).unwrap(), Status::Pending);
        assert!(matches!(
            fx.engine.enqueue(&[NewJob {
                depends_on: vec![9999],
                ..job(0)
            }]),
            Err(EngineError::NotFound(9999))
        ));
    }

    fn a_failed_dependency_fails_its_dependents_transitively(fx) {
        let a = fx.enqueue_one(job(0));
        let b = fx.enqueue_one(NewJob {
            depends_on: vec![a],
            ..job(0)
        });
        let c = fx.enqueue_one(NewJob {
            depends_on: vec![b],
            ..job(0)
        });
        let claimed = fx.claim(1);
        fail_error(&fx, claimed[0].id, claimed[0].token);
        assert_eq!(fx.engine.status(a).unwrap(), Status::Dead);
        for (id, dep) in [(b, a), (c, b)] {
            assert_eq!(fx.engine.status(id).unwrap(), Status::Dead);
            let errors = fx.engine.errors(id).unwrap();
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].kind, "dependency");
            assert_eq!(errors[0].exc_type, "stoker.errors.DependencyFailedError");
            assert!(
                errors[0].message.contains(&format!("job {dep}")),
                "{}",
                errors[0].message
            );
        }
        let late = fx.enqueue_one(NewJob {
            depends_on: vec![a],
            ..job(0)
        });
        assert_eq!(
            fx.engine.status(late).unwrap(),
            Status::Dead,
            "already failed at send"
        );
        let waiting = fx.enqueue_one(NewJob {
            depends_on: vec![fx.enqueue_one(job(0))],
            ..job(0)
        });
        let dependent = fx.enqueue_one(NewJob {
            depends_on: vec![waiting],
            ..job(0)
        });
        assert_eq!(fx.engine.cancel(waiting).unwrap().as_str(), "cancelled");
        assert_eq!(fx.engine.status(dependent).unwrap(), Status::Dead);
        let expiring = fx.enqueue_one(NewJob {
            expires_after_ms: Some(10),
            delay_ms: 100,
            ..job(0)
        });
        let after_expiring = fx.enqueue_one(NewJob {
            depends_on: vec![expiring],
            ..job(0)
        });
        fx.advance(10);
        fx.engine.expire_due(10).unwrap();
        assert_eq!(fx.engine.status(after_expiring).unwrap(), Status::Dead);
        assert!(fx.engine.errors(after_expiring).unwrap()[0]
            .message
            .contains("ended expired"));
    }

    fn retention_drops_results_and_error_histories_in_batches(fx) {
        let dead = fx.enqueue_one(NewJob {
            result_ttl_ms: Some(1000),
            ..job(0)
        });
        let done = fx.enqueue_one(NewJob {
            result_ttl_ms: Some(1000),
            ..job(0)
        });
        let kept = fx.enqueue_one(job(0));
        let claimed = fx.claim(3);
        fail_error(&fx, claimed[0].id, claimed[0].token);
        assert!(fx.complete(claimed[1].id, claimed[1].token));
        fail_error(&fx, claimed[2].id, claimed[2].token);
        assert_eq!(
            fx.engine.get(dead).unwrap().result_expires_ms,
            Some(START_MS + 1000)
        );
        assert_eq!(fx.engine.purge_expired_results(10).unwrap(), 0);
        fx.advance(1000);
        assert_eq!(fx.engine.purge_expired_results(1).unwrap(), 1, "bounded");
        assert_eq!(fx.engine.purge_expired_results(10).unwrap(), 1);
        assert_eq!(fx.engine.purge_expired_results(10).unwrap(), 0);
        assert!(fx.engine.errors(dead).unwrap().is_empty());
        assert_eq!(
            fx.engine.status(dead).unwrap(),
            Status::Dead,
            "the row stays"
        );
        assert_eq!(fx.engine.get(done).unwrap().result, None);
        assert_eq!(fx.engine.errors(kept).unwrap().len(), 1, "no ttl: kept");
    }
}
