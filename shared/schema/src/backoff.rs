//! Full-jitter exponential backoff, the one every retry loop uses (client reconnects, service
//! reconnects to NATS, a projection that lost its database, refusals with a retry time).
//!
//! Attempt `n` (0 for the first retry) waits a random time in `[0, min(cap, base · 2^n)]`, so a
//! fleet that lost the same server does not come back in lockstep; a server's retry hint raises
//! the wait to at least that.

use std::time::Duration;

/// A backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry.
    pub base: Duration,
    /// The highest ceiling.
    pub cap: Duration,
}

impl Backoff {
    /// A schedule from `base` up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The ceiling of retry `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap)
    }

    /// The wait before retry `attempt`, at least `hint`.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        self.delay_with(attempt, hint, random())
    }

    /// [`Backoff::delay`] with a given random number (for tests).
    pub fn delay_with(&self, attempt: u32, hint: Option<Duration>, random: u64) -> Duration {
        let ms = self.ceiling(attempt).as_millis() as u64;
        let jittered = Duration::from_millis(random % (ms + 1));
        hint.map_or(jittered, |h| jittered.max(h))
    }
}

/// A cheap random number (for jitter, not cryptography).
pub fn random() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// A cheap random number below `bound` (for jitter, not cryptography).
pub fn jitter(bound: u64) -> u64 {
    random() % bound.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_reaches_zero_and_honours_hints() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
        assert!(b.delay_with(0, None, u64::MAX) <= b.base);
        assert!(b.delay_with(2, None, u64::MAX) <= b.base * 4);
        for n in 0..40 {
            assert!(b.delay(n, None) <= b.cap);
        }
        assert_eq!(b.delay_with(0, None, 0), Duration::ZERO, "full jitter");
        let hint = Duration::from_secs(3);
        assert!(b.delay_with(0, Some(hint), 0) >= hint);
        assert!(jitter(5) < 5);
    }
}
