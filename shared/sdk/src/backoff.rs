//! Reconnect delays: full-jitter exponential backoff, about 0.5 s to 20 s.
//!
//! The n-th consecutive failure waits a random time in `[0, min(20 s, 0.5 s · 2^n)]`, so a fleet
//! of clients that lost the same edge does not come back in lockstep. A server's retry-after
//! hint raises the wait to at least that. The count resets once a connection has stayed up.

use std::time::Duration;

use anchorage_schema::backoff::Backoff;

/// The first retry waits at most this long.
pub const BASE: Duration = Duration::from_millis(500);
/// No retry waits longer (unless the server asks for it).
pub const CAP: Duration = Duration::from_secs(20);

const RECONNECT: Backoff = Backoff::new(BASE, CAP);

/// The delay before reconnect attempt `failures` (1 for the first retry).
pub fn delay(failures: u32, retry_after: Option<Duration>, random: u64) -> Duration {
    RECONNECT.delay_with(failures.saturating_sub(1), retry_after, random)
}

pub use anchorage_schema::backoff::random;

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
