//! Token buckets for per-connection and per-user rate limits, and the caps on sockets that
//! have not signed in yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anchorage_schema::UserId;

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    pub(crate) last: Instant,
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

/// Caps on upgraded sockets that have not sent a valid `hello` yet: in all, and per address.
/// They are kept apart from `edge.max_connections`, so anonymous sockets never take the
/// places of signed-in ones.
#[derive(Debug)]
pub struct PendingLimits {
    max: u32,
    max_per_ip: u32,
    counts: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// One pending socket's place; given back when dropped.
#[derive(Debug)]
pub struct PendingPlace {
    limits: Arc<PendingLimits>,
    ip: IpAddr,
}

impl PendingLimits {
    pub fn new(max: u32, max_per_ip: u32) -> Self {
        Self {
            max,
            max_per_ip,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place for a socket from `ip`, if both caps allow one. IPv6 addresses count by their
    /// /64 network: one host is given a whole /64 and could otherwise take a place per address.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingPlace> {
        let ip = match ip {
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
            v4 => v4,
        };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *counts;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.max || (self.max_per_ip > 0 && mine >= self.max_per_ip) {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, mine + 1);
        Some(PendingPlace {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pending_sockets_are_capped_in_all_and_per_address() {
        let limits = Arc::new(PendingLimits::new(3, 2));
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "per address");
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "in all");
        drop(a1);
        assert!(limits.admit(b).is_some());
        // One /64 is one address.
        let limits = Arc::new(PendingLimits::new(100, 2));
        let host = |n: u16| IpAddr::V6([0x2001, 0xdb8, 0, 1, 0, 0, 0, n].into());
        let _p = (
            limits.admit(host(1)).unwrap(),
            limits.admit(host(2)).unwrap(),
        );
        assert!(limits.admit(host(3)).is_none());
        assert!(
            limits
                .admit(IpAddr::V6([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1].into()))
                .is_some()
        );
    }

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
