//! Reconnect delays: full-jitter exponential backoff, about 0.5 s to 20 s.
//!
//! The n-th consecutive failure waits a random time in `[0, min(20 s, 0.5 s · 2^n)]`, so a fleet
//! of clients that lost the same edge does not come back in lockstep. A server's retry-after
//! hint raises the wait to at least that. The count resets once a connection has stayed up.

use std::time::Duration;

pub const BASE: Duration = Duration::from_millis(500);
pub const CAP: Duration = Duration::from_secs(20);

/// The delay before reconnect attempt `failures` (1 for the first retry).
pub fn delay(failures: u32, retry_after: Option<Duration>, random: u64) -> Duration {
    let ceiling = BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(CAP);
    let ms = ceiling.as_millis() as u64;
    let jittered = Duration::from_millis(random % (ms + 1));
    match retry_after {
        Some(hint) => jittered.max(hint),
        None => jittered,
    }
}

/// A cheap random number (for jitter only).
pub fn random() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_honours_hints() {
        assert!(delay(1, None, u64::MAX) <= BASE);
        assert!(delay(3, None, u64::MAX) <= BASE * 4);
        for n in 1..40 {
            assert!(delay(n, None, random()) <= CAP);
        }
        assert_eq!(
            delay(1, None, 0),
            Duration::ZERO,
            "full jitter reaches zero"
        );
        assert!(delay(1, Some(Duration::from_secs(3)), 0) >= Duration::from_secs(3));
    }
}
