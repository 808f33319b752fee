//! Deleting the objects of revoked messages.
//!
//! The messages projection queues every object a revoke released (and no other message names)
//! in the same transaction as the tombstone; from then on a send naming it is refused. A send
//! that checked the object just before, though, may still be on its way to the stream. So an
//! object is deleted only
//!
//! - once it has been released for `attachments.delete_grace_secs`, and at least as long as
//!   a send takes from its check to the stream (the before-send hook's budget and a publish),
//!   and
//! - once the messages projection holds everything the stream held when the round began, so
//!   any such send is projected — and then the object is named again and kept.
//!
//! An upload URL issued before the revoke could re-create the object until it expires: a
//! second deletion comes after `upload_ttl_secs` more. The row then stays as a tombstone. A
//! store that fails is retried with full-jitter backoff; deleting is idempotent, so two
//! workers on one database only repeat each other's calls.

use std::sync::Arc;
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_schema::backoff::Backoff;
use anchorage_schema::subjects::stream;
use anchorage_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Blobs;

/// Between two looks at the queue while it is empty.
const IDLE: Duration = Duration::from_millis(500);
/// Retries of one object: from a second up to ten minutes apart.
const RETRIES: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(600));
/// Objects taken per round.
const ROUND: u32 = 100;
/// The messages projection's checkpoint.
const MESSAGES: &str = "messages";

/// Deletes released objects until `shutdown`. `send_takes` is the longest a send may take
/// from checking its files to the stream (the before-send hook's budget and a publish): the
/// grace is at least that.
pub async fn reap(
    store: Store,
    blobs: Arc<Blobs>,
    bus: Bus,
    send_takes: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = blobs.delete_grace().max(send_takes);
    // When a round began and how far the stream went then: deletions wait until the
    // projection got there (under load it trails the stream's end, but reaches a past one).
    let mut gate: Option<(i64, u64)> = None;
    while !shutdown.is_cancelled() {
        let worked = match round(&store, &blobs, &bus, grace, &mut gate).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(error = %err, "attachment deletions");
                0
            }
        };
        if let Ok((backlog, _)) = store.deletion_backlog().await {
            metrics::gauge!("anchorage_attachments_deletion_backlog").set(backlog as f64);
        }
        if worked < ROUND as usize {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(IDLE) => {}
            }
        }
    }
    Ok(())
}

/// One round: the due objects, each deleted or rescheduled. Returns how many were due.
async fn round(
    store: &Store,
    blobs: &Blobs,
    bus: &Bus,
    grace: Duration,
    gate: &mut Option<(i64, u64)>,
) -> anyhow::Result<usize> {
    let grace = ms(grace);
    // Nothing due (the usual case): no look at the stream.
    let now = anchorage_schema::now_ms();
    if gate.is_none() && store.due_deletions(now - grace, now, 1).await?.is_empty() {
        return Ok(0);
    }
    let (began, end) = match *gate {
        Some(g) => g,
        None => {
            let began = anchorage_schema::now_ms();
            let end = bus.stream_state(stream::MESSAGES).await?.last_seq.0;
            *gate = Some((began, end));
            (began, end)
        }
    };
    let projected = store.checkpoint(MESSAGES).await?.map_or(0, |c| c.last_seq);
    if projected < end {
        // A send that checked a released object may be among what is not projected yet.
        return Ok(0);
    }
    *gate = None;
    let due = store
        .due_deletions(began - grace, anchorage_schema::now_ms(), ROUND)
        .await?;
    for d in &due {
        if store.object_named(&d.object).await? {
            // A message names it again (sent before the revoke reached the store): it stays.
            store.keep_object(&d.object).await?;
            continue;
        }
        match blobs.delete(&d.object).await {
            Ok(()) => {
                let next = (d.passes == 0)
                    .then(|| d.queued_at + grace + ms(blobs.upload_ttl()) + ms(IDLE));
                store.deletion_passed(&d.object, next).await?;
                if d.passes == 0 {
                    metrics::counter!("anchorage_attachments_deleted_total").increment(1);
                }
            }
            Err(err) => {
                let wait = RETRIES.delay(d.attempts, None);
                tracing::warn!(object = %d.object, attempts = d.attempts + 1, error = %err,
                    "deleting a revoked attachment; will retry");
                metrics::counter!("anchorage_attachments_delete_failures_total").increment(1);
                store
                    .deletion_failed(
                        &d.object,
                        anchorage_schema::now_ms() + ms(wait),
                        &err.to_string(),
                    )
                    .await?;
            }
        }
    }
    Ok(due.len())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
