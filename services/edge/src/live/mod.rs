//! The live side of an edge: who is connected here, which conversations they are in, and the
//! NATS subscriptions that feed them.
//!
//! Interest drives subscriptions: the edge subscribes to `live.msg.<conv>` while at least one
//! member of `conv` is connected to it, so a message to a 100,000-member group costs one NATS
//! delivery per edge, not one per member. Each live message is serialized once and handed to
//! every local connection of every local member.
//!
//! Membership is followed live ([`membership`](self::membership)): every edge subscribes to
//! `live.grp.>` and updates the conversations of its connected users as members join and
//! leave, opening or closing interest. Events are applied in stream order without gaps — one
//! the live subscription lost is fetched from the stream — and the last one applied is the
//! edge's membership position. A message carries the position its sender's edge decided on and
//! is delivered once this edge has reached it, so a removal decided before a message always
//! takes effect first. A connecting user's conversations come from the projection; membership
//! events the projection had not applied yet are replayed from a short buffer of recent ones,
//! so no change falls between the two.
//!
//! Member-list notifications (`members_changed`, published by the projector once a change is
//! committed) go to the connections that synced that group's list and still watch it — never
//! to the whole group: a 100,000-member group's churn reaches only those who look at it.
//!
//! Queues are bounded: a connection whose queue is full is closed with
//! [`close::SLOW_CONSUMER`](anchorage_protocol::close::SLOW_CONSUMER) and resyncs from its
//! anchors when it reconnects — it is never silently skipped.
//!
//! The hub's state is split by job — [`Registry`](registry::Registry) of connections,
//! [`MembershipView`](view::MembershipView), [`Interest`](interest::Interest),
//! [`Watchers`](watchers::Watchers) — under one lock, so a delivery sees them agree; no task is
//! started and nothing is awaited while it is held. Every task the hub starts is tracked and
//! stopped through one cancellation token.

mod conn;
mod interest;
mod membership;
mod presence;
mod registry;
mod view;
mod views;
mod watchers;

pub(crate) use conn::frame;
pub use conn::{ConnHandle, ConnId, Frame};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_protocol::{
    DevicePush, HiddenMessages, LiveMessage, MembershipChanged, Message, OwnReaction, PresenceInfo,
    Push, ReactionDelta, ReactionsChanged, ReadMoved, Receipt, ServerFrame, StateChange,
    StateChanged, TypingNow,
};
use anchorage_schema::event::{ReactionChanged, ReadMarked};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{ConversationId, DeviceId, Envelope, Event, UserId};
use anchorage_store::Store;

use crate::progress::{Progress, Projection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use interest::{Interest, Subscribe};
use registry::Registry;
use view::{Change, Coverage, MembershipView};
use views::Views;
use watchers::Watchers;

/// How long `hello` waits for the subscriptions of the user's conversations.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How long `hello` waits for a membership projection further behind the stream than the
/// edge keeps events, or for the edge's view to reach the projection.
const COVER_WAIT: Duration = Duration::from_secs(5);

/// A user's memberships as the projection holds them: its checkpoint, their conversations and
/// their mutes.
type Memberships = (u64, HashSet<ConversationId>, HashMap<ConversationId, i64>);

#[derive(Debug, Default)]
struct State {
    registry: Registry,
    view: MembershipView,
    interest: Interest,
    watchers: Watchers,
    views: Views,
    presence: presence::Presence,
    /// When each user last said they type in each conversation (for the typing rate).
    typed: HashMap<(UserId, ConversationId), std::time::Instant>,
}

/// A typing user is shown this long unless they say so again.
const TYPING_LASTS: Duration = Duration::from_secs(6);
/// One user's "typing" in one conversation goes to other edges at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(2);
/// Typing indicators of a conversation are pushed at most this often (and expire on it).
const TYPING_TICK: Duration = Duration::from_millis(250);
/// Typing users named in a `typing` push; the rest are counted.
const TYPING_NAMED: usize = 3;

/// What edges tell each other on `typing.<conv>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct TypingSignal {
    pub(crate) user: UserId,
    pub(crate) typing: bool,
}

/// The live registry of one edge.
#[derive(Debug)]
pub struct Hub {
    bus: Bus,
    store: Store,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// [`MembershipView::position`], for messages and answers waiting for it.
    position: tokio::sync::watch::Sender<u64>,
    /// Every task the hub started.
    tasks: TaskTracker,
    /// Stops them.
    stop: CancellationToken,
    /// How long reactions to a conversation are gathered into one frame.
    reaction_flush: Duration,
    /// Conversations up to this size push each member's reads to the others.
    receipts_max_members: u32,
    /// Recently looked up: whether a conversation is small enough for receipts, and whether
    /// a user shows theirs (with when it was looked up).
    receipts: Mutex<ReceiptCache>,
    /// This edge's name in presence records (random, per process).
    edge_id: String,
    /// How long a presence record counts.
    presence_ttl: Duration,
}

/// A presence record's payload.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PresenceRecord {
    devices: u32,
    at: i64,
}

/// What [`Hub::receipt`] looked up lately.
#[derive(Debug, Default)]
struct ReceiptCache {
    small: HashMap<ConversationId, (bool, std::time::Instant)>,
    shown: HashMap<UserId, (bool, std::time::Instant)>,
}

/// How long a looked-up conversation size or privacy setting is trusted (a privacy change
/// seen live drops it at once).
const RECEIPT_CACHE: Duration = Duration::from_secs(30);

/// The `members_changed` frame a notification carries, if it is one about `conv`.
fn members_changed_of(payload: &[u8], conv: &ConversationId) -> Option<ServerFrame> {
    match serde_json::from_slice::<ServerFrame>(payload).ok()? {
        ServerFrame::Push(Push::MembersChanged(c)) if c.group.as_str() == conv.as_str() => {
            Some(Push::MembersChanged(c).into())
        }
        _ => None,
    }
}

impl Hub {
    /// Creates the hub and starts following membership changes, revocations, read markers
    /// and member-list notifications.
    pub async fn start(
        bus: Bus,
        store: Store,
        reaction_flush: Duration,
        receipts_max_members: u32,
        presence_ttl: Duration,
    ) -> anyhow::Result<Arc<Hub>> {
        let hub = Arc::new(Hub {
            bus: bus.clone(),
            store,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            position: tokio::sync::watch::Sender::new(0),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            reaction_flush,
            receipts_max_members,
            receipts: Mutex::new(ReceiptCache::default()),
            edge_id: format!(
                "{:012x}",
                anchorage_schema::backoff::random() & 0xffff_ffff_ffff
            ),
            presence_ttl,
        });
        hub.follow_presence().await?;
        hub.follow_membership().await?;
        // Revoked sessions are closed at once on every edge; changes of a user's own state go
        // to their devices.
        hub.follow_live(
            subjects::LIVE_USERS_ALL,
            |hub, (seq, prev), env| match env.event {
                Event::SessionRevoked(r) => {
                    tracing::info!(user = %r.user, device = %r.device, "session revoked");
                    hub.revoke_device(&r.user, Some(&r.device));
                }
                Event::UserDeleted(d) => {
                    tracing::info!(user = %d.user, "user deleted: every session ends");
                    hub.revoke_device(&d.user, None);
                }
                event => {
                    if let Event::PrivacyChanged(p) = &event {
                        hub.receipt_cache().shown.remove(&p.user);
                        if let Some(shown) = p.presence {
                            hub.presence_shown(p.user.clone(), shown);
                        }
                    }
                    if let Some((user, change)) = state_change(event) {
                        let push = Push::State(StateChanged {
                            prev,
                            version: seq,
                            change,
                        });
                        hub.lock().registry.push_user(&user, &frame(&push.into()));
                    }
                }
            },
        )
        .await?;
        // Read markers of the users connected here, for their other devices: one subscription
        // for the edge rather than one per user (every edge sees every marker; a marker is a
        // few dozen bytes, a subscription and its task per connected user cost far more).
        hub.follow_live(subjects::LIVE_READS_ALL, |hub, _, env| {
            if let Event::ReadMarked(r) = env.event {
                let push = Push::Read(ReadMoved {
                    conv: r.conv.clone(),
                    seq: r.read_seq,
                });
                hub.lock().registry.push_user(&r.user, &frame(&push.into()));
                hub.receipt(r);
            }
        })
        .await?;
        // Member-list notifications, for the connections watching a group.
        let mut notices = bus.subscribe_notices(subjects::NOTIFY_MEMBERS_ALL).await?;
        bus.flush().await?;
        hub.spawn(|hub: Weak<Hub>, stop| async move {
            while let Some(Some((subject, payload))) =
                stop.run_until_cancelled(notices.next()).await
            {
                let Some(hub) = hub.upgrade() else { break };
                let Ok(conv) = ConversationId::parse(subjects::last_token(&subject)) else {
                    continue;
                };
                // Only a frame this edge built goes to a socket: the notification must be a
                // `members_changed` of the group it was published for, re-serialized here.
                match members_changed_of(&payload, &conv) {
                    Some(f) => hub.deliver_watchers(&conv, frame(&f)),
                    None => {
                        tracing::warn!(%subject, "ignoring an invalid member-list notification")
                    }
                }
            }
        });
        Ok(hub)
    }

    /// Starts a tracked task, given the hub (weakly: a task never keeps it alive) and the stop
    /// signal.
    fn spawn<F, Fut>(self: &Arc<Self>, task: F)
    where
        F: FnOnce(Weak<Hub>, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .spawn(task(Arc::downgrade(self), self.stop.clone()));
    }

    /// Follows a live subject edge-wide, handing each decodable event to `on` with its
    /// sequence.
    async fn follow_live(
        self: &Arc<Self>,
        subject: &str,
        on: impl Fn(&Arc<Hub>, (u64, u64), Envelope) + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut sub = self.bus.subscribe_live(subject).await?;
        self.bus.flush().await?;
        let subject = subject.to_owned();
        self.spawn(|hub, stop| async move {
            while let Some(Some(ev)) = stop.run_until_cancelled(sub.next()).await {
                let Some(hub) = hub.upgrade() else { break };
                match Envelope::from_json(&ev.payload) {
                    Ok(env) => on(&hub, (ev.seq.0, ev.prev.0), env),
                    Err(err) => tracing::debug!(%subject, error = %err, "undecodable live event"),
                }
            }
        });
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent (every update
        // is a single insert or remove), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of connections on this edge.
    pub fn connections(&self) -> usize {
        self.lock().registry.len()
    }

    /// Registers a connection and returns its user's conversations, once the live
    /// subscriptions of those conversations are in place: a message published after the
    /// client's view of the conversations is then either in that view or pushed.
    ///
    /// The user's memberships are read from the projection and brought up to this edge's
    /// view with the membership events it keeps. A projection further behind than those, or
    /// a view behind the projection, is waited for once (up to [`COVER_WAIT`]); then the read
    /// is taken as it is, and the wait counted (`anchorage_edge_uncovered_memberships_total`).
    pub(crate) async fn register(
        self: &Arc<Self>,
        conn: ConnHandle,
        progress: &Progress,
    ) -> anyhow::Result<HashSet<ConversationId>> {
        let user = conn.user.clone();
        let mut conn = Some(conn);
        let mut waited = false;
        // A read kept while the view catches up with it.
        let mut kept = None;
        let (convs, pending, subscribe) = loop {
            let read = match kept.take() {
                Some(read) => Some(read),
                None if self.lock().view.is_tracked(&user) => None,
                None => Some(self.memberships_of(&user).await?),
            };
            let coverage = {
                let mut state = self.lock();
                let coverage = match &read {
                    _ if state.view.is_tracked(&user) => Coverage::Covered,
                    // Their last connection closed since: read again.
                    None => continue,
                    Some((checkpoint, ..)) => state.view.covers(*checkpoint),
                };
                if coverage == Coverage::Covered || waited {
                    if coverage != Coverage::Covered {
                        crate::metrics::uncovered_memberships();
                        tracing::warn!(
                            %user,
                            ?coverage,
                            "the membership projection and this edge's view did not meet in \
                             time: the user's memberships are taken as the projection holds them"
                        );
                    }
                    if let Some(conn) = conn.take() {
                        state.registry.add(conn);
                    }
                    break self.admit(&mut state, &user, read);
                }
                coverage
            };
            // One wait, then the read is taken whatever it misses (a projection still behind)
            // or holds twice (live changes the view applies after it).
            waited = true;
            match coverage {
                Coverage::ProjectionBehind(floor) => {
                    progress
                        .reached(Projection::Membership, floor, COVER_WAIT)
                        .await?;
                }
                Coverage::ViewBehind => {
                    let checkpoint = read.as_ref().map_or(0, |(checkpoint, ..)| *checkpoint);
                    let mut position = self.position.subscribe();
                    tokio::select! {
                        _ = tokio::time::timeout(
                            COVER_WAIT,
                            position.wait_for(|p| *p >= checkpoint),
                        ) => {}
                        _ = self.stop.cancelled() => anyhow::bail!("shutting down"),
                    }
                    kept = read;
                }
                Coverage::Covered => {}
            }
        };
        self.subscribe(subscribe);
        for mut rx in pending {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, rx.wait_for(|ready| *ready)).await;
        }
        self.connected(&user).await;
        Ok(convs)
    }

    /// Tracks `user` from `read` (their memberships as the projection holds them, and its
    /// checkpoint) unless they are tracked already; returns their conversations, the
    /// subscriptions to wait for, and those to start.
    fn admit(
        &self,
        state: &mut State,
        user: &UserId,
        read: Option<Memberships>,
    ) -> (
        HashSet<ConversationId>,
        Vec<tokio::sync::watch::Receiver<bool>>,
        Vec<Subscribe>,
    ) {
        let mut subscribe = Vec::new();
        if let (false, Some((checkpoint, loaded, muted))) = (state.view.is_tracked(user), read) {
            let (convs, late_joins) = state.view.track(user, loaded, muted, checkpoint);
            for conv in convs {
                subscribe.extend(state.interest.add(user, conv, &self.stop));
            }
            // Joins the projection had not applied yet: the client hears of them as live
            // joins (once the subscription is in place), so it syncs them.
            for (seq, conv) in late_joins {
                let f = membership_frame(&conv, true, seq);
                if let Some((user, f)) = state.interest.hold(&conv, user.clone(), f) {
                    state.registry.push_user(&user, &f);
                }
            }
        }
        let convs: HashSet<ConversationId> = state.view.conversations_of(user).cloned().collect();
        let pending = state.interest.pending(&convs);
        (convs, pending, subscribe)
    }

    /// `user`'s conversations as the membership projection holds them, their mutes, and the
    /// projection's checkpoint they are as of.
    async fn memberships_of(&self, user: &UserId) -> anyhow::Result<Memberships> {
        let mut loaded = HashSet::new();
        let mut muted = HashMap::new();
        let (checkpoint, convs) = self.store.conversations_at(user.as_str()).await?;
        for (conv, until) in convs {
            let Ok(conv) = ConversationId::parse(conv) else {
                continue;
            };
            if let Some(until) = until {
                muted.insert(conv.clone(), until);
            }
            loaded.insert(conv);
        }
        Ok((checkpoint, loaded, muted))
    }

    /// A connection of `user` opened here: their presence record says so, and on their first
    /// connection here the peers whose presence they get are looked up.
    async fn connected(self: &Arc<Self>, user: &UserId) {
        let (devices, looked_up) = {
            let state = self.lock();
            (
                state.registry.conns_of(user).count(),
                state.presence.watches(user),
            )
        };
        self.publish_presence(user, devices);
        if looked_up {
            return;
        }
        match self.store.direct_peers(user.as_str()).await {
            Ok(peers) => {
                let peers = peers
                    .into_iter()
                    .filter_map(|p| UserId::parse(p).ok())
                    .collect();
                let mut state = self.lock();
                // Still connected: watch (a user gone meanwhile watches nobody).
                if state.registry.conns_of(user).next().is_some() {
                    state.presence.watch(user, peers);
                }
            }
            Err(err) => tracing::debug!(%user, error = %err, "looking up 1:1 peers"),
        }
    }

    /// Writes this edge's presence record of `user` (in the background: presence is never
    /// worth holding a connection up).
    fn publish_presence(self: &Arc<Self>, user: &UserId, devices: usize) {
        let subject = subjects::presence(user, &self.edge_id);
        let record = PresenceRecord {
            devices: u32::try_from(devices).unwrap_or(u32::MAX),
            at: anchorage_schema::now_ms(),
        };
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        let (user, gone) = (user.clone(), devices == 0);
        self.spawn(|hub, _| async move {
            let Some(hub) = hub.upgrade() else { return };
            if let Err(err) = hub.bus.publish_raw(&subject, None, payload).await {
                tracing::debug!(%subject, error = %err, "presence record not written");
            }
            if gone && let Err(err) = hub.store.set_last_seen(user.as_str(), record.at).await {
                tracing::debug!(%user, error = %err, "last seen not written");
            }
        });
    }

    /// Follows every edge's presence records (after reading those still stored), refreshes
    /// this edge's, and expires those not refreshed.
    async fn follow_presence(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut live = self.bus.subscribe_live(subjects::LIVE_PRESENCE_ALL).await?;
        self.bus.flush().await?;
        // What is stored already: the records of users connected before this edge started,
        // read subject by subject (an edge may read messages, never make consumers).
        for subject in self.bus.subjects(stream::PRESENCE, "presence.*.*").await? {
            if let Some((_, payload)) = self
                .bus
                .last_subject_payload(stream::PRESENCE, &subject)
                .await?
            {
                self.on_presence(&subject, &payload);
            }
        }
        self.spawn(|hub, stop| async move {
            while let Some(Some(ev)) = stop.run_until_cancelled(live.next()).await {
                let Some(hub) = hub.upgrade() else { break };
                let subject = ev.subject.strip_prefix(subjects::LIVE_PREFIX).unwrap_or("");
                hub.on_presence(subject, &ev.payload);
            }
        });
        let every = self.presence_ttl / 3;
        self.spawn(move |hub, stop| async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                let Some(hub) = hub.upgrade() else { break };
                let users: Vec<(UserId, usize)> = hub
                    .lock()
                    .registry
                    .users()
                    .map(|(u, n)| (u.clone(), n))
                    .collect();
                for (user, devices) in users {
                    hub.publish_presence(&user, devices);
                }
                let flips = {
                    let ttl = hub.presence_ttl_ms();
                    hub.lock().presence.sweep(anchorage_schema::now_ms(), ttl)
                };
                for (user, _, at) in &flips {
                    // A crashed edge's user: remember when they were last seen.
                    if let Err(err) = hub.store.set_last_seen(user.as_str(), *at).await {
                        tracing::debug!(%user, error = %err, "last seen not written");
                    }
                }
                hub.tell_presence(flips);
            }
        });
        Ok(())
    }

    fn presence_ttl_ms(&self) -> i64 {
        i64::try_from(self.presence_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Takes one presence record (`presence.<user>.<edge>`), checked before use.
    fn on_presence(self: &Arc<Self>, subject: &str, payload: &[u8]) {
        let mut parts = subject.split('.');
        let (Some("presence"), Some(user), Some(edge), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(user), Ok(record)) = (
            UserId::parse(user),
            serde_json::from_slice::<PresenceRecord>(payload),
        ) else {
            tracing::debug!(%subject, "ignoring an invalid presence record");
            return;
        };
        let flip = {
            let now = anchorage_schema::now_ms();
            let ttl = self.presence_ttl_ms();
            self.lock()
                .presence
                .apply(&user, edge, record.devices, record.at, now, ttl)
        };
        self.tell_presence(flip);
    }

    /// Tells the 1:1 peers connected here that users came online or went offline — those
    /// who show their presence.
    fn tell_presence(self: &Arc<Self>, flips: impl IntoIterator<Item = presence::Flip>) {
        for (user, online, at) in flips {
            let watched = self.lock().presence.watchers_of(&user).next().is_some();
            if !watched {
                continue;
            }
            self.spawn(move |hub, _| async move {
                let Some(hub) = hub.upgrade() else { return };
                match hub.store.privacy_of(user.as_str()).await {
                    Ok((_, true)) => {}
                    Ok((_, false)) => return,
                    Err(err) => {
                        tracing::debug!(%user, error = %err, "presence not told");
                        return;
                    }
                }
                let push = Push::PresenceChanged(PresenceInfo {
                    user: user.to_string(),
                    online,
                    last_seen: (!online).then_some(at),
                    hidden: false,
                });
                let f = frame(&push.into());
                let state = hub.lock();
                for watcher in state.presence.watchers_of(&user) {
                    state.registry.push_user(watcher, &f);
                }
            });
        }
    }

    /// `user` turned their presence on or off: their 1:1 peers connected here hear it (off
    /// reads as offline and hidden, so nobody keeps showing them online).
    fn presence_shown(self: &Arc<Self>, user: UserId, shown: bool) {
        if self.lock().presence.watchers_of(&user).next().is_none() {
            return;
        }
        self.spawn(move |hub, _| async move {
            let Some(hub) = hub.upgrade() else { return };
            let info = if shown {
                match hub.presence_of(&user).await {
                    Ok((online, last_seen)) => PresenceInfo {
                        user: user.to_string(),
                        online,
                        last_seen,
                        hidden: false,
                    },
                    Err(err) => {
                        tracing::debug!(%user, error = %err, "presence not told");
                        return;
                    }
                }
            } else {
                PresenceInfo {
                    user: user.to_string(),
                    online: false,
                    last_seen: None,
                    hidden: true,
                }
            };
            let f = frame(&Push::PresenceChanged(info).into());
            let state = hub.lock();
            for watcher in state.presence.watchers_of(&user) {
                state.registry.push_user(watcher, &f);
            }
        });
    }

    /// Whether `user` is online, and when last seen (from the records, then the database).
    pub async fn presence_of(&self, user: &UserId) -> anyhow::Result<(bool, Option<i64>)> {
        let (online, at) = {
            let state = self.lock();
            let now = anchorage_schema::now_ms();
            (
                state.presence.online(user, now, self.presence_ttl_ms()),
                state.presence.last_at(user),
            )
        };
        if online {
            return Ok((true, None));
        }
        let stored = self.store.last_seen(user.as_str()).await?;
        Ok((false, at.max(stored)))
    }

    /// Users online now, on any edge.
    pub fn online_users(&self) -> Vec<UserId> {
        let now = anchorage_schema::now_ms();
        self.lock()
            .presence
            .online_users(now, self.presence_ttl_ms())
    }

    /// Removes a connection; interest goes with the last connection of a user.
    pub fn unregister(self: &Arc<Self>, conn: ConnId) {
        let (user, devices) = {
            let mut state = self.lock();
            let state = &mut *state;
            state.watchers.unwatch_all(conn);
            state.views.unview_all(conn);
            let Some(user) = state.registry.get(conn).map(|c| c.user.clone()) else {
                return;
            };
            if state.registry.remove(conn).is_some() {
                // The user's last connection here.
                state.presence.unwatch(&user);
                for conv in state.view.untrack(&user) {
                    state.interest.remove(&user, &conv);
                }
            }
            let devices = state.registry.conns_of(&user).count();
            (user, devices)
        };
        self.publish_presence(&user, devices);
    }

    /// Until when `user` (connected here) is muted in `conv`, if at all.
    pub fn muted_until(&self, user: &UserId, conv: &ConversationId) -> Option<i64> {
        self.lock().view.muted_until(user, conv)
    }

    /// The conversations this edge knows `user` to be in (from the membership stream, so also
    /// those the projection has not applied yet).
    pub fn conversations_of(&self, user: &UserId) -> Vec<ConversationId> {
        self.lock().view.conversations_of(user).cloned().collect()
    }

    /// Whether `user` (connected here) is a member of `conv` right now.
    pub fn is_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.lock().view.is_member(user, conv)
    }

    /// Whether `user` (connected here) is a member of `conv`, and if so the membership
    /// position that answer stands on.
    pub fn member_position(&self, user: &UserId, conv: &ConversationId) -> Option<u64> {
        let state = self.lock();
        state
            .view
            .is_member(user, conv)
            .then(|| state.view.position())
    }

    /// The last MEMBERSHIP event this edge applied.
    pub fn membership_position(&self) -> u64 {
        self.lock().view.position()
    }

    /// Starts sending `conv`'s member-list notifications to `conn`.
    pub fn watch_members(&self, conn: ConnId, conv: &ConversationId) {
        self.lock().watchers.watch(conn, conv);
    }

    /// Stops sending `conv`'s member-list notifications to `conn`.
    pub fn unwatch_members(&self, conn: ConnId, conv: &ConversationId) {
        self.lock().watchers.unwatch(conn, conv);
    }

    /// `conn` shows `conv`: it gets the conversation's typing indicators, and the edge
    /// follows them while anyone here views it.
    pub fn view(self: &Arc<Self>, conn: ConnId, conv: &ConversationId) {
        let started = self.lock().views.view(conn, conv, &self.stop);
        if let Some(stop) = started {
            let conv = conv.clone();
            self.spawn(|hub, _| follow_typing(hub, conv, stop));
        }
    }

    /// `conn` no longer shows `conv`.
    pub fn unview(&self, conn: ConnId, conv: &ConversationId) {
        self.lock().views.unview(conn, conv);
    }

    /// Whether `user`'s typing in `conv` goes out now: a stop always does, a start at most
    /// every [`TYPING_EVERY`] (the indicator lasts longer than that).
    pub fn typing_allowed(&self, user: &UserId, conv: &ConversationId, typing: bool) -> bool {
        let mut state = self.lock();
        let key = (user.clone(), conv.clone());
        let now = std::time::Instant::now();
        if !typing {
            return state.typed.remove(&key).is_some();
        }
        if state
            .typed
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < TYPING_EVERY)
        {
            return false;
        }
        if state.typed.len() > 100_000 {
            state
                .typed
                .retain(|_, at| now.duration_since(*at) < TYPING_LASTS);
        }
        state.typed.insert(key, now);
        true
    }

    /// Hands who is typing in `conv` to the connections viewing it that are still members.
    fn deliver_typing<'a>(
        &self,
        conv: &ConversationId,
        typing: impl ExactSizeIterator<Item = &'a UserId>,
    ) {
        let count = u32::try_from(typing.len()).unwrap_or(u32::MAX);
        let users = typing.take(TYPING_NAMED).cloned().collect();
        let push = Push::Typing(TypingNow {
            conv: conv.clone(),
            users,
            count,
        });
        let f = frame(&push.into());
        let state = self.lock();
        for id in state.views.of(conv) {
            if let Some(conn) = state.registry.get(id)
                && state.view.is_member(&conn.user, conv)
            {
                conn.push(f.clone());
            }
        }
    }

    fn receipt_cache(&self) -> MutexGuard<'_, ReceiptCache> {
        self.receipts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the other members connected here how far `r.user` read — in a 1:1 or a small
    /// group, and only if the reader shows their receipts. Costs nothing when no other
    /// member is connected here; sizes and settings are looked up once in a while.
    fn receipt(self: &Arc<Self>, r: ReadMarked) {
        let others = self.lock().interest.users(&r.conv).any(|u| *u != r.user);
        if !others {
            return;
        }
        self.spawn(|hub, _| async move {
            let Some(hub) = hub.upgrade() else { return };
            match hub.shows_receipt(&r.conv, &r.user).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::debug!(conv = %r.conv, error = %err, "receipt not delivered");
                    return;
                }
            }
            let push = Push::Receipt(Receipt {
                conv: r.conv.clone(),
                user: r.user.to_string(),
                seq: r.read_seq,
            });
            let f = frame(&push.into());
            let state = hub.lock();
            for user in state.interest.users(&r.conv) {
                if *user != r.user {
                    state.registry.push_user(user, &f);
                }
            }
        });
    }

    /// Whether reads of `reader` in `conv` are shown to the others: a 1:1 or a group up to
    /// the size limit, and a reader who shows their receipts.
    async fn shows_receipt(&self, conv: &ConversationId, reader: &UserId) -> anyhow::Result<bool> {
        let now = std::time::Instant::now();
        let fresh = |at: &std::time::Instant| now.duration_since(*at) < RECEIPT_CACHE;
        let (small, shown) = {
            let cache = self.receipt_cache();
            (
                cache
                    .small
                    .get(conv)
                    .filter(|(_, at)| fresh(at))
                    .map(|c| c.0),
                cache
                    .shown
                    .get(reader)
                    .filter(|(_, at)| fresh(at))
                    .map(|c| c.0),
            )
        };
        let small = match small {
            Some(small) => small,
            None => {
                let small =
                    conv.is_direct()
                        || self.store.group_row(conv.as_str()).await?.is_some_and(|g| {
                            g.member_count <= u64::from(self.receipts_max_members)
                        });
                let mut cache = self.receipt_cache();
                if cache.small.len() > 100_000 {
                    cache.small.clear();
                }
                cache.small.insert(conv.clone(), (small, now));
                small
            }
        };
        if !small {
            return Ok(false);
        }
        Ok(match shown {
            Some(shown) => shown,
            None => {
                let shown = self.store.privacy_of(reader.as_str()).await?.0;
                let mut cache = self.receipt_cache();
                if cache.shown.len() > 100_000 {
                    cache.shown.clear();
                }
                cache.shown.insert(reader.clone(), (shown, now));
                shown
            }
        })
    }

    /// Hands a member-list notification to the watchers of `conv` who are still members.
    fn deliver_watchers(&self, conv: &ConversationId, frame: Frame) {
        let state = self.lock();
        for id in state.watchers.of(conv) {
            if let Some(conn) = state.registry.get(id)
                && state.view.is_member(&conn.user, conv)
            {
                conn.push(frame.clone());
            }
        }
    }

    /// Records a membership the caller just caused, before its live copy arrives.
    pub fn joined(self: &Arc<Self>, user: &UserId, conv: ConversationId) {
        let subscribe = {
            let mut state = self.lock();
            if state.view.joined(user, conv.clone()) {
                state.interest.add(user, conv, &self.stop)
            } else {
                None
            }
        };
        self.subscribe(subscribe);
    }

    /// Closes every connection (shutdown) with `code`.
    pub fn close_all(&self, code: u16) {
        self.lock().registry.close_all(code);
    }

    /// Closes the connections of a revoked session, and remembers the revocation for a
    /// while: a connection registered after this runs finds it with [`Hub::revoked`] even if
    /// the projection has not applied the revocation yet. With no `device`, every session of
    /// the user (a deleted user).
    pub fn revoke_device(&self, user: &UserId, device: Option<&DeviceId>) {
        self.lock().registry.revoke(user, device);
    }

    /// Whether this edge saw the session of `device` (or every session of the user)
    /// revoked recently (see [`Hub::revoke_device`]). Asked after registering, so no
    /// revocation falls between.
    pub fn revoked(&self, user: &UserId, device: &DeviceId) -> bool {
        self.lock().registry.revoked(user, device)
    }

    /// Applies one membership event: the view changes, then interest, watchers and frames
    /// follow from what changed; new subscriptions start once the lock is released.
    fn on_membership(self: &Arc<Self>, seq: u64, env: Envelope) {
        let mut subscribe = Vec::new();
        {
            let mut state = self.lock();
            let state = &mut *state;
            // A 1:1 made while its members are connected here: each watches the other.
            if let Event::GroupCreated(g) = &env.event
                && g.direct
                && let [peer] = g.members.as_slice()
            {
                state.presence.add_peer(&g.owner, peer);
                state.presence.add_peer(peer, &g.owner);
            }
            for change in state.view.apply(seq, env) {
                match change {
                    Change::Joined { user, conv } => {
                        subscribe.extend(state.interest.add(&user, conv.clone(), &self.stop));
                        let f = membership_frame(&conv, true, seq);
                        if let Some((user, f)) = state.interest.hold(&conv, user, f) {
                            state.registry.push_user(&user, &f);
                        }
                    }
                    Change::Left { user, conv } => {
                        state.interest.remove(&user, &conv);
                        for conn in state.registry.conns_of(&user) {
                            state.watchers.unwatch(conn, &conv);
                            state.views.unview(conn, &conv);
                        }
                        state
                            .registry
                            .push_user(&user, &membership_frame(&conv, false, seq));
                    }
                    Change::Dismissed { user, conv } => state.interest.remove(&user, &conv),
                }
            }
        }
        self.subscribe(subscribe);
    }

    /// Starts the subscriptions of new interest (outside the lock).
    fn subscribe(self: &Arc<Self>, subscriptions: impl IntoIterator<Item = Subscribe>) {
        for s in subscriptions {
            self.spawn(|hub, _| follow_conversation(hub, s));
        }
    }

    /// Hands a live message to every local connection of every local member of `conv`.
    fn deliver_conv(&self, conv: &ConversationId, frame: &Frame) {
        let state = self.lock();
        for user in state.interest.users(conv) {
            state.registry.push_user(user, frame);
        }
    }

    /// Hands gathered reactions to every local connection of every local member of `conv`:
    /// one frame for all of them, and for a user who reacted, one with their own reactions.
    fn deliver_reactions(&self, conv: &ConversationId, batch: ReactionBatch) {
        let ReactionBatch {
            prev,
            seq,
            deltas,
            mine,
        } = batch;
        let shared = ReactionsChanged {
            conv: conv.clone(),
            prev,
            seq,
            deltas: deltas
                .into_iter()
                .filter(|(_, delta)| *delta != 0)
                .map(|((target, emoji), delta)| ReactionDelta {
                    target,
                    emoji,
                    delta,
                })
                .collect(),
            mine: Vec::new(),
        };
        let own: HashMap<UserId, Frame> = mine
            .into_iter()
            .map(|(user, mine)| {
                let push = Push::Reactions(ReactionsChanged {
                    mine,
                    ..shared.clone()
                });
                (user, frame(&push.into()))
            })
            .collect();
        let everyone = frame(&Push::Reactions(shared).into());
        let state = self.lock();
        for user in state.interest.users(conv) {
            state
                .registry
                .push_user(user, own.get(user).unwrap_or(&everyone));
        }
    }

    /// Stops every subscription and task.
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        let mut state = self.lock();
        state.interest.clear();
        state.view.clear();
        state.views.clear();
        state.presence.clear();
    }
}

/// Follows who is typing in `conv` while a connection here views it: signals from every edge
/// (one per user and [`TYPING_EVERY`] at most), expiry after [`TYPING_LASTS`], and one push
/// of the whole state to the viewers per [`TYPING_TICK`] when it changed.
async fn follow_typing(hub: Weak<Hub>, conv: ConversationId, stop: CancellationToken) {
    let Some(bus) = hub.upgrade().map(|h| h.bus.clone()) else {
        return;
    };
    let subject = subjects::typing(&conv);
    let mut signals = match stop
        .run_until_cancelled(bus.subscribe_notices(&subject))
        .await
    {
        None => return,
        Some(Ok(signals)) => signals,
        Some(Err(err)) => {
            tracing::warn!(%conv, error = %err, "cannot follow typing");
            return;
        }
    };
    let mut typing: std::collections::BTreeMap<UserId, tokio::time::Instant> = Default::default();
    let mut changed = false;
    let mut tick = tokio::time::interval(TYPING_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            signal = signals.next() => {
                let Some((_, payload)) = signal else { break };
                // Only edges publish here, but nothing unchecked reaches a socket.
                let Ok(s) = serde_json::from_slice::<TypingSignal>(&payload) else {
                    tracing::debug!(%conv, "ignoring an invalid typing signal");
                    continue;
                };
                if s.typing {
                    let until = tokio::time::Instant::now() + TYPING_LASTS;
                    changed |= typing.insert(s.user, until).is_none();
                } else {
                    changed |= typing.remove(&s.user).is_some();
                }
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let before = typing.len();
                typing.retain(|_, until| *until > now);
                if std::mem::take(&mut changed) || typing.len() != before {
                    let Some(hub) = hub.upgrade() else { break };
                    hub.deliver_typing(&conv, typing.keys());
                }
            }
        }
    }
}

/// A change of a user's own state, as their devices get it, if the event is one.
fn state_change(event: Event) -> Option<(UserId, StateChange)> {
    Some(match event {
        Event::ConversationPrefsChanged(e) => (
            e.user,
            StateChange::Prefs {
                conv: e.conv.to_string(),
                pinned: e.pinned,
                archived: e.archived,
                muted_until: e.muted_until,
                draft: e.draft,
                notify: e.notify,
            },
        ),
        Event::MessagesHidden(e) => (
            e.user,
            StateChange::Hidden(HiddenMessages {
                conv: e.conv.to_string(),
                seqs: e.seqs,
            }),
        ),
        Event::PrivacyChanged(e) => (
            e.user,
            StateChange::Privacy {
                receipts: e.receipts,
                presence: e.presence,
            },
        ),
        Event::PushTargetSet(e) => (
            e.user,
            StateChange::Push(DevicePush {
                device: e.device.to_string(),
                provider: Some(e.target.provider().to_owned()),
                preview: e.preview,
            }),
        ),
        // A removal that names an address applies only if the device still has it: what it
        // came to, devices learn from `user_state` (the next change's `prev` shows the gap)
        // or the next `welcome`.
        Event::PushTargetRemoved(e) if e.address.is_none() => (
            e.user,
            StateChange::Push(DevicePush {
                device: e.device.to_string(),
                provider: None,
                preview: false,
            }),
        ),
        _ => return None,
    })
}

/// The `membership` frame telling a user they joined or left `conv` at `seq`.
fn membership_frame(conv: &ConversationId, joined: bool, seq: u64) -> Frame {
    let push = Push::Membership(MembershipChanged {
        conv: conv.clone(),
        joined,
        version: seq,
    });
    frame(&push.into())
}

/// The frame of a live message event, if it is one.
pub fn message_frame(prev: u64, seq: u64, env: &Envelope) -> Option<ServerFrame> {
    let message = Message::from_event(seq, env)?;
    Some(
        Push::Message(LiveMessage {
            prev,
            message: Box::new(message),
        })
        .into(),
    )
}

/// Follows `live.msg.<conv>` until its interest ends.
async fn follow_conversation(hub: Weak<Hub>, s: Subscribe) {
    let Subscribe { conv, stop, ready } = s;
    let Some(bus) = hub.upgrade().map(|h| h.bus.clone()) else {
        return;
    };
    let subject = subjects::live_message(&conv);
    let mut sub = match stop.run_until_cancelled(bus.subscribe_live(&subject)).await {
        None => return,
        Some(Ok(sub)) => sub,
        Some(Err(err)) => {
            tracing::warn!(%conv, error = %err, "cannot follow conversation");
            return;
        }
    };
    if let Err(err) = bus.flush().await {
        tracing::debug!(%conv, error = %err, "flushing a subscription");
    }
    if let Some(hub) = hub.upgrade() {
        // Release the frames held for the subscription.
        let mut state = hub.lock();
        for (user, f) in state.interest.ready(&conv) {
            state.registry.push_user(&user, &f);
        }
    }
    let _ = ready.send(true);
    let flush = hub.upgrade().map_or(Duration::ZERO, |h| h.reaction_flush);
    // Reactions gathered for one frame, and when it goes.
    let mut gathered: Option<ReactionBatch> = None;
    // Messages revoked lately: a change decided before a revoke and stored after it (a
    // race between two devices) is never delivered — the projector erases it.
    let mut revoked: HashSet<u64> = HashSet::new();
    let mut due = tokio::time::Instant::now();
    loop {
        let ev = tokio::select! {
            ev = stop.run_until_cancelled(sub.next()) => ev,
            _ = tokio::time::sleep_until(due), if gathered.is_some() => {
                if let (Some(hub), Some(batch)) = (hub.upgrade(), gathered.take()) {
                    hub.deliver_reactions(&conv, batch);
                }
                continue;
            }
        };
        let Some(Some(ev)) = ev else { break };
        let Some(hub) = hub.upgrade() else { break };
        let Ok(env) = Envelope::from_json(&ev.payload) else {
            continue;
        };
        // Decided on a membership this edge has not seen yet: wait for it, so a member removed
        // before the message does not get it (later messages of the conversation wait behind
        // it, in order).
        if let Some(position) = ev.membership
            && *hub.position.borrow() < position.0
        {
            hub.reach(position.0).await;
        }
        match &env.event {
            Event::MessageRevoked(r) => {
                if revoked.len() >= REVOKED_REMEMBERED {
                    revoked.clear();
                }
                revoked.insert(r.target);
            }
            Event::MessageEdited(e) if revoked.contains(&e.target) => continue,
            Event::ReactionChanged(e) if revoked.contains(&e.target) => continue,
            Event::PinChanged(e) if revoked.contains(&e.target) => continue,
            _ => {}
        }
        if let Event::ReactionChanged(r) = &env.event
            && r.conv == conv
        {
            match &mut gathered {
                // The next entry of the chain: one more for the same frame.
                Some(batch) if batch.seq == ev.prev.0 => batch.add(ev.seq.0, r),
                _ => {
                    if let Some(batch) = gathered.take() {
                        hub.deliver_reactions(&conv, batch);
                    }
                    let mut batch = ReactionBatch::starting(ev.prev.0);
                    batch.add(ev.seq.0, r);
                    gathered = Some(batch);
                    due = tokio::time::Instant::now() + flush;
                }
            }
            if flush.is_zero()
                && let Some(batch) = gathered.take()
            {
                hub.deliver_reactions(&conv, batch);
            }
            continue;
        }
        // Anything else goes after the reactions before it.
        if let Some(batch) = gathered.take() {
            hub.deliver_reactions(&conv, batch);
        }
        let Some(f) = message_frame(ev.prev.0, ev.seq.0, &env) else {
            continue;
        };
        hub.deliver_conv(&conv, &frame(&f));
    }
    sub.unsubscribe().await;
}

/// Revoked messages a conversation's follower remembers (to hold back late changes to them).
const REVOKED_REMEMBERED: usize = 4096;

/// Reaction entries of one conversation gathered for one frame: consecutive in its chain,
/// summed per message and emoji, with each reacting user's own.
#[derive(Debug)]
struct ReactionBatch {
    prev: u64,
    seq: u64,
    deltas: std::collections::BTreeMap<(u64, String), i64>,
    mine: HashMap<UserId, Vec<OwnReaction>>,
}

impl ReactionBatch {
    fn starting(prev: u64) -> Self {
        Self {
            prev,
            seq: prev,
            deltas: Default::default(),
            mine: HashMap::new(),
        }
    }

    fn add(&mut self, seq: u64, r: &ReactionChanged) {
        self.seq = seq;
        *self.deltas.entry((r.target, r.emoji.clone())).or_default() +=
            if r.added { 1 } else { -1 };
        self.mine
            .entry(r.user.clone())
            .or_default()
            .push(OwnReaction {
                target: r.target,
                emoji: r.emoji.clone(),
                added: r.added,
            });
    }
}
