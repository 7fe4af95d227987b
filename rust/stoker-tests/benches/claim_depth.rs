//! Claim cost against queue depth.
//!
//! For each depth (pending jobs waiting in the queue), priority mix and claim
//! batch size, this measures claim and complete calls on an SQLite database
//! file, and prints a table. The depth is held constant while measuring: the
//! jobs a round takes are replaced, outside the timed section, by as many new
//! ones. Claims read the partial index of pending jobs, so their cost should
//! not grow with depth: what remains is locality, since with mixed priorities
//! the rows a batch takes lie on more distinct pages in a deeper queue.
//!
//! Run with `cargo bench -p stoker-tests --bench claim_depth`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stoker_engine::{Completion, Engine, ManualClock, NewJob};

/// Pending jobs in the queue while measuring.
const DEPTHS: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Distinct priorities among the queued jobs: one (a plain FIFO queue), and a
/// mix where each claim takes the oldest jobs of the highest priority.
const PRIORITY_MIXES: [i64; 2] = [1, 10];

/// Jobs taken by one claim.
const BATCHES: [usize; 2] = [2, 32];

/// Jobs claimed and completed per measurement: enough rounds to average out
/// noise at batch 2, few enough to keep the whole run to about two minutes.
const JOBS_PER_MEASUREMENT: usize = 8192;

/// Jobs per enqueue transaction while filling the queue.
const FILL_CHUNK: usize = 10_000;

/// Long enough that no lease expires during a run.
const LEASE_MS: i64 = 60_000;

fn fill(engine: &Engine, count: usize, priorities: i64, rng: &mut fastrand::Rng) {
    let mut left = count;
    while left > 0 {
        let chunk = left.min(FILL_CHUNK);
        let jobs: Vec<NewJob> = (0..chunk)
            .map(|_| NewJob {
                priority: rng.i64(0..priorities),
                ..NewJob::new("bench.task", vec![0u8; 64])
            })
            .collect();
        engine.enqueue(&jobs).expect("enqueue");
        left -= chunk;
    }
}

/// Time spent in claim calls and in complete calls.
struct Spent {
    claim: Duration,
    complete: Duration,
}

/// Claims and completes `JOBS_PER_MEASUREMENT` jobs in batches of `batch`.
fn measure(engine: &Engine, batch: usize, priorities: i64, rng: &mut fastrand::Rng) -> Spent {
    let queues = vec!["default".to_owned()];
    let mut spent = Spent {
        claim: Duration::ZERO,
        complete: Duration::ZERO,
    };
    let mut done = 0;
    while done < JOBS_PER_MEASUREMENT {
        let started = Instant::now();
        let claimed = engine
            .claim(&queues, batch, "bench", LEASE_MS)
            .expect("claim");
        let claimed_at = Instant::now();
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
        spent.complete += claimed_at.elapsed();
        spent.claim += claimed_at - started;
        assert!(
            applied.iter().all(|&ok| ok),
            "every fresh completion applies"
        );
        assert_eq!(claimed.len(), batch, "the queue never runs dry");
        done += claimed.len();
        fill(engine, claimed.len(), priorities, rng);
    }
    spent
}

fn main() {
    let dir = std::env::temp_dir().join(format!("stoker-claim-depth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench directory");
    let mut rng = fastrand::Rng::with_seed(42);
    let jobs = JOBS_PER_MEASUREMENT as f64;

    println!("claim + complete_many of {JOBS_PER_MEASUREMENT} jobs per row; SQLite WAL file, synchronous=NORMAL");
    println!();
    println!(
        "{:>10} {:>10} {:>6} {:>10} {:>14} {:>14} {:>14}",
        "pending",
        "priorities",
        "batch",
        "jobs/s",
        "claim us/job",
        "compl. us/job",
        "us/round trip"
    );
    // Claim cost per job, by (priorities, batch), in order of depth.
    let mut claim_costs: Vec<((i64, usize), Vec<f64>)> = Vec::new();
    for priorities in PRIORITY_MIXES {
        for depth in DEPTHS {
            let path = dir.join(format!("depth-{depth}-{priorities}.db"));
            let engine = stoker_sqlite::open_engine(
                &path,
                Duration::from_secs(5),
                Arc::new(ManualClock::new(0)),
            )
            .expect("open bench database");
            let fill_started = Instant::now();
            fill(&engine, depth, priorities, &mut rng);
            eprintln!(
                "filled {depth} jobs in {:.1} s",
                fill_started.elapsed().as_secs_f64()
            );
            for batch in BATCHES {
                let spent = measure(&engine, batch, priorities, &mut rng);
                let (claim, complete) = (spent.claim.as_secs_f64(), spent.complete.as_secs_f64());
                let rounds = jobs / batch as f64;
                println!(
                    "{depth:>10} {priorities:>10} {batch:>6} {:>10.0} {:>14.2} {:>14.2} {:>14.1}",
                    jobs / (claim + complete),
                    claim * 1e6 / jobs,
                    complete * 1e6 / jobs,
                    (claim + complete) * 1e6 / rounds
                );
                let key = (priorities, batch);
                match claim_costs.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, costs)) => costs.push(claim * 1e6 / jobs),
                    None => claim_costs.push((key, vec![claim * 1e6 / jobs])),
                }
            }
            drop(engine);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(
                    dir.join(format!("depth-{depth}-{priorities}.db{suffix}")),
                );
            }
        }
    }
    println!();
    println!("claim cost per job relative to {} pending:", DEPTHS[0]);
    for ((priorities, batch), costs) in &claim_costs {
        let relative: Vec<String> = costs
            .iter()
            .map(|cost| format!("{:.2}x", cost / costs[0]))
            .collect();
        println!(
            "  priorities {priorities:>2}, batch {batch:>2}: {}",
            relative.join("  ")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
