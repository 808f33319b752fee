//! Deleting the objects of revoked messages.
//!
//! The messages projection queues every object a revoke released (and no other message names)
//! in the same transaction as the tombstone. This worker, run beside the projector, takes due
//! objects off that queue: it checks once more that no message names the object (one sent
//! again may have been projected since), deletes it, and on failure tries again with
//! full-jitter backoff — nothing is dropped while the store is down. Deleting is idempotent,
//! so two workers on one database only repeat each other's calls.

use std::sync::Arc;
use std::time::Duration;

use anchorage_schema::backoff::Backoff;
use anchorage_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Blobs;

/// Between two looks at the queue while it is empty.
const IDLE: Duration = Duration::from_millis(500);
/// Retries of one object: from a second up to ten minutes apart.
const RETRIES: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(600));
/// Objects taken per round.
const ROUND: u32 = 100;

/// Deletes released objects until `shutdown`.
pub async fn reap(
    store: Store,
    blobs: Arc<Blobs>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        let worked = match round(&store, &blobs).await {
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
async fn round(store: &Store, blobs: &Blobs) -> anyhow::Result<usize> {
    let due = store
        .due_deletions(anchorage_schema::now_ms(), ROUND)
        .await?;
    for d in &due {
        if store.object_named(&d.object).await? {
            // Sent again in a message that is not revoked: it stays.
            store.deletion_done(&d.object).await?;
            continue;
        }
        match blobs.delete(&d.object).await {
            Ok(()) => {
                store.deletion_done(&d.object).await?;
                metrics::counter!("anchorage_attachments_deleted_total").increment(1);
            }
            Err(err) => {
                let wait = RETRIES.delay(d.attempts, None);
                let due_at = anchorage_schema::now_ms()
                    + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                tracing::warn!(object = %d.object, attempts = d.attempts + 1, error = %err,
                    "deleting a revoked attachment; will retry");
                metrics::counter!("anchorage_attachments_delete_failures_total").increment(1);
                store
                    .deletion_failed(&d.object, due_at, &err.to_string())
                    .await?;
            }
        }
    }
    Ok(due.len())
}
