//! How many frames a socket may send: token buckets, and the one-off
//! allowance that lets a reconnect restore its state.

use presence_core::Millis;
use presence_core::limits::{
    MAX_ROOMS_PER_CONNECTION, MAX_USERS_PER_WATCH_FRAME, MAX_WATCHED_PER_CONNECTION,
};
use presence_core::protocol::ClientMessage;

use crate::config::RateLimit;

/// `auth` frames: a burst of 3, then one per 10 s; each costs a signature
/// check (or a call to the app's authenticator), so a flood is refused.
pub(super) const AUTH_RATE: RateLimit = RateLimit {
    burst: 3,
    per_second: 0.1,
    abuse_factor: 10,
};

/// `data` frames: a burst of 10, then 5 a second, on top of the general
/// limit; each one may reach every member of the user's rooms.
pub(super) const DATA_RATE: RateLimit = RateLimit {
    burst: 10,
    per_second: 5.0,
    abuse_factor: 10,
};

/// `view` frames: a burst of 10, then 1 a second, on top of the general
/// limit (PROTOCOL.md's `view` row): a page's room changes at human pace.
pub(super) const VIEW_RATE: RateLimit = RateLimit {
    burst: 10,
    per_second: 1.0,
    abuse_factor: 10,
};

/// Frames a socket may send once, outside the rate limit, so a client can
/// restore the most state the limits allow right after a reconnect: a `join`
/// and a `read` per room, the largest watch list, one `status`.
pub(super) struct Restore {
    join: usize,
    read: usize,
    watch: usize,
    status: usize,
    data: usize,
}

impl Restore {
    pub(super) fn new() -> Self {
        Self {
            join: MAX_ROOMS_PER_CONNECTION,
            read: MAX_ROOMS_PER_CONNECTION,
            watch: MAX_WATCHED_PER_CONNECTION.div_ceil(MAX_USERS_PER_WATCH_FRAME),
            status: 1,
            data: 1,
        }
    }

    /// Whether `msg` is paid for by the allowance (and takes from it).
    pub(super) fn take(&mut self, msg: &ClientMessage) -> bool {
        let left = match msg {
            ClientMessage::Join { .. } => &mut self.join,
            ClientMessage::Read { .. } => &mut self.read,
            ClientMessage::Watch { .. } => &mut self.watch,
            ClientMessage::Status { .. } => &mut self.status,
            ClientMessage::Data { .. } => &mut self.data,
            _ => return false,
        };
        let paid = *left > 0;
        *left = left.saturating_sub(1);
        paid
    }
}

/// A token bucket with a debt counter for abuse.
pub(super) struct Bucket {
    limit: RateLimit,
    tokens: f64,
    debt: f64,
    last: Millis,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Verdict {
    Ok,
    Limited,
    Abusive,
}

impl Bucket {
    pub(super) fn new(limit: RateLimit, now: Millis) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            debt: 0.0,
            last: now,
        }
    }

    /// Takes a token at `now` (the server's clock, so tests can drive it).
    pub(super) fn take(&mut self, now: Millis) -> Verdict {
        let refill = now.since(self.last).as_secs_f64() * self.limit.per_second;
        self.last = now;
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        self.debt = (self.debt - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Ok;
        }
        self.debt += 1.0;
        if self.debt > f64::from(self.limit.burst) * f64::from(self.limit.abuse_factor) {
            Verdict::Abusive
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_limits_then_calls_a_flood_abuse() {
        let limit = RateLimit {
            burst: 2,
            per_second: 1.0,
            abuse_factor: 3,
        };
        let t = Millis(1_000_000);
        let mut b = Bucket::new(limit, t);
        assert!(matches!(b.take(t), Verdict::Ok));
        assert!(matches!(b.take(t), Verdict::Ok));
        assert!(matches!(b.take(t), Verdict::Limited));
        for _ in 0..5 {
            assert!(matches!(b.take(t), Verdict::Limited));
        }
        assert!(matches!(b.take(t), Verdict::Abusive));
        let later = t.after(Duration::from_secs(60));
        assert!(matches!(b.take(later), Verdict::Ok));
    }
}
