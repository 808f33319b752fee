//! The Anchorage projector: builds the SQL projections from the streams.
//!
//! One worker per [`Projection`], each reading its stream through its own durable pull
//! consumer (defined in `streams/consumers/`). A worker applies a batch of events in one
//! database transaction that also moves its checkpoint, commits, and only then acknowledges the
//! messages: a crash anywhere re-applies nothing and skips nothing.
//!
//! - **Order.** On start and after every error the worker resets its consumer to the sequence
//!   after its checkpoint, so events always arrive in stream order from there; events at or
//!   below the checkpoint (redeliveries) are acknowledged without being applied.
//! - **Poison events.** An event that cannot be decoded or can never apply goes to the
//!   dead-letter stream at once, with the reason and origin in headers. An event whose
//!   application keeps failing while the database is healthy is retried in place (with
//!   backoff, keeping its ack wait extended) and dead-lettered after the consumer's
//!   `max_deliver` attempts. Either way the checkpoint moves past it and the projection goes on.
//! - **Outages.** When NATS or the database is unreachable the worker backs off (full jitter,
//!   up to 10 s) and starts over from its checkpoint; nothing is dead-lettered for an outage.
//! - **More than one process.** Any number of projector processes may run against one
//!   database: each worker applies only while its process holds the projection's lease (see
//!   `anchorage_bus::lease`); the others stand by and one of them takes over within a few
//!   seconds of the holder dying. Every commit moves the checkpoint only from the value the
//!   worker started from, so a holder that lost its lease mid-batch rolls back rather than
//!   apply anything twice.
//! - **Partitions.** The messages projection, the largest, may be split by conversation
//!   (`projector.message_partitions`): partition `i` of `n` applies the conversations whose
//!   id hashes to `i` (xxh3-64 modulo `n`), through its own durable consumer, checkpoint and
//!   lease (`messages-<i>-of-<n>`), so `n` workers write at once — in one process or spread
//!   over several (`projector.partitions`). Each reads the whole stream and moves its
//!   checkpoint over the others' events; the `messages` checkpoint, which readers wait on,
//!   follows the lowest of them.
//! - **Changing the partition count.** The count in force is a row beside the checkpoints
//!   (`messages-layout`); a worker under another count stands by without taking a lease
//!   until no worker under the count in force holds one, then claims its own. Every
//!   transaction of the messages projection commits only while its count is in force (on
//!   PostgreSQL it holds the row, so a claim waits for it): a paused worker of the old count
//!   that wakes up rolls back. New partitions start where the whole projection stood, and an
//!   entry that a worker under an earlier count passed — applied, refused by the history, or
//!   set aside — is passed over, judged by that worker's own checkpoint.
//! - **Lifetimes.** A checkpoint names the stream's epoch. If the stream was recreated the
//!   worker refuses to mix lifetimes and says to rebuild with `anchorage replay`.

mod ingest;
mod projections;
pub mod replay;

use std::time::Duration;

use anchorage_bus::{Bus, Delivery, HeldLease, Holder, LeaseClock, PullConsumer};
use anchorage_schema::Seq;
use anchorage_store::{Checkpoint, Store};
use anyhow::{Context, bail};
use ingest::Ingest;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use projections::{ApplyError, MembershipRules, Notice, Projection};
use projections::{
    LAYOUT_ROW, Reached, Span, Stored, apply_events, conv_of_subject, save_checkpoint,
};

/// The checkpoint name of the ingest worker.
pub const INGEST_NAME: &str = "ingest";

/// Most events from other systems taken in as one run (half the `max_ack_pending` of
/// `streams/consumers/INGEST/projector_ingest.json`: the next run is pulled while one is
/// taken in).
const INGEST_RUN: usize = 1000;

/// How often a worker waiting for its partition count to be in force looks again.
const LAYOUT_POLL: Duration = Duration::from_secs(2);

/// Most events a partition of the messages projection fetches at once (the `max_ack_pending`
/// of `streams/consumers/MESSAGES/projector_messages.json`).
const PARTITION_FETCH: usize = 1024;

/// A pull of the next batch, in flight or answered.
type Pull<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<Delivery>, anchorage_bus::BusError>>
            + Send
            + 'a,
    >,
>;

/// Lets a pull run to its end and drops what it brought (until shutdown). A pull dropped
/// while in flight leaves its request with the server until the request expires, and a reset
/// to the checkpoint would hand the first event after it to that request — which nobody
/// reads — instead of the next pull.
async fn settle(pull: Pull<'_>, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = pull => {}
    }
}

/// Tuning of the projector.
#[derive(Debug, Clone)]
pub struct ProjectorOptions {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How long one pull waits for a first event before asking again.
    pub idle_wait: Duration,
    /// Which projections to run (all by default).
    pub projections: Vec<Projection>,
    /// Whether to run the ingest worker (events from other systems).
    pub ingest: bool,
    pub membership: MembershipRules,
    /// Partitions of the messages projection (1: one worker).
    pub message_partitions: u16,
    /// The partitions this process applies (empty: all).
    pub partitions: Vec<u16>,
}

impl ProjectorOptions {
    pub fn from_config(config: &anchorage_config::ProjectorConfig) -> Self {
        Self {
            batch_size: config.batch_size as usize,
            idle_wait: Duration::from_secs(5),
            projections: Projection::ALL.to_vec(),
            ingest: true,
            membership: MembershipRules {
                tombstone_horizon: config.tombstone_horizon,
            },
            message_partitions: config.message_partitions.max(1),
            partitions: config.partitions.clone(),
        }
    }
}

/// Runs every projection until `shutdown` is cancelled. Each worker finishes the batch it is
/// applying before it stops.
pub async fn run(
    bus: Bus,
    store: Store,
    options: ProjectorOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut workers = JoinSet::new();
    let count = options.message_partitions.max(1);
    let mut handlers = Vec::new();
    for &p in &options.projections {
        if p != Projection::Messages || count == 1 {
            handlers.push(Handler::Sql(p));
            continue;
        }
        handlers.extend(
            (0..count)
                .filter(|i| options.partitions.is_empty() || options.partitions.contains(i))
                .map(|index| Handler::Part(Partition { index, count })),
        );
    }
    if options.ingest {
        handlers.push(Handler::Ingest(Box::default()));
    }
    let count = handlers.len();
    // One holder per process: its workers may hold some leases while another process holds
    // the others.
    let holder = Holder::new();
    for handler in handlers {
        // Ingest takes in longer runs: each costs one wait for the projections and one
        // checkpoint, however long (within what its consumer lets be unacknowledged).
        let batch_size = match handler {
            Handler::Sql(_) => options.batch_size.max(1),
            // A partition reads every event and applies its share: it fetches as many more,
            // so a transaction applies about a batch of its own (within what its consumer
            // lets be unacknowledged).
            Handler::Part(part) => {
                (options.batch_size * usize::from(part.count)).clamp(1, PARTITION_FETCH)
            }
            Handler::Ingest(_) => (options.batch_size * 4).clamp(1, INGEST_RUN),
        };
        let worker = Worker {
            name: handler.name(),
            reached: std::sync::Mutex::new(std::sync::Arc::from([])),
            handler,
            holder: holder.clone(),
            lease: std::sync::Mutex::new(None),
            bus: bus.clone(),
            store: store.clone(),
            batch_size,
            idle_wait: options.idle_wait,
            rules: options.membership,
        };
        workers.spawn(worker.run(shutdown.clone()));
    }
    tracing::info!(count, "projector running");
    while let Some(done) = workers.join_next().await {
        done.context("projection worker panicked")?;
    }
    tracing::info!("projector stopped");
    Ok(())
}

/// One share of the messages projection: the conversations whose id hashes to `index` of
/// `count` (xxh3-64 of the id, modulo `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: u16,
    pub count: u16,
}

impl Partition {
    /// The partition of `count` that conversation `conv` belongs to.
    pub fn of(conv: &str, count: u16) -> u16 {
        (xxhash_rust::xxh3::xxh3_64(conv.as_bytes()) % u64::from(count.max(1))) as u16
    }

    /// Whether conversation `conv` is this partition's.
    pub fn holds(self, conv: &str) -> bool {
        Partition::of(conv, self.count) == self.index
    }

    /// Its checkpoint and lease: `messages-<index>-of-<count>`.
    pub fn name(self) -> String {
        format!("messages-{}-of-{}", self.index, self.count)
    }

    /// Its durable consumer, made like `projector_messages` when first needed.
    fn consumer(self) -> String {
        format!("projector_messages_{}_of_{}", self.index, self.count)
    }

    /// The partition a checkpoint or lease name is of, of any layout.
    fn parse(name: &str) -> Option<Partition> {
        let (index, count) = name.strip_prefix("messages-")?.split_once("-of-")?;
        Some(Partition {
            index: index.parse().ok()?,
            count: count.parse().ok()?,
        })
    }
}

/// What a worker does with the events of its stream.
enum Handler {
    /// Applies them to an SQL projection.
    Sql(Projection),
    /// Applies one partition's share of them to the messages projection.
    Part(Partition),
    /// Validates events from other systems and publishes them as native events.
    Ingest(Box<Ingest>),
}

impl Handler {
    fn name(&self) -> String {
        match self {
            Handler::Sql(p) => p.name().to_owned(),
            Handler::Part(part) => part.name(),
            Handler::Ingest(_) => INGEST_NAME.to_owned(),
        }
    }

    fn stream(&self) -> &'static str {
        match self {
            Handler::Sql(p) => p.stream(),
            Handler::Part(_) => Projection::Messages.stream(),
            Handler::Ingest(_) => anchorage_schema::subjects::stream::INGEST,
        }
    }

    /// The layout of the messages projection this worker belongs to (1: unpartitioned).
    fn layout(&self) -> Option<u16> {
        match self {
            Handler::Sql(Projection::Messages) => Some(1),
            Handler::Part(part) => Some(part.count),
            _ => None,
        }
    }

    async fn consumer(&self, bus: &Bus) -> Result<PullConsumer, anchorage_bus::BusError> {
        match self {
            Handler::Sql(p) => bus.pull_consumer(p.stream(), p.consumer()).await,
            Handler::Part(part) => {
                let messages = Projection::Messages;
                bus.consumer_like(messages.stream(), messages.consumer(), &part.consumer())
                    .await
            }
            Handler::Ingest(_) => {
                bus.pull_consumer(
                    anchorage_schema::subjects::stream::INGEST,
                    "projector_ingest",
                )
                .await
            }
        }
    }
}

/// How often a projection that is behind says so in the log.
const LAG_LOG_EVERY: Duration = Duration::from_secs(30);

struct Worker {
    /// The checkpoint and lease it works under.
    name: String,
    /// See [`Span::reached`]: read each time it starts following.
    reached: std::sync::Mutex<std::sync::Arc<[Reached]>>,
    handler: Handler,
    holder: Holder,
    /// The lease held now, for work that acts outside the database to ask before it acts.
    lease: std::sync::Mutex<Option<LeaseClock>>,
    bus: Bus,
    store: Store,
    batch_size: usize,
    idle_wait: Duration,
    rules: MembershipRules,
}

/// A random delay in `[0, min(10 s, 200 ms · 2^attempt)]`.
fn backoff(attempt: u32) -> Duration {
    const RETRY: anchorage_schema::backoff::Backoff = anchorage_schema::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    RETRY.delay(attempt, None)
}

impl Worker {
    /// Applies the projection while this process holds its lease; stands by while another
    /// does.
    async fn run(self, shutdown: CancellationToken) {
        let name = self.name.as_str();
        let active =
            metrics::gauge!("anchorage_projection_active", "projection" => name.to_owned());
        loop {
            active.set(0.0);
            if let Some(count) = self.handler.layout()
                && !self.wait_for_layout(count, &shutdown).await
            {
                return;
            }
            let Some(lease) = HeldLease::take(&self.bus, name, &self.holder, &shutdown).await
            else {
                return;
            };
            tracing::info!(
                projection = name,
                holder = self.holder.id(),
                "holding the lease"
            );
            active.set(1.0);
            *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease.clock().clone());
            self.run_while_held(lease.token()).await;
            active.set(0.0);
            // Given back on a clean stop, so a standby takes over at once; a lost lease is
            // someone else's already.
            lease.release().await;
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Whether this process still holds the lease it works under.
    fn holds_lease(&self) -> bool {
        self.lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(LeaseClock::is_current)
    }

    /// Follows the stream, starting over from the checkpoint after every interruption,
    /// until `stop`.
    async fn run_while_held(&self, shutdown: &CancellationToken) {
        let name = self.name.as_str();
        let mut failures = 0u32;
        loop {
            match self.follow(shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    if let Some(count) = self.handler.layout()
                        && !matches!(self.layout_in_force().await, Ok(c) if c == count)
                    {
                        // Another partition count took over: give the lease back and wait.
                        tracing::warn!(
                            projection = name,
                            error = format!("{err:#}"),
                            "the messages projection runs under another partition count now"
                        );
                        return;
                    }
                    failures += 1;
                    tracing::warn!(
                        projection = name,
                        error = format!("{err:#}"),
                        failures,
                        "projection interrupted; resuming from its checkpoint"
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff(failures)) => {}
            }
        }
    }

    /// Follows the stream from the checkpoint until shutdown (`Ok`) or an error.
    async fn follow(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let p = &self.handler;
        let consumer = p
            .consumer(&self.bus)
            .await
            .context("binding the consumer")?;
        let epoch = self.bus.stream_state(p.stream()).await?.epoch.0;
        let mut last_lag_log = std::time::Instant::now();
        let mut own = self.store.checkpoint(&self.name).await?;
        if let Some(layout) = p.layout() {
            let in_force = self.layout_in_force().await?;
            if in_force != layout {
                bail!(
                    "the messages projection is applied in {in_force} partition(s), not {layout}"
                );
            }
            // A partition new to this layout starts where the whole projection stands.
            if own.is_none()
                && layout > 1
                && let Some(whole) = self.store.checkpoint(Projection::Messages.name()).await?
            {
                save_checkpoint(&self.store, &self.name, p.stream(), 0, whole).await?;
                own = Some(whole);
            }
        }
        let mut checkpoint = match own {
            Some(cp) if cp.epoch != epoch => bail!(
                "stream {} was recreated (epoch {} is now {epoch}); rebuild the projections \
                 with `anchorage replay`",
                p.stream(),
                cp.epoch
            ),
            Some(cp) => cp,
            None => Checkpoint { epoch, last_seq: 0 },
        };
        if p.layout().is_some() {
            // Where the workers under every partition count went: what one of them passed is
            // not applied again (a count changed, and the new partitions start where the
            // slowest of the old ones stood).
            let reached: std::sync::Arc<[Reached]> = self
                .store
                .checkpoints_with_prefix(Projection::Messages.name())
                .await?
                .into_iter()
                .filter(|(_, cp)| cp.epoch == epoch)
                .filter_map(|(name, cp)| {
                    let part = match name.as_str() {
                        "messages" => None,
                        other => Some(Partition::parse(other)?),
                    };
                    Some(Reached {
                        part,
                        through: cp.last_seq,
                    })
                })
                .collect();
            *self.reached.lock().unwrap_or_else(|e| e.into_inner()) = reached;
        }
        if let Handler::Part(part) = p {
            // The whole projection's checkpoint may have been lost with a crash of the
            // database (it is written without waiting for the disk): set it again.
            self.combine(*part, epoch).await?;
        }
        consumer
            .reset_to(Seq(checkpoint.last_seq + 1))
            .await
            .context("resetting the consumer to the checkpoint")?;
        tracing::info!(
            projection = %self.name,
            last_seq = checkpoint.last_seq,
            "following"
        );
        // The next batch is pulled while one is applied: its transfer overlaps the commit.
        // It is applied from the checkpoint as it stands then, like any batch (what it holds
        // again is skipped, a hole before it is found).
        let pull = |max: usize| -> Pull<'_> { Box::pin(consumer.next_batch(max, self.idle_wait)) };
        // Every pull stays within what the consumer lets be unacknowledged (a batch size may
        // be configured above it): a pull the server holds back for that limit would outlast
        // its own bound.
        let limit = consumer.max_ack_pending().unwrap_or(usize::MAX);
        let batch_size = self.batch_size.min(limit);
        let mut ahead: Option<Pull<'_>> = None;
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                batch = ahead.take().unwrap_or_else(|| pull(batch_size)) => batch?,
            };
            if batch.is_empty() {
                continue;
            }
            // The next one, besides this batch still unacknowledged (none without room).
            let room = limit.saturating_sub(batch.len()).min(batch_size);
            let mut next_pull = (room > 0).then(|| pull(room));
            let mut pulled = None;
            let apply = self.apply_batch(&consumer, checkpoint, &batch);
            tokio::pin!(apply);
            // Shutdown does not wait for a batch that waits (an event from another system
            // waiting for the projections it refers to): what was not committed is applied
            // again after the restart — publishing is idempotent by event id.
            let applied = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    applied = &mut apply => break applied,
                    batch = async { next_pull.as_mut().expect("guarded").await },
                        if pulled.is_none() && next_pull.is_some() => pulled = Some(batch),
                }
            };
            let (next, gap) = match applied {
                Ok(applied) => applied,
                Err(err) => {
                    if let (None, Some(in_flight)) = (pulled, next_pull) {
                        settle(in_flight, shutdown).await;
                    }
                    return Err(err);
                }
            };
            ahead = match pulled {
                Some(batch) => Some(Box::pin(std::future::ready(batch))),
                None => next_pull,
            };
            if next.last_seq > checkpoint.last_seq {
                match p {
                    Handler::Part(part) => {
                        if let Err(err) = self.combine(*part, epoch).await {
                            if let Some(stale) = ahead.take() {
                                settle(stale, shutdown).await;
                            }
                            return Err(err);
                        }
                    }
                    _ => self.announce(&self.name, next.last_seq).await,
                }
            }
            checkpoint = next;
            if let Some(missing) = gap {
                // The consumer delivered past a sequence it never delivered (a leader change
                // in the middle of a batch): never skip it — ask again from the checkpoint.
                tracing::warn!(
                    projection = %self.name,
                    missing,
                    last_seq = checkpoint.last_seq,
                    "a delivery skipped an event; reading again from the checkpoint"
                );
                // What was pulled ahead is read again after the reset.
                if let Some(stale) = ahead.take() {
                    settle(stale, shutdown).await;
                }
                // Stopped (or the lease lost) meanwhile: the consumer is the next holder's.
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                consumer
                    .reset_to(Seq(checkpoint.last_seq + 1))
                    .await
                    .context("resetting the consumer after a gap")?;
            }
            if let Some(last) = batch.last()
                && last.pending > 0
                && last_lag_log.elapsed() > LAG_LOG_EVERY
            {
                last_lag_log = std::time::Instant::now();
                tracing::info!(
                    projection = %self.name,
                    last_seq = checkpoint.last_seq,
                    pending = last.pending,
                    "projection behind its stream"
                );
            }
        }
    }

    /// Moves the `messages` checkpoint, which readers wait on, up to the lowest of this
    /// layout's partitions (once each has one), and announces it. Every partition does so
    /// after each commit, so the last to commit sees everyone's.
    async fn combine(&self, part: Partition, epoch: u64) -> anyhow::Result<()> {
        let messages = Projection::Messages;
        let rows = self.store.checkpoints_with_prefix("messages-").await?;
        let ours: Vec<u64> = rows
            .iter()
            .filter(|(name, cp)| {
                cp.epoch == epoch && Partition::parse(name).is_some_and(|p| p.count == part.count)
            })
            .map(|(_, cp)| cp.last_seq)
            .collect();
        if ours.len() < usize::from(part.count) {
            return Ok(());
        }
        let lowest = ours.into_iter().min().unwrap_or(0);
        let to = Checkpoint {
            epoch,
            last_seq: lowest,
        };
        let at = self
            .store
            .raise_checkpoint(
                messages.name(),
                messages.stream(),
                to,
                anchorage_schema::now_ms(),
            )
            .await?;
        self.announce(messages.name(), at).await;
        Ok(())
    }

    /// The partition count of the messages projection in force (1 until one is claimed).
    async fn layout_in_force(&self) -> anyhow::Result<u16> {
        let row = self.store.checkpoint(LAYOUT_ROW).await?;
        Ok(row.map_or(1, |r| u16::try_from(r.last_seq).unwrap_or(0)))
    }

    /// Waits until `count` is the partition count in force, claiming it when no worker under
    /// another count holds a lease; `false` on shutdown. Workers under another count never
    /// take a lease meanwhile, so a stray process started with the wrong count stands by.
    async fn wait_for_layout(&self, count: u16, shutdown: &CancellationToken) -> bool {
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            match self.claim_layout(count).await {
                Ok(None) => return true,
                Ok(Some(why)) => {
                    if last_warning.is_none_or(|at| at.elapsed() > LAG_LOG_EVERY) {
                        last_warning = Some(std::time::Instant::now());
                        tracing::warn!(projection = %self.name, %why, "standing by");
                    }
                }
                Err(err) => tracing::debug!(projection = %self.name, error = %err,
                    "looking up the partition count in force"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(LAYOUT_POLL) => {}
            }
        }
    }

    /// Makes `count` the partition count in force if it is not and no worker under the one in
    /// force holds a lease; `None` when it is in force, or why it cannot be.
    async fn claim_layout(&self, count: u16) -> anyhow::Result<Option<String>> {
        let row = self.store.checkpoint(LAYOUT_ROW).await?.map(|r| r.last_seq);
        if row == Some(u64::from(count)) {
            return Ok(None);
        }
        for subject in self
            .bus
            .subjects(anchorage_schema::subjects::stream::LEASES, "lease.*")
            .await?
        {
            let name = subject.strip_prefix("lease.").unwrap_or(&subject);
            let theirs = if name == Projection::Messages.name() {
                1
            } else {
                match Partition::parse(name) {
                    Some(p) => p.count,
                    None => continue,
                }
            };
            if theirs == count {
                continue;
            }
            if let Some((_, record)) = self.bus.lease(name).await?
                && !record.released
            {
                return Ok(Some(format!(
                    "{name} is applied by process {} on {}: the messages projection runs in \
                     {theirs} partition(s), not {count}; stop every projector to change \
                     projector.message_partitions",
                    record.pid, record.host
                )));
            }
        }
        let stream = Projection::Messages.stream();
        let now = anchorage_schema::now_ms();
        if self
            .store
            .swap_setting(LAYOUT_ROW, stream, row, u64::from(count), now)
            .await?
        {
            tracing::info!(projection = %self.name, count, "partition count in force");
            return Ok(None);
        }
        Ok(Some(
            "another process changed the partition count at the same moment".into(),
        ))
    }

    /// Announces a committed checkpoint, for readers waiting for the projection (at most
    /// once: one that missed it reads the checkpoint from the database).
    async fn announce(&self, name: &str, last_seq: u64) {
        let subject = anchorage_schema::subjects::notify_progress(name);
        if let Err(err) = self.bus.notify(&subject, last_seq.to_string()).await {
            tracing::debug!(%subject, error = %err, "progress announcement lost");
        }
    }

    /// The deliveries of `batch` that continue the projection from `checkpoint` without a
    /// hole, and the first sequence the consumer skipped, if it did. Streams have no holes
    /// except where a message was deleted; a sequence that is still stored but was not
    /// delivered is a skip, and nothing after it is applied.
    ///
    /// A hole is passed only where the stream shows nothing is stored ([`Bus::hole_end`]);
    /// anything else counts as a skip, to be delivered again.
    async fn contiguous<'a>(
        &self,
        checkpoint: Checkpoint,
        batch: &'a [Delivery],
    ) -> anyhow::Result<(Vec<&'a Delivery>, Option<u64>)> {
        let mut expected = checkpoint.last_seq + 1;
        let mut fresh = Vec::new();
        for d in batch {
            if d.seq.0 < expected {
                continue;
            }
            if d.seq.0 > expected {
                let end = self
                    .bus
                    .hole_end(self.handler.stream(), Seq(expected))
                    .await
                    .context("looking for a sequence the consumer skipped")?;
                // Nothing to apply up to the hole's end (and a delivery erased since it was
                // delivered is applied as delivered).
                if let Some(end) = end {
                    expected = end.0.min(d.seq.0);
                }
                if d.seq.0 > expected {
                    return Ok((fresh, Some(expected)));
                }
            }
            fresh.push(d);
            expected += 1;
        }
        Ok((fresh, None))
    }

    /// Applies a batch in one transaction; if that fails, applies its events one by one to
    /// isolate the one at fault. Only the run that continues the checkpoint without a hole is
    /// applied and acknowledged; returns the new checkpoint and the sequence skipped, if any.
    #[tracing::instrument(level = "debug", skip_all, fields(
        projection = %self.name,
        from = checkpoint.last_seq + 1,
        events = batch.len(),
    ))]
    async fn apply_batch(
        &self,
        consumer: &PullConsumer,
        checkpoint: Checkpoint,
        batch: &[Delivery],
    ) -> anyhow::Result<(Checkpoint, Option<u64>)> {
        let (fresh, gap) = self.contiguous(checkpoint, batch).await?;
        let mut next = checkpoint;
        if let Handler::Ingest(ingest) = &self.handler {
            next = self
                .ingest_runs(ingest, consumer, checkpoint, &fresh)
                .await?;
            for d in batch.iter().filter(|d| d.seq.0 <= next.last_seq) {
                if let Err(err) = d.ack().await {
                    tracing::debug!(error = %err, seq = %d.seq, "ack failed");
                }
            }
            return Ok((next, gap));
        }
        let applied = match fresh.last() {
            Some(last) => match self.try_apply(&fresh, checkpoint).await {
                Ok(()) => {
                    next.last_seq = last.seq.0;
                    true
                }
                Err(err) => {
                    tracing::debug!(projection = %self.name, error = %err,
                        "batch failed; applying one by one");
                    false
                }
            },
            _ => false,
        };
        if !applied {
            for d in &fresh {
                next = self.apply_alone(consumer, next, d).await?;
            }
        }
        let done = batch.iter().filter(|d| d.seq.0 <= next.last_seq);
        // A partition's consumer takes one acknowledgement for all before it.
        let acks: Vec<&Delivery> = match self.handler {
            Handler::Part(_) => done.last().into_iter().collect(),
            _ => done.collect(),
        };
        for d in acks {
            // Committed already: a lost ack only causes a redelivery that is skipped.
            if let Err(err) = d.ack().await {
                tracing::debug!(error = %err, seq = %d.seq, "ack failed");
            }
        }
        Ok((next, gap))
    }

    async fn try_apply(
        &self,
        events: &[&Delivery],
        checkpoint: Checkpoint,
    ) -> Result<(), ApplyError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let next = Checkpoint {
            epoch: checkpoint.epoch,
            last_seq: last.seq.0,
        };
        let reached = self
            .reached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let span = Span {
            name: &self.name,
            from: checkpoint.last_seq,
            next,
            reached: &reached,
            layout: self.handler.layout(),
        };
        match &self.handler {
            Handler::Sql(_) | Handler::Part(_) => {
                let (p, part) = match &self.handler {
                    Handler::Part(part) => (Projection::Messages, Some(*part)),
                    Handler::Sql(p) => (*p, None),
                    Handler::Ingest(_) => unreachable!("matched above"),
                };
                // A partition moves its checkpoint over the other partitions' entries.
                let items: Vec<Stored> = events
                    .iter()
                    .filter(|d| part.is_none_or(|part| part.holds(conv_of_subject(d.subject()))))
                    .map(|d| Stored {
                        seq: d.seq.0,
                        subject: d.subject(),
                        payload: d.payload().as_ref(),
                        membership: d.membership(),
                    })
                    .collect();
                let notices =
                    apply_events(&self.store, &self.bus, p, span, &items, self.rules).await?;
                // Committed: announce it. At most once — a client that misses one sees the
                // gap in `prev` on the next and syncs.
                for n in notices {
                    if let Err(err) = self.bus.notify(&n.subject, n.frame).await {
                        tracing::debug!(subject = %n.subject, error = %err, "notification lost");
                    }
                }
                Ok(())
            }
            Handler::Ingest(ingest) => {
                // Publishing is idempotent by event id, so a retry after a failed commit
                // republishes harmlessly; the checkpoint alone needs the transaction.
                let items: Vec<(&str, &[u8])> = events
                    .iter()
                    .map(|d| (d.subject(), d.payload().as_ref()))
                    .collect();
                let (done, stopped) = ingest
                    .apply_run(&self.bus, &self.store, &items, &|| self.holds_lease())
                    .await;
                if done < items.len() {
                    return Err(stopped.unwrap_or_else(|| {
                        ApplyError::Unavailable("a run ended before its last event".into())
                    }));
                }
                save_checkpoint(
                    &self.store,
                    &self.name,
                    self.handler.stream(),
                    checkpoint.last_seq,
                    next,
                )
                .await
            }
        }
    }

    /// Takes in events from other systems in runs: each run is validated, checked and
    /// published together, and the checkpoint moves past it once all of it is stored. The
    /// event a run stops at goes alone (retried, or set aside). Returns the new checkpoint.
    async fn ingest_runs(
        &self,
        ingest: &Ingest,
        consumer: &PullConsumer,
        checkpoint: Checkpoint,
        fresh: &[&Delivery],
    ) -> anyhow::Result<Checkpoint> {
        let mut next = checkpoint;
        let all: Vec<(&str, &[u8])> = fresh
            .iter()
            .map(|d| (d.subject(), d.payload().as_ref()))
            .collect();
        let mut rest = fresh;
        while let Some(first) = rest.first() {
            let items = &all[fresh.len() - rest.len()..];
            let (done, _) = ingest
                .apply_run(&self.bus, &self.store, items, &|| self.holds_lease())
                .await;
            if done > 0 {
                let to = Checkpoint {
                    epoch: next.epoch,
                    last_seq: rest[done - 1].seq.0,
                };
                save_checkpoint(
                    &self.store,
                    &self.name,
                    self.handler.stream(),
                    next.last_seq,
                    to,
                )
                .await?;
                next = to;
                rest = &rest[done..];
            } else {
                // It stopped at its first event: that one goes alone, to be retried or set
                // aside with its reason.
                next = self.apply_alone(consumer, next, first).await?;
                rest = &rest[1..];
            }
        }
        Ok(next)
    }

    /// Applies one event in its own transaction, retrying while the database is healthy, and
    /// dead-letters it when it cannot apply.
    async fn apply_alone(
        &self,
        consumer: &PullConsumer,
        checkpoint: Checkpoint,
        d: &Delivery,
    ) -> anyhow::Result<Checkpoint> {
        let next = Checkpoint {
            epoch: checkpoint.epoch,
            last_seq: d.seq.0,
        };
        let max_attempts = consumer.max_deliver().max(1) as u32;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (code, reason) = match self.try_apply(&[d], checkpoint).await {
                Ok(()) => return Ok(next),
                Err(ApplyError::Rejected { code, reason }) => (code, reason),
                Err(err @ ApplyError::Contended(_)) => {
                    return Err(err).context("resuming from the checkpoint");
                }
                Err(ApplyError::Store(err)) if err.is_transient() => {
                    // A busy or unreachable database is nobody's event's fault: start over
                    // from the checkpoint once it answers again.
                    return Err(err).context("database busy or unreachable while applying");
                }
                Err(ApplyError::Unavailable(why)) => {
                    // It cannot apply *yet* (NATS away, a projection it refers to behind):
                    // never set aside for that — start over from the checkpoint later.
                    anyhow::bail!("event {} cannot apply yet: {why}", d.seq);
                }
                Err(err @ ApplyError::Store(_)) => {
                    // An outage is nobody's event's fault: start over once it is over.
                    self.store
                        .ping()
                        .await
                        .context("database unreachable while applying")?;
                    anyhow::ensure!(self.bus.is_connected(), "NATS unreachable while applying");
                    if attempt < max_attempts {
                        tracing::warn!(projection = %self.name, seq = %d.seq,
                            attempt, error = %err, "event failed to apply; retrying");
                        d.in_progress().await.ok();
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    ("apply_failed", format!("failed {attempt} times: {err}"))
                }
            };
            let dlq_seq = self
                .bus
                .dead_letter(self.handler.stream(), consumer.name(), d, code, &reason)
                .await
                .context("publishing to the dead-letter stream")?;
            tracing::warn!(projection = %self.name, seq = %d.seq, code, %reason,
                dlq_seq = %dlq_seq, "event dead-lettered");
            save_checkpoint(
                &self.store,
                &self.name,
                self.handler.stream(),
                checkpoint.last_seq,
                next,
            )
            .await?;
            return Ok(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_every_conversation_has_one_partition() {
        let p = Partition { index: 2, count: 4 };
        assert_eq!(p.name(), "messages-2-of-4");
        assert_eq!(Partition::parse(&p.name()), Some(p));
        assert_eq!(Partition::parse("messages"), None);
        assert_eq!(Partition::parse("messages-x-of-4"), None);
        let mut sizes = [0u32; 4];
        for n in 0..4000 {
            let conv = format!("c{n}");
            let holders: Vec<u16> = (0..4)
                .filter(|&index| Partition { index, count: 4 }.holds(&conv))
                .collect();
            assert_eq!(holders.len(), 1, "{conv}");
            sizes[usize::from(holders[0])] += 1;
        }
        // The hash spreads conversations evenly.
        assert!(sizes.iter().all(|&n| (800..1200).contains(&n)), "{sizes:?}");
        assert_eq!(Partition::of("anything", 1), 0);
    }
}
