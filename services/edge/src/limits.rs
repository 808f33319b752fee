//! Token buckets for per-connection and per-user rate limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anchorage_schema::UserId;

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// Takes one token; otherwise returns how long until one is available, in milliseconds.
    pub fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

/// Buckets per user, shared by all of a user's connections on this edge.
#[derive(Debug)]
pub struct UserLimits {
    rate: u32,
    buckets: Mutex<HashMap<UserId, Bucket>>,
}

impl UserLimits {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn take(&self, user: &UserId) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget idle users rather than grow without bound; a full bucket is the default.
            let now = Instant::now();
            buckets.retain(|_, b| now.duration_since(b.last).as_secs() < 60);
        }
        buckets
            .entry(user.clone())
            .or_insert_with(|| Bucket::new(self.rate, self.rate.saturating_mul(2)))
            .take(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(10, 3);
        for _ in 0..3 {
            assert!(b.take(start).is_ok());
        }
        let wait = b.take(start).unwrap_err();
        assert!((1..=100).contains(&wait), "{wait}");
        assert!(b.take(start + Duration::from_millis(100)).is_ok());
        assert!(b.take(start + Duration::from_millis(100)).is_err());
    }
}
