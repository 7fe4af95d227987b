//! Failed attempts: retry bounds, backoff, crashes, lease expiry, dead
//! letters and replay, on a manual clock.

#[macro_use]
mod common;

use common::{job, report, Fixture, START_MS};
use stoker_engine::{
    ClaimRequest, ClaimedJob, Completion, EngineError, FailOutcome, FailureKind, NewJob, Status,
};

fn retrying(max_retries: i64, jitter: f64) -> NewJob {
    NewJob {
        max_retries,
        backoff_base_ms: 1000,
        backoff_cap_ms: 3000,
        jitter,
        ..job(0)
    }
}

/// Claims the only runnable job, which must be `id`, and returns its token.
fn claim_token(fx: &Fixture, id: i64) -> i64 {
    let claimed = fx.claim(1);
    assert_eq!(claimed.len(), 1, "job {id} should be claimable");
    assert_eq!(claimed[0].id, id);
    claimed[0].token
}

/// Completes `completions` and claims up to `limit` jobs for "owner-a", after
/// marking the jobs `held` (by the supervisor, sent to no worker) and
/// unmarking the jobs `sent`, in one transaction.
fn commit_turn(
    fx: &Fixture,
    completions: &[(i64, i64)],
    limit: usize,
    held: &[(i64, i64)],
    sent: &[(i64, i64)],
) -> Vec<ClaimedJob> {
    let completions: Vec<Completion> = completions
        .iter()
        .map(|&(job_id, token)| Completion {
            job_id,
            token,
            result: None,
            usage: None,
        })
        .collect();
    let queues = ["default".to_owned()];
    let request = ClaimRequest {
        queues: &queues,
        limit,
        owner: "owner-a",
        lease_ms: 30_000,
        held,
        sent,
    };
    fx.engine
        .complete_and_claim(&completions, &request)
        .expect("complete_and_claim")
        .1
}

fn uncrashable() -> NewJob {
    NewJob {
        max_crashes: 0,
        ..job(0)
    }
}

backend_tests! {
    fn an_expired_job_no_worker_started_is_given_back_uncounted(fx) {
        let ids = fx.engine.enqueue(&[uncrashable(), uncrashable()]).unwrap();
        let claimed = fx.claim(2);
        let owner = "owner-a".to_owned();
        // Nothing has expired yet: nothing to look at, nothing given back.
        assert!(fx.engine.expired_leases(10).unwrap().is_empty());
        let tokens: Vec<(i64, i64)> = claimed.iter().map(|j| (j.id, j.token)).collect();
        assert!(fx.engine.return_unstarted(&tokens).unwrap().is_empty());
        fx.advance(30_001);
        let mut expired = fx.engine.expired_leases(10).unwrap();
        expired.sort();
        assert_eq!(
            expired,
            tokens.iter().map(|&(id, token)| (id, token, owner.clone())).collect::<Vec<_>>()
        );
        // The second never started; the first did, and its lease counts as lost.
        assert_eq!(
            fx.engine.return_unstarted(&[tokens[1], (ids[0], tokens[0].1 + 7)]).unwrap(),
            vec![(ids[1], FailOutcome::Returned)],
            "a wrong token gives back nothing"
        );
        assert_eq!(fx.engine.reap_expired(10).unwrap(), vec![(ids[0], FailOutcome::Dead)]);
        let returned = fx.engine.get(ids[1]).unwrap();
        assert_eq!(returned.status, Status::Pending);
        assert_eq!((returned.crashes, returned.failures), (0, 0));
        assert!(fx.engine.errors(ids[1]).unwrap().is_empty());
        let again = fx.claim(1);
        assert_eq!((again[0].id, again[0].token), (ids[1], tokens[1].1 + 1));
        // Given back once: the old attempt is no longer running.
        assert!(fx.engine.return_unstarted(&[tokens[1]]).unwrap().is_empty());
    }

    fn an_expired_job_no_worker_started_with_a_cancel_request_ends_cancelled(fx) {
        let id = fx.enqueue_one(uncrashable());
        let claimed = fx.claim(1);
        fx.engine.cancel(id).unwrap();
        fx.advance(30_001);
        assert_eq!(
            fx.engine.return_unstarted(&[(id, claimed[0].token)]).unwrap(),
            vec![(id, FailOutcome::Cancelled)]
        );
        assert_eq!(fx.engine.get(id).unwrap().status, Status::Cancelled);
    }

    fn a_held_job_is_given_back_without_a_crash_when_its_lease_expires(fx) {
        let ids = fx.engine.enqueue(&[uncrashable(), uncrashable()]).unwrap();
        let claimed = commit_turn(&fx, &[], 2, &[], &[]);
        assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
        // The first went to a worker; the supervisor held the second, then died.
        let second = (claimed[1].id, claimed[1].token);
        commit_turn(&fx, &[], 0, &[second], &[]);
        fx.advance(30_001);
        let mut reaped = fx.engine.reap_expired(10).unwrap();
        reaped.sort_by_key(|r| r.0);
        assert_eq!(
            reaped,
            vec![(ids[0], FailOutcome::Dead), (ids[1], FailOutcome::Returned)],
            "the job sent to a worker counts a crash (max_crashes=0: dead), the held one does not"
        );
        let sent = fx.engine.get(ids[0]).unwrap();
        assert_eq!((sent.crashes, fx.engine.errors(ids[0]).unwrap().len()), (1, 1));
        let held = fx.engine.get(ids[1]).unwrap();
        assert_eq!(held.status, Status::Pending);
        assert_eq!((held.crashes, held.failures), (0, 0));
        assert!(fx.engine.errors(ids[1]).unwrap().is_empty());
        // Its next claim has a token the dead supervisor never held.
        let again = fx.claim(1);
        assert_eq!(again[0].id, ids[1]);
        assert_eq!(again[0].token, claimed[1].token + 1);
        assert!(!fx.complete(ids[1], claimed[1].token), "the old token is stale");
        assert!(fx.complete(ids[1], again[0].token));
    }

    fn a_held_job_sent_to_a_worker_counts_a_crash_again(fx) {
        let id = fx.enqueue_one(uncrashable());
        let claimed = commit_turn(&fx, &[], 1, &[], &[]);
        let token = (claimed[0].id, claimed[0].token);
        commit_turn(&fx, &[], 0, &[token], &[]);
        commit_turn(&fx, &[], 0, &[], &[token]);
        fx.advance(30_001);
        assert_eq!(fx.engine.reap_expired(10).unwrap(), vec![(id, FailOutcome::Dead)]);
        assert_eq!(fx.engine.errors(id).unwrap()[0].kind, "lease_expired");
    }

    fn only_the_owner_with_a_current_token_marks_a_job_held(fx) {
        let id = fx.enqueue_one(uncrashable());
        let claimed = fx
            .engine
            .claim(&["default".to_owned()], 1, "owner-b", 30_000)
            .unwrap();
        // owner-a does not hold it; a stale token marks nothing either.
        commit_turn(&fx, &[], 0, &[(id, claimed[0].token)], &[]);
        commit_turn(&fx, &[], 0, &[(id, claimed[0].token + 1)], &[]);
        fx.advance(30_001);
        assert_eq!(fx.engine.reap_expired(10).unwrap(), vec![(id, FailOutcome::Dead)]);
    }

    fn a_held_job_with_a_cancel_request_ends_cancelled_when_reaped(fx) {
        let id = fx.enqueue_one(job(0));
        let claimed = commit_turn(&fx, &[], 1, &[], &[]);
        commit_turn(&fx, &[], 0, &[(id, claimed[0].token)], &[]);
        fx.engine.cancel(id).unwrap();
        fx.advance(30_001);
        assert_eq!(
            fx.engine.reap_expired(10).unwrap(),
            vec![(id, FailOutcome::Cancelled)]
        );
        assert_eq!(fx.engine.status(id).unwrap(), Status::Cancelled);
        assert!(fx.engine.errors(id).unwrap().is_empty());
    }

    fn a_released_held_job_is_not_held_after_its_next_claim(fx) {
        let id = fx.enqueue_one(uncrashable());
        let claimed = commit_turn(&fx, &[], 1, &[], &[]);
        commit_turn(&fx, &[], 0, &[(id, claimed[0].token)], &[]);
        assert!(fx.engine.release(id, claimed[0].token).unwrap());
        fx.claim(1);
        fx.advance(30_001);
        assert_eq!(fx.engine.reap_expired(10).unwrap(), vec![(id, FailOutcome::Dead)]);
    }

    fn retries_wait_exact_backoff_without_jitter(fx) {
        let id = fx.enqueue_one(retrying(4, 0.0));
        for (n, expected_delay) in [(1, 1000), (2, 2000), (3, 3000), (4, 3000)] {
            let token = claim_token(&fx, id);
            assert_eq!(token, n);
            let outcome = fx
                .engine
                .fail(id, token, &report(FailureKind::Error, true))
                .unwrap();
            assert_eq!(
                outcome,
                FailOutcome::Retry {
                    eta_ms: fx.now() + expected_delay
                }
            );
            let record = fx.engine.get(id).unwrap();
            assert_eq!(record.status, Status::Scheduled);
            assert_eq!(record.failures, n);
            assert_eq!(record.eta_ms, fx.now() + expected_delay);
            assert_eq!(record.lease_owner, None);
            fx.advance(expected_delay - 1);
            assert!(fx.claim(1).is_empty(), "not claimable during its backoff");
            fx.advance(1);
        }
        let token = claim_token(&fx, id);
        assert_eq!(
            fx.engine
                .fail(id, token, &report(FailureKind::Timeout, true))
                .unwrap(),
            FailOutcome::Dead
        );
    }

    fn jitter_shortens_delays_within_bounds(fx) {
        let ids = fx.engine.enqueue(&vec![retrying(1, 0.5); 40]).unwrap();
        let claimed = fx.claim(40);
        let mut delays = Vec::new();
        for c in &claimed {
            match fx
                .engine
                .fail(c.id, c.token, &report(FailureKind::Error, true))
                .unwrap()
            {
                FailOutcome::Retry { eta_ms } => delays.push(eta_ms - fx.now()),
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        assert_eq!(delays.len(), ids.len());
        assert!(
            delays.iter().all(|d| (500..=1000).contains(d)),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter varies the delays: {delays:?}"
        );
    }

    fn zero_backoff_retries_are_pending_at_once(fx) {
        let id = fx.enqueue_one(NewJob {
            max_retries: 1,
            backoff_base_ms: 0,
            backoff_cap_ms: 0,
            ..job(0)
        });
        let token = claim_token(&fx, id);
        assert_eq!(
            fx.engine
                .fail(id, token, &report(FailureKind::Error, true))
                .unwrap(),
            FailOutcome::Retry { eta_ms: START_MS }
        );
        assert_eq!(fx.engine.status(id).unwrap(), Status::Pending);
        assert_eq!(claim_token(&fx, id), 2);
    }

    fn dead_after_max_retries_keeps_the_full_history(fx) {
        let id = fx.enqueue_one(retrying(2, 0.0));
        for n in 1..=3 {
            let token = claim_token(&fx, id);
            let mut failure = report(FailureKind::Error, true);
            failure.message = format!("failure {n}");
            let outcome = fx.engine.fail(id, token, &failure).unwrap();
            if n < 3 {
                assert!(matches!(outcome, FailOutcome::Retry { .. }));
            } else {
                assert_eq!(outcome, FailOutcome::Dead);
            }
            fx.advance(10_000);
        }
        let record = fx.engine.get(id).unwrap();
        assert_eq!(record.status, Status::Dead);
        assert_eq!((record.attempt, record.failures, record.crashes), (3, 3, 0));
        assert_eq!(record.finished_ms, Some(START_MS + 20_000));
        let errors = fx.engine.errors(id).unwrap();
        assert_eq!(
            errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(
            errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
            vec!["failure 1", "failure 2", "failure 3"]
        );
        assert_eq!(
            errors.iter().map(|e| e.failed_ms).collect::<Vec<_>>(),
            vec![START_MS, START_MS + 10_000, START_MS + 20_000]
        );
        let first = &errors[0];
        assert_eq!(first.job_id, id);
        assert_eq!(first.kind, "error");
        assert_eq!(first.exc_type, "builtins.ValueError");
        assert_eq!(first.worker, "host:1:0");
        assert!(first.traceback.starts_with("Traceback"));
        assert_eq!(first.exc_pickle.as_deref(), Some(&b"pickled"[..]));
        assert_eq!(
            fx.engine
                .dead_letters(10, 0)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![id]
        );
    }

    fn crashes_have_their_own_bound(fx) {
        let id = fx.enqueue_one(NewJob {
            max_retries: 1,
            max_crashes: 2,
            backoff_base_ms: 100,
            ..job(0)
        });
        let steps = [
            (FailureKind::Crash, "retry"),
            (FailureKind::Error, "retry"),
            (FailureKind::Crash, "retry"),
            (FailureKind::Crash, "dead"),
        ];
        for (kind, expected) in steps {
            let token = claim_token(&fx, id);
            assert_eq!(
                fx.engine
                    .fail(id, token, &report(kind, true))
                    .unwrap()
                    .as_str(),
                expected,
                "{kind:?}"
            );
            fx.advance(1000);
        }
        let record = fx.engine.get(id).unwrap();
        assert_eq!(
            (record.failures, record.crashes, record.status),
            (1, 3, Status::Dead)
        );
        let kinds: Vec<String> = fx
            .engine
            .errors(id)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec!["crash", "error", "crash", "crash"]);
    }

    fn crash_backoff_counts_crashes(fx) {
        let id = fx.enqueue_one(NewJob {
            max_retries: 5,
            max_crashes: 5,
            backoff_base_ms: 100,
            ..job(0)
        });
        let token = claim_token(&fx, id);
        fx.engine
            .fail(id, token, &report(FailureKind::Error, true))
            .unwrap();
        fx.advance(100);
        let token = claim_token(&fx, id);
        // The first crash waits the first backoff step, however many errors came before.
        assert_eq!(
            fx.engine
                .fail(id, token, &report(FailureKind::Crash, true))
                .unwrap(),
            FailOutcome::Retry {
                eta_ms: fx.now() + 100
            }
        );
    }

    fn non_retryable_failures_are_dead_at_once(fx) {
        let id = fx.enqueue_one(NewJob {
            max_retries: 10,
            max_crashes: 10,
            ..job(0)
        });
        let token = claim_token(&fx, id);
        assert_eq!(
            fx.engine
                .fail(id, token, &report(FailureKind::Error, false))
                .unwrap(),
            FailOutcome::Dead
        );
        assert_eq!(fx.engine.status(id).unwrap(), Status::Dead);
        assert_eq!(fx.engine.errors(id).unwrap().len(), 1);
    }

    fn reaping_fails_expired_leases_then_retries_or_kills(fx) {
        let id = fx.enqueue_one(NewJob {
            max_crashes: 1,
            backoff_base_ms: 500,
            ..job(0)
        });
        let token = claim_token(&fx, id);
        fx.advance(30_000);
        assert!(
            fx.engine.reap_expired(10).unwrap().is_empty(),
            "a lease is still held at its deadline"
        );
        fx.advance(1);
        assert_eq!(
            fx.engine.reap_expired(10).unwrap(),
            vec![(
                id,
                FailOutcome::Retry {
                    eta_ms: fx.now() + 500
                }
            )]
        );
        let errors = fx.engine.errors(id).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, "lease_expired");
        assert_eq!(errors[0].exc_type, "stoker.errors.LeaseExpiredError");
        assert_eq!(errors[0].worker, "owner-a");
        assert_eq!(errors[0].attempt, token);
        assert!(
            errors[0].message.contains("owner-a"),
            "{}",
            errors[0].message
        );
        assert!(
            errors[0].message.contains(&(START_MS + 30_000).to_string()),
            "{}",
            errors[0].message
        );
        assert_eq!(fx.engine.get(id).unwrap().crashes, 1);

        fx.advance(500);
        claim_token(&fx, id);
        fx.advance(30_001);
        assert_eq!(
            fx.engine.reap_expired(10).unwrap(),
            vec![(id, FailOutcome::Dead)]
        );
        assert_eq!(fx.engine.status(id).unwrap(), Status::Dead);
    }

    fn reaping_is_bounded_and_takes_the_oldest_deadline_first(fx) {
        let ids = fx.engine.enqueue(&[job(0), job(0), job(0)]).unwrap();
        fx.engine
            .claim(&["default".to_owned()], 1, "o", 3000)
            .unwrap();
        fx.engine
            .claim(&["default".to_owned()], 1, "o", 1000)
            .unwrap();
        fx.engine
            .claim(&["default".to_owned()], 1, "o", 2000)
            .unwrap();
        fx.advance(5000);
        let first: Vec<i64> = fx
            .engine
            .reap_expired(2)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(first, vec![ids[1], ids[2]]);
        let rest: Vec<i64> = fx
            .engine
            .reap_expired(0)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert!(rest.is_empty());
        let rest: Vec<i64> = fx
            .engine
            .reap_expired(10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(rest, vec![ids[0]]);
    }

    fn replay_makes_a_new_job_with_the_same_options(fx) {
        let original = NewJob {
            task_name: "mod.task".into(),
            payload: b"args".to_vec(),
            queue: "q".into(),
            priority: 4,
            max_retries: 0,
            max_crashes: 3,
            backoff_base_ms: 10,
            backoff_cap_ms: 20,
            jitter: 0.25,
            timeout_ms: Some(1234),
            delay_ms: 0,
            eta_ms: None,
            result_ttl_ms: Some(999),
            labels: Some(r#"{"k": "v"}"#.to_owned()),
            ..NewJob::new("mod.task", b"args".to_vec())
        };
        let id = fx.enqueue_one(original);
        assert!(matches!(
            fx.engine.replay(id),
            Err(EngineError::JobState { job_id, ref status, ref operation }) if job_id == id && status == "pending" && operation == "replay"
        ));
        let claimed = fx.engine.claim(&["q".to_owned()], 1, "o", 1000).unwrap();
        fx.engine
            .fail(id, claimed[0].token, &report(FailureKind::Error, true))
            .unwrap();
        fx.advance(50);
        let new_id = fx.engine.replay(id).unwrap();
        assert_ne!(new_id, id);
        let old = fx.engine.get(id).unwrap();
        let new = fx.engine.get(new_id).unwrap();
        assert_eq!(new.status, Status::Pending);
        assert_eq!(new.replayed_from, Some(id));
        assert_eq!(new.labels, old.labels);
        assert_eq!((new.attempt, new.failures, new.crashes), (0, 0, 0));
        assert_eq!((new.created_ms, new.eta_ms), (START_MS + 50, START_MS + 50));
        assert_eq!(
            (&new.task_name, &new.queue, new.priority, &new.payload),
            (&old.task_name, &old.queue, old.priority, &old.payload)
        );
        assert_eq!(
            (
                new.max_retries,
                new.max_crashes,
                new.backoff_base_ms,
                new.backoff_cap_ms,
                new.jitter
            ),
            (
                old.max_retries,
                old.max_crashes,
                old.backoff_base_ms,
                old.backoff_cap_ms,
                old.jitter
            )
        );
        assert_eq!((new.timeout_ms, new.result_ttl_ms), (Some(1234), Some(999)));
        assert!(fx.engine.errors(new_id).unwrap().is_empty());
        assert_eq!(old.status, Status::Dead, "the dead job stays dead");
    }

    fn dead_letters_are_most_recent_first_and_paged(fx) {
        let ids = fx.engine.enqueue(&[job(3), job(2), job(1)]).unwrap();
        for _ in 0..3 {
            let claimed = fx.claim(1);
            fx.engine
                .fail(
                    claimed[0].id,
                    claimed[0].token,
                    &report(FailureKind::Error, false),
                )
                .unwrap();
            fx.advance(10);
        }
        let page = |limit, offset| -> Vec<i64> {
            fx.engine
                .dead_letters(limit, offset)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(page(10, 0), vec![ids[2], ids[1], ids[0]]);
        assert_eq!(page(1, 1), vec![ids[1]]);
        assert!(page(10, 3).is_empty());
    }
}

#[test]
fn unknown_failure_kind_is_an_invalid_option() {
    assert!(
        matches!(FailureKind::parse("oops"), Err(EngineError::InvalidOption(m)) if m.contains("kind") && m.contains("oops"))
    );
    for kind in ["error", "timeout", "crash", "lease_expired"] {
        assert_eq!(FailureKind::parse(kind).unwrap().as_str(), kind);
    }
}

/// A version-4 file knew no held jobs: its running jobs count as sent to a
/// worker after the migration, and jobs can be marked held.
#[test]
fn a_version_4_file_is_migrated_and_its_running_jobs_count_as_sent() {
    let fx = Fixture::sqlite();
    let running = fx.enqueue_one(uncrashable());
    fx.claim(1);
    let db = fx.db_path();
    drop(fx.engine);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("ALTER TABLE jobs DROP COLUMN held; PRAGMA user_version = 4;")
            .unwrap();
    }
    let engine = stoker_sqlite::open_engine(
        &db,
        common::BUSY_TIMEOUT,
        std::sync::Arc::new(fx.clock.clone()),
    )
    .unwrap();
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, stoker_sqlite::SCHEMA_VERSION);
    let held = engine.enqueue(&[uncrashable()]).unwrap()[0];
    let queues = ["default".to_owned()];
    let claimed = engine.claim(&queues, 1, "owner-b", 30_000).unwrap();
    let request = ClaimRequest {
        queues: &queues,
        limit: 0,
        owner: "owner-b",
        lease_ms: 30_000,
        held: &[(held, claimed[0].token)],
        sent: &[],
    };
    engine.complete_and_claim(&[], &request).unwrap();
    engine.advance_clock(30_001).unwrap();
    let mut reaped = engine.reap_expired(10).unwrap();
    reaped.sort_by_key(|r| r.0);
    assert_eq!(
        reaped,
        vec![(running, FailOutcome::Dead), (held, FailOutcome::Returned)]
    );
}
