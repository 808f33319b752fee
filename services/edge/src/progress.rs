//! How far the projections have got, as the projector announces it.
//!
//! Some answers must wait for the projection: a `welcome` summarizes everything stored before
//! the connection's live subscriptions, a `sync` must not answer from a projection behind the
//! stream, a group command is decided on the group's current version. Instead of asking the
//! database again and again, the edge follows the projector's announcements of its committed
//! checkpoints (`notify.progress.<projection>`) in a watch channel, and a request waits on
//! that channel with a bound. Announcements are at most once: a waiter reads the checkpoint
//! from the database before it starts waiting and once more when its bound passes, so a lost
//! announcement costs time, never a wrong answer.

use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_schema::subjects;
use anchorage_store::{Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The projections requests wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Projection {
    /// Messages and conversation summaries (MESSAGES stream).
    Messages,
    /// Groups and members (MEMBERSHIP stream).
    Membership,
    /// Users and revoked sessions (USERS stream).
    Users,
}

impl Projection {
    fn name(self) -> &'static str {
        match self {
            Projection::Messages => "messages",
            Projection::Membership => "membership",
            Projection::Users => "users",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "messages" => Some(Projection::Messages),
            "membership" => Some(Projection::Membership),
            "users" => Some(Projection::Users),
            _ => None,
        }
    }
}

/// The last stream sequence each projection is known to have applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Applied {
    messages: u64,
    membership: u64,
    users: u64,
}

impl Applied {
    fn get(&self, p: Projection) -> u64 {
        match p {
            Projection::Messages => self.messages,
            Projection::Membership => self.membership,
            Projection::Users => self.users,
        }
    }

    /// Moves `p` forward to `seq` (never back); returns whether it moved.
    fn advance(&mut self, p: Projection, seq: u64) -> bool {
        let slot = match p {
            Projection::Messages => &mut self.messages,
            Projection::Membership => &mut self.membership,
            Projection::Users => &mut self.users,
        };
        let moved = seq > *slot;
        *slot = (*slot).max(seq);
        moved
    }
}

/// The projections' progress, followed live.
#[derive(Debug)]
pub(crate) struct Progress {
    applied: watch::Sender<Applied>,
    store: Store,
    /// Stops the follower.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Progress {
    /// Starts following the announcements (until [`Progress::shutdown`]).
    pub async fn start(bus: &Bus, store: Store) -> anyhow::Result<std::sync::Arc<Progress>> {
        let progress = Progress::new(store);
        let mut notices = bus.subscribe_notices(subjects::NOTIFY_PROGRESS_ALL).await?;
        let follower = std::sync::Arc::downgrade(&progress);
        let shutdown = progress.stop.clone();
        progress.tasks.spawn(async move {
            while let Some(Some((subject, payload))) =
                shutdown.run_until_cancelled(notices.next()).await
            {
                // Only the projector publishes here; still, only a known projection and a
                // number are taken.
                let projection = Projection::from_name(subjects::last_token(&subject));
                let seq = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(follower) = follower.upgrade() else {
                    break;
                };
                match (projection, seq) {
                    (Some(p), Some(seq)) => follower.advance(p, seq),
                    // A projection no request waits for (read markers, ingest).
                    (None, Some(_)) => {}
                    _ => tracing::warn!(%subject, "ignoring an invalid progress announcement"),
                }
            }
        });
        Ok(progress)
    }

    /// Stops following.
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Progress that knows only what the database says until announcements are followed.
    fn new(store: Store) -> std::sync::Arc<Progress> {
        std::sync::Arc::new(Progress {
            applied: watch::Sender::new(Applied::default()),
            store,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    fn advance(&self, p: Projection, seq: u64) {
        self.applied.send_if_modified(|a| a.advance(p, seq));
    }

    /// Reads `p`'s checkpoint from the database; returns the last sequence applied.
    async fn refresh(&self, p: Projection) -> Result<u64, StoreError> {
        let stored = self
            .store
            .checkpoint(p.name())
            .await?
            .map_or(0, |c| c.last_seq);
        self.advance(p, stored);
        Ok(self.applied.borrow().get(p))
    }

    /// Waits until projection `p` has applied its stream up to `seq`, at most `within`;
    /// returns whether it got there.
    pub async fn reached(
        &self,
        p: Projection,
        seq: u64,
        within: Duration,
    ) -> Result<bool, StoreError> {
        let mut changes = self.applied.subscribe();
        let known = changes.borrow_and_update().get(p);
        if known >= seq || self.refresh(p).await? >= seq {
            return Ok(true);
        }
        if within.is_zero() {
            return Ok(false);
        }
        let reached = tokio::time::timeout(within, changes.wait_for(|a| a.get(p) >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            return Ok(true);
        }
        // The bound passed (or the follower stopped): the database has the last word.
        Ok(self.refresh(p).await? >= seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorage_store::{Checkpoint, StoreOptions};

    async fn store(dir: &std::path::Path) -> Store {
        let store = Store::connect(&StoreOptions {
            url: format!("sqlite://{}/progress.db", dir.display()),
            max_connections: 2,
            sqlite_synchronous: "FULL",
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn checkpoint(store: &Store, last_seq: u64) {
        let mut tx = store.begin().await.unwrap();
        let cp = Checkpoint { epoch: 1, last_seq };
        tx.set_checkpoint("messages", "MESSAGES", cp, 0)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    // An announcement that never came costs time, never a wrong answer: the database has the
    // last word before and after the wait; one that came ends the wait at once.
    #[tokio::test]
    async fn a_lost_announcement_costs_time_never_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let progress = Progress::new(store.clone());
        let wait = Duration::from_millis(300);
        assert!(
            !progress
                .reached(Projection::Messages, 5, wait)
                .await
                .unwrap()
        );
        // Committed, not announced: found by the first read.
        checkpoint(&store, 5).await;
        assert!(
            progress
                .reached(Projection::Messages, 5, wait)
                .await
                .unwrap()
        );
        // Committed during the wait, not announced: found by the read when the wait ends.
        let late = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                checkpoint(&store, 9).await;
            })
        };
        let started = std::time::Instant::now();
        assert!(
            progress
                .reached(Projection::Messages, 9, wait)
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= wait, "waited the bound");
        late.await.unwrap();
        // Announced during the wait: answered without waiting the bound.
        let announcer = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            announcer.advance(Projection::Messages, 12);
        });
        let started = std::time::Instant::now();
        let long = Duration::from_secs(10);
        assert!(
            progress
                .reached(Projection::Messages, 12, long)
                .await
                .unwrap()
        );
        assert!(started.elapsed() < long / 2, "woken by the announcement");
        // Nothing got there: no.
        assert!(
            !progress
                .reached(Projection::Messages, 13, Duration::ZERO)
                .await
                .unwrap()
        );
    }

    #[test]
    fn progress_only_moves_forward() {
        let mut a = Applied::default();
        assert!(a.advance(Projection::Messages, 5));
        assert!(!a.advance(Projection::Messages, 3));
        assert_eq!(a.get(Projection::Messages), 5);
        assert_eq!(a.get(Projection::Membership), 0);
        assert_eq!(
            Projection::from_name("membership"),
            Some(Projection::Membership)
        );
        assert_eq!(Projection::from_name("reads"), None);
    }
}
