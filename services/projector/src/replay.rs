//! Rebuilding projections from the streams.
//!
//! [`replay`] reads each native stream in order with an ordered consumer (no durable state on
//! the server, nothing acknowledged) and applies it through exactly the code the live projector
//! uses, in batches that commit together with their checkpoint. A replay interrupted at any
//! point — `kill -9` included — resumes from those checkpoints when run again and ends in the
//! same state as an uninterrupted one.
//!
//! Events the live projector dead-lettered are rejected again here (the decisions are
//! deterministic) and skipped; they are already in the dead-letter stream. The ingest worker's
//! checkpoint is set to the end of `INGEST`: the effects of external events are in the native
//! streams already.

use std::collections::BTreeMap;

use anchorage_bus::Bus;
use anchorage_bus::StoredEvent;
use anchorage_schema::subjects::stream;
use anchorage_schema::{Seq, now_ms};
use anchorage_store::{Checkpoint, Store};
use anyhow::{Context, bail};

use crate::projections::{
    ApplyError, MembershipRules, Prepared, Projection, Span, Stored, apply_events, apply_prepared,
    save_checkpoint,
};

/// Events per transaction of a rebuild. Larger than the live projector's batches, which
/// keep what clients wait for short: a rebuild only wants throughput.
pub const BATCH: usize = 10_000;

/// Payload bytes per transaction of a rebuild, at most (about: a batch ends after the event
/// that reaches it).
pub const BATCH_BYTES: usize = 16 << 20;

/// How long the reader may deliver nothing before the replay asks the stream whether anything
/// is left up to its target.
const QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the reader may deliver nothing while the stream holds more before the replay fails
/// (it resumes when run again).
const STALLED: std::time::Duration = std::time::Duration::from_secs(30);

/// How far a replay goes and how it reports.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Events per transaction.
    pub batch_size: usize,
    /// Payload bytes per transaction, at most (about).
    pub batch_bytes: usize,
    /// Stop each projection at this sequence (e.g. the live projector's checkpoint, to compare
    /// like with like). Missing: the end of the stream as it is when the replay starts.
    pub upto: BTreeMap<Projection, u64>,
    /// The same rules as the live projector's, or the result differs.
    pub membership: MembershipRules,
}

/// Progress of one projection.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub projection: Projection,
    /// Events read so far (including skipped ones).
    pub done: u64,
    /// Events to read in all.
    pub total: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub applied: u64,
    /// Events rejected (and so skipped), as the live projector rejected them.
    pub rejected: u64,
}

fn parts(e: &StoredEvent) -> Stored<'_> {
    Stored {
        seq: e.seq.0,
        subject: e.subject.as_str(),
        payload: e.payload.as_ref(),
        membership: e.membership,
    }
}

/// Rebuilds every projection in `store` from the streams.
pub async fn replay(
    bus: &Bus,
    store: &Store,
    options: &ReplayOptions,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary::default();
    for &p in Projection::ALL {
        let state = bus.stream_state(p.stream()).await?;
        let target = options
            .upto
            .get(&p)
            .copied()
            .unwrap_or(state.last_seq.0)
            .min(state.last_seq.0);
        let mut at = match store.checkpoint(p.name()).await? {
            Some(cp) if cp.epoch != state.epoch.0 => bail!(
                "the target database was built from another lifetime of stream {} \
                 (epoch {} is now {}); replay into a fresh database",
                p.stream(),
                cp.epoch,
                state.epoch
            ),
            Some(cp) => cp,
            None => Checkpoint {
                epoch: state.epoch.0,
                last_seq: 0,
            },
        };
        let first = at.last_seq;
        let total = target.saturating_sub(first);
        progress(Progress {
            projection: p,
            done: 0,
            total,
        });
        if at.last_seq >= target {
            continue;
        }
        // Reading and preparing run ahead of writing: the next batch is read, decoded and
        // prepared while one is committed.
        let (ahead, mut batches) = tokio::sync::mpsc::channel::<Ahead>(1);
        let limits = (options.batch_size.max(1), options.batch_bytes.max(1));
        let mut reader = tokio::spawn(read_ahead(
            bus.clone(),
            p,
            at.last_seq,
            target,
            limits,
            ahead,
        ));
        let _stop_reader = AbortOnDrop(reader.abort_handle());
        while at.last_seq < target {
            let Some(Ahead { events, prepared }) = batches.recv().await else {
                // The reader read everything up to the target: what it did not deliver up to
                // there was erased.
                (&mut reader)
                    .await
                    .context("the stream reader stopped")?
                    .context("reading the stream")?;
                let end = Checkpoint {
                    epoch: at.epoch,
                    last_seq: target,
                };
                save_checkpoint(store, p.name(), p.stream(), at.last_seq, end).await?;
                at = end;
                progress(Progress {
                    projection: p,
                    done: at.last_seq - first,
                    total,
                });
                break;
            };
            let Some(last) = events.last() else { break };
            let next = Checkpoint {
                epoch: at.epoch,
                last_seq: last.seq.0,
            };
            let items: Vec<Stored> = events.iter().map(parts).collect();
            // A rebuild announces nothing: clients already heard of these changes.
            let span = Span::of(p, at.last_seq, next);
            let rules = options.membership;
            match apply_prepared(store, bus, p, span, &items, prepared, rules).await {
                Ok(_) => summary.applied += items.len() as u64,
                Err(ApplyError::Rejected { .. }) => {
                    let (applied, rejected) =
                        apply_halves(store, bus, p, at, &items, rules).await?;
                    summary.applied += applied;
                    summary.rejected += rejected;
                }
                Err(err) => return Err(err).context("applying a batch"),
            }
            at = next;
            progress(Progress {
                projection: p,
                done: at.last_seq - first,
                total,
            });
        }
    }
    let ingest = bus.stream_state(stream::INGEST).await?;
    let at = Checkpoint {
        epoch: ingest.epoch.0,
        last_seq: ingest.last_seq.0,
    };
    let mut tx = store.begin().await?;
    tx.set_checkpoint(crate::INGEST_NAME, stream::INGEST, at, now_ms())
        .await?;
    tx.commit().await?;
    Ok(summary)
}

/// Applies a batch that was rejected as a whole in halves, each in its own transaction from
/// checkpoint `at`, until the events at fault stand alone and are set aside: a few transactions
/// per rejected event, not one per event. Returns how many events were applied and rejected.
async fn apply_halves(
    store: &Store,
    bus: &Bus,
    p: Projection,
    at: Checkpoint,
    items: &[Stored<'_>],
    rules: MembershipRules,
) -> anyhow::Result<(u64, u64)> {
    let (mut applied, mut rejected) = (0, 0);
    let mut from = at.last_seq;
    let mut parts = vec![items];
    while let Some(part) = parts.pop() {
        let (Some(first), Some(last)) = (part.first(), part.last()) else {
            continue;
        };
        let to = Checkpoint {
            epoch: at.epoch,
            last_seq: last.seq,
        };
        match apply_events(store, bus, p, Span::of(p, from, to), part, rules).await {
            Ok(_) => applied += part.len() as u64,
            Err(ApplyError::Rejected { .. }) if part.len() == 1 => {
                rejected += 1;
                save_checkpoint(store, p.name(), p.stream(), from, to).await?;
            }
            Err(ApplyError::Rejected { .. }) => {
                let (head, tail) = part.split_at(part.len() / 2);
                parts.extend([tail, head]);
                continue;
            }
            Err(err) => return Err(err).context(format!("applying event {}", first.seq)),
        }
        from = last.seq;
    }
    Ok((applied, rejected))
}

/// Reads the stream of projection `p` after `from` up to `target` into `ahead`, in batches of
/// at most `limits` (events, payload bytes), those of the messages stream prepared. Ends once
/// it has read everything the stream holds up to the target — what it did not deliver there
/// was erased — or when its batches are no longer taken.
async fn read_ahead(
    bus: Bus,
    p: Projection,
    from: u64,
    target: u64,
    limits: (usize, usize),
    ahead: tokio::sync::mpsc::Sender<Ahead>,
) -> anyhow::Result<()> {
    let mut reader = bus.read_stream(p.stream(), Seq(from + 1)).await?;
    let mut last_read = from;
    loop {
        let (events, end) = read_batch(
            &bus,
            p.stream(),
            &mut reader,
            &mut last_read,
            target,
            limits,
        )
        .await?;
        if !events.is_empty() {
            let batch = if p == Projection::Messages {
                tokio::task::spawn_blocking(move || {
                    let items: Vec<Stored> = events.iter().map(parts).collect();
                    let prepared = Some(Prepared::messages(&items));
                    Ahead { events, prepared }
                })
                .await
                .context("preparing a batch")?
            } else {
                Ahead {
                    events,
                    prepared: None,
                }
            };
            if ahead.send(batch).await.is_err() {
                return Ok(());
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// Reads the next batch of at most `limits` (events, payload bytes) up to `target`, and whether
/// the stream holds nothing more up to there. When the reader delivers nothing for a while,
/// the stream is asked whether anything is left: the entries up to the target may all have
/// been erased.
async fn read_batch(
    bus: &Bus,
    stream: &str,
    reader: &mut anchorage_bus::StreamReader,
    last_read: &mut u64,
    target: u64,
    (max_events, max_bytes): (usize, usize),
) -> anyhow::Result<(Vec<StoredEvent>, bool)> {
    let mut events = Vec::with_capacity(max_events.min(BATCH));
    let mut bytes = 0;
    let mut quiet_since: Option<std::time::Instant> = None;
    while events.len() < max_events && bytes < max_bytes {
        let Ok(event) = tokio::time::timeout(QUIET, reader.next()).await else {
            let left = match bus.first_stored_from(stream, Seq(*last_read + 1)).await? {
                Some(next) if next.0 <= target => format!("{next} is stored"),
                Some(_) => return Ok((events, true)),
                // Nothing stored from there: erased up to the end, if the leader has reached
                // the target at all (one elected a moment ago may not have applied everything
                // yet) and, asked again after saying so, still stores nothing from there.
                None => {
                    let last = bus.stream_state(stream).await?.last_seq.0;
                    if last < target {
                        format!("the stream's leader is at {last}, short of {target}")
                    } else {
                        match bus.first_stored_from(stream, Seq(*last_read + 1)).await? {
                            Some(next) if next.0 <= target => format!("{next} is stored"),
                            _ => return Ok((events, true)),
                        }
                    }
                }
            };
            let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > STALLED {
                bail!(
                    "the stream reader of {stream} delivered nothing for {STALLED:?} while \
                     {left}"
                );
            }
            continue;
        };
        let event = event?;
        quiet_since = None;
        let seq = event.seq.0;
        *last_read = seq;
        if seq <= target {
            bytes += event.payload.len();
            events.push(event);
        }
        if seq >= target {
            return Ok((events, true));
        }
    }
    Ok((events, false))
}

/// A batch read ahead: its events, and for the messages stream their prepared entries.
struct Ahead {
    events: Vec<StoredEvent>,
    prepared: Option<Prepared>,
}

/// Aborts a task when dropped (a replay that fails stops its reader).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
