//! The locks of this process's SQLite hold against another copy of SQLite in
//! the same process (`stoker-sqlite/src/locks.rs`). That other copy takes POSIX
//! record locks; they are taken here with `fcntl` directly, on the bytes of
//! the `-shm` file where SQLite keeps the WAL write lock.

#![cfg(target_os = "linux")]

// The shared fixtures' backend macro is not used here.
#[allow(unused_macros)]
mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{job, TempDir};
use rusqlite::Connection;
use stoker_engine::{EngineError, Transitions};
use stoker_sqlite::SqliteStorage;

/// Where SQLite's WAL write lock lives in the `-shm` file (its
/// `WALINDEX_LOCK_OFFSET`, 120, plus `WAL_WRITE_LOCK`, 0).
const WAL_WRITE_LOCK_BYTE: i64 = 120;

fn shm_of(path: &Path) -> PathBuf {
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    PathBuf::from(shm)
}

/// A POSIX write lock on the WAL write lock byte, as another SQLite of this
/// process takes it: whether the kernel granted it.
fn posix_write_lock(file: &File, kind: libc::c_int) -> bool {
    // SAFETY: fcntl on an open descriptor with a zero-initialised flock.
    unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = kind as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = WAL_WRITE_LOCK_BYTE;
        lock.l_len = 1;
        libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) == 0
    }
}

fn open_shm(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_of(path))
        .unwrap()
}

#[test]
fn a_write_lock_of_another_sqlite_in_this_process_holds_off_our_writer() {
    let dir = TempDir::new();
    let path = dir.file("foreign-writer.db");
    let storage = SqliteStorage::open(&path, Duration::from_millis(40)).unwrap();
    storage.enqueue(&[job(0)], 0).unwrap();

    let shm = open_shm(&path);
    assert!(posix_write_lock(&shm, libc::F_WRLCK as _));
    // POSIX locks of one process never conflict with each other, so a
    // writer using them would commit now, under the other writer.
    let error = storage.enqueue(&[job(0)], 0).unwrap_err();
    assert!(matches!(error, EngineError::Busy(_)), "{error:?}");

    assert!(posix_write_lock(&shm, libc::F_UNLCK as _));
    storage.enqueue(&[job(0)], 0).unwrap();
    assert_eq!(
        storage.stats().unwrap().iter().map(|(_, n)| n).sum::<i64>(),
        2
    );
}

#[test]
fn our_write_lock_is_seen_by_another_sqlite_in_this_process_and_survives_its_close() {
    let dir = TempDir::new();
    let path = dir.file("our-writer.db");
    let _storage = SqliteStorage::open(&path, Duration::from_millis(40)).unwrap();
    let ours = Connection::open(&path).unwrap();
    ours.execute_batch("BEGIN IMMEDIATE").unwrap();

    let shm = open_shm(&path);
    assert!(
        !posix_write_lock(&shm, libc::F_WRLCK as _),
        "another SQLite of this process took the write lock we hold"
    );
    // Closing a descriptor of the file drops every POSIX lock the process
    // holds on it; ours must not be one of them.
    drop(open_shm(&path));
    drop(shm);
    let shm = open_shm(&path);
    assert!(!posix_write_lock(&shm, libc::F_WRLCK as _));

    ours.execute_batch("COMMIT").unwrap();
    assert!(posix_write_lock(&shm, libc::F_WRLCK as _));
}
