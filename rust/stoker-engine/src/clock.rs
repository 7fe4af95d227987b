//! Where the engine reads the time.
//!
//! The engine never calls the system clock directly: it asks a [`Clock`], so
//! tests can use a [`ManualClock`] that only moves when told to, and check
//! delays, leases and backoff without sleeping.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::EngineError;

/// A source of the current time in integer milliseconds since the Unix epoch.
pub trait Clock: Debug + Send + Sync {
    /// The current time.
    fn now_ms(&self) -> i64;

    /// Moves the clock forward by `ms`; only a manual clock can do this.
    fn advance_ms(&self, ms: i64) -> Result<(), EngineError> {
        let _ = ms;
        Err(EngineError::invalid(
            "advance_clock: this engine uses the system clock, which cannot be advanced; \
             open the engine with a manual clock (clock_ms=...) to move time in tests",
        ))
    }
}

/// The wall clock of the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970 is a misconfigured machine; time zero keeps
            // every comparison well defined instead of failing every operation.
            Err(_) => 0,
        }
    }
}

/// A clock that stands still until advanced. Clones share the same time, so a
/// test can keep one handle while the engine holds another.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock that reads `start_ms` until advanced.
    pub fn new(start_ms: i64) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(start_ms)),
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn advance_ms(&self, ms: i64) -> Result<(), EngineError> {
        if ms < 0 {
            return Err(EngineError::invalid(format!(
                "advance_clock: ms must be >= 0 (time only moves forward), got {ms}"
            )));
        }
        let previous = self.now.load(Ordering::SeqCst);
        let next = previous.checked_add(ms).ok_or_else(|| {
            EngineError::invalid(format!(
                "advance_clock: ms={ms} moves the clock past the largest time"
            ))
        })?;
        // Only tests advance the clock, from one thread at a time per step; a lost
        // race between two advances would only make one of them a no-op.
        self.now.store(next, Ordering::SeqCst);
        Ok(())
    }
}
