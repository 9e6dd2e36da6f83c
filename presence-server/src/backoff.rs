//! The server's one backoff between failed calls: the core's (exponential,
//! full jitter, capped), as the SDKs reconnect. Nodes of a cluster do not
//! retry in step after an outage, nor webhook senders after a receiver's.

use std::time::Duration;

use presence_core::client::Backoff;

/// A backoff from `min` to at most `max`, seeded from the OS's randomness.
pub(crate) fn backoff(min: Duration, max: Duration) -> Backoff {
    let mut bytes = [0u8; 8];
    let seed = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // Without the OS's randomness the process id still spreads the nodes.
        Err(_) => u64::from(std::process::id()),
    };
    Backoff::new(min, max, seed)
}
