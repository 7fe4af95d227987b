//! The PostgreSQL storage path alone: batched claim and fenced complete.
//!
//! Fills a fresh schema with jobs, then drains them with `CLAIMERS` threads,
//! each its own engine (its own connections, as separate supervisors would
//! have), claiming `BATCH` jobs and completing them in one `complete_many`.
//! It runs twice: with the server's durable commits, and with
//! `synchronous_commit = off` for the bench's sessions (a crash of the server
//! may lose the last commits, never corrupt them).
//!
//! Needs `STOKER_PG_URL`; `make bench` starts a server. Run alone with
//! `STOKER_PG_URL=... cargo bench -p stoker-tests --bench pg_claim`.

use std::sync::Arc;
use std::time::Instant;

use stoker_engine::{Completion, ManualClock, NewJob};

/// Jobs drained per measurement.
const JOBS: usize = 40_000;

/// Jobs per claim and per completion batch.
const BATCH: usize = 64;

/// Concurrent claimers, each with its own engine.
const CLAIMERS: usize = 4;

/// Jobs per enqueue transaction while filling.
const FILL_CHUNK: usize = 5_000;

/// Long enough that no lease expires during a run.
const LEASE_MS: i64 = 600_000;

fn schema_url(base: &str, schema: &str, durable: bool) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    let commit = if durable {
        ""
    } else {
        "%20-c%20synchronous_commit%3Doff"
    };
    format!("{base}{separator}options=-c%20search_path%3D{schema}{commit}")
}

fn run(base: &str, durable: bool) -> f64 {
    let schema = format!("bench_{}_{}", std::process::id(), fastrand::u32(..));
    let mut admin = postgres::Client::connect(base, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create schema");
    let url = schema_url(base, &schema, durable);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let engine = stoker_postgres::open_engine(&url, Some(clock.clone())).expect("open");
    let mut left = JOBS;
    while left > 0 {
        let chunk = left.min(FILL_CHUNK);
        engine
            .enqueue(&vec![NewJob::new("bench.task", vec![0u8; 64]); chunk])
            .expect("enqueue");
        left -= chunk;
    }
    admin
        .batch_execute(&format!("ANALYZE {schema}.jobs"))
        .expect("analyze");
    let started = Instant::now();
    let threads: Vec<_> = (0..CLAIMERS)
        .map(|n| {
            let engine = stoker_postgres::open_engine(&url, Some(clock.clone())).expect("open");
            std::thread::spawn(move || {
                let owner = format!("bench-{n}");
                let queues = ["default".to_owned()];
                let mut done = 0usize;
                loop {
                    let claimed = engine
                        .claim(&queues, BATCH, &owner, LEASE_MS)
                        .expect("claim");
                    if claimed.is_empty() {
                        return done;
                    }
                    let completions: Vec<Completion> = claimed
                        .iter()
                        .map(|job| Completion {
                            job_id: job.id,
                            token: job.token,
                            result: Some(vec![1u8; 16]),
                            usage: None,
                        })
                        .collect();
                    let applied = engine.complete_many(&completions).expect("complete");
                    assert!(applied.iter().all(|&ok| ok));
                    done += claimed.len();
                }
            })
        })
        .collect();
    let drained: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(drained, JOBS);
    drop(engine);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .expect("drop schema");
    JOBS as f64 / elapsed
}

fn main() {
    let Ok(base) = std::env::var("STOKER_PG_URL") else {
        eprintln!("pg_claim: set STOKER_PG_URL to a PostgreSQL server to run this bench");
        return;
    };
    println!(
        "PostgreSQL storage path: {JOBS} jobs, {CLAIMERS} claimers, claim {BATCH} + complete_many {BATCH}"
    );
    println!("| commits | jobs/s |");
    println!("|---|---|");
    for durable in [true, false] {
        let rate = run(&base, durable);
        let label = if durable {
            "durable (synchronous_commit = on)"
        } else {
            "synchronous_commit = off"
        };
        println!("| {label} | {rate:.0} |");
    }
}
