//! Labels, progress, resource usage, listings and purges.

#[macro_use]
mod common;

use common::{job, report};
use stoker_engine::{Completion, EngineError, FailureKind, JobFilter, NewJob, Status};

backend_tests! {
    fn labels_travel_with_the_claim_and_the_record(fx) {
        let id = fx.enqueue_one(NewJob {
            labels: Some(r#"{"run": 7}"#.to_owned()),
            ..job(0)
        });
        let claimed = fx.claim(1);
        assert_eq!(claimed[0].labels.as_deref(), Some(r#"{"run": 7}"#));
        assert_eq!(
            fx.engine.get(id).unwrap().labels.as_deref(),
            Some(r#"{"run": 7}"#)
        );
    }

    fn progress_is_fenced_and_cleared_by_the_next_claim(fx) {
        let id = fx.enqueue_one(NewJob {
            max_retries: 1,
            backoff_base_ms: 0,
            ..job(0)
        });
        let first = fx.claim(1)[0].token;
        assert!(fx.engine.set_progress(id, first, "[1, 10]").unwrap());
        assert_eq!(
            fx.engine.get(id).unwrap().progress.as_deref(),
            Some("[1, 10]")
        );
        assert!(!fx.engine.set_progress(id, first + 1, "[2, 10]").unwrap());
        assert_eq!(fx.engine.stale_outcomes(1).unwrap()[0].outcome, "progress");
        fx.engine
            .fail(id, first, &report(FailureKind::Error, true))
            .unwrap();
        let second = fx.claim(1)[0].token;
        assert_eq!(fx.engine.get(id).unwrap().progress, None);
        assert!(fx.engine.set_progress(id, second, "[3, 10]").unwrap());
    }

    fn usage_is_kept_for_completions_and_for_each_failed_attempt(fx) {
        let failed = fx.enqueue_one(job(0));
        let done = fx.enqueue_one(job(0));
        let claimed = fx.claim(2);
        fx.engine
            .fail(failed, claimed[0].token, &report(FailureKind::Error, false))
            .unwrap();
        let errors = fx.engine.errors(failed).unwrap();
        assert_eq!(errors[0].usage.as_deref(), Some(r#"{"cpu_user_s": 0.5}"#));
        assert_eq!(
            fx.engine.get(failed).unwrap().usage.as_deref(),
            Some(r#"{"cpu_user_s": 0.5}"#)
        );
        fx.engine
            .complete_many(&[Completion {
                job_id: done,
                token: claimed[1].token,
                result: None,
                usage: Some(r#"{"peak_rss_kib": 1024}"#.to_owned()),
            }])
            .unwrap();
        assert_eq!(
            fx.engine.get(done).unwrap().usage.as_deref(),
            Some(r#"{"peak_rss_kib": 1024}"#)
        );
    }

    fn list_jobs_filters_by_status_task_and_queue_newest_first(fx) {
        let a = fx.enqueue_one(NewJob::new("alpha", b"".to_vec()));
        let b = fx.enqueue_one(NewJob {
            queue: "other".to_owned(),
            ..NewJob::new("beta", b"".to_vec())
        });
        let c = fx.enqueue_one(NewJob::new("alpha", b"".to_vec()));
        fx.engine.cancel(c).unwrap();
        let ids = |filter: JobFilter| -> Vec<i64> {
            fx.engine
                .list_jobs(&filter, 10, 0)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids(JobFilter::default()), vec![c, b, a]);
        assert_eq!(
            ids(JobFilter {
                task_name: Some("alpha".to_owned()),
                ..JobFilter::default()
            }),
            vec![c, a]
        );
        assert_eq!(
            ids(JobFilter {
                status: Some(Status::Pending),
                ..JobFilter::default()
            }),
            vec![b, a]
        );
        assert_eq!(
            ids(JobFilter {
                queue: Some("other".to_owned()),
                ..JobFilter::default()
            }),
            vec![b]
        );
        assert_eq!(
            fx.engine.list_jobs(&JobFilter::default(), 1, 1).unwrap()[0].id,
            b
        );
    }

    fn purge_removes_old_finished_jobs_with_their_history_only(fx) {
        let dead = fx.enqueue_one(job(0));
        let pending = fx.enqueue_one(job(0));
        let token = fx.claim(1)[0].token;
        fx.engine
            .fail(dead, token, &report(FailureKind::Error, false))
            .unwrap();
        let replay = fx.engine.replay(dead).unwrap();
        assert!(matches!(
            fx.engine.purge_jobs(&[Status::Pending], None, 10),
            Err(EngineError::InvalidOption(_))
        ));
        fx.advance(1000);
        assert_eq!(
            fx.engine
                .purge_jobs(&[Status::Dead], Some(5000), 10)
                .unwrap(),
            0,
            "too recent"
        );
        assert_eq!(
            fx.engine
                .purge_jobs(&[Status::Dead], Some(500), 10)
                .unwrap(),
            1
        );
        assert!(matches!(fx.engine.get(dead), Err(EngineError::NotFound(_))));
        assert_eq!(fx.engine.get(replay).unwrap().replayed_from, None);
        assert_eq!(fx.engine.get(pending).unwrap().status, Status::Pending);
    }

    fn purge_removes_finished_jobs_linked_by_dependencies(fx) {
        let dep = fx.enqueue_one(job(0));
        let dependent = fx.enqueue_one(NewJob {
            depends_on: vec![dep],
            ..job(0)
        });
        let first = fx.claim(1);
        assert!(fx.complete(first[0].id, first[0].token));
        let second = fx.claim(1);
        assert_eq!(second[0].id, dependent);
        assert!(fx.complete(second[0].id, second[0].token));
        // Both ends of the dependency are finished, so both may go; the link
        // must not keep either of them (nor fail the purge).
        assert_eq!(
            fx.engine
                .purge_jobs(&[Status::Complete], None, 10)
                .unwrap(),
            2
        );
        assert!(matches!(fx.engine.get(dep), Err(EngineError::NotFound(_))));
        assert!(matches!(
            fx.engine.get(dependent),
            Err(EngineError::NotFound(_))
        ));
    }
}
