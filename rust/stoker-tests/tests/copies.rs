//! Batch sends: `enqueue_copies` stores one copy of a template per payload,
//! exactly the jobs `enqueue` stores for the same template and payloads.

#[macro_use]
mod common;

use common::{job, Fixture};
use stoker_engine::{JobRecord, NewJob, Status};

/// A template that sets every option a plain batch send carries.
fn rich_template() -> NewJob {
    NewJob {
        queue: "reports".into(),
        priority: 4,
        max_retries: 2,
        max_crashes: 5,
        backoff_base_ms: 250,
        backoff_cap_ms: 9_000,
        jitter: 0.1,
        timeout_ms: Some(1_500),
        result_ttl_ms: Some(60_000),
        labels: Some(r#"{"team":"a"}"#.into()),
        expires_after_ms: Some(30_000),
        ..NewJob::new("t.rich", Vec::new())
    }
}

/// `count` distinct payloads; every `large_every`-th one is larger than a
/// small row (a few kilobytes), the others a few bytes.
fn payloads(count: usize, large_every: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut payload = format!("payload {i}").into_bytes();
            if large_every > 0 && i % large_every == large_every - 1 {
                payload.resize(5_000, b'x');
            }
            payload
        })
        .collect()
}

/// Stores the payloads both ways, copies first, and checks that each copy is
/// the job `enqueue` stored for the same payload, but for its id; returns
/// the ids of the copies.
fn check_same_as_enqueue(fx: &Fixture, template: &NewJob, payloads: &[Vec<u8>]) -> Vec<i64> {
    let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let copies = fx.engine.enqueue_copies(template, &slices).unwrap();
    let jobs: Vec<NewJob> = payloads
        .iter()
        .map(|payload| NewJob {
            payload: payload.clone(),
            ..template.clone()
        })
        .collect();
    let singles = fx.engine.enqueue(&jobs).unwrap();
    assert_eq!(copies.len(), payloads.len());
    assert!(
        copies.windows(2).all(|pair| pair[0] < pair[1]),
        "ids in the order of the payloads: {copies:?}"
    );
    for ((&copy, &single), payload) in copies.iter().zip(&singles).zip(payloads) {
        let copied = fx.engine.get(copy).unwrap();
        let stored = fx.engine.get(single).unwrap();
        assert_eq!(&copied.payload, payload, "job {copy} has its own payload");
        assert_eq!(
            JobRecord { id: 0, ..copied },
            JobRecord { id: 0, ..stored },
            "job {copy} is the job enqueue stores"
        );
    }
    copies
}

backend_tests! {
    fn copies_of_every_batch_size_are_the_jobs_enqueue_stores(fx) {
        // Sizes below, at and across the chunks a backend may cut a batch into.
        for count in [1, 2, 7, 8, 9, 16, 17, 63, 64, 65, 127, 128, 129, 300] {
            check_same_as_enqueue(&fx, &rich_template(), &payloads(count, 0));
        }
        assert!(fx.engine.enqueue_copies(&rich_template(), &[]).unwrap().is_empty());
    }

    fn large_payloads_among_small_ones_keep_their_order(fx) {
        check_same_as_enqueue(&fx, &job(0), &payloads(150, 7));
        check_same_as_enqueue(&fx, &job(0), &payloads(40, 1));
    }

    fn copies_of_a_delayed_template_are_scheduled(fx) {
        let template = NewJob {
            delay_ms: 5_000,
            ..job(0)
        };
        let ids = check_same_as_enqueue(&fx, &template, &payloads(20, 0));
        let record = fx.engine.get(ids[0]).unwrap();
        assert_eq!(record.status, Status::Scheduled);
        assert_eq!(record.eta_ms, fx.now() + 5_000);
        assert!(fx.claim_ids(100).is_empty(), "nothing is due yet");
    }

    fn copies_are_claimed_in_order(fx) {
        let slices: Vec<Vec<u8>> = payloads(100, 0);
        let slices: Vec<&[u8]> = slices.iter().map(Vec::as_slice).collect();
        let ids = fx.engine.enqueue_copies(&job(0), &slices).unwrap();
        assert_eq!(fx.claim_ids(100), ids);
    }

    fn copies_with_a_unique_key_are_one_job(fx) {
        let template = NewJob {
            unique_key: Some("k".into()),
            ..job(0)
        };
        let ids = fx
            .engine
            .enqueue_copies(&template, &[b"a".as_slice(), b"b".as_slice()])
            .unwrap();
        assert_eq!(ids[0], ids[1], "the second copy found the first one live");
        assert_eq!(fx.engine.get(ids[0]).unwrap().payload, b"a".to_vec());
    }

    fn copies_with_dependencies_wait_for_them(fx) {
        let dep = fx.enqueue_one(job(0));
        let template = NewJob {
            depends_on: vec![dep],
            ..job(0)
        };
        let ids = check_same_as_enqueue(&fx, &template, &payloads(10, 0));
        for id in ids {
            assert_eq!(fx.engine.get(id).unwrap().status, Status::Waiting);
        }
    }

    fn an_invalid_template_stores_nothing(fx) {
        let template = NewJob {
            max_retries: -1,
            ..job(0)
        };
        assert!(fx.engine.enqueue_copies(&template, &[b"a".as_slice()]).is_err());
        assert_eq!(fx.engine.list_jobs(&Default::default(), 10, 0).unwrap().len(), 0);
    }
}
