//! WAL checkpoints off the commit path.
//!
//! SQLite's own automatic checkpoint runs inside the `COMMIT` that pushes the
//! WAL past 1000 pages: that commit copies the log into the database file and,
//! under `synchronous=NORMAL`, fsyncs both files before it returns. Every
//! hundred jobs or so, one send or one completion then took 5 to 20 ms instead
//! of a tenth of a millisecond, which is what a user sees as the p99 latency.
//!
//! Here each connection that writes replaces the automatic checkpoint by a WAL
//! hook that only notes the log's size, and wakes a background thread of its
//! own once the log passes [`CHECKPOINT_PAGES`]. That thread runs a `PASSIVE`
//! checkpoint on a second connection: it does not take the write lock, so
//! commits go on meanwhile, and the next writer after a complete checkpoint
//! starts the log again from its beginning, as before.
//!
//! ```text
//!   commit (any thread) ──wal hook: pages ≥ CHECKPOINT_PAGES──► request
//!                                                                 │ condvar
//!   checkpoint thread ◄──────────────────────────────────────────┘
//!     └─ PRAGMA wal_checkpoint(PASSIVE) on its own connection
//! ```
//!
//! The thread starts at the first request, so a process that only reads, or
//! sends a few jobs, never has one; it stops when its storage is dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The WAL size, in pages, past which a checkpoint is requested (16 MiB of
/// 4 KiB pages; SQLite's own default is 1000). A larger log means fewer
/// checkpoints (each one fsyncs the database file and copies every page the
/// log changed, however often it changed) but a larger file and slower reads,
/// since a reader looks pages up in the log's index first. At 1000 pages the
/// checkpoint thread cost 39 µs of CPU per no-op job; at 4000, 16 to 24 µs.
pub const CHECKPOINT_PAGES: i32 = 4000;

/// How long the checkpoint thread's connection waits for a lock another
/// checkpoint holds (one from another process, or a truncating one). A
/// checkpoint that cannot run now is simply tried again at the next request.
const CHECKPOINT_BUSY_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Requests {
    /// A checkpoint was asked for since the thread last started one.
    pending: bool,
    /// The storage is being dropped: the thread must end.
    stopping: bool,
    /// Checkpoints are held back (see [`Checkpointer::set_paused`]).
    paused: bool,
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
    /// Checkpoints the thread has run, and a condvar to wait for the next one.
    runs: Mutex<u64>,
    ran: Condvar,
    /// The WAL's size in pages after the last commit of the connection.
    last_wal_pages: AtomicI64,
}

/// The background checkpoint of one [`SqliteStorage`](super::sqlite::SqliteStorage).
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Installs the WAL hook on `conn`, which replaces SQLite's automatic
    /// checkpoint on that connection.
    pub fn install(conn: &mut Connection, path: PathBuf) -> Result<Arc<Self>, rusqlite::Error> {
        let checkpointer = Arc::new(Self {
            shared: Arc::new(Shared::default()),
            path,
            thread: Mutex::new(None),
        });
        // The hook holds a weak reference: the storage owns the checkpointer,
        // and the connection (owned by the storage too) must not keep it alive.
        let weak = Arc::downgrade(&checkpointer);
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if let Some(checkpointer) = weak.upgrade() {
                checkpointer.after_commit(pages);
            }
            Ok(())
        }))?;
        Ok(checkpointer)
    }

    /// Called by SQLite after each commit of the connection, with the log's
    /// size; it must stay cheap, as it runs inside the commit.
    fn after_commit(&self, pages: i32) {
        self.shared
            .last_wal_pages
            .store(i64::from(pages), Ordering::Relaxed);
        if pages < CHECKPOINT_PAGES {
            return;
        }
        let mut requests = self.lock_requests();
        requests.pending = true;
        drop(requests);
        self.shared.wake.notify_one();
        self.ensure_thread();
    }

    fn lock_requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ensure_thread(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if thread.is_some() || self.lock_requests().stopping {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let path = self.path.clone();
        // If the thread cannot be started, commits go on and the log grows until
        // a later request manages to start it; nothing is lost meanwhile.
        *thread = std::thread::Builder::new()
            .name("stoker-checkpoint".to_owned())
            .spawn(move || run(&shared, &path))
            .ok();
    }

    /// The WAL's size in pages after the connection's last commit.
    pub fn last_wal_pages(&self) -> i64 {
        self.shared.last_wal_pages.load(Ordering::Relaxed)
    }

    /// How many checkpoints the background thread has run.
    pub fn runs(&self) -> u64 {
        *self
            .shared
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the background thread has run more than `seen` checkpoints,
    /// for at most `limit`; returns the count then.
    pub fn wait_for_run_after(&self, seen: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        let mut runs = self
            .shared
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *runs <= seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            runs = self
                .shared
                .ran
                .wait_timeout(runs, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *runs
    }

    /// Holds checkpoints back (requests are remembered and served once
    /// released). It exists so that tests can watch the log grow.
    pub fn set_paused(&self, paused: bool) {
        self.lock_requests().paused = paused;
        self.shared.wake.notify_one();
    }
}

impl Checkpointer {
    /// Stops the background thread and closes its connection, waiting for a
    /// checkpoint it is running; no thread is started again.
    pub fn stop(&self) {
        self.lock_requests().stopping = true;
        self.shared.wake.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // A panic in the thread has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The checkpoint thread: one `PASSIVE` checkpoint per batch of requests.
fn run(shared: &Shared, path: &std::path::Path) {
    let mut conn: Option<Connection> = None;
    loop {
        {
            let mut requests = shared
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while !requests.stopping && (!requests.pending || requests.paused) {
                requests = shared
                    .wake
                    .wait(requests)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if requests.stopping {
                return;
            }
            requests.pending = false;
        }
        if conn.is_none() {
            conn = Connection::open(path)
                .and_then(|opened| {
                    opened.busy_timeout(CHECKPOINT_BUSY_TIMEOUT)?;
                    Ok(opened)
                })
                .ok();
        }
        if let Some(open) = &conn {
            // A busy or failed checkpoint leaves the log as it is; the next
            // commit past the threshold asks again.
            let _ = open.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(0)
            });
        }
        let mut runs = shared.runs.lock().unwrap_or_else(PoisonError::into_inner);
        *runs += 1;
        drop(runs);
        shared.ran.notify_all();
    }
}
