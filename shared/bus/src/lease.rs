//! Leases: one process at a time applies each projection.
//!
//! Any number of `anchorage projector` processes may run against one database; for each
//! projection exactly one of them — the holder of its lease — applies events, and the others
//! stand by. A lease is the last record on `lease.<projection>` in the `LEASES` stream:
//!
//! - **Taking it.** A process publishes its record with `Nats-Expected-Last-Subject-Sequence`
//!   set to what it read: 0 when there is no record (never held, or expired), or the sequence
//!   of a record its holder released. Two processes racing for it: the stream stores one.
//! - **Holding it.** The holder publishes its record again every [`RENEW_EVERY`], each time
//!   expecting its own previous sequence. Nobody else can write in between without the
//!   holder's next renewal failing.
//! - **Losing it.** The stream drops a record [`TTL`] after it was stored (`max_age`), so the
//!   lease of a process that died, hung or lost NATS expires and a standby takes it within
//!   `TTL` plus one [`POLL`]. The holder gives up on its own before that: once its last
//!   renewal that was stored was *sent* more than `TTL − MARGIN` ago, or a renewal finds
//!   another record, it cancels its work.
//! - **Giving it back.** A process that stops cleanly publishes a released record, which a
//!   standby takes at its next poll instead of waiting for the expiry.
//!
//! A lease bounds how long two processes may both believe they hold it, but clocks and pauses
//! make no lease a proof: the projector's checkpoint is the fence. Every transaction moves the
//! checkpoint only from the value its writer started from (see `Tx::advance_checkpoint`), so
//! a process that still applies after losing its lease rolls back instead of applying twice.

use std::time::{Duration, Instant};

use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Seq, now_ms};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, PublishError};

/// How long a record lives without renewal (the `LEASES` stream's `max_age`).
pub const TTL: Duration = Duration::from_secs(3);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often a standby looks whether the lease is free.
pub const POLL: Duration = Duration::from_millis(500);
/// How long before the record's expiry the holder stops working.
const MARGIN: Duration = Duration::from_millis(700);

/// A lease record: who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holding process run (unique per start of a process).
    pub holder: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it took the lease (Unix milliseconds).
    pub since_ms: i64,
    /// It gave the lease back: anyone may take it.
    #[serde(default)]
    pub released: bool,
}

/// This process, as it names itself in lease records.
#[derive(Debug, Clone)]
pub struct Holder {
    id: String,
    host: String,
    pid: u32,
}

impl Holder {
    /// A holder for this run of this process: a fresh id, so a restarted process never
    /// mistakes the lease of its previous run for its own.
    pub fn new() -> Holder {
        let mut bytes = [0u8; 8];
        // Without randomness the time and pid still tell two runs apart.
        getrandom::fill(&mut bytes).ok();
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!(
            "{host}:{pid}:{:x}{}",
            nanos % 0x1_0000_0000,
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Holder { id, host, pid }
    }

    /// The holder id written in records.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn record(&self, since_ms: i64, released: bool) -> Vec<u8> {
        serde_json::to_vec(&LeaseRecord {
            holder: self.id.clone(),
            host: self.host.clone(),
            pid: self.pid,
            since_ms,
            released,
        })
        .expect("a lease record serializes")
    }
}

impl Default for Holder {
    fn default() -> Self {
        Holder::new()
    }
}

impl Bus {
    /// The current record of lease `name` and its sequence; `None` when nobody holds it (or
    /// its record is unreadable, which counts as free once it expires).
    pub async fn lease(&self, name: &str) -> Result<Option<(Seq, LeaseRecord)>, BusError> {
        Ok(self
            .last_subject_payload(stream::LEASES, &subjects::lease(name))
            .await?
            .and_then(|(seq, bytes)| {
                serde_json::from_slice::<LeaseRecord>(&bytes)
                    .ok()
                    .map(|r| (seq, r))
            }))
    }

    /// Takes lease `name` if it is free; the sequence of the record written, or `None` when
    /// another process holds it.
    pub async fn try_take_lease(
        &self,
        name: &str,
        holder: &Holder,
        since_ms: i64,
    ) -> Result<Option<Seq>, PublishError> {
        let current = self
            .lease(name)
            .await
            .map_err(|e| PublishError::Unavailable {
                subject: subjects::lease(name),
                message: e.to_string(),
            })?;
        let expected = match current {
            None => Seq(0),
            Some((seq, r)) if r.released || r.holder == holder.id => seq,
            Some(_) => return Ok(None),
        };
        match self
            .publish_record(
                &subjects::lease(name),
                holder.record(since_ms, false),
                expected,
            )
            .await
        {
            Ok(p) => Ok(Some(p.seq)),
            Err(PublishError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether a lease is still held, as far as this process can tell: its last stored renewal
/// was sent less than `TTL − MARGIN` ago. Work with effects outside the database (publishing)
/// asks right before it acts; a pause between the question and the act is the only overlap
/// left, and what it publishes carries its event id for deduplication.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    stored_sent: std::sync::Arc<std::sync::Mutex<Instant>>,
}

impl LeaseClock {
    fn new(sent: Instant) -> LeaseClock {
        LeaseClock {
            stored_sent: std::sync::Arc::new(std::sync::Mutex::new(sent)),
        }
    }

    fn stored(&self, sent: Instant) {
        *self.stored_sent.lock().unwrap_or_else(|e| e.into_inner()) = sent;
    }

    fn since_stored(&self) -> Duration {
        self.stored_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Whether the lease is still this process's.
    pub fn is_current(&self) -> bool {
        self.since_stored() < TTL.saturating_sub(MARGIN)
    }
}

/// A lease this process holds, renewed in the background until it is released or lost.
#[derive(Debug)]
pub struct HeldLease {
    name: String,
    /// Cancelled when the lease is lost (and when the caller's token is).
    work: CancellationToken,
    stop_renewing: CancellationToken,
    renewer: JoinHandle<Option<Seq>>,
    clock: LeaseClock,
    bus: Bus,
    holder: Holder,
    since_ms: i64,
}

impl HeldLease {
    /// Waits until this process holds lease `name`; `None` if `stop` is cancelled first.
    /// The lease's token is a child of `stop`.
    pub async fn take(
        bus: &Bus,
        name: &str,
        holder: &Holder,
        stop: &CancellationToken,
    ) -> Option<HeldLease> {
        let mut waiting_on: Option<String> = None;
        let mut last_warning: Option<Instant> = None;
        loop {
            let sent = Instant::now();
            let since_ms = now_ms();
            match bus.try_take_lease(name, holder, since_ms).await {
                Ok(Some(seq)) => {
                    return Some(HeldLease::renewing(
                        bus, name, holder, seq, sent, since_ms, stop,
                    ));
                }
                Ok(None) => {
                    if waiting_on.is_none()
                        && let Ok(Some((_, r))) = bus.lease(name).await
                    {
                        tracing::info!(lease = name, holder = %r.holder, "standing by");
                        waiting_on = Some(r.holder);
                    }
                }
                Err(err) => {
                    // Nothing is applied without the lease: say so, now and then (a missing
                    // LEASES stream needs `anchorage streams apply`).
                    if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(lease = name, error = %err,
                            "cannot take the lease; is the LEASES stream applied?");
                    }
                }
            }
            stop.run_until_cancelled(tokio::time::sleep(POLL)).await?;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn renewing(
        bus: &Bus,
        name: &str,
        holder: &Holder,
        seq: Seq,
        sent: Instant,
        since_ms: i64,
        stop: &CancellationToken,
    ) -> HeldLease {
        let work = stop.child_token();
        let stop_renewing = CancellationToken::new();
        let clock = LeaseClock::new(sent);
        let renewer = tokio::spawn(renew(
            bus.clone(),
            name.to_owned(),
            holder.clone(),
            seq,
            clock.clone(),
            since_ms,
            work.clone(),
            stop_renewing.clone(),
        ));
        HeldLease {
            name: name.to_owned(),
            work,
            stop_renewing,
            renewer,
            clock,
            bus: bus.clone(),
            holder: holder.clone(),
            since_ms,
        }
    }

    /// Cancelled when the lease is lost or the caller stops: work done under the lease
    /// watches it.
    pub fn token(&self) -> &CancellationToken {
        &self.work
    }

    /// Tells, without waiting for the renewer, whether the lease is still held.
    pub fn clock(&self) -> &LeaseClock {
        &self.clock
    }

    /// Stops renewing and gives the lease back so a standby takes it at once (if it is
    /// still ours).
    pub async fn release(self) {
        self.stop_renewing.cancel();
        let Ok(Some(seq)) = self.renewer.await else {
            return;
        };
        let record = self.holder.record(self.since_ms, true);
        let subject = subjects::lease(&self.name);
        if let Err(err) = self.bus.publish_record(&subject, record, seq).await {
            tracing::debug!(lease = %self.name, error = %err, "releasing the lease");
        }
    }
}

/// Renews until told to stop (returns the last sequence written) or until the lease is lost
/// (cancels `work`, returns `None`).
#[allow(clippy::too_many_arguments)]
async fn renew(
    bus: Bus,
    name: String,
    holder: Holder,
    mut seq: Seq,
    clock: LeaseClock,
    since_ms: i64,
    work: CancellationToken,
    stop: CancellationToken,
) -> Option<Seq> {
    let subject = subjects::lease(&name);
    let lost = |why: &str| {
        tracing::warn!(lease = %name, why, "lease lost; stopping its work");
        work.cancel();
        None
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Some(seq),
            _ = work.cancelled() => return Some(seq),
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let deadline = TTL.saturating_sub(MARGIN);
        let Some(left) = deadline.checked_sub(clock.since_stored()) else {
            return lost("no renewal was stored in time");
        };
        let sent = Instant::now();
        let record = holder.record(since_ms, false);
        match tokio::time::timeout(left, bus.publish_record(&subject, record, seq)).await {
            Ok(Ok(p)) => {
                seq = p.seq;
                clock.stored(sent);
            }
            Ok(Err(PublishError::Conflict { .. })) => {
                return lost("another process holds it, or it expired");
            }
            Ok(Err(err)) => tracing::debug!(lease = %name, error = %err, "renewing the lease"),
            Err(_) => return lost("no renewal was stored in time"),
        }
    }
}
