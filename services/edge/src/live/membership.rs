//! Following the MEMBERSHIP stream in order, without gaps, and the position reached.

use std::sync::Arc;
use std::time::Duration;

use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Envelope, Seq};

use super::Hub;

/// How often the edge compares its membership position with the stream, to find events its
/// live subscription lost (a NATS reconnect loses what was published meanwhile).
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(2);
/// How long a message waits for this edge's membership view to reach the position it was
/// decided on before it is delivered anyway (members never lose a message to a stuck view).
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

impl Hub {
    /// Follows every membership event in stream order, without gaps: the live copies, and
    /// from the stream itself whatever they skipped (seen as a jump in the sequence, or by
    /// comparing with the stream's last sequence every [`MEMBERSHIP_CHECK`]).
    pub(super) async fn follow_membership(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut sub = self
            .bus
            .subscribe_live(subjects::LIVE_MEMBERSHIP_ALL)
            .await?;
        self.bus.flush().await?;
        // Nothing is connected yet: the view starts where the membership projection is (as
        // far back as the view keeps events), and every event after it is fetched or arrives
        // live — so a user who connects, read from the projection, is brought up to the view
        // from the events it kept.
        let end = self.bus.stream_state(stream::MEMBERSHIP).await?.last_seq.0;
        let checkpoint = match self.store.checkpoint("membership").await {
            Ok(checkpoint) => checkpoint.map_or(0, |c| c.last_seq),
            Err(err) => {
                tracing::warn!(error = %err, "reading the membership checkpoint: starting at the stream's end");
                end
            }
        };
        let start = checkpoint.clamp(
            end.saturating_sub(super::view::RECENT_MEMBERSHIP as u64),
            end,
        );
        self.lock().view.restart_at(start);
        self.position.send_replace(start);
        self.spawn(|hub, stop| async move {
            let mut check = tokio::time::interval(MEMBERSHIP_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = sub.next() => {
                        let Some(ev) = ev else { break };
                        let Some(hub) = hub.upgrade() else { break };
                        hub.catch_up(ev.seq.0.saturating_sub(1)).await;
                        if ev.seq.0 == hub.lock().view.position() + 1 {
                            hub.advance(ev.seq.0, Envelope::from_json(&ev.payload).ok());
                        }
                    }
                    _ = check.tick() => {
                        let Some(hub) = hub.upgrade() else { break };
                        match hub.bus.stream_state(stream::MEMBERSHIP).await {
                            Ok(state) => {
                                hub.rewind_if_recreated(state.last_seq.0);
                                hub.catch_up(state.last_seq.0).await;
                            }
                            Err(err) => tracing::debug!(error = %err, "membership position"),
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Applies the stored membership events after this edge's position, up to `to`.
    async fn catch_up(self: &Arc<Self>, to: u64) {
        loop {
            let next = self.lock().view.position() + 1;
            if next > to {
                return;
            }
            match self
                .bus
                .stored_event_if_any(stream::MEMBERSHIP, Seq(next))
                .await
            {
                Ok(Some(stored)) => {
                    // At the start, the events after the projection's checkpoint; later, one
                    // whose live copy was lost.
                    tracing::debug!(seq = next, "membership event fetched from the stream");
                    self.advance(next, stored.ok());
                }
                Ok(None) => {
                    if !self.skip_purged(next, to).await {
                        return;
                    }
                }
                Err(err) => {
                    // Tried again on the next event or check.
                    tracing::warn!(seq = next, error = %err, "fetching a lost membership event");
                    return;
                }
            }
        }
    }

    /// Moves past `next` when the stream shows it holds nothing there ([`Bus::hole_end`]: the
    /// MEMBERSHIP stream denies deleting single events, so its holes are purges — of its
    /// start, or of one group's subject). Otherwise `false` leaves the position where it is,
    /// to ask again on the next event or check: a view that moved past a membership it never
    /// applied would refuse that member's sends.
    ///
    /// [`Bus::hole_end`]: anchorage_bus::Bus::hole_end
    async fn skip_purged(self: &Arc<Self>, next: u64, to: u64) -> bool {
        match self.bus.hole_end(stream::MEMBERSHIP, Seq(next)).await {
            Ok(Some(end)) => {
                self.advance((end.0 - 1).min(to), None);
                true
            }
            Ok(None) => {
                tracing::warn!(
                    seq = next,
                    "membership event not found on the stream's leader yet: asking again"
                );
                false
            }
            Err(err) => {
                tracing::warn!(seq = next, error = %err, "looking past a missing membership event");
                false
            }
        }
    }

    /// A MEMBERSHIP stream that ends before this edge's position was deleted and recreated:
    /// follow the new one from its end (its earlier events reach this edge's users when they
    /// reconnect, from the projection rebuilt for the new stream).
    fn rewind_if_recreated(&self, last: u64) {
        let mut state = self.lock();
        let position = state.view.position();
        if last < position {
            tracing::warn!(
                position,
                last,
                "the membership stream was recreated: following it from its end"
            );
            state.view.restart_at(last);
            drop(state);
            self.position.send_replace(last);
        }
    }

    /// Moves the membership position to `seq`, applying its event if there is one (an event
    /// this edge cannot decode changes nothing here).
    fn advance(self: &Arc<Self>, seq: u64, env: Option<Envelope>) {
        match env {
            Some(env) => self.on_membership(seq, env),
            None => self.lock().view.set_position(seq),
        }
        self.position.send_replace(seq);
    }

    /// Waits until this edge's membership view reaches `position` (at most
    /// [`MEMBERSHIP_WAIT`]).
    pub(crate) async fn reach(&self, position: u64) {
        let mut rx = self.position.subscribe();
        let reached = tokio::time::timeout(MEMBERSHIP_WAIT, rx.wait_for(|p| *p >= position)).await;
        if reached.is_err() {
            tracing::warn!(
                position,
                "membership view behind a message's position; delivering"
            );
        }
    }
}
