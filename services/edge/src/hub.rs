//! The live side of an edge: who is connected here, which conversations they are in, and the
//! NATS subscriptions that feed them.
//!
//! Interest drives subscriptions: the edge subscribes to `live.msg.<conv>` while at least one
//! member of `conv` is connected to it, so a message to a 100,000-member group costs one NATS
//! delivery per edge, not one per member. Each live message is serialized once and handed to
//! every local connection of every local member.
//!
//! Membership is followed live: every edge subscribes to `live.grp.>` and updates the
//! conversations of its connected users as members join and leave, opening or closing
//! interest. Events are applied in stream order without gaps — one the live subscription lost
//! is fetched from the stream — and the last one applied is the edge's membership position.
//! A message carries the position its sender's edge decided on and is delivered once this
//! edge has reached it, so a removal decided before a message always takes effect first.
//! A connecting user's conversations come from the projection; membership events the
//! projection had not applied yet are replayed from a short buffer of recent ones, so no
//! change falls between the two.
//!
//! Member-list notifications (`members_changed`, published by the projector once a change is
//! committed) go to the connections that synced that group's list and still watch it — never
//! to the whole group: a 100,000-member group's churn reaches only those who look at it.
//!
//! Queues are bounded: a connection whose queue is full is closed with
//! [`close::SLOW_CONSUMER`] and resyncs from its anchors when it reconnects — it is never
//! silently skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_protocol::{Message, ServerFrame, close};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{ConversationId, DeviceId, Envelope, Event, UserId};
use anchorage_store::Store;

use crate::outbox::Outbox;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// A serialized server frame; cloning it shares the bytes (one serialization per message,
/// however many recipients).
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Identifies one connection on this edge.
pub type ConnId = u64;

/// Membership events kept to close the gap between a projection read and the live stream.
const RECENT_MEMBERSHIP: usize = 4096;
/// How often the edge compares its membership position with the stream, to find events its
/// live subscription lost (a NATS reconnect loses what was published meanwhile).
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(2);
/// How long a message waits for this edge's membership view to reach the position it was
/// decided on before it is delivered anyway (members never lose a message to a stuck view).
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

/// How long an edge remembers a revocation it heard live; by then the projection has it.
const REVOKED_MEMORY: Duration = Duration::from_secs(600);

/// The sending half of one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub user: UserId,
    pub device: DeviceId,
    outbox: Outbox,
    kick: CancellationToken,
    kick_code: Arc<AtomicU16>,
}

impl ConnHandle {
    pub fn new(id: ConnId, user: UserId, device: DeviceId, outbox: Outbox) -> Self {
        Self {
            id,
            user,
            device,
            outbox,
            kick: CancellationToken::new(),
            kick_code: Arc::new(AtomicU16::new(0)),
        }
    }

    /// Queues a frame without waiting; a full queue closes the connection (slow consumer).
    pub fn push(&self, frame: Frame) {
        if let Err(refused) = self.outbox.try_push(frame)
            && let Some(code) = refused.close_code()
        {
            self.close_with(code);
        }
    }

    /// Queues an answer, waiting for a free slot if need be (answers are never dropped while
    /// the connection lives); past the byte bounds the connection is closed as too slow.
    pub async fn reply(&self, frame: Frame) {
        if let Err(refused) = self.outbox.push(frame).await
            && let Some(code) = refused.close_code()
        {
            self.close_with(code);
        }
    }

    /// Asks the connection to close with `code`.
    pub fn close_with(&self, code: u16) {
        let _ = self
            .kick_code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.kick.cancel();
    }

    /// Whether the connection was asked to close.
    pub fn is_closing(&self) -> bool {
        self.kick.is_cancelled()
    }

    /// Resolves when the connection was asked to close; returns the close code.
    pub async fn kicked(&self) -> u16 {
        self.kick.cancelled().await;
        self.kick_code.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Default)]
struct UserEntry {
    conns: HashSet<ConnId>,
    convs: HashSet<ConversationId>,
    /// Groups the user is muted in, until when (Unix ms).
    muted: HashMap<ConversationId, i64>,
}

#[derive(Debug)]
struct ConvEntry {
    users: HashSet<UserId>,
    task: AbortHandle,
    /// The live subscription is in place on the server.
    ready: bool,
    /// Membership frames held back until then: a client told "you joined" must not miss a
    /// message published after it could have asked for history.
    held: Vec<(UserId, Frame)>,
    /// Turns true once the subscription is in place.
    ready_rx: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<ConnId, ConnHandle>,
    users: HashMap<UserId, UserEntry>,
    convs: HashMap<ConversationId, ConvEntry>,
    recent: VecDeque<(u64, Envelope)>,
    /// The last MEMBERSHIP sequence applied: every membership event up to it is in the maps.
    position: u64,
    /// Connections watching a group's member list, and the reverse.
    watchers: HashMap<ConversationId, HashSet<ConnId>>,
    watching: HashMap<ConnId, HashSet<ConversationId>>,
    /// Sessions revoked recently (all of a user's: no device), and when this edge heard of it.
    revoked: HashMap<(UserId, Option<DeviceId>), std::time::Instant>,
}

/// The live registry of one edge.
#[derive(Debug)]
pub struct Hub {
    bus: Bus,
    store: Store,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// The edge-wide subscriptions (membership, revocations, read markers, member-list
    /// notifications), stopped at shutdown.
    followers: Mutex<Vec<AbortHandle>>,
    /// [`State::position`], for messages waiting for it.
    position: tokio::sync::watch::Sender<u64>,
}

/// The group a `members_changed` frame is about.
fn members_changed_group(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::MembersChanged { group, .. } => Some(group.as_str()),
        _ => None,
    }
}

/// The frame of a live message event, if it is one.
pub fn message_frame(prev: u64, seq: u64, env: &Envelope) -> Option<ServerFrame> {
    let message = match &env.event {
        Event::MessageSent(m) => Message {
            conv: m.conv.clone(),
            seq,
            sender: m.sender.to_string(),
            device: m.device.to_string(),
            client_msg_id: m.client_msg_id.to_string(),
            body: m.body.clone(),
            client_ts: m.client_ts,
            server_ts: env.occurred_at,
        },
        Event::SystemMessagePosted(m) => Message {
            conv: m.conv.clone(),
            seq,
            sender: match &env.actor {
                anchorage_schema::Actor::System { source } => format!("system:{source}"),
                anchorage_schema::Actor::User { user, .. } => format!("system:{user}"),
            },
            device: String::new(),
            client_msg_id: env.id.to_string(),
            body: m.body.clone(),
            client_ts: env.occurred_at,
            server_ts: env.occurred_at,
        },
        _ => return None,
    };
    Some(ServerFrame::Message { prev, message })
}

impl Hub {
    /// Creates the hub and starts following membership changes.
    pub async fn start(bus: Bus, store: Store) -> anyhow::Result<Arc<Hub>> {
        let hub = Arc::new(Hub {
            bus: bus.clone(),
            store,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            followers: Mutex::new(Vec::new()),
            position: tokio::sync::watch::Sender::new(0),
        });
        hub.follow_membership().await?;
        // Revoked sessions are closed at once on every edge.
        hub.follow_live("live.user.>", |hub, _, env| match env.event {
            Event::SessionRevoked(r) => {
                tracing::info!(user = %r.user, device = %r.device, "session revoked");
                hub.revoke_device(&r.user, Some(&r.device));
            }
            Event::UserDeleted(d) => {
                tracing::info!(user = %d.user, "user deleted: every session ends");
                hub.revoke_device(&d.user, None);
            }
            _ => {}
        })
        .await?;
        // Read markers of the users connected here, for their other devices: one subscription
        // for the edge rather than one per user (every edge sees every marker; a marker is a
        // few dozen bytes, a subscription and its task per connected user cost far more).
        hub.follow_live(subjects::LIVE_READS_ALL, |hub, _, env| {
            if let Event::ReadMarked(r) = env.event {
                let frame: Frame = ServerFrame::Read {
                    conv: r.conv,
                    seq: r.read_seq,
                }
                .to_json()
                .into();
                hub.deliver_user(&r.user, &frame);
            }
        })
        .await?;
        // Member-list notifications, for the connections watching a group.
        let mut notices = bus.subscribe_notices(subjects::NOTIFY_MEMBERS_ALL).await?;
        bus.flush().await?;
        let weak = Arc::downgrade(&hub);
        let notices = tokio::spawn(async move {
            while let Some((subject, payload)) = notices.next().await {
                let Some(hub) = weak.upgrade() else { break };
                let group = subjects::last_token(&subject);
                let Ok(conv) = ConversationId::parse(group) else {
                    continue;
                };
                // Only a frame this edge built goes to a socket: the notification must be a
                // `members_changed` of the group it was published for, re-serialized here.
                match serde_json::from_slice::<ServerFrame>(&payload) {
                    Ok(frame @ ServerFrame::MembersChanged { .. })
                        if members_changed_group(&frame) == Some(conv.as_str()) =>
                    {
                        hub.deliver_watchers(&conv, frame.to_json().into());
                    }
                    _ => tracing::warn!(%subject, "ignoring an invalid member-list notification"),
                }
            }
        });
        hub.lock_followers().push(notices.abort_handle());
        Ok(hub)
    }

    /// Follows every membership event in stream order, without gaps: the live copies, and
    /// from the stream itself whatever they skipped (seen as a jump in the sequence, or by
    /// comparing with the stream's last sequence every [`MEMBERSHIP_CHECK`]).
    async fn follow_membership(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut sub = self.bus.subscribe_live("live.grp.>").await?;
        self.bus.flush().await?;
        // Nothing is connected yet: the view starts at the stream's end, and every event
        // after it arrives live (or is fetched).
        let start = self.bus.stream_state(stream::MEMBERSHIP).await?.last_seq.0;
        self.advance(start, None);
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut check = tokio::time::interval(MEMBERSHIP_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ev = sub.next() => {
                        let Some(ev) = ev else { break };
                        let Some(hub) = weak.upgrade() else { break };
                        hub.catch_up(ev.seq.0.saturating_sub(1)).await;
                        if ev.seq.0 == hub.lock().position + 1 {
                            hub.advance(ev.seq.0, Envelope::from_json(&ev.payload).ok());
                        }
                    }
                    _ = check.tick() => {
                        let Some(hub) = weak.upgrade() else { break };
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
        self.lock_followers().push(task.abort_handle());
        Ok(())
    }

    /// Applies the stored membership events after this edge's position, up to `to`.
    async fn catch_up(self: &Arc<Self>, to: u64) {
        loop {
            let next = self.lock().position + 1;
            if next > to {
                return;
            }
            match self
                .bus
                .stored_event_if_any(stream::MEMBERSHIP, anchorage_schema::Seq(next))
                .await
            {
                Ok(stored) => {
                    if stored.is_some() {
                        tracing::info!(
                            seq = next,
                            "membership event fetched: its live copy was lost"
                        );
                    }
                    self.advance(next, stored.and_then(Result::ok));
                }
                Err(err) => {
                    // Tried again on the next event or check.
                    tracing::warn!(seq = next, error = %err, "fetching a lost membership event");
                    return;
                }
            }
        }
    }

    /// A MEMBERSHIP stream that ends before this edge's position was deleted and recreated:
    /// follow the new one from its end (its earlier events reach this edge's users when they
    /// reconnect, from the projection rebuilt for the new stream).
    fn rewind_if_recreated(&self, last: u64) {
        let mut state = self.lock();
        if last < state.position {
            tracing::warn!(
                position = state.position,
                last,
                "the membership stream was recreated: following it from its end"
            );
            state.position = last;
            drop(state);
            self.position.send_replace(last);
        }
    }

    /// Moves the membership position to `seq`, applying its event if there is one (an event
    /// this edge cannot decode changes nothing here).
    fn advance(self: &Arc<Self>, seq: u64, env: Option<Envelope>) {
        match env {
            Some(env) => self.on_membership(seq, env),
            None => self.lock().position = seq,
        }
        self.position.send_replace(seq);
    }

    /// Whether `user` (connected here) is a member of `conv`, and if so the membership
    /// position that answer stands on.
    pub fn member_position(&self, user: &UserId, conv: &ConversationId) -> Option<u64> {
        let state = self.lock();
        state
            .users
            .get(user)
            .is_some_and(|e| e.convs.contains(conv))
            .then_some(state.position)
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

    /// Follows a live subject edge-wide, handing each decodable event to `on` with its
    /// sequence.
    async fn follow_live(
        self: &Arc<Self>,
        subject: &str,
        on: impl Fn(&Arc<Hub>, u64, Envelope) + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut sub = self.bus.subscribe_live(subject).await?;
        self.bus.flush().await?;
        let weak = Arc::downgrade(self);
        let subject = subject.to_owned();
        let task = tokio::spawn(async move {
            while let Some(ev) = sub.next().await {
                let Some(hub) = weak.upgrade() else { break };
                match Envelope::from_json(&ev.payload) {
                    Ok(env) => on(&hub, ev.seq.0, env),
                    Err(err) => tracing::debug!(%subject, error = %err, "undecodable live event"),
                }
            }
        });
        self.lock_followers().push(task.abort_handle());
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent (every update
        // is a single insert or remove), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_followers(&self) -> MutexGuard<'_, Vec<AbortHandle>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of connections on this edge.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Registers a connection and returns its user's conversations.
    pub async fn register(
        self: &Arc<Self>,
        conn: ConnHandle,
    ) -> anyhow::Result<HashSet<ConversationId>> {
        let user = conn.user.clone();
        // Checkpoint first: every membership event after it is in the recent buffer or
        // still to come on the live subscription.
        let checkpoint = self
            .store
            .checkpoint("membership")
            .await?
            .map_or(0, |c| c.last_seq);
        let mut loaded = HashSet::new();
        let mut muted = HashMap::new();
        for (conv, until) in self.store.conversations_of(user.as_str()).await? {
            let Ok(conv) = ConversationId::parse(conv) else {
                continue;
            };
            if let Some(until) = until {
                muted.insert(conv.clone(), until);
            }
            loaded.insert(conv);
        }
        let (convs, pending) = self.register_locked(conn, loaded, muted, checkpoint);
        // Answer `hello` only once the live subscriptions are in place: a message published
        // after the client's view of the conversations is then either in that view or pushed.
        for mut rx in pending {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|ready| *ready)).await;
        }
        Ok(convs)
    }

    /// The part of [`Hub::register`] under the lock: returns the user's conversations and
    /// the subscriptions still being set up.
    fn register_locked(
        self: &Arc<Self>,
        conn: ConnHandle,
        loaded: HashSet<ConversationId>,
        muted: HashMap<ConversationId, i64>,
        checkpoint: u64,
    ) -> (
        HashSet<ConversationId>,
        Vec<tokio::sync::watch::Receiver<bool>>,
    ) {
        let user = conn.user.clone();
        let mut state = self.lock();
        state.conns.insert(conn.id, conn.clone());
        let fresh = !state.users.contains_key(&user);
        let entry = state.users.entry(user.clone()).or_default();
        entry.conns.insert(conn.id);
        if fresh {
            entry.convs = loaded;
            entry.muted = muted;
            let replay: Vec<(u64, Envelope)> = state
                .recent
                .iter()
                .filter(|(seq, _)| *seq > checkpoint)
                .cloned()
                .collect();
            // Joins the projection had not applied yet: the client hears of them as live
            // joins (once the subscription is in place), so it syncs them.
            let mut late_joins = Vec::new();
            for (seq, env) in replay {
                if let Some(e) = state.users.get_mut(&user) {
                    note_mute(e, &user, &env);
                }
                for (u, conv, joined) in membership_changes(&env) {
                    if u == user
                        && let Some(e) = state.users.get_mut(&user)
                    {
                        if joined {
                            e.convs.insert(conv.clone());
                            late_joins.push((seq, conv));
                        } else {
                            e.convs.remove(&conv);
                        }
                    }
                }
            }
            let convs: Vec<ConversationId> = state
                .users
                .get(&user)
                .map(|e| e.convs.iter().cloned().collect())
                .unwrap_or_default();
            for conv in convs {
                self.add_interest(&mut state, &user, conv);
            }
            for (seq, conv) in late_joins {
                let frame: Frame = ServerFrame::Membership {
                    conv: conv.clone(),
                    joined: true,
                    version: seq,
                }
                .to_json()
                .into();
                match state.convs.get_mut(&conv) {
                    Some(entry) if !entry.ready => entry.held.push((user.clone(), frame)),
                    _ => Self::push_user(&state, &user, &frame),
                }
            }
        }
        let convs = state
            .users
            .get(&user)
            .map(|e| e.convs.clone())
            .unwrap_or_default();
        let pending: Vec<tokio::sync::watch::Receiver<bool>> = convs
            .iter()
            .filter_map(|c| state.convs.get(c))
            .filter(|e| !e.ready)
            .map(|e| e.ready_rx.clone())
            .collect();
        (convs, pending)
    }

    /// Removes a connection; interest goes with the last connection of a user.
    pub fn unregister(&self, conn: ConnId) {
        let mut state = self.lock();
        let Some(handle) = state.conns.remove(&conn) else {
            return;
        };
        Self::unwatch_all(&mut state, conn);
        let user = handle.user;
        let Some(entry) = state.users.get_mut(&user) else {
            return;
        };
        entry.conns.remove(&conn);
        if !entry.conns.is_empty() {
            return;
        }
        let Some(entry) = state.users.remove(&user) else {
            return;
        };
        for conv in entry.convs {
            Self::drop_interest(&mut state, &user, &conv);
        }
    }

    /// Until when `user` (connected here) is muted in `conv`, if at all.
    pub fn muted_until(&self, user: &UserId, conv: &ConversationId) -> Option<i64> {
        self.lock()
            .users
            .get(user)
            .and_then(|e| e.muted.get(conv).copied())
    }

    /// Whether `user` (connected here) is a member of `conv` right now.
    /// The conversations this edge knows `user` to be in (from the membership stream, so also
    /// those the projection has not applied yet).
    pub fn conversations_of(&self, user: &UserId) -> Vec<ConversationId> {
        self.lock()
            .users
            .get(user)
            .map(|e| e.convs.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.lock()
            .users
            .get(user)
            .is_some_and(|e| e.convs.contains(conv))
    }

    /// Starts sending `conv`'s member-list notifications to `conn`.
    pub fn watch_members(&self, conn: ConnId, conv: &ConversationId) {
        let mut state = self.lock();
        state.watchers.entry(conv.clone()).or_default().insert(conn);
        state.watching.entry(conn).or_default().insert(conv.clone());
    }

    /// Stops sending `conv`'s member-list notifications to `conn`.
    pub fn unwatch_members(&self, conn: ConnId, conv: &ConversationId) {
        Self::unwatch(&mut self.lock(), conn, conv);
    }

    fn unwatch(state: &mut State, conn: ConnId, conv: &ConversationId) {
        if let Some(w) = state.watchers.get_mut(conv) {
            w.remove(&conn);
            if w.is_empty() {
                state.watchers.remove(conv);
            }
        }
        if let Some(w) = state.watching.get_mut(&conn) {
            w.remove(conv);
            if w.is_empty() {
                state.watching.remove(&conn);
            }
        }
    }

    fn unwatch_all(state: &mut State, conn: ConnId) {
        let convs: Vec<ConversationId> = state
            .watching
            .get(&conn)
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        for conv in convs {
            Self::unwatch(state, conn, &conv);
        }
    }

    /// Hands a member-list notification to the watchers of `conv` who are still members.
    fn deliver_watchers(&self, conv: &ConversationId, frame: Frame) {
        let state = self.lock();
        let Some(watchers) = state.watchers.get(conv) else {
            return;
        };
        for id in watchers {
            let Some(conn) = state.conns.get(id) else {
                continue;
            };
            let member = state
                .users
                .get(&conn.user)
                .is_some_and(|u| u.convs.contains(conv));
            if member {
                conn.push(frame.clone());
            }
        }
    }

    /// Records a membership the caller just caused, before its live copy arrives.
    pub fn joined(self: &Arc<Self>, user: &UserId, conv: ConversationId) {
        let mut state = self.lock();
        let added = state
            .users
            .get_mut(user)
            .is_some_and(|e| e.convs.insert(conv.clone()));
        if added {
            self.add_interest(&mut state, user, conv);
        }
    }

    /// Closes every connection (shutdown) with `code`.
    pub fn close_all(&self, code: u16) {
        for conn in self.lock().conns.values() {
            conn.close_with(code);
        }
    }

    /// Closes the connections of a revoked session, and remembers the revocation for
    /// [`REVOKED_MEMORY`]: a connection registered after this runs finds it with
    /// [`Hub::revoked`] even if the projection has not applied the revocation yet.
    /// With no `device`, every session of the user (a deleted user).
    pub fn revoke_device(&self, user: &UserId, device: Option<&DeviceId>) {
        let mut state = self.lock();
        let now = std::time::Instant::now();
        state
            .revoked
            .retain(|_, at| now.duration_since(*at) < REVOKED_MEMORY);
        state.revoked.insert((user.clone(), device.cloned()), now);
        for conn in state.conns.values() {
            if &conn.user == user && device.is_none_or(|d| &conn.device == d) {
                conn.close_with(close::REVOKED);
            }
        }
    }

    /// Whether this edge saw the session of `device` (or every session of the user)
    /// revoked recently (see [`Hub::revoke_device`]). Asked after registering, so no
    /// revocation falls between.
    pub fn revoked(&self, user: &UserId, device: &DeviceId) -> bool {
        let state = self.lock();
        state
            .revoked
            .contains_key(&(user.clone(), Some(device.clone())))
            || state.revoked.contains_key(&(user.clone(), None))
    }

    fn add_interest(self: &Arc<Self>, state: &mut State, user: &UserId, conv: ConversationId) {
        if let Some(entry) = state.convs.get_mut(&conv) {
            entry.users.insert(user.clone());
            return;
        }
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        let task = self.spawn_conv(conv.clone(), ready_tx);
        state.convs.insert(
            conv,
            ConvEntry {
                users: HashSet::from([user.clone()]),
                task,
                ready: false,
                held: Vec::new(),
                ready_rx,
            },
        );
    }

    fn drop_interest(state: &mut State, user: &UserId, conv: &ConversationId) {
        let empty = state.convs.get_mut(conv).is_some_and(|e| {
            e.users.remove(user);
            e.users.is_empty()
        });
        if empty && let Some(entry) = state.convs.remove(conv) {
            entry.task.abort();
        }
    }

    /// Follows `live.msg.<conv>` while there is interest (aborted with the interest).
    fn spawn_conv(
        self: &Arc<Self>,
        conv: ConversationId,
        ready_tx: tokio::sync::watch::Sender<bool>,
    ) -> AbortHandle {
        let weak = Arc::downgrade(self);
        let bus = self.bus.clone();
        tokio::spawn(async move {
            let mut sub = match bus.subscribe_live(&subjects::live_message(&conv)).await {
                Ok(sub) => sub,
                Err(err) => {
                    tracing::warn!(%conv, error = %err, "cannot follow conversation");
                    return;
                }
            };
            if let Err(err) = bus.flush().await {
                tracing::debug!(%conv, error = %err, "flushing a subscription");
            }
            if let Some(hub) = weak.upgrade() {
                hub.conv_ready(&conv);
            }
            let _ = ready_tx.send(true);
            while let Some(ev) = sub.next().await {
                let Some(hub) = weak.upgrade() else { break };
                let Ok(env) = Envelope::from_json(&ev.payload) else {
                    continue;
                };
                let Some(frame) = message_frame(ev.prev.0, ev.seq.0, &env) else {
                    continue;
                };
                // Decided on a membership this edge has not seen yet: wait for it, so a member
                // removed before the message does not get it (later messages of the
                // conversation wait behind it, in order).
                if let Some(position) = ev.membership
                    && hub.position.borrow().lt(&position.0)
                {
                    hub.reach(position.0).await;
                }
                hub.deliver_conv(&conv, frame.to_json().into());
            }
        })
        .abort_handle()
    }

    /// The subscription of `conv` is in place: release the frames held for it.
    fn conv_ready(&self, conv: &ConversationId) {
        let mut state = self.lock();
        let held = match state.convs.get_mut(conv) {
            Some(entry) => {
                entry.ready = true;
                std::mem::take(&mut entry.held)
            }
            None => return,
        };
        for (user, frame) in held {
            Self::push_user(&state, &user, &frame);
        }
    }

    fn push_user(state: &State, user: &UserId, frame: &Frame) {
        if let Some(u) = state.users.get(user) {
            for id in &u.conns {
                if let Some(conn) = state.conns.get(id) {
                    conn.push(frame.clone());
                }
            }
        }
    }

    fn deliver_conv(&self, conv: &ConversationId, frame: Frame) {
        let state = self.lock();
        let Some(entry) = state.convs.get(conv) else {
            return;
        };
        for user in &entry.users {
            if let Some(u) = state.users.get(user) {
                for id in &u.conns {
                    if let Some(conn) = state.conns.get(id) {
                        conn.push(frame.clone());
                    }
                }
            }
        }
    }

    fn deliver_user(&self, user: &UserId, frame: &Frame) {
        Self::push_user(&self.lock(), user, frame);
    }

    fn on_membership(self: &Arc<Self>, seq: u64, env: Envelope) {
        let changes = membership_changes(&env);
        let mut state = self.lock();
        if let Event::MemberMuteChanged(m) = &env.event
            && let Some(e) = state.users.get_mut(&m.member)
        {
            note_mute(e, &m.member, &env);
        }
        for (user, conv, joined) in changes {
            let changed = match state.users.get_mut(&user) {
                Some(e) if joined => e.convs.insert(conv.clone()),
                Some(e) => {
                    e.muted.remove(&conv);
                    e.convs.remove(&conv)
                }
                None => false,
            };
            if !changed {
                continue;
            }
            if joined {
                self.add_interest(&mut state, &user, conv.clone());
            } else {
                Self::drop_interest(&mut state, &user, &conv);
                let conns: Vec<ConnId> = state
                    .users
                    .get(&user)
                    .map(|u| u.conns.iter().copied().collect())
                    .unwrap_or_default();
                for conn in conns {
                    Self::unwatch(&mut state, conn, &conv);
                }
            }
            let frame: Frame = ServerFrame::Membership {
                conv: conv.clone(),
                joined,
                version: seq,
            }
            .to_json()
            .into();
            match state.convs.get_mut(&conv) {
                Some(entry) if joined && !entry.ready => entry.held.push((user, frame)),
                _ => Self::push_user(&state, &user, &frame),
            }
        }
        if let Event::GroupDismissed(d) = &env.event {
            let conv = ConversationId::parse(d.group.as_str()).ok();
            if let Some(conv) = conv {
                let users: Vec<UserId> = state
                    .convs
                    .get(&conv)
                    .map(|e| e.users.iter().cloned().collect())
                    .unwrap_or_default();
                for user in users {
                    if let Some(e) = state.users.get_mut(&user) {
                        e.convs.remove(&conv);
                    }
                    Self::drop_interest(&mut state, &user, &conv);
                }
            }
        }
        state.position = state.position.max(seq);
        state.recent.push_back((seq, env));
        while state.recent.len() > RECENT_MEMBERSHIP {
            state.recent.pop_front();
        }
    }

    /// Stops every subscription.
    pub fn shutdown(&self) {
        for task in self.lock_followers().drain(..) {
            task.abort();
        }
        let mut state = self.lock();
        for (_, entry) in state.convs.drain() {
            entry.task.abort();
        }
        state.users.clear();
    }
}

/// Who joined (`true`) or left which conversation in a membership event.
fn membership_changes(env: &Envelope) -> Vec<(UserId, ConversationId, bool)> {
    let conv = |g: &anchorage_schema::GroupId| ConversationId::parse(g.as_str()).ok();
    match &env.event {
        Event::GroupCreated(e) => conv(&e.group)
            .map(|c| {
                std::iter::once(&e.owner)
                    .chain(e.members.iter())
                    .map(|u| (u.clone(), c.clone(), true))
                    .collect()
            })
            .unwrap_or_default(),
        Event::MembersAdded(e) => conv(&e.group)
            .map(|c| {
                e.members
                    .iter()
                    .map(|u| (u.clone(), c.clone(), true))
                    .collect()
            })
            .unwrap_or_default(),
        Event::MembersRemoved(e) => conv(&e.group)
            .map(|c| {
                e.members
                    .iter()
                    .map(|u| (u.clone(), c.clone(), false))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Keeps a connected user's mutes in step with a mute event about them.
fn note_mute(entry: &mut UserEntry, user: &UserId, env: &Envelope) {
    let Event::MemberMuteChanged(m) = &env.event else {
        return;
    };
    let Ok(conv) = ConversationId::parse(m.group.as_str()) else {
        return;
    };
    if &m.member != user {
        return;
    }
    match m.muted_until {
        Some(until) => entry.muted.insert(conv, until),
        None => entry.muted.remove(&conv),
    };
}
