//! The server's clock, followed by a PostgreSQL engine without a clock of
//! its own, so that the supervisors of many hosts agree on the time.

use crate::*;

pub(crate) fn server_time_ms(shared: &Shared, channel: &str) -> Result<i64, EngineError> {
    shared.transaction(channel, |tx| {
        let row = tx.query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )?;
        Ok(row.try_get(0)?)
    })
}

/// The engine clock of a PostgreSQL engine: the host's clock corrected by its
/// measured offset to the server's `clock_timestamp()`, so that every lease
/// and eta is judged on one clock for all hosts, however wrong their own
/// clocks are. The offset is measured when the engine opens and again every
/// [`CLOCK_SYNC_INTERVAL`]; a failed measurement keeps the last offset.
#[derive(Debug)]
pub struct ServerClock {
    local: Arc<dyn Clock>,
    shared: Arc<Shared>,
    channel: String,
    state: Mutex<(i64, Instant)>,
}

impl ServerClock {
    /// A clock that follows the server of `storage`, measured against `local`.
    pub fn new(storage: &PostgresStorage, local: Arc<dyn Clock>) -> Result<Self, EngineError> {
        let offset = measure_offset(&storage.shared, &storage.channel, &*local)?;
        Ok(Self {
            local,
            shared: Arc::clone(&storage.shared),
            channel: storage.channel.clone(),
            state: Mutex::new((offset, Instant::now())),
        })
    }

    /// The last measured offset of the server's clock to the local one.
    pub fn offset_ms(&self) -> i64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

pub(crate) fn measure_offset(
    shared: &Shared,
    channel: &str,
    local: &dyn Clock,
) -> Result<i64, EngineError> {
    let before = local.now_ms();
    let server = server_time_ms(shared, channel)?;
    let after = local.now_ms();
    // The server read its clock somewhere in the round trip; the middle of it
    // is off by at most half the round trip.
    Ok(server - (before + (after - before) / 2))
}

impl Clock for ServerClock {
    fn now_ms(&self) -> i64 {
        let stale = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.1.elapsed() >= CLOCK_SYNC_INTERVAL
        };
        if stale {
            let measured = measure_offset(&self.shared, &self.channel, &*self.local);
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Ok(offset) = measured {
                state.0 = offset;
            }
            // Even a failed measurement waits for the next interval, so an
            // unreachable server does not cost a connection attempt per read.
            state.1 = Instant::now();
        }
        self.local.now_ms() + self.offset_ms()
    }
}

// --- rows ----------------------------------------------------------------------
