//! Reconnect delays: exponential backoff with full jitter, capped.

use core::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random
/// time in `[0, min(cap, base · 2ⁿ)]`, so a server restart does not bring every
/// client back in the same millisecond.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `cap`; `seed` feeds the jitter.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            // splitmix64 of the seed: neighbouring seeds give unrelated streams.
            rng: {
                let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) | 1
            },
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        // `checked_rem`: no divide-by-zero panic branch (ms + 1 wraps only at u64::MAX).
        Duration::from_millis(self.random().checked_rem(ms.wrapping_add(1)).unwrap_or(0))
    }

    /// A connection succeeded: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// A uniformly spread value (xorshift64*): enough for jitter, no crate needed.
    pub fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 7);
        for n in 0..30u32 {
            let ceiling = Duration::from_millis(500)
                .saturating_mul(1 << n.min(20))
                .min(Duration::from_secs(30));
            assert!(b.next_delay() <= ceiling);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_clients() {
        let delays: std::collections::HashSet<_> = (0..50)
            .map(|seed| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), seed);
                b.next_delay();
                b.next_delay()
            })
            .collect();
        assert!(
            delays.len() > 40,
            "50 clients, {} distinct delays",
            delays.len()
        );
    }
}
