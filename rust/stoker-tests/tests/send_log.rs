//! The send log (`stoker-sqlite/src/send_log.rs`): single sends appended to a
//! file of this process, moved into the database by its next transaction,
//! and recovered exactly once from the log of a process that died.

#[macro_use]
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{job, Fixture};
use rusqlite::Connection;
use stoker_engine::{JobRecord, NewJob, Status};
use stoker_sqlite::send_log::{decode_all, encode, log_dir, Record};

/// A template with every option a plain send carries.
fn template() -> NewJob {
    NewJob {
        queue: "reports".into(),
        priority: 3,
        max_retries: 2,
        max_crashes: 4,
        backoff_base_ms: 100,
        backoff_cap_ms: 5_000,
        jitter: 0.25,
        timeout_ms: Some(1_000),
        result_ttl_ms: Some(60_000),
        labels: Some(r#"{"run":7}"#.into()),
        expires_after_ms: Some(30_000),
        ..NewJob::new("t.logged", Vec::new())
    }
}

fn log_files(db: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(log_dir(db)) {
        Ok(entries) => entries.flatten().map(|entry| entry.path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// The records in the log files of the database, read without locking them.
fn logged(db: &Path) -> Vec<Record> {
    log_files(db)
        .iter()
        .flat_map(|path| decode_all(&fs::read(path).unwrap()))
        .collect()
}

/// The row a send stored at once (`enqueue_copies` with no log open) and
/// the row of a logged send of the same job are the same, but for the id.
#[test]
fn a_logged_send_becomes_the_job_a_direct_send_stores() {
    let fx = Fixture::sqlite();
    let payload = b"direct or logged".as_slice();
    let direct = fx.engine.enqueue_copies(&template(), &[payload]).unwrap()[0];

    fx.engine.open_send_log().unwrap();
    let id = fx.engine.enqueue_copies(&template(), &[payload]).unwrap()[0];
    let records = logged(&fx.db_path());
    assert_eq!(records.len(), 1, "the send is in the log file");
    assert_eq!(records[0].id, id);
    assert_eq!(records[0].job.payload, payload);

    let stored = fx.engine.get(id).unwrap();
    assert_eq!(
        JobRecord { id: 0, ..stored },
        JobRecord {
            id: 0,
            ..fx.engine.get(direct).unwrap()
        }
    );
    fx.engine.close_send_log().unwrap();
    assert!(
        log_files(&fx.db_path()).is_empty(),
        "closing removes the log"
    );
}

backend_tests! {
    // PostgreSQL keeps no log: the same calls store every send at once.
    fn another_connection_of_the_process_sees_a_logged_send(fx) {
        let other = fx.other_engine(std::sync::Arc::new(fx.clock.clone()));
        fx.engine.open_send_log().unwrap();
        let ids: Vec<i64> = (0..5)
            .map(|i| {
                let payload = format!("p{i}").into_bytes();
                fx.engine.enqueue_copies(&job(0), &[&payload]).unwrap()[0]
            })
            .collect();
        // A claim on the other connection stores them first.
        let claimed: Vec<i64> = other
            .claim(&["default".to_owned()], 10, "w", 60_000)
            .unwrap()
            .iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(claimed, ids, "every logged send, in the order sent");
        assert_eq!(other.status(ids[0]).unwrap(), Status::Running);
        fx.engine.close_send_log().unwrap();
    }
}

#[test]
fn sends_that_need_work_at_send_time_are_stored_at_once() {
    let fx = Fixture::sqlite();
    fx.engine.open_send_log().unwrap();
    let unique = NewJob {
        unique_key: Some("once".into()),
        ..job(0)
    };
    let first = fx
        .engine
        .enqueue_copies(&unique, &[b"a".as_slice()])
        .unwrap()[0];
    let second = fx
        .engine
        .enqueue_copies(&unique, &[b"b".as_slice()])
        .unwrap()[0];
    assert_eq!(first, second, "uniqueness is checked at send");
    let batch = fx
        .engine
        .enqueue_copies(&job(0), &[b"x".as_slice(), b"y".as_slice()])
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert!(logged(&fx.db_path()).is_empty(), "none of them was logged");
    fx.engine.close_send_log().unwrap();
}

#[test]
fn ids_of_logged_and_direct_sends_never_collide() {
    let fx = Fixture::sqlite();
    let other = fx.other_engine(std::sync::Arc::new(fx.clock.clone()));
    fx.engine.open_send_log().unwrap();
    let mut ids = Vec::new();
    for i in 0..3000_u32 {
        let payload = i.to_le_bytes();
        // Logged sends (blocks of reserved ids) interleaved with direct ones
        // of the other connection, as another process would send them.
        ids.push(fx.engine.enqueue_copies(&job(0), &[&payload]).unwrap()[0]);
        if i % 100 == 0 {
            ids.extend(other.enqueue(&[job(0)]).unwrap());
        }
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "every id is distinct");
    fx.engine.close_send_log().unwrap();
    let stored = other.stats().unwrap();
    let pending: i64 = stored
        .iter()
        .filter(|(status, _)| *status == Status::Pending)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(pending, i64::try_from(ids.len()).unwrap());
}

/// Writes the log a process that died would have left: its records,
/// unlocked.
fn orphan_log(db: &Path, name: &str, records: &[Record]) -> PathBuf {
    let dir = log_dir(db);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    for record in records {
        file.write_all(&encode(record)).unwrap();
    }
    path
}

fn records(first_id: i64, count: u64, now_ms: i64) -> Vec<Record> {
    (1..=count)
        .map(|seq| Record {
            seq,
            id: first_id + i64::try_from(seq).unwrap(),
            now_ms,
            job: NewJob {
                payload: format!("orphan {seq}").into_bytes(),
                ..template()
            },
        })
        .collect()
}

#[test]
fn the_log_of_a_dead_process_is_moved_in_exactly_once() {
    let fx = Fixture::sqlite();
    let now = fx.now();
    let sent = records(1000, 4, now);
    let path = orphan_log(&fx.db_path(), "4242-1.log", &sent);

    assert_eq!(fx.engine.recover_send_logs().unwrap(), 4);
    assert!(!path.exists(), "a recovered log is removed");
    for record in &sent {
        let stored = fx.engine.get(record.id).unwrap();
        assert_eq!(stored.payload, record.job.payload);
        assert_eq!(stored.status, Status::Pending);
        assert_eq!(stored.created_ms, now);
    }

    // A recovery that committed the first four records and died before it
    // removed the file leaves the file and its mark; here the file has a
    // fifth record too. Only that one is new.
    orphan_log(&fx.db_path(), "4242-1.log", &records(1000, 5, now));
    Connection::open(fx.db_path())
        .unwrap()
        .execute(
            "INSERT INTO send_logs (name, last_seq) VALUES ('4242-1.log', 4)",
            [],
        )
        .unwrap();
    let db = fx.db_path();
    let reopened = stoker_sqlite::open_engine(
        &db,
        common::BUSY_TIMEOUT,
        std::sync::Arc::new(fx.clock.clone()),
    )
    .unwrap();
    // Opening recovered it; nothing is left for the next look.
    assert_eq!(reopened.recover_send_logs().unwrap(), 0);
    assert_eq!(reopened.get(1005).unwrap().payload, b"orphan 5".to_vec());
    let total: i64 = reopened.stats().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(total, 5, "no record was inserted twice");
}

#[test]
fn a_torn_record_ends_the_log() {
    let fx = Fixture::sqlite();
    let sent = records(2000, 3, fx.now());
    let path = orphan_log(&fx.db_path(), "77-1.log", &sent);
    // The last record was cut short by a power loss.
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert_eq!(fx.engine.recover_send_logs().unwrap(), 2);
    assert!(fx.engine.get(2003).is_err(), "the torn send is not stored");
}

#[test]
fn the_log_of_a_live_process_is_left_alone() {
    let fx = Fixture::sqlite();
    let path = orphan_log(&fx.db_path(), "99-1.log", &records(3000, 2, fx.now()));
    // Its process holds the lock, as a live one does.
    let held = File::open(&path).unwrap();
    // SAFETY: flock only reads the descriptor, which `held` keeps open.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0);
    assert_eq!(fx.engine.recover_send_logs().unwrap(), 0);
    assert!(path.exists());
    assert!(fx.engine.get(3001).is_err());
    drop(held);
    assert_eq!(fx.engine.recover_send_logs().unwrap(), 2);
}

#[test]
fn a_log_not_yet_locked_by_its_process_is_not_recovered() {
    let fx = Fixture::sqlite();
    let path = orphan_log(&fx.db_path(), "98-1.log.new", &records(4000, 2, fx.now()));
    assert_eq!(fx.engine.recover_send_logs().unwrap(), 0);
    assert!(path.exists());
    // Once it has its proper name and is unlocked, its process is gone.
    fs::rename(&path, log_dir(&fx.db_path()).join("98-1.log")).unwrap();
    assert_eq!(fx.engine.recover_send_logs().unwrap(), 2);
}

#[test]
fn a_log_opened_twice_stays_until_closed_twice() {
    let fx = Fixture::sqlite();
    fx.engine.open_send_log().unwrap();
    fx.engine.open_send_log().unwrap();
    let first = fx
        .engine
        .enqueue_copies(&job(0), &[b"1".as_slice()])
        .unwrap()[0];
    fx.engine.close_send_log().unwrap();
    let second = fx
        .engine
        .enqueue_copies(&job(0), &[b"2".as_slice()])
        .unwrap()[0];
    assert_eq!(logged(&fx.db_path()).len(), 2, "both sends were logged");
    fx.engine.close_send_log().unwrap();
    assert!(log_files(&fx.db_path()).is_empty());
    // Closed: the next send is stored at once, and nothing was lost.
    let third = fx
        .engine
        .enqueue_copies(&job(0), &[b"3".as_slice()])
        .unwrap()[0];
    for id in [first, second, third] {
        assert_eq!(fx.engine.status(id).unwrap(), Status::Pending);
    }
    assert!(logged(&fx.db_path()).is_empty());
}

#[test]
fn a_record_survives_encoding() {
    let record = Record {
        seq: 9,
        id: 77,
        now_ms: 123,
        job: NewJob {
            eta_ms: Some(456),
            delay_ms: 0,
            ..template()
        },
    };
    assert_eq!(decode_all(&encode(&record)), vec![record]);
}

#[test]
fn a_version_3_file_is_migrated_and_keeps_its_jobs() {
    let fx = Fixture::sqlite();
    let kept = fx.enqueue_one(job(0));
    let db = fx.db_path();
    drop(fx.engine);
    {
        // Version 3 had no marks of send logs, nor of held jobs.
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TABLE send_logs; ALTER TABLE jobs DROP COLUMN held; PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let engine = stoker_sqlite::open_engine(
        &db,
        common::BUSY_TIMEOUT,
        std::sync::Arc::new(fx.clock.clone()),
    )
    .unwrap();
    let version: i64 = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, stoker_sqlite::SCHEMA_VERSION);
    assert_eq!(engine.status(kept).unwrap(), Status::Pending);
    engine.open_send_log().unwrap();
    let logged = engine.enqueue_copies(&job(0), &[b"x".as_slice()]).unwrap()[0];
    engine.close_send_log().unwrap();
    assert_eq!(engine.status(logged).unwrap(), Status::Pending);
}

/// A child forked from a process with pending sends has a copy of them in
/// memory: they are the parent's to store, so the child neither stores them
/// nor appends to the parent's file.
#[cfg(unix)]
#[test]
fn a_forked_child_leaves_the_parents_log_alone() {
    let fx = Fixture::sqlite();
    fx.engine.open_send_log().unwrap();
    fx.engine
        .enqueue_copies(&job(0), &[b"pending".as_slice()])
        .unwrap();
    let log = stoker_sqlite::send_log::for_database(&fx.db_path().canonicalize().unwrap());
    assert!(log.accepting() && log.has_pending());
    // SAFETY: the child only reads the log's pid and exits; it takes no lock
    // another thread could have held at the fork.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let inert = !log.accepting() && !log.has_pending() && log.take_pending().is_none();
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(if inert { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert!(log.has_pending(), "still the parent's to store");
    fx.engine.close_send_log().unwrap();
}
