//! Where `now` comes from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use presence_core::Millis;

/// A source of `now` for the state machine.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in milliseconds since the Unix epoch. Must never go
    /// backwards.
    fn now(&self) -> Millis;
}

/// The wall clock read once at start-up, advanced by a monotonic clock: last
/// seen times read as real dates, and deadlines never jump when NTP adjusts
/// the wall clock. The monotonic clock is tokio's, the one every sleep and
/// timeout of the server waits on: a runtime with paused time (tests,
/// `start_paused`) moves `now` and the timers together, so the whole node
/// runs on virtual time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    epoch_ms: u64,
    start: Instant,
}

impl SystemClock {
    /// Anchors the clock to the wall clock now.
    pub fn new() -> Self {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            epoch_ms,
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Millis(self.epoch_ms.saturating_add(elapsed))
    }
}

/// A clock that moves only when told, for tests: clones share one time.
/// After moving it, call [`PresenceServer::tick`](crate::PresenceServer::tick)
/// to run what became due without waiting for the driver.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Millis) -> Self {
        Self(Arc::new(AtomicU64::new(start.0)))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_near_the_wall_clock() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert!(a.0 > 1_600_000_000_000);
    }
}
