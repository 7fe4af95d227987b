//! The send log: a single send made durable by one append to a file, and
//! moved into the database by the next transaction of the same process.
//!
//! A send that commits its own transaction pays for the whole commit: the
//! write lock, a log frame per page it touches and the lock's release, a dozen
//! system calls. While a supervisor of this process serves the database (the
//! in-process pool), a single send is instead appended to a file of this
//! process, `<database>-sends/<pid>-<nanos>.log`, with one `write`, and kept
//! in memory until the next write transaction of any connection of this
//! process inserts it (the supervisor's next claim does, at once). Every read
//! of this process first moves what is pending, so this process always sees
//! its own sends; other processes see them once moved, a turn of the
//! supervisor later.
//!
//! Durability is the database's own under `synchronous=NORMAL`: once `write`
//! returns, the send survives the crash of this process (the file is in the
//! kernel's cache), not a power loss. A log whose process died is recovered
//! by the next process that opens the database and by every supervisor's
//! heartbeat: a live process holds an exclusive `flock` on its log, so a log
//! that can be locked is an orphan. Each record carries a sequence number,
//! and the last one moved into the database is stored with the jobs it moved
//! (`send_logs`), so a record is inserted exactly once whenever the process
//! dies.
//!
//! A job's id must be known when the send returns, before its row exists, so
//! a log takes ids in blocks from the table's `AUTOINCREMENT` counter
//! (`sqlite_sequence`): a block is never handed out twice, and the ids of a
//! block left unused when the process ends are skipped.
//!
//! Record format, little-endian: `u32 body length | u64 FNV-1a hash of the
//! body | body`. A record that is cut short or does not match its hash ends
//! the log (a torn write at a power loss); everything after it is ignored.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension, Transaction};

use crate::flow::insert_row;
use crate::SqlResult;
use stoker_engine::error::EngineError;
use stoker_engine::model::{NewJob, Status};

/// Ids taken from the database per trip. A larger block makes fewer sends
/// pay for a transaction; the ids left in it when the process ends are never
/// used (ids are not dense anyway).
pub const ID_BLOCK: i64 = 1024;

/// The log file is emptied once everything in it is in the database and it
/// has grown past this size. Emptying costs a system call; a larger size
/// leaves more for a recovery to read and skip.
pub const TRUNCATE_AFTER_BYTES: u64 = 4 << 20;

/// The schema of the high-water marks: the last record of each log that is
/// in the database.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS send_logs (
    name TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The suffix of a log file not yet locked by its process; recovery skips it.
pub const UNLOCKED_SUFFIX: &str = ".new";

/// The directory of the send logs of the database at `db_path`.
pub fn log_dir(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-sends");
    PathBuf::from(name)
}

/// The send log of one database in this process, shared by every connection
/// of the process to it (see [`for_database`]).
#[derive(Debug)]
pub struct SendLog {
    dir: PathBuf,
    /// The process this log belongs to. A child forked from it inherits a
    /// copy of its pending records and ids: there, the log takes no send and
    /// has nothing pending, so that nothing is stored twice.
    pid: u32,
    state: Mutex<LogState>,
    /// Held from the copy of the pending records to their removal, so that
    /// two connections never insert the same records. Taken before the
    /// transaction begins, never inside one.
    moving: Mutex<()>,
}

#[derive(Debug, Default)]
struct LogState {
    /// How many supervisors of this process asked for the log.
    users: usize,
    file: Option<OpenLog>,
    /// Appended, not yet in the database, in order.
    pending: Vec<Arc<Record>>,
    /// The next id to hand out, and the last one of the reserved block.
    next_id: i64,
    last_id: i64,
    next_seq: u64,
}

#[derive(Debug)]
struct OpenLog {
    name: String,
    path: PathBuf,
    file: File,
    len: u64,
}

/// One logged send.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub id: i64,
    pub now_ms: i64,
    pub job: NewJob,
}

/// What [`SendLog::take_pending`] copied out: the log's name, and its
/// records up to the last one copied.
#[derive(Debug)]
pub struct PendingBatch {
    name: String,
    records: Vec<Arc<Record>>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<SendLog>>> {
    static LOGS: OnceLock<Mutex<HashMap<PathBuf, Arc<SendLog>>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The send log of the database at `db_path` (an absolute, canonical path)
/// in this process.
pub fn for_database(db_path: &Path) -> Arc<SendLog> {
    let mut logs = registry().lock().unwrap_or_else(PoisonError::into_inner);
    // A forked child starts a log of its own.
    logs.retain(|_, log| log.ours());
    Arc::clone(logs.entry(db_path.to_path_buf()).or_insert_with(|| {
        Arc::new(SendLog {
            dir: log_dir(db_path),
            pid: std::process::id(),
            state: Mutex::new(LogState::default()),
            moving: Mutex::new(()),
        })
    }))
}

/// Whether a send of this job may go to the log: one with no work at send
/// time beyond its insert (no uniqueness key, dependency or rate check).
pub fn loggable(job: &NewJob) -> bool {
    job.unique_key.is_none() && job.depends_on.is_empty() && !job.fail_when_limited
}

impl SendLog {
    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this is the process the log belongs to (not a forked child).
    fn ours(&self) -> bool {
        self.pid == std::process::id()
    }

    /// One more user (a supervisor of this process): sends go to the log.
    pub fn acquire(&self) {
        self.state().users += 1;
    }

    /// One user fewer; true when it was the last, and the caller must move
    /// what is pending and then [`SendLog::close`] the file.
    pub fn release(&self) -> bool {
        let mut state = self.state();
        state.users = state.users.saturating_sub(1);
        state.users == 0
    }

    /// Whether sends go to the log now (a user holds it, in this process).
    pub fn accepting(&self) -> bool {
        self.ours() && self.state().users > 0
    }

    /// Whether anything waits to be moved into the database.
    pub fn has_pending(&self) -> bool {
        self.ours() && !self.state().pending.is_empty()
    }

    /// The next id of the reserved block, if one is left.
    pub fn take_id(&self) -> Option<i64> {
        let mut state = self.state();
        if state.next_id == 0 || state.next_id > state.last_id {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        Some(id)
    }

    /// Hands out the ids `first..=last` from now on.
    pub fn add_ids(&self, first: i64, last: i64) {
        let mut state = self.state();
        state.next_id = first;
        state.last_id = last;
    }

    /// Appends a send of `job` with the id `id`; returns once the record is
    /// in the file. False if the log no longer accepts sends (its last user
    /// left, or this is a forked child): the caller stores the job itself.
    pub fn append(&self, id: i64, now_ms: i64, job: &NewJob) -> Result<bool, EngineError> {
        let mut state = self.state();
        if state.users == 0 || !self.ours() {
            return Ok(false);
        }
        if state.file.is_none() {
            state.file = Some(self.create_file()?);
        }
        let seq = state.next_seq + 1;
        let record = Record {
            seq,
            id,
            now_ms,
            job: job.clone(),
        };
        let bytes = encode(&record);
        let Some(file) = state.file.as_mut() else {
            return Ok(false);
        };
        file.file.write_all(&bytes).map_err(|error| {
            EngineError::Storage(format!(
                "cannot append a send to {:?}: {error}",
                file.path.display().to_string()
            ))
        })?;
        file.len += bytes.len() as u64;
        state.next_seq = seq;
        state.pending.push(Arc::new(record));
        Ok(true)
    }

    fn create_file(&self) -> SqlResult<OpenLog> {
        let failed = |what: &str, error: std::io::Error| {
            EngineError::Storage(format!(
                "cannot {what} the send log in {:?}: {error}",
                self.dir.display().to_string()
            ))
        };
        fs::create_dir_all(&self.dir).map_err(|error| failed("create the directory of", error))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let pid = std::process::id();
        let name = format!("{pid}-{nanos}.log");
        let path = self.dir.join(&name);
        // Created under a name recovery does not read, and renamed once
        // locked: a recovery that looked between the creation and the lock
        // would take an empty live log for an orphan and remove it.
        let unlocked = self.dir.join(format!("{name}{UNLOCKED_SUFFIX}"));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&unlocked)
            .map_err(|error| failed("create", error))?;
        // Held as long as the file is open: a log that another process can
        // lock belongs to a process that is gone.
        try_lock(&file).map_err(|error| failed("lock", error))?;
        fs::rename(&unlocked, &path).map_err(|error| failed("name", error))?;
        Ok(OpenLog {
            name,
            path,
            file,
            len: 0,
        })
    }

    /// Takes the moving lock if anything is pending: the caller then moves
    /// the records inside its transaction (see [`SendLog::take_pending`]).
    pub fn lock_for_moving(&self) -> Option<MutexGuard<'_, ()>> {
        if !self.has_pending() {
            return None;
        }
        Some(self.moving.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of what is pending, to insert in a transaction; the records
    /// stay pending until [`SendLog::moved`] says that transaction committed.
    pub fn take_pending(&self) -> Option<PendingBatch> {
        if !self.ours() {
            return None;
        }
        let state = self.state();
        let file = state.file.as_ref()?;
        if state.pending.is_empty() {
            return None;
        }
        Some(PendingBatch {
            name: file.name.clone(),
            records: state.pending.clone(),
        })
    }

    /// The transaction that inserted `batch` committed: its records are no
    /// longer pending. The file is emptied once it holds nothing pending and
    /// has grown past [`TRUNCATE_AFTER_BYTES`].
    pub fn moved(&self, batch: &PendingBatch) {
        let mut state = self.state();
        let count = batch.records.len().min(state.pending.len());
        state.pending.drain(..count);
        if state.pending.is_empty() {
            if let Some(file) = state.file.as_mut() {
                if file.len > TRUNCATE_AFTER_BYTES && file.file.set_len(0).is_ok() {
                    file.len = 0;
                }
            }
        }
    }

    /// Closes and removes the file once nothing is pending and no user is
    /// left; the name of the log whose high-water mark can go.
    pub fn close(&self) -> Option<String> {
        let mut state = self.state();
        if state.users > 0 || !state.pending.is_empty() || !self.ours() {
            return None;
        }
        let file = state.file.take()?;
        // Removed while still locked, so no recovery reads it half-gone.
        let _ = fs::remove_file(&file.path);
        Some(file.name)
    }

    /// The directory of the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl PendingBatch {
    /// Inserts the records inside `tx` and stores the log's high-water mark.
    pub(crate) fn insert(&self, tx: &Transaction<'_>) -> SqlResult<()> {
        for record in &self.records {
            insert_record(tx, record)?;
        }
        if let Some(last) = self.records.last() {
            set_high_water(tx, &self.name, last.seq)?;
        }
        Ok(())
    }
}

/// Reserves `count` ids for a log inside `tx`: the first and the last.
pub(crate) fn reserve_ids(tx: &Transaction<'_>, count: i64) -> SqlResult<(i64, i64)> {
    let seq: i64 = tx
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'")?
        .query_row([], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let largest: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM jobs")?
        .query_row([], |row| row.get(0))?;
    let first = seq.max(largest) + 1;
    let last = first + count - 1;
    let updated = tx
        .prepare_cached("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'jobs'")?
        .execute([last])?;
    if updated == 0 {
        tx.prepare_cached("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?1)")?
            .execute([last])?;
    }
    Ok((first, last))
}

/// Inserts one logged send as the job it would have been had it been
/// stored when it was sent.
fn insert_record(tx: &Transaction<'_>, record: &Record) -> SqlResult<()> {
    let job = &record.job;
    let status = if job.eta_at(record.now_ms) <= record.now_ms {
        Status::Pending
    } else {
        Status::Scheduled
    };
    insert_row(tx, Some(record.id), job, status, record.now_ms, false)?;
    Ok(())
}

fn high_water(tx: &Transaction<'_>, name: &str) -> SqlResult<u64> {
    let seq: Option<i64> = tx
        .prepare_cached("SELECT last_seq FROM send_logs WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?;
    Ok(seq.map_or(0, |seq| u64::try_from(seq).unwrap_or(0)))
}

fn set_high_water(tx: &Transaction<'_>, name: &str, seq: u64) -> SqlResult<()> {
    tx.prepare_cached(
        "INSERT INTO send_logs (name, last_seq) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq",
    )?
    .execute(params![name, i64::try_from(seq).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Removes the high-water mark of a log whose file is gone.
pub(crate) fn forget(tx: &Transaction<'_>, name: &str) -> SqlResult<()> {
    tx.prepare_cached("DELETE FROM send_logs WHERE name = ?1")?
        .execute([name])?;
    Ok(())
}

/// A log of a process that is gone, locked by this one while it is read and
/// moved into the database.
#[derive(Debug)]
pub struct Orphan {
    pub name: String,
    path: PathBuf,
    /// Keeps the lock until the file is removed.
    _file: File,
    records: Vec<Record>,
}

/// The logs in `dir` that no live process holds, each read in full. This
/// process's own log is among those held: its lock belongs to the open file,
/// and a second open of it does not get the lock either.
pub fn orphans(dir: &Path) -> Result<Vec<Orphan>, EngineError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(EngineError::Storage(format!(
                "cannot list the send logs in {:?}: {error}",
                dir.display().to_string()
            )))
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".log") {
            continue;
        }
        let path = entry.path();
        let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue; // Removed meanwhile by its recovery elsewhere.
        };
        if try_lock(&file).is_err() {
            continue; // Its process is alive, or another one recovers it now.
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|error| {
            EngineError::Storage(format!(
                "cannot read the send log {:?}: {error}",
                path.display().to_string()
            ))
        })?;
        found.push(Orphan {
            name,
            path,
            _file: file,
            records: decode_all(&bytes),
        });
    }
    Ok(found)
}

impl Orphan {
    /// Inserts, inside `tx`, the records past the log's high-water mark, and
    /// raises the mark; how many were inserted.
    pub(crate) fn insert(&self, tx: &Transaction<'_>) -> SqlResult<usize> {
        let done = high_water(tx, &self.name)?;
        let mut inserted = 0;
        let mut stored = tx.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?;
        for record in self.records.iter().filter(|record| record.seq > done) {
            // Ids are reserved for one log, so a row with this id is this
            // record, stored already: never store it again.
            if stored.exists([record.id])? {
                continue;
            }
            insert_record(tx, record)?;
            inserted += 1;
        }
        if let Some(last) = self.records.last() {
            if last.seq > done {
                set_high_water(tx, &self.name, last.seq)?;
            }
        }
        Ok(inserted)
    }

    /// Removes the file, once its records are committed.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Takes an exclusive `flock` on `file` without waiting. The lock belongs to
/// the open file (not the process), so it is released when the file is closed,
/// by the process's end if need be, and two opens of one file in the same
/// process exclude each other as two processes do.
fn try_lock(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// --- encoding -----------------------------------------------------------------------

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn f64(&mut self, value: f64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.0.extend_from_slice(value);
    }
    fn opt_i64(&mut self, value: Option<i64>) {
        match value {
            Some(value) => {
                self.0.push(1);
                self.i64(value);
            }
            None => self.0.push(0),
        }
    }
    fn opt_str(&mut self, value: Option<&str>) {
        match value {
            Some(value) => {
                self.0.push(1);
                self.bytes(value.as_bytes());
            }
            None => self.0.push(0),
        }
    }
}

/// The bytes of one record, as appended to a log.
pub fn encode(record: &Record) -> Vec<u8> {
    let job = &record.job;
    let mut body = Writer(Vec::with_capacity(128 + job.payload.len()));
    body.u64(record.seq);
    body.i64(record.id);
    body.i64(record.now_ms);
    body.bytes(job.task_name.as_bytes());
    body.bytes(&job.payload);
    body.bytes(job.queue.as_bytes());
    body.i64(job.priority);
    body.i64(job.max_retries);
    body.i64(job.max_crashes);
    body.i64(job.backoff_base_ms);
    body.i64(job.backoff_cap_ms);
    body.f64(job.jitter);
    body.opt_i64(job.timeout_ms);
    body.i64(job.delay_ms);
    body.opt_i64(job.eta_ms);
    body.opt_i64(job.result_ttl_ms);
    body.opt_str(job.labels.as_deref());
    body.opt_i64(job.expires_after_ms);
    let body = body.0;
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&fnv1a(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        if self.0.len() < count {
            return None;
        }
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.u64()?).ok()?;
        Some(self.take(len)?.to_vec())
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn flag(&mut self) -> Option<bool> {
        match self.take(1)?[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn opt_i64(&mut self) -> Option<Option<i64>> {
        if self.flag()? {
            Some(Some(self.i64()?))
        } else {
            Some(None)
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        if self.flag()? {
            Some(Some(self.string()?))
        } else {
            Some(None)
        }
    }
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut r = Reader(body);
    let seq = r.u64()?;
    let id = r.i64()?;
    let now_ms = r.i64()?;
    let job = NewJob {
        task_name: r.string()?,
        payload: r.bytes()?,
        queue: r.string()?,
        priority: r.i64()?,
        max_retries: r.i64()?,
        max_crashes: r.i64()?,
        backoff_base_ms: r.i64()?,
        backoff_cap_ms: r.i64()?,
        jitter: r.f64()?,
        timeout_ms: r.opt_i64()?,
        delay_ms: r.i64()?,
        eta_ms: r.opt_i64()?,
        result_ttl_ms: r.opt_i64()?,
        labels: r.opt_string()?,
        expires_after_ms: r.opt_i64()?,
        unique_key: None,
        depends_on: Vec::new(),
        fail_when_limited: false,
    };
    r.0.is_empty().then_some(Record {
        seq,
        id,
        now_ms,
        job,
    })
}

/// Every whole record of a log, in order, up to the first one that is cut
/// short or damaged.
pub fn decode_all(mut bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    while bytes.len() >= 12 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let hash = u64::from_le_bytes(bytes[4..12].try_into().unwrap_or([0; 8]));
        let Some(body) = bytes.get(12..12 + len) else {
            break;
        };
        if fnv1a(body) != hash {
            break;
        }
        let Some(record) = decode_body(body) else {
            break;
        };
        records.push(record);
        bytes = &bytes[12 + len..];
    }
    records
}
