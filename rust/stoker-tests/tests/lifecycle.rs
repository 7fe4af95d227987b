//! Claim order, scheduling, completion, cancellation, heartbeats, stale
//! outcomes and the read API, on a manual clock.

#[macro_use]
mod common;

use common::{job, Fixture, START_MS};
use stoker_engine::{
    CancelOutcome, ClaimRequest, Completion, EngineError, FailOutcome, FailureKind, NewJob, Status,
};

backend_tests! {
    fn claims_follow_priority_then_age(fx) {
        let ids = fx
            .engine
            .enqueue(&[job(0), job(5), job(0), job(10), job(5), job(-3)])
            .unwrap();
        let order = fx.claim_ids(10);
        assert_eq!(order, vec![ids[3], ids[1], ids[4], ids[0], ids[2], ids[5]]);
        assert!(fx.claim_ids(10).is_empty(), "nothing left to claim");
    }

    fn claim_respects_limit_and_batches(fx) {
        let ids = fx
            .engine
            .enqueue(&(0..5).map(|_| job(0)).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(fx.claim_ids(2), ids[..2].to_vec());
        assert_eq!(fx.claim_ids(0), Vec::<i64>::new());
        assert_eq!(fx.claim_ids(2), ids[2..4].to_vec());
        assert_eq!(fx.claim_ids(2), ids[4..].to_vec());
    }

    fn claim_sets_lease_token_and_attempt(fx) {
        let id = fx.enqueue_one(NewJob {
            timeout_ms: Some(900),
            ..job(0)
        });
        let claimed = fx
            .engine
            .claim(&["default".to_owned()], 1, "sup-1", 10_000)
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let c = &claimed[0];
        assert_eq!((c.id, c.token, c.attempt), (id, 1, 1));
        assert_eq!(c.task_name, "t");
        assert_eq!(c.queue, "default");
        assert_eq!(c.payload, b"payload".to_vec());
        assert_eq!(c.timeout_ms, Some(900));
        assert_eq!(c.lease_deadline_ms, START_MS + 10_000);
        let record = fx.engine.get(id).unwrap();
        assert_eq!(record.status, Status::Running);
        assert_eq!(record.lease_owner.as_deref(), Some("sup-1"));
        assert_eq!(record.lease_deadline_ms, Some(START_MS + 10_000));
        assert_eq!(record.started_ms, Some(START_MS));
    }

    fn several_queues_merge_by_priority_and_ignore_others(fx) {
        let a_low = fx.enqueue_one(NewJob {
            queue: "a".into(),
            ..job(1)
        });
        let b_high = fx.enqueue_one(NewJob {
            queue: "b".into(),
            ..job(9)
        });
        let c_top = fx.enqueue_one(NewJob {
            queue: "c".into(),
            ..job(100)
        });
        let a_high = fx.enqueue_one(NewJob {
            queue: "a".into(),
            ..job(9)
        });
        let queues = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
        let claimed: Vec<i64> = fx
            .engine
            .claim(&queues, 10, "o", 1000)
            .unwrap()
            .into_iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(claimed, vec![b_high, a_high, a_low]);
        assert_eq!(fx.engine.status(c_top).unwrap(), Status::Pending);
        let top: Vec<i64> = fx
            .engine
            .claim(&["c".to_owned()], 10, "o", 1000)
            .unwrap()
            .into_iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(top, vec![c_top]);
    }

    fn delay_and_eta_are_honoured(fx) {
        let delayed = fx.enqueue_one(NewJob {
            delay_ms: 5000,
            ..job(0)
        });
        let at = fx.enqueue_one(NewJob {
            eta_ms: Some(START_MS + 3000),
            ..job(0)
        });
        let past = fx.enqueue_one(NewJob {
            eta_ms: Some(START_MS - 1),
            ..job(0)
        });
        assert_eq!(fx.engine.status(delayed).unwrap(), Status::Scheduled);
        assert_eq!(fx.engine.status(at).unwrap(), Status::Scheduled);
        assert_eq!(fx.engine.status(past).unwrap(), Status::Pending);
        assert_eq!(fx.engine.get(delayed).unwrap().eta_ms, START_MS + 5000);
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 3000));

        assert_eq!(fx.claim_ids(10), vec![past]);
        fx.advance(2999);
        assert!(fx.claim_ids(10).is_empty(), "not claimable before its eta");
        fx.advance(1);
        assert_eq!(fx.claim_ids(10), vec![at], "claimable at its eta");
        fx.advance(1999);
        assert!(fx.claim_ids(10).is_empty());
        fx.advance(1);
        assert_eq!(fx.claim_ids(10), vec![delayed]);
    }

    fn due_scheduled_jobs_compete_by_priority(fx) {
        let pending_low = fx.enqueue_one(job(1));
        let scheduled_high = fx.enqueue_one(NewJob {
            delay_ms: 100,
            ..job(7)
        });
        fx.advance(100);
        assert_eq!(fx.claim_ids(1), vec![scheduled_high]);
        assert_eq!(fx.claim_ids(1), vec![pending_low]);
    }

    fn complete_stores_result_and_expiry(fx) {
        let id = fx.enqueue_one(NewJob {
            result_ttl_ms: Some(60_000),
            ..job(0)
        });
        let token = fx.claim(1)[0].token;
        fx.advance(250);
        assert!(fx.complete(id, token));
        let record = fx.engine.get(id).unwrap();
        assert_eq!(record.status, Status::Complete);
        assert_eq!(record.result, Some(b"result".to_vec()));
        assert_eq!(record.finished_ms, Some(START_MS + 250));
        assert_eq!(record.result_expires_ms, Some(START_MS + 250 + 60_000));
        assert_eq!(record.lease_owner, None);
        assert_eq!(record.lease_deadline_ms, None);
    }

    fn complete_many_applies_fresh_and_refuses_stale(fx) {
        let ids = fx.engine.enqueue(&[job(0), job(0)]).unwrap();
        let claimed = fx.claim(2);
        let applied = fx.complete_many(&[(ids[0], claimed[0].token), (ids[1], claimed[1].token + 1)]);
        assert_eq!(applied, vec![true, false]);
        assert_eq!(
            fx.engine.statuses(&ids).unwrap(),
            vec![Status::Complete, Status::Running]
        );
        assert!(matches!(
            fx.engine.complete_many(&[stoker_engine::Completion {
                job_id: 999,
                token: 1,
                result: None,
                usage: None,
            }]),
            Err(EngineError::NotFound(999))
        ));
    }

    fn result_ttl_purge_is_bounded_and_only_takes_expired(fx) {
        let short: Vec<i64> = fx
            .engine
            .enqueue(&vec![
                NewJob {
                    result_ttl_ms: Some(1000),
                    ..job(0)
                };
                3
            ])
            .unwrap();
        let long = fx.enqueue_one(NewJob {
            result_ttl_ms: Some(10_000),
            ..job(0)
        });
        let forever = fx.enqueue_one(job(0));
        for claimed in fx.claim(10) {
            assert!(fx.complete(claimed.id, claimed.token));
        }
        assert_eq!(fx.engine.purge_expired_results(100).unwrap(), 0);
        fx.advance(1000);
        assert_eq!(
            fx.engine.purge_expired_results(2).unwrap(),
            2,
            "bounded by the limit"
        );
        assert_eq!(fx.engine.purge_expired_results(100).unwrap(), 1);
        assert_eq!(fx.engine.purge_expired_results(100).unwrap(), 0);
        for id in short {
            let record = fx.engine.get(id).unwrap();
            assert_eq!(record.result, None);
            assert_eq!(record.status, Status::Complete);
        }
        assert_eq!(
            fx.engine.get(long).unwrap().result,
            Some(b"result".to_vec())
        );
        fx.advance(1_000_000);
        assert_eq!(fx.engine.purge_expired_results(100).unwrap(), 1);
        assert_eq!(
            fx.engine.get(forever).unwrap().result,
            Some(b"result".to_vec())
        );
    }

    fn cancel_pending_scheduled_running_and_finished(fx) {
        let pending = fx.enqueue_one(job(0));
        let scheduled = fx.enqueue_one(NewJob {
            delay_ms: 1000,
            ..job(0)
        });
        let running = fx.enqueue_one(job(-1));
        let done = fx.enqueue_one(job(-2));
        assert_eq!(fx.engine.cancel(pending).unwrap(), CancelOutcome::Cancelled);
        let claimed = fx.claim(2);
        assert_eq!(
            claimed.iter().map(|job| job.id).collect::<Vec<_>>(),
            vec![running, done]
        );
        assert!(fx.complete(done, claimed[1].token));

        assert_eq!(
            fx.engine.cancel(scheduled).unwrap(),
            CancelOutcome::Cancelled
        );
        assert_eq!(fx.engine.cancel(running).unwrap(), CancelOutcome::Requested);
        assert_eq!(
            fx.engine.cancel(done).unwrap(),
            CancelOutcome::Finished(Status::Complete)
        );
        assert_eq!(fx.engine.cancel(done).unwrap().as_str(), "complete");
        assert_eq!(fx.engine.cancel(pending).unwrap().as_str(), "cancelled");
        assert!(matches!(
            fx.engine.cancel(12345),
            Err(EngineError::NotFound(12345))
        ));

        assert_eq!(
            fx.engine.statuses(&[pending, scheduled]).unwrap(),
            vec![Status::Cancelled; 2]
        );
        assert_eq!(fx.engine.get(pending).unwrap().finished_ms, Some(START_MS));
        fx.advance(5000);
        assert!(
            fx.claim_ids(10).is_empty(),
            "a cancelled scheduled job never runs"
        );

        assert_eq!(
            fx.engine.cancel_requests("owner-a").unwrap(),
            vec![(running, claimed[0].token)]
        );
        assert!(fx
            .engine
            .cancel_requests("someone-else")
            .unwrap()
            .is_empty());
        assert!(!fx
            .engine
            .finish_cancelled(running, claimed[0].token + 1)
            .unwrap());
        assert!(fx
            .engine
            .finish_cancelled(running, claimed[0].token)
            .unwrap());
        let record = fx.engine.get(running).unwrap();
        assert_eq!(record.status, Status::Cancelled);
        assert_eq!(record.lease_owner, None);
        assert!(fx.engine.cancel_requests("owner-a").unwrap().is_empty());
    }

    fn heartbeat_extends_leases_and_reports_cancel_requests(fx) {
        let ids = fx.engine.enqueue(&[job(0), job(0)]).unwrap();
        let claimed = fx.claim(2);
        fx.engine.cancel(ids[1]).unwrap();
        fx.advance(20_000);
        let leases = [(ids[0], claimed[0].token), (ids[1], claimed[1].token)];
        let cancel = fx.engine.heartbeat("owner-a", &leases, 30_000).unwrap();
        assert_eq!(cancel, vec![ids[1]]);
        for id in &ids {
            assert_eq!(
                fx.engine.get(*id).unwrap().lease_deadline_ms,
                Some(START_MS + 50_000)
            );
        }
        // The original lease would have expired by now; the renewed one has not.
        fx.advance(15_000);
        assert!(fx.engine.reap_expired(10).unwrap().is_empty());
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 50_000));
    }

    fn stale_outcomes_are_refused_recorded_and_change_nothing(fx) {
        let id = fx.enqueue_one(NewJob {
            max_crashes: 5,
            ..job(0)
        });
        let first = fx.claim(1)[0].token;
        fx.advance(31_000);
        assert_eq!(
            fx.engine.reap_expired(10).unwrap(),
            vec![(
                id,
                FailOutcome::Retry {
                    eta_ms: fx.now() + 1000
                }
            )]
        );
        fx.advance(1000);
        let second = fx
            .engine
            .claim(&["default".to_owned()], 1, "owner-b", 30_000)
            .unwrap()[0]
            .token;
        assert_eq!((first, second), (1, 2));
        let before = fx.engine.get(id).unwrap();

        assert!(!fx.complete(id, first));
        assert_eq!(
            fx.engine
                .fail(id, first, &common::report(FailureKind::Error, true))
                .unwrap(),
            FailOutcome::Stale
        );
        assert!(fx
            .engine
            .heartbeat("owner-a", &[(id, first)], 30_000)
            .unwrap()
            .is_empty());
        assert!(
            fx.engine
                .heartbeat("owner-a", &[(id, second)], 30_000)
                .unwrap()
                .is_empty(),
            "wrong owner"
        );
        assert!(!fx.engine.requeue(id, first).unwrap());
        assert!(!fx.engine.finish_cancelled(id, first).unwrap());

        assert_eq!(
            fx.engine.get(id).unwrap(),
            before,
            "no stale outcome changed the job"
        );
        assert_eq!(
            fx.engine.errors(id).unwrap().len(),
            1,
            "only the reaped attempt left an error"
        );

        let stale = fx.engine.stale_outcomes(100).unwrap();
        let seen: Vec<(&str, i64, &str)> = stale
            .iter()
            .map(|s| (s.outcome.as_str(), s.token, s.owner.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("cancel", first, "owner-b"),
                ("requeue", first, "owner-b"),
                ("heartbeat", second, "owner-a"),
                ("heartbeat", first, "owner-a"),
                ("fail", first, "owner-b"),
                ("complete", first, "owner-b"),
            ]
        );
        assert!(stale.iter().all(|s| s.job_id == id && s.at_ms == fx.now()));
        assert_eq!(fx.engine.stale_outcomes(2).unwrap().len(), 2);

        // The current token still works.
        assert!(fx.complete(id, second));
        assert!(!fx.complete(id, second), "a second completion is stale");
        assert_eq!(fx.engine.status(id).unwrap(), Status::Complete);
    }

    fn requeue_returns_to_pending_without_counting_a_failure(fx) {
        let id = fx.enqueue_one(job(0));
        let token = fx.claim(1)[0].token;
        fx.advance(10);
        assert!(fx.engine.requeue(id, token).unwrap());
        let record = fx.engine.get(id).unwrap();
        assert_eq!(record.status, Status::Pending);
        assert_eq!((record.attempt, record.failures, record.crashes), (1, 0, 0));
        assert_eq!(record.eta_ms, START_MS + 10);
        assert_eq!(record.lease_owner, None);
        let again = fx.claim(1);
        assert_eq!((again[0].id, again[0].token), (id, 2));
    }

    fn reads_report_missing_jobs(fx) {
        let id = fx.enqueue_one(job(0));
        assert!(matches!(fx.engine.get(id + 1), Err(EngineError::NotFound(n)) if n == id + 1));
        assert!(matches!(
            fx.engine.status(77),
            Err(EngineError::NotFound(77))
        ));
        assert!(matches!(
            fx.engine.statuses(&[id, 78]),
            Err(EngineError::NotFound(78))
        ));
        assert!(matches!(
            fx.engine.errors(79),
            Err(EngineError::NotFound(79))
        ));
        assert!(matches!(
            fx.engine.replay(80),
            Err(EngineError::NotFound(80))
        ));
        assert!(matches!(
            fx.engine.requeue(81, 1),
            Err(EngineError::NotFound(81))
        ));
        assert!(matches!(
            fx.engine
                .fail(82, 1, &common::report(FailureKind::Error, true)),
            Err(EngineError::NotFound(82))
        ));
    }

    fn stats_count_every_status(fx) {
        let empty = fx.engine.stats().unwrap();
        assert_eq!(
            empty.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            Status::ALL.to_vec()
        );
        assert!(empty.iter().all(|(_, count)| *count == 0));
        let ids = fx
            .engine
            .enqueue(&[job(3), job(2), job(1), job(0)])
            .unwrap();
        fx.enqueue_one(NewJob {
            delay_ms: 10,
            ..job(0)
        });
        let claimed = fx.claim(2);
        fx.complete(ids[0], claimed[0].token);
        fx.engine.cancel(ids[2]).unwrap();
        let stats: Vec<i64> = fx
            .engine
            .stats()
            .unwrap()
            .into_iter()
            .map(|(_, count)| count)
            .collect();
        assert_eq!(stats, vec![1, 1, 1, 1, 0, 1, 0, 0]);
    }

    fn next_wakeup_considers_etas_and_leases(fx) {
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), None);
        fx.enqueue_one(job(0));
        assert_eq!(
            fx.engine.next_wakeup_ms().unwrap(),
            None,
            "pending jobs need no wake-up"
        );
        fx.engine
            .claim(&["default".to_owned()], 1, "o", 700)
            .unwrap();
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 700));
        fx.enqueue_one(NewJob {
            delay_ms: 500,
            ..job(0)
        });
        assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 500));
    }

    fn data_version_moves_when_another_connection_commits(fx) {
        let other = fx.other_engine(std::sync::Arc::new(fx.clock.clone()));
        let before = fx.engine.data_version().unwrap();
        if fx.backend == common::Backend::Sqlite {
            // PostgreSQL's version also moves for commits elsewhere in the
            // cluster (other tests run beside this one), which only costs a
            // waiter a needless look; it never stands still past a commit.
            assert_eq!(fx.engine.data_version().unwrap(), before);
        }
        other.enqueue(&[job(0)]).unwrap();
        assert_ne!(fx.engine.data_version().unwrap(), before);
        assert_eq!(
            fx.claim_ids(5).len(),
            1,
            "the other connection's job is visible"
        );
    }

    fn claim_and_heartbeat_validate_arguments(fx) {
        let queues = vec!["default".to_owned()];
        let message = |result: Result<Vec<stoker_engine::ClaimedJob>, EngineError>| match result {
            Err(EngineError::InvalidOption(message)) => message,
            other => panic!("expected an invalid option, got {other:?}"),
        };
        assert!(message(fx.engine.claim(&queues, 1, "", 1000)).contains("owner"));
        assert!(message(fx.engine.claim(&queues, 1, "o", 0)).contains("lease_ms"));
        assert!(message(fx.engine.claim(&["".to_owned()], 1, "o", 10)).contains("queues"));
        assert!(
            matches!(fx.engine.heartbeat("o", &[], -5), Err(EngineError::InvalidOption(m)) if m.contains("lease_ms"))
        );
        assert!(fx.engine.claim(&[], 5, "o", 10).unwrap().is_empty());
    }

    fn a_cancel_request_is_never_lost_to_a_retry_or_a_requeue(fx) {
        let failing = fx.enqueue_one(NewJob {
            max_retries: 5,
            max_crashes: 5,
            ..job(0)
        });
        let requeued = fx.enqueue_one(job(0));
        let claimed = fx.claim(2);
        assert_eq!(fx.engine.cancel(failing).unwrap(), CancelOutcome::Requested);
        assert_eq!(
            fx.engine.cancel(requeued).unwrap(),
            CancelOutcome::Requested
        );

        // The attempt failed before the supervisor acted on the request: the
        // error is recorded, and the job ends cancelled instead of retrying.
        let outcome = fx
            .engine
            .fail(
                failing,
                claimed[0].token,
                &common::report(FailureKind::Crash, true),
            )
            .unwrap();
        assert_eq!(outcome, FailOutcome::Cancelled);
        assert_eq!(outcome.as_str(), "cancelled");
        let record = fx.engine.get(failing).unwrap();
        assert_eq!(record.status, Status::Cancelled);
        assert_eq!(record.finished_ms, Some(START_MS));
        assert_eq!(fx.engine.errors(failing).unwrap().len(), 1);

        assert!(fx.engine.requeue(requeued, claimed[1].token).unwrap());
        assert_eq!(fx.engine.get(requeued).unwrap().status, Status::Cancelled);
        fx.advance(60_000);
        assert!(fx.claim_ids(10).is_empty(), "neither job runs again");
    }

    fn complete_and_claim_stores_outcomes_before_claiming(fx) {
        let ids = fx
            .engine
            .enqueue(&(0..3).map(|_| job(0)).collect::<Vec<_>>())
            .unwrap();
        let first = fx
            .engine
            .claim(&["default".to_owned()], 1, "sup-1", 10_000)
            .unwrap()
            .remove(0);
        let completions = [
            Completion {
                job_id: first.id,
                token: first.token,
                result: Some(b"done".to_vec()),
                usage: None,
            },
            Completion {
                job_id: ids[2],
                token: 7,
                result: None,
                usage: None,
            },
        ];
        let queues = ["default".to_owned()];
        let request = ClaimRequest {
            queues: &queues,
            limit: 5,
            owner: "sup-1",
            lease_ms: 10_000,
            held: &[],
            sent: &[],
        };
        let (applied, claimed) = fx
            .engine
            .complete_and_claim(&completions, &request)
            .unwrap();
        assert_eq!(applied, vec![true, false], "the stale one is refused");
        let claimed_ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        assert_eq!(claimed_ids, ids[1..].to_vec());
        assert_eq!(fx.engine.status(first.id).unwrap(), Status::Complete);
        assert_eq!(fx.engine.stale_outcomes(10).unwrap().len(), 1);
        let bad = ClaimRequest {
            owner: "",
            ..request
        };
        assert!(matches!(
            fx.engine.complete_and_claim(&[], &bad),
            Err(EngineError::InvalidOption(_))
        ));
    }

    fn release_undoes_a_claim_as_if_it_never_happened(fx) {
        let ids = fx.engine.enqueue(&[job(0), job(0)]).unwrap();
        let claimed = fx
            .engine
            .claim(&["default".to_owned()], 2, "sup-1", 10_000)
            .unwrap();
        assert!(fx.engine.release(ids[0], claimed[0].token).unwrap());
        let record = fx.engine.get(ids[0]).unwrap();
        assert_eq!(
            (record.status, record.attempt, record.lease_owner),
            (Status::Pending, 0, None)
        );
        assert!(record.started_ms.is_none());
        // The token is no longer current: a second release is refused and recorded.
        assert!(!fx.engine.release(ids[0], claimed[0].token).unwrap());
        assert_eq!(fx.engine.stale_outcomes(10).unwrap()[0].outcome, "release");
        // A cancel requested while it was claimed still wins.
        assert_eq!(fx.engine.cancel(ids[1]).unwrap(), CancelOutcome::Requested);
        assert!(fx.engine.release(ids[1], claimed[1].token).unwrap());
        assert_eq!(fx.engine.status(ids[1]).unwrap(), Status::Cancelled);
        // The released job is claimed again with the same attempt number.
        let again = fx
            .engine
            .claim(&["default".to_owned()], 2, "sup-2", 10_000)
            .unwrap();
        assert_eq!(
            again.iter().map(|c| (c.id, c.attempt)).collect::<Vec<_>>(),
            vec![(ids[0], 1)]
        );
    }
}

#[test]
fn the_system_clock_cannot_be_advanced() {
    let dir = common::TempDir::new();
    let engine = stoker_sqlite::open_engine(
        dir.file("db"),
        common::BUSY_TIMEOUT,
        std::sync::Arc::new(stoker_engine::SystemClock),
    )
    .unwrap();
    assert!(
        matches!(engine.advance_clock(10), Err(EngineError::InvalidOption(m)) if m.contains("advance_clock"))
    );
    assert!(engine.now_ms() > START_MS);
    let fx = Fixture::new();
    assert!(matches!(
        fx.engine.advance_clock(-1),
        Err(EngineError::InvalidOption(_))
    ));
}
