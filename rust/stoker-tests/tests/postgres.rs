//! What only the PostgreSQL storage has: URLs and server errors, the schema
//! marker, the claim's plan, the server clock, supervisor registrations,
//! concurrent claimers on separate connections, and wake-up notifications.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{job, Fixture, PgSchema, START_MS};
use stoker_engine::{
    Clock, Engine, EngineError, FailOutcome, LimitScope, Limits, ManualClock, Status, SystemClock,
};
use stoker_postgres::{
    PostgresStorage, ServerClock, CLAIM_ONE_QUEUE_SQL, HOT_STATEMENTS, PG_SCHEMA_VERSION,
};

/// How long a test waits for something another thread or the server does.
const PATIENCE: Duration = Duration::from_secs(20);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pg_fixture() -> Option<Fixture> {
    Fixture::postgres()
}

#[test]
fn a_bad_url_is_an_invalid_option_naming_it_without_its_password() {
    let error = stoker_postgres::open_engine("postgresql://user:hunter2@host:notaport/db", None)
        .expect_err("a port must be a number");
    match error {
        EngineError::InvalidOption(message) => {
            assert!(
                message.contains("postgresql://user:***@host:notaport/db"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected an invalid option, got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_a_storage_error_naming_host_and_port() {
    // Port 1 on the loopback interface refuses connections at once.
    let error = stoker_postgres::open_engine(
        "postgresql://stoker:secret@127.0.0.1:1/stoker?connect_timeout=5",
        None,
    )
    .expect_err("nothing listens on port 1");
    match error {
        EngineError::Storage(message) => {
            assert!(message.contains("127.0.0.1:1"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
}

#[test]
fn a_schema_with_other_tables_is_not_ours_and_is_left_alone() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    schema
        .client()
        .batch_execute("CREATE TABLE invoices (id int); CREATE TABLE customers (id int)")
        .unwrap();
    match stoker_postgres::open_engine(&schema.url(), None) {
        Err(EngineError::NotOurDatabase { path, reason }) => {
            assert!(reason.contains("customers, invoices"), "{reason}");
            assert!(path.contains(&schema.name), "{path}");
        }
        other => panic!("expected NotOurDatabase, got {other:?}"),
    }
    let tables: i64 = schema
        .client()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 2, "nothing was created beside the foreign tables");
}

#[test]
fn another_schema_version_is_refused() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    fx.schema
        .as_ref()
        .unwrap()
        .client()
        .batch_execute("UPDATE stoker_meta SET value = '99' WHERE key = 'schema_version'")
        .unwrap();
    match stoker_postgres::open_engine(&fx.target, None) {
        Err(EngineError::SchemaVersion {
            found, expected, ..
        }) => assert_eq!((found, expected), (99, PG_SCHEMA_VERSION)),
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
}

#[test]
fn another_application_in_the_marker_is_refused() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    fx.schema
        .as_ref()
        .unwrap()
        .client()
        .batch_execute("UPDATE stoker_meta SET value = 'other' WHERE key = 'application'")
        .unwrap();
    assert!(matches!(
        stoker_postgres::open_engine(&fx.target, None),
        Err(EngineError::NotOurDatabase { reason, .. }) if reason.contains("\"other\"")
    ));
}

#[test]
fn opening_twice_keeps_the_schema_and_its_jobs() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    let id = fx.enqueue_one(job(0));
    let other = fx.other_engine(Arc::new(fx.clock.clone()));
    assert_eq!(other.status(id).unwrap(), Status::Pending);
}

#[test]
fn a_version_1_schema_is_migrated_in_place_and_keeps_its_jobs() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    // Version 2 is version 1 with the two tables of large values added, and
    // version 3 adds a column of jobs, so a version-1 schema is the
    // current one without them, marked version 1,
    // with its values in the job rows.
    drop(stoker_postgres::open_engine(&schema.url(), None).unwrap());
    let mut client = schema.client();
    client
        .batch_execute(
            "DROP TABLE job_payloads; DROP TABLE job_results; ALTER TABLE jobs DROP COLUMN held; \
             UPDATE stoker_meta SET value = '1' WHERE key = 'schema_version'",
        )
        .unwrap();
    let large_pending: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let large_done: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 241) as u8).collect();
    let mut insert = |status: i64, payload: &[u8], result: Option<&[u8]>| -> i64 {
        client
            .query_one(
                "INSERT INTO jobs (task_name, queue, priority, payload, status, max_retries, max_crashes, \
                 backoff_base_ms, backoff_cap_ms, jitter, created_ms, eta_ms, result, finished_ms) \
                 VALUES ('t', 'default', 0, $1, $2, 0, 1, 1000, 300000, 0.0, 1, 1, $3, \
                 CASE WHEN $2 = 3::bigint THEN 5 END) RETURNING id",
                &[&payload, &status, &result],
            )
            .unwrap()
            .get(0)
    };
    let pending = insert(0, &large_pending, None);
    let done = insert(3, &large_done, Some(&large_done));

    let engine =
        stoker_postgres::open_engine(&schema.url(), Some(Arc::new(ManualClock::new(10)))).unwrap();
    let mut client = schema.client();
    let version: String = client
        .query_one(
            "SELECT value FROM stoker_meta WHERE key = 'schema_version'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, PG_SCHEMA_VERSION.to_string());
    let moved: Vec<i64> = client
        .query("SELECT job_id FROM job_payloads ORDER BY job_id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        moved,
        vec![pending],
        "the large payload of the unfinished job moved aside; a finished job keeps its own"
    );
    let finished = engine.get(done).unwrap();
    assert!(finished.payload == large_done);
    assert!(finished.result.as_deref() == Some(&large_done[..]));
    let claimed = engine
        .claim(&["default".to_owned()], 1, "owner-a", 30_000)
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, pending);
    assert!(claimed[0].payload == large_pending);
}

#[test]
fn the_claim_reads_only_the_partial_index_of_runnable_jobs() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    // Enough finished rows that a sequential scan would be a real choice.
    let ids = fx.engine.enqueue(&vec![job(0); 2000]).unwrap();
    for chunk in ids.chunks(500) {
        let claimed = fx.claim(chunk.len());
        let outcomes: Vec<(i64, i64)> = claimed.iter().map(|c| (c.id, c.token)).collect();
        fx.complete_many(&outcomes);
    }
    fx.enqueue_one(job(0));
    fx.schema
        .as_ref()
        .unwrap()
        .client()
        .batch_execute("ANALYZE jobs")
        .unwrap();
    let storage = PostgresStorage::open(&fx.target).unwrap();
    let plan = storage.explain(CLAIM_ONE_QUEUE_SQL).unwrap().join("\n");
    assert!(plan.contains("jobs_pending"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    for (name, sql) in HOT_STATEMENTS {
        let plan = storage.explain(sql).unwrap().join("\n");
        assert!(!plan.contains("Seq Scan on jobs"), "{name}: {plan}");
    }
}

/// A host clock that is `skew_ms` off the true time.
#[derive(Debug)]
struct SkewedClock {
    skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.skew_ms
    }
}

#[test]
fn the_server_clock_hides_host_clock_skew() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let hour = 3_600_000;
    let ahead = PostgresStorage::open(&schema.url()).unwrap();
    let behind = PostgresStorage::open(&schema.url()).unwrap();
    let clock_ahead = ServerClock::new(&ahead, Arc::new(SkewedClock { skew_ms: hour })).unwrap();
    let clock_behind = ServerClock::new(&behind, Arc::new(SkewedClock { skew_ms: -hour })).unwrap();
    let server = ahead.server_time_ms().unwrap();
    // Each reading is the server's time up to a round trip, while the hosts'
    // own clocks are two hours apart.
    for clock in [&clock_ahead, &clock_behind] {
        assert!((clock.now_ms() - server).abs() < 60_000);
    }
    // A supervisor on the fast host registers for 10 s; a reaper on the slow
    // host finds its jobs alive, as it would with true clocks.
    let fast = Engine::new(Box::new(ahead), Arc::new(clock_ahead));
    let slow = Engine::new(Box::new(behind), Arc::new(clock_behind));
    fast.enqueue(&[job(0)]).unwrap();
    fast.register_supervisor("fast", "host-a", 1, 10_000)
        .unwrap();
    let claimed = fast
        .claim(&["default".to_owned()], 1, "fast", 10_000)
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(slow.reap_expired(10).unwrap().is_empty());
    assert_eq!(slow.status(claimed[0].id).unwrap(), Status::Running);
}

#[test]
fn a_supervisor_whose_registration_expires_loses_its_jobs_as_lost() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    let ids = fx.engine.enqueue(&[job(0), job(0)]).unwrap();
    fx.engine
        .register_supervisor("owner-a", "host-a", 42, 5_000)
        .unwrap();
    // The job leases are long; the registration is what runs out.
    let claimed = fx.claim(2);
    assert_eq!(claimed.len(), 2);
    fx.advance(4_000);
    fx.engine
        .register_supervisor("owner-a", "host-a", 42, 5_000)
        .unwrap();
    fx.advance(4_000);
    assert!(
        fx.engine.reap_expired(10).unwrap().is_empty(),
        "renewed in time"
    );
    assert_eq!(fx.engine.next_wakeup_ms().unwrap(), Some(START_MS + 9_000));
    fx.advance(1_001);
    let reaped = fx.engine.reap_expired(10).unwrap();
    assert_eq!(reaped.len(), 2);
    for (id, outcome) in &reaped {
        assert!(ids.contains(id));
        assert!(matches!(outcome, FailOutcome::Retry { .. }), "{outcome:?}");
        let errors = fx.engine.errors(*id).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, "lease_expired");
        assert!(
            errors[0].message.contains("stopped renewing"),
            "{}",
            errors[0].message
        );
    }
    // The lost supervisor's late outcomes are refused and recorded.
    assert!(!fx.complete(claimed[0].id, claimed[0].token));
    let stale = fx.engine.stale_outcomes(10).unwrap();
    assert_eq!(stale[0].job_id, claimed[0].id);
    assert_eq!(stale[0].outcome, "complete");
    // A supervisor that stops cleanly leaves no registration behind.
    fx.engine.deregister_supervisor("owner-a").unwrap();
    assert!(fx.engine.reap_expired(10).unwrap().is_empty());
}

#[test]
fn concurrent_claimers_on_separate_connections_never_share_a_job() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    const JOBS: usize = 400;
    const CLAIMERS: usize = 4;
    fx.engine.enqueue(&vec![job(0); JOBS]).unwrap();
    let barrier = Arc::new(Barrier::new(CLAIMERS));
    let handles: Vec<_> = (0..CLAIMERS)
        .map(|n| {
            let engine = fx.other_engine(Arc::new(ManualClock::new(START_MS)));
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let owner = format!("claimer-{n}");
                let mut mine = Vec::new();
                loop {
                    let claimed = engine
                        .claim(&["default".to_owned()], 7, &owner, 30_000)
                        .unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    for job in &claimed {
                        assert!(engine.complete(job.id, job.token, None).unwrap());
                        mine.push(job.id);
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<i64> = handles
        .into_iter()
        .flat_map(|handle| handle.join().unwrap())
        .collect();
    all.sort_unstable();
    let count = all.len();
    all.dedup();
    assert_eq!(all.len(), count, "a job was claimed twice");
    assert_eq!(count, JOBS);
    assert_eq!(
        fx.engine.stats().unwrap()[3],
        (Status::Complete, JOBS as i64)
    );
}

#[test]
fn a_global_concurrency_limit_holds_across_concurrent_claimers() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    const LIMIT: i64 = 3;
    const JOBS: usize = 120;
    fx.engine
        .set_limits(
            LimitScope::Task,
            "t",
            &Limits {
                concurrency: Some(LIMIT),
                ..Limits::default()
            },
        )
        .unwrap();
    fx.engine.enqueue(&vec![job(0); JOBS]).unwrap();
    let done = Arc::new(AtomicI64::new(0));
    let handles: Vec<_> = (0..4)
        .map(|n| {
            let engine = fx.other_engine(Arc::new(ManualClock::new(START_MS)));
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let owner = format!("claimer-{n}");
                while done.load(Ordering::SeqCst) < JOBS as i64 {
                    let claimed = engine
                        .claim(&["default".to_owned()], 2, &owner, 30_000)
                        .unwrap();
                    // While this claimer holds its jobs, the database never
                    // counts more running jobs of the task than the limit.
                    let running = engine.limits().unwrap()[0].running;
                    assert!(running <= LIMIT, "{running} running");
                    for job in &claimed {
                        assert!(engine.complete(job.id, job.token, None).unwrap());
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(
        fx.engine.stats().unwrap()[3],
        (Status::Complete, JOBS as i64)
    );
}

#[test]
fn enqueues_wake_the_listener_even_after_its_backend_is_terminated() {
    let Some(fx) = pg_fixture() else {
        return;
    };
    let fd = fx
        .engine
        .wake_fd()
        .unwrap()
        .expect("PostgreSQL has a wake-up descriptor");
    let readable = |fd: i32| {
        let mut pollfd = [PollFd {
            fd,
            events: 1,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { poll(pollfd.as_mut_ptr(), 1, 0) > 0 }
    };
    wait_until("the listener to connect", || {
        fx.engine.wake_listener_connected()
    });
    fx.engine.drain_wakeups();
    let other = fx.other_engine(Arc::new(fx.clock.clone()));
    other.enqueue(&[job(0)]).unwrap();
    wait_until("a wake-up", || readable(fd));
    assert!(fx.engine.drain_wakeups() >= 1);
    assert!(!readable(fd));
    // Kill the listening backend: the listener reconnects and signals.
    let schema = fx.schema.as_ref().unwrap();
    let terminated: i64 = schema
        .client()
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = 'LISTEN \"stoker_wake_' || $1 || '\"') AS t",
            &[&schema.name],
        )
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1);
    wait_until("the listener to reconnect", || {
        readable(fd) && fx.engine.wake_listener_connected()
    });
    fx.engine.drain_wakeups();
    other.enqueue(&[job(0)]).unwrap();
    wait_until("a wake-up after the reconnection", || readable(fd));
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

backend_tests! {
    fn registrations_never_reap_a_live_supervisor(fx) {
        fx.enqueue_one(job(0));
        fx.engine.register_supervisor("owner-a", "h", 1, 1_000).unwrap();
        let claimed = fx.claim(1);
        fx.advance(900);
        fx.engine.register_supervisor("owner-a", "h", 1, 1_000).unwrap();
        fx.advance(900);
        assert!(fx.engine.reap_expired(10).unwrap().is_empty());
        assert!(fx.complete(claimed[0].id, claimed[0].token));
    }
}
