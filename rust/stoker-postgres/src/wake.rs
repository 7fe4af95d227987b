//! Wake-ups from PostgreSQL notifications, as a readable file descriptor.
//!
//! A [`PgWakeListener`] owns one dedicated connection (never a pooled one: a
//! pooled connection would stop listening when handed to another call) on a
//! thread that LISTENs on the storage's channel and writes a byte to a pipe
//! for each notification, so that a supervisor can wait on the pipe in the
//! same `poll` as its workers. Notifications only wake: whoever wakes reads
//! the database for what to do, so a lost notification costs a delay, never
//! a job. When the connection is lost (a restarted server, a terminated
//! backend, a network failure) the thread reconnects with a doubling backoff
//! and signals once on every reconnection, since notifications sent while it
//! was away are gone.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use stoker_engine::error::EngineError;
use stoker_engine::storage::WakeListener;

use crate::WakeSource;

/// How long the listener waits for a notification before it checks whether
/// it was asked to stop; the longest a dropped engine keeps its thread.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How often an idle listening connection is checked with a round trip. A
/// connection that died without a word (a host that vanished from the
/// network) is noticed within this time plus [`PING_TIMEOUT`]; checking more
/// often costs more round trips.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// How long a check of the listening connection may take before the
/// connection is given up and opened again.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The first pause before reconnecting, doubled after each failure up to
/// [`RECONNECT_MAX`]. Short enough that a restarted server is back in use
/// at once; the cap keeps a down server from being hammered.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);

/// The longest pause between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A thread listening for notifications and the pipe it signals on.
#[derive(Debug)]
pub struct PgWakeListener {
    reader: UnixStream,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
}

impl PgWakeListener {
    /// Starts listening on `source`'s channel.
    pub fn start(source: WakeSource) -> Result<Self, EngineError> {
        let (reader, writer) = UnixStream::pair().map_err(|error| {
            EngineError::Storage(format!("cannot create the wake-up pipe: {error}"))
        })?;
        for end in [&reader, &writer] {
            end.set_nonblocking(true).map_err(|error| {
                EngineError::Storage(format!(
                    "cannot make the wake-up pipe non-blocking: {error}"
                ))
            })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicBool::new(false));
        let (thread_stop, thread_connected) = (Arc::clone(&stop), Arc::clone(&connected));
        thread::Builder::new()
            .name("stoker-listen".to_owned())
            .spawn(move || listen(&source, writer, &thread_stop, &thread_connected))
            .map_err(|error| {
                EngineError::Storage(format!("cannot start the wake-up listener thread: {error}"))
            })?;
        Ok(Self {
            reader,
            stop,
            connected,
        })
    }
}

impl WakeListener for PgWakeListener {
    fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    fn drain(&self) -> usize {
        let mut buffer = [0u8; 256];
        let mut total = 0;
        loop {
            match (&self.reader).read(&mut buffer) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return total,
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

impl Drop for PgWakeListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn signal(writer: &UnixStream) {
    // A full pipe already wakes its reader, so a failed write loses nothing.
    let _ = (&*writer).write(&[1]);
}

fn listen(source: &WakeSource, writer: UnixStream, stop: &AtomicBool, connected: &AtomicBool) {
    let mut backoff = RECONNECT_FIRST;
    let listen_sql = format!("LISTEN \"{}\"", source.channel().replace('"', "\"\""));
    while !stop.load(Ordering::SeqCst) {
        let client = source
            .connect()
            .ok()
            .and_then(|mut client| client.batch_execute(&listen_sql).ok().map(|()| client));
        let Some(mut client) = client else {
            thread::sleep(backoff);
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        };
        backoff = RECONNECT_FIRST;
        connected.store(true, Ordering::SeqCst);
        signal(&writer);
        let mut last_check = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let next = client
                .notifications()
                .timeout_iter(STOP_CHECK_INTERVAL)
                .next();
            match next {
                Ok(Some(_)) => {
                    signal(&writer);
                    last_check = Instant::now();
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                    if last_check.elapsed() >= PING_INTERVAL {
                        if client.is_valid(PING_TIMEOUT).is_err() {
                            break;
                        }
                        last_check = Instant::now();
                    }
                }
                Err(_) => break,
            }
        }
        connected.store(false, Ordering::SeqCst);
    }
}
