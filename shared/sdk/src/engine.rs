//! The engine: one background task that connects, catches up, flushes the outbox and the
//! command queue, and applies live frames to the local store.
//!
//! Requests go one at a time over the socket, in the order they were queued; live frames that
//! arrive while waiting for an answer are applied as they come. A lost connection ends the
//! session; the engine waits (backoff) and starts a new one, picking up the outbox where it
//! stood — a message whose ack was lost is sent again with `retry: true` and the server answers
//! with the seq it already has.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchorage_protocol::request::{Hello, MarkReceived, SendMessage, Sync, UserStateQuery, View};
use anchorage_protocol::{
    ConvAnchor, EntryKind, ErrorCode, ErrorFrame, Message as WireMessage, Push, ReplyBody, Request,
    RequestBody, ServerFrame,
};
use anchorage_schema::{ClientMsgId, ConversationId, UserId};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::store::{Change, Entry, LocalStore, Queued};
use crate::{ClientEvent, ClientOptions, LocalMessage, OutboxEntry, Refs, backoff};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one answer may take before the connection is considered lost.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// How long a connection attempt (TCP and WebSocket handshake) may take.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// A connection that stayed up this long resets the backoff.
const HELD: Duration = Duration::from_secs(10);

/// Why a session ended.
pub(crate) enum End {
    Shutdown,
    Lost {
        code: Option<u16>,
        retry_after: Option<Duration>,
    },
}

/// Messages the outbox keeps in flight on one connection, at most. After a `rate_limited`
/// round the window shrinks to what the server took, and doubles again with each round that
/// passes whole, so a limited client does not keep sending a full window of refusals.
const SEND_WINDOW: u32 = 32;

pub(crate) fn lost(code: Option<u16>) -> End {
    End::Lost {
        code,
        retry_after: None,
    }
}

#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) store: LocalStore,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    pub(crate) drop_push: AtomicU64,
    /// Test hook: the version of a `members_changed` to treat as lost.
    pub(crate) drop_notice: AtomicU64,
    /// Groups whose member list to sync, each once, one at a time; `true` to check the
    /// stored members against their digest first (when the app opens the group).
    pub(crate) member_syncs: Mutex<BTreeMap<String, bool>>,
    /// How often each member sync scheduled again has yielded still moving.
    pub(crate) member_sync_resumes: Mutex<BTreeMap<String, u32>>,
    /// Requests from the app waiting for the connection, with where to put the answer.
    asks: Mutex<VecDeque<(RequestBody, oneshot::Sender<ServerFrame>)>>,
    pub(crate) options: ClientOptions,
    /// Uploads and downloads of files.
    pub(crate) http: reqwest::Client,
    wake: Notify,
    /// Conversations to sync, with the anchor a detected gap started from (if any).
    syncs: Mutex<BTreeMap<String, Option<u64>>>,
    /// What was stored since the last `received` acknowledgements.
    to_ack: Mutex<BTreeMap<String, u64>>,
    shutdown: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The user and device the server knows this client as (from `welcome`).
    pub(crate) me: Mutex<Option<(String, String)>>,
    /// Conversations the app has open (viewed again on every connection).
    pub(crate) viewing: Mutex<std::collections::BTreeSet<String>>,
    /// A change of the user's own state was missed: ask for what changed.
    state_sync: std::sync::atomic::AtomicBool,
    /// How many queued messages go in flight at once (see [`SEND_WINDOW`]).
    window: AtomicU32,
}

pub(crate) struct Conn {
    ws: Ws,
    next_id: u64,
    /// The edge answers member-list diffs in their positional form when asked (`welcome`).
    pub(crate) compact: bool,
}

impl Engine {
    pub(crate) fn start(options: ClientOptions, store: LocalStore) -> Arc<Engine> {
        let (events, _) = broadcast::channel(1024);
        let engine = Arc::new(Engine {
            store,
            events,
            drop_push: AtomicU64::new(0),
            drop_notice: AtomicU64::new(0),
            member_syncs: Mutex::new(BTreeMap::new()),
            member_sync_resumes: Mutex::new(BTreeMap::new()),
            asks: Mutex::new(VecDeque::new()),
            options,
            http: reqwest::Client::new(),
            wake: Notify::new(),
            syncs: Mutex::new(BTreeMap::new()),
            to_ack: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
            task: Mutex::new(None),
            me: Mutex::new(None),
            viewing: Mutex::new(Default::default()),
            state_sync: std::sync::atomic::AtomicBool::new(false),
            window: AtomicU32::new(SEND_WINDOW),
        });
        let task = tokio::spawn(engine.clone().run());
        *engine.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        engine
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn request_sync(&self, conv: &str) {
        self.syncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(conv.to_owned())
            .or_insert(None);
        self.wake();
    }

    /// Schedules a sync of `group`'s member list (once, however often asked). With `verify`
    /// the digest sent is computed from the stored members, so a damaged copy is found;
    /// otherwise the maintained digest is sent (repairing a gap costs no full read).
    pub(crate) fn request_member_sync(&self, group: &str, verify: bool) {
        *self
            .member_syncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_owned())
            .or_default() |= verify;
        self.wake();
    }

    /// Sends `request` over the connection when there is one and returns the answer; `None`
    /// if no connection answered in time.
    pub(crate) async fn ask(&self, request: RequestBody) -> Option<ServerFrame> {
        let (tx, rx) = oneshot::channel();
        self.asks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((request, tx));
        self.wake();
        tokio::time::timeout(ANSWER_WAIT * 2, rx).await.ok()?.ok()
    }

    pub(crate) async fn shutdown(&self) {
        self.shutdown.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.store.close().await;
    }

    fn me(&self) -> (String, String) {
        self.me
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub(crate) fn emit(&self, e: ClientEvent) {
        let _ = self.events.send(e);
    }

    async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let end = self.session().await;
            let (code, retry_after) = match end {
                End::Shutdown => return,
                End::Lost { code, retry_after } => (code, retry_after),
            };
            self.emit(ClientEvent::Disconnected { code });
            if let Some(code @ (4001 | 4002 | 4005)) = code {
                self.emit(ClientEvent::AuthFailed { code });
            }
            failures = if started.elapsed() > HELD {
                1
            } else {
                failures + 1
            };
            let wait = backoff::delay(failures, retry_after, backoff::random());
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn session(&self) -> End {
        let connected = tokio::select! {
            _ = self.shutdown.cancelled() => return End::Shutdown,
            c = tokio::time::timeout(
                CONNECT_WAIT,
                tokio_tungstenite::connect_async_with_config(self.options.url.as_str(), None, true),
            ) => c,
        };
        let Ok(connected) = connected else {
            return lost(None);
        };
        let ws = match connected {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                return End::Lost {
                    code: None,
                    retry_after,
                };
            }
            Err(_) => return lost(None),
        };
        let mut conn = Conn {
            ws,
            next_id: 1,
            compact: false,
        };
        match self.serve(&mut conn).await {
            Ok(()) => {
                let _ = conn.ws.close(None).await;
                End::Shutdown
            }
            Err(end) => end,
        }
    }

    async fn serve(&self, conn: &mut Conn) -> Result<(), End> {
        let mut cursor: Option<String> = None;
        loop {
            let held = self.store.anchors().await.map_err(|_| lost(None))?;
            let anchors = anchors_within(held, ANCHOR_BYTES);
            let state_version = self.store.state_version().await.map_err(|_| lost(None))?;
            let hello = Hello {
                protocol: anchorage_protocol::PROTOCOL_VERSION,
                token: (self.options.token)(),
                anchors,
                cursor: cursor.take(),
                state_version: Some(state_version),
            };
            let ServerFrame::Reply(anchorage_protocol::Reply {
                body: ReplyBody::Welcome(welcome),
                ..
            }) = self.request(conn, hello.into()).await?
            else {
                return Err(lost(None));
            };
            *self.me.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((welcome.user.to_string(), welcome.device.to_string()));
            conn.compact = welcome.compact;
            for change in &welcome.changes {
                let conv = change.conv.as_str();
                // The read marker as the server has it (another device may have moved it).
                self.store
                    .set_read(conv, change.read_seq)
                    .await
                    .map_err(|_| lost(None))?;
                // Listed for its read marker alone: nothing to pull.
                if change.last_seq > self.store.anchor(conv).await.map_err(|_| lost(None))? {
                    self.request_sync(conv);
                }
            }
            if let Some(state) = &welcome.state {
                self.take_state(state).await?;
            }
            cursor = welcome.cursor;
            if cursor.is_none() {
                break;
            }
        }
        self.emit(ClientEvent::Connected);
        // The conversations the app has open are open on this connection too.
        let viewing: Vec<String> = self
            .viewing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for conv in viewing {
            if let Ok(conv) = ConversationId::parse(conv) {
                self.request(conn, RequestBody::View(View { conv })).await?;
            }
        }
        loop {
            self.run_state_sync(conn).await?;
            self.run_syncs(conn).await?;
            self.run_asks(conn).await?;
            self.run_member_syncs(conn).await?;
            self.flush_queue(conn).await?;
            self.acknowledge(conn).await?;
            let busy = !self
                .syncs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
                || !self
                    .member_syncs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                || !self
                    .asks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
            if busy {
                continue;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                frame = next_frame(conn) => {
                    if let ServerFrame::Push(push) = frame? {
                        self.on_push(push).await;
                    }
                }
            }
        }
    }

    /// Sends a request and waits for its answer, applying live frames meanwhile.
    /// A request refused as `rate_limited` waits as long as the server says and goes again,
    /// so no caller has to.
    pub(crate) async fn request(
        &self,
        conn: &mut Conn,
        request: RequestBody,
    ) -> Result<ServerFrame, End> {
        self.request_with(conn, request, 0).await
    }

    /// Like [`Engine::request`] for what the engine itself keeps in line (the user's state,
    /// history, member lists, queued commands): a refusal as `overloaded` (a projection
    /// catching up) also waits, at most [`OVERLOADED_WAIT`] at a time, and goes again on the
    /// same connection, up to [`OVERLOADED_TRIES`] times before its caller gives the
    /// connection up. The app's own requests get the refusal at once.
    pub(crate) async fn request_or_wait(
        &self,
        conn: &mut Conn,
        request: RequestBody,
    ) -> Result<ServerFrame, End> {
        self.request_with(conn, request, OVERLOADED_TRIES).await
    }

    async fn request_with(
        &self,
        conn: &mut Conn,
        request: RequestBody,
        overloaded_tries: u32,
    ) -> Result<ServerFrame, End> {
        let mut overloaded = 0;
        loop {
            let id = conn.send(&request).await?;
            let answer = self.answer_to(conn, id).await?;
            let wait = match refusal(&answer, &[ErrorCode::RateLimited, ErrorCode::Overloaded]) {
                Some(e) if e.code == ErrorCode::RateLimited => retry_after(e),
                Some(e) if overloaded < overloaded_tries => {
                    overloaded += 1;
                    retry_after(e).min(OVERLOADED_WAIT)
                }
                _ => return Ok(answer),
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits for the answer to request `id`, applying live frames meanwhile.
    async fn answer_to(&self, conn: &mut Conn, id: u64) -> Result<ServerFrame, End> {
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                _ = tokio::time::sleep_until(deadline) => return Err(lost(None)),
                f = next_frame(conn) => f?,
            };
            match next {
                ServerFrame::Push(push) => self.on_push(push).await,
                answer if answer.id() == Some(id) => return Ok(answer),
                // An answer to nothing this connection is waiting for.
                _ => {}
            }
        }
    }

    async fn on_push(&self, push: Push) {
        match push {
            Push::Message(live) => {
                let (seq, prev) = (live.message.seq, live.prev);
                let conv = live.message.conv.to_string();
                let entry = to_entry(*live.message);
                if self
                    .drop_push
                    .compare_exchange(seq, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return;
                }
                let Ok(anchor) = self.store.anchor(&conv).await else {
                    return;
                };
                if seq <= anchor {
                    return;
                }
                if prev == anchor {
                    let me = self.me().0;
                    if let Ok(changed) = self
                        .store
                        .append(&conv, std::slice::from_ref(&entry), seq, &me)
                        .await
                    {
                        self.note_stored(&conv, seq);
                        self.note_changed(&conv, changed);
                    }
                } else {
                    // An entry is missing between our anchor and this one: sync instead.
                    self.gap(&conv, anchor);
                }
            }
            Push::Reactions(r) => {
                if self
                    .drop_push
                    .compare_exchange(r.seq, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return;
                }
                let conv = r.conv.to_string();
                let Ok(anchor) = self.store.anchor(&conv).await else {
                    return;
                };
                if r.seq <= anchor {
                    return;
                }
                match self.store.apply_reactions(&r).await {
                    Ok(Some(changed)) => {
                        self.note_stored(&conv, r.seq);
                        self.note_changed(&conv, changed);
                    }
                    // Not exactly applicable here: the entries one by one, from the anchor.
                    Ok(None) => self.gap(&conv, anchor),
                    Err(_) => {}
                }
            }
            Push::Read(read) => {
                let conv = read.conv.as_str();
                if self.store.set_read(conv, read.seq).await.is_ok() {
                    self.emit(ClientEvent::Read {
                        conv: conv.to_owned(),
                        seq: read.seq,
                    });
                }
            }
            Push::Membership(m) if m.joined => self.request_sync(m.conv.as_str()),
            Push::Membership(m) => {
                // No longer a member: the list is not ours to keep.
                let conv = m.conv.as_str();
                self.member_syncs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(conv);
                self.member_sync_ended(conv);
                let _ = self.store.drop_member_list(conv).await;
            }
            Push::MembersChanged(change) => self.on_members_changed(change).await,
            Push::State(s) => {
                if self
                    .drop_push
                    .compare_exchange(s.version, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return;
                }
                let Ok(held) = self.store.state_version().await else {
                    return;
                };
                if s.version <= held {
                    return;
                }
                if s.prev == held
                    && self
                        .store
                        .apply_state_change(&s.change, s.version)
                        .await
                        .is_ok()
                {
                    self.emit(ClientEvent::StateChanged { version: s.version });
                } else {
                    // Something came between: ask for everything since.
                    self.state_sync.store(true, Ordering::SeqCst);
                    self.wake();
                }
            }
            Push::PresenceChanged(p) => self.emit(ClientEvent::Presence {
                user: p.user,
                online: p.online,
                last_seen: p.last_seen,
            }),
            Push::Receipt(r) => self.emit(ClientEvent::Receipt {
                conv: r.conv.to_string(),
                user: r.user,
                seq: r.seq,
            }),
            Push::Typing(t) => self.emit(ClientEvent::Typing {
                conv: t.conv.to_string(),
                users: t.users.iter().map(ToString::to_string).collect(),
                count: t.count,
            }),
        }
    }

    /// Stores a page of the user's own state; asks for the next one if more remain.
    async fn take_state(&self, state: &anchorage_protocol::UserState) -> Result<(), End> {
        let applied = self
            .store
            .apply_state(state)
            .await
            .map_err(|_| lost(None))?;
        // More to come: ask again. A catch-up a live change asked for meanwhile stays asked
        // for; an answer older than the live changes applied since changes nothing (what came
        // after those comes live, or shows a gap that asks).
        self.state_sync.fetch_or(state.more, Ordering::SeqCst);
        if applied {
            self.emit(ClientEvent::StateChanged {
                version: state.version,
            });
        }
        Ok(())
    }

    /// Brings the user's own state up to date when a change was missed.
    async fn run_state_sync(&self, conn: &mut Conn) -> Result<(), End> {
        while self.state_sync.swap(false, Ordering::SeqCst) {
            let after = self.store.state_version().await.map_err(|_| lost(None))?;
            match self
                .request_or_wait(conn, UserStateQuery { after }.into())
                .await?
            {
                ServerFrame::Reply(anchorage_protocol::Reply {
                    body: ReplyBody::UserState(state),
                    ..
                }) => self.take_state(&state).await?,
                answer if refusal(&answer, PASSING).is_some() => {
                    self.state_sync.store(true, Ordering::SeqCst);
                    return Err(lost(None));
                }
                answer => tracing::debug!(?answer, "user state refused"),
            }
        }
        Ok(())
    }

    /// Something is missing after `anchor` in `conv`: sync from there.
    fn gap(&self, conv: &str, anchor: u64) {
        self.syncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conv.to_owned(), Some(anchor));
    }

    fn note_changed(&self, conv: &str, changed: Vec<u64>) {
        for seq in changed {
            self.emit(ClientEvent::MessageChanged {
                conv: conv.to_owned(),
                seq,
            });
        }
    }

    fn note_stored(&self, conv: &str, seq: u64) {
        self.to_ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conv.to_owned(), seq);
        self.emit(ClientEvent::Messages {
            conv: conv.to_owned(),
            seq,
        });
    }

    async fn run_syncs(&self, conn: &mut Conn) -> Result<(), End> {
        loop {
            let next = {
                let mut syncs = self.syncs.lock().unwrap_or_else(|p| p.into_inner());
                let key = syncs.keys().next().cloned();
                key.and_then(|k| syncs.remove(&k).map(|gap| (k, gap)))
            };
            let Some((conv, gap)) = next else {
                return Ok(());
            };
            loop {
                let anchor = self.store.anchor(&conv).await.map_err(|_| lost(None))?;
                let Ok(id) = ConversationId::parse(conv.as_str()) else {
                    break;
                };
                let sync = Sync {
                    conv: id,
                    after: anchor,
                    limit: Some(500),
                };
                let page = match self.request_or_wait(conn, sync.into()).await? {
                    ServerFrame::Reply(anchorage_protocol::Reply {
                        body: ReplyBody::Messages(page),
                        ..
                    }) => page,
                    answer if refusal(&answer, PASSING).is_some() => {
                        // Sync again on the next connection.
                        self.request_sync(&conv);
                        return Err(lost(None));
                    }
                    answer => {
                        tracing::debug!(%conv, ?answer, "sync refused");
                        break;
                    }
                };
                let last = page.messages.last().map(|m| m.seq);
                let entries: Vec<Entry> = page.messages.into_iter().map(to_entry).collect();
                if let Some(last) = last {
                    let me = self.me().0;
                    let changed = self
                        .store
                        .append(&conv, &entries, last, &me)
                        .await
                        .map_err(|_| lost(None))?;
                    self.note_stored(&conv, last);
                    self.note_changed(&conv, changed);
                }
                if !page.more {
                    break;
                }
            }
            if let Some(from) = gap {
                let to = self.store.anchor(&conv).await.unwrap_or(from);
                self.emit(ClientEvent::GapRepaired { conv, from, to });
            }
        }
    }

    /// Sends the app's waiting requests and hands back the answers.
    async fn run_asks(&self, conn: &mut Conn) -> Result<(), End> {
        loop {
            let next = self
                .asks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some((request, reply)) = next else {
                return Ok(());
            };
            let answer = self.request(conn, request).await?;
            let _ = reply.send(answer);
        }
    }

    /// Sends what this device queued, oldest first, until the queue is empty. Consecutive
    /// messages go pipelined, up to [`SEND_WINDOW`] in flight; the server keeps their order
    /// through refusals (a refused one holds back the rest until it is sent again), and so
    /// does this loop: it always starts again from the oldest message not acknowledged.
    async fn flush_queue(&self, conn: &mut Conn) -> Result<(), End> {
        loop {
            let items = self
                .store
                .next_items(self.window.load(Ordering::Relaxed).clamp(1, SEND_WINDOW))
                .await
                .map_err(|_| lost(None))?;
            let mut items = items.into_iter();
            match items.next() {
                None => return Ok(()),
                Some(first @ Queued::Send { .. }) => {
                    // The sends that come before the next command go as one window.
                    let sends = std::iter::once(first)
                        .chain(items.take_while(|q| matches!(q, Queued::Send { .. })))
                        .collect();
                    self.send_window(conn, sends).await?
                }
                Some(Queued::Command {
                    command_id,
                    request,
                }) => self.command_one(conn, command_id, request).await?,
            }
        }
    }

    /// Sends several queued messages without waiting for each answer, then settles their
    /// answers in order. A message refused for a passing reason stays queued with those after
    /// it, and the next round starts from it (after the wait the server asked for).
    async fn send_window(&self, conn: &mut Conn, sends: Vec<Queued>) -> Result<(), End> {
        let fail = |_| lost(None);
        let ids: Vec<i64> = sends
            .iter()
            .filter_map(|q| match q {
                Queued::Send { outbox_id, .. } => Some(*outbox_id),
                Queued::Command { .. } => None,
            })
            .collect();
        self.store.mark_sending(&ids).await.map_err(fail)?;
        let mut pending = Vec::new();
        for item in sends {
            let Queued::Send {
                command_id,
                outbox_id,
                entry,
                body,
                client_ts,
            } = item
            else {
                continue;
            };
            let id = conn.send(&send_request(&entry, &body, client_ts)?).await?;
            pending.push((id, command_id, outbox_id, entry, body, client_ts));
        }
        let mut wait = None;
        let mut reconnect = false;
        let mut taken = 0u32;
        for (id, command_id, outbox_id, entry, body, client_ts) in pending {
            let answer = self.answer_to(conn, id).await?;
            // A server catching up says how long to wait: the window goes again on the same
            // connection, since every client reconnecting at once would only add to the load.
            if let Some(e) = refusal(
                &answer,
                &[
                    ErrorCode::RateLimited,
                    ErrorCode::OutOfOrder,
                    ErrorCode::Overloaded,
                ],
            ) {
                let ms = server_wait_ms(e.retry_after_ms, 100);
                wait = Some(wait.unwrap_or(0u64).max(ms));
            } else if refusal(&answer, &[ErrorCode::Internal]).is_some() {
                reconnect = true;
            } else {
                // An ack (also one behind a refusal: that send was stored already) or a
                // refusal for good.
                taken += 1;
                self.settle_send(&answer, command_id, outbox_id, entry, body, client_ts)
                    .await?
            }
        }
        let window = self.window.load(Ordering::Relaxed);
        let next = if wait.is_some() {
            taken.max(1)
        } else {
            window.saturating_mul(2)
        };
        self.window
            .store(next.clamp(1, SEND_WINDOW), Ordering::Relaxed);
        if reconnect {
            return Err(lost(None));
        }
        if let Some(ms) = wait {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(End::Shutdown),
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            }
        }
        Ok(())
    }

    /// Applies the server's answer to one queued message: stored (acked), or refused for good
    /// (failed). The window has taken the refusals that pass (waited out, or the connection
    /// given up) before.
    async fn settle_send(
        &self,
        answer: &ServerFrame,
        command_id: i64,
        outbox_id: i64,
        entry: OutboxEntry,
        body: Value,
        client_ts: i64,
    ) -> Result<(), End> {
        let fail = |_| lost(None);
        match answer {
            ServerFrame::Reply(anchorage_protocol::Reply {
                body: ReplyBody::Ack(ack),
                ..
            }) => {
                let seq = ack.seq;
                // Shown at its place at once; the anchor moves when the live copy or a sync
                // confirms nothing is missing before it.
                let (sender, device) = self.me();
                let own = LocalMessage {
                    conv: entry.conv.clone(),
                    seq: Some(seq),
                    sender,
                    device,
                    client_msg_id: entry.client_msg_id.clone(),
                    body,
                    client_ts,
                    server_ts: Some(ack.server_ts),
                    refs: entry.refs.clone(),
                    ..LocalMessage::default()
                };
                self.store
                    .settle_acked(outbox_id, command_id, own)
                    .await
                    .map_err(fail)?;
                self.emit(ClientEvent::Acked {
                    client_msg_id: entry.client_msg_id,
                    seq,
                });
            }
            answer => {
                let reason = reason(answer);
                self.store
                    .settle_failed(outbox_id, command_id, &reason)
                    .await
                    .map_err(fail)?;
                self.emit(ClientEvent::Failed {
                    client_msg_id: entry.client_msg_id,
                    reason,
                });
            }
        }
        Ok(())
    }

    async fn command_one(
        &self,
        conn: &mut Conn,
        command_id: i64,
        request: Option<RequestBody>,
    ) -> Result<(), End> {
        let fail = |_| lost(None);
        let Some(request) = request else {
            return self
                .store
                .finish_command(command_id, Some("unreadable queued command"))
                .await
                .map_err(fail);
        };
        let answer = self.request_or_wait(conn, request).await?;
        match answer {
            ServerFrame::Error(e) if PASSING_OR_OUT_OF_ORDER.contains(&e.code) => {
                return Err(lost(None));
            }
            ServerFrame::Error(e) => {
                self.store
                    .finish_command(command_id, Some(&e.message))
                    .await
                    .map_err(fail)?;
            }
            ServerFrame::Reply(reply) => {
                self.store
                    .finish_command(command_id, None)
                    .await
                    .map_err(fail)?;
                if let ReplyBody::Ok(anchorage_protocol::Done {
                    conv: Some(conv), ..
                }) = reply.body
                {
                    self.request_sync(conv.as_str());
                }
            }
            // Not what a command gets: it ends refused, as a send answered so would.
            ServerFrame::Delta(_) => {
                self.store
                    .finish_command(command_id, Some("unexpected answer"))
                    .await
                    .map_err(fail)?;
            }
            ServerFrame::Push(_) => {}
        }
        Ok(())
    }

    /// Tells the server what this device has stored (downlink acknowledgements).
    async fn acknowledge(&self, conn: &mut Conn) -> Result<(), End> {
        let pending: Vec<(String, u64)> =
            std::mem::take(&mut *self.to_ack.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (conv, seq) in pending {
            let Ok(conv) = ConversationId::parse(conv) else {
                continue;
            };
            self.request(conn, MarkReceived { conv, seq }.into())
                .await?;
        }
        Ok(())
    }
}

/// How often a request answered `overloaded` is asked again on the same connection. The edge
/// says so while a projection catches up, usually for well under a second; reconnecting would
/// only add a backoff and a `hello`.
const OVERLOADED_TRIES: u32 = 5;

/// Refusals after which the connection is given up and the request sent again on the next.
const PASSING: &[ErrorCode] = &[ErrorCode::Internal, ErrorCode::Overloaded];
/// The same, and `out_of_order` (a send before it was refused).
const PASSING_OR_OUT_OF_ORDER: &[ErrorCode] = &[
    ErrorCode::Internal,
    ErrorCode::Overloaded,
    ErrorCode::OutOfOrder,
];

/// The error frame, if `answer` is a refusal with one of `codes`.
pub(crate) fn refusal<'a>(answer: &'a ServerFrame, codes: &[ErrorCode]) -> Option<&'a ErrorFrame> {
    match answer {
        ServerFrame::Error(e) if codes.contains(&e.code) => Some(e),
        _ => None,
    }
}

/// How long the server asked to wait (a second if it did not say), within
/// [`server_wait_ms`]'s bounds.
fn retry_after(e: &ErrorFrame) -> Duration {
    Duration::from_millis(server_wait_ms(e.retry_after_ms, 1000))
}

/// A wait the server names in milliseconds (`fallback` if it did not), never shorter than
/// [`MIN_SERVER_WAIT_MS`] — a server saying 0 does not drive a loop — nor longer than
/// [`MAX_SERVER_WAIT_MS`].
fn server_wait_ms(ms: Option<u64>, fallback: u64) -> u64 {
    ms.unwrap_or(fallback)
        .clamp(MIN_SERVER_WAIT_MS, MAX_SERVER_WAIT_MS)
}

/// No wait a server asks for is taken shorter than this.
const MIN_SERVER_WAIT_MS: u64 = 50;
/// No wait a server asks for is taken longer than this.
const MAX_SERVER_WAIT_MS: u64 = 600_000;
/// The longest wait for a projection catching up between two asks.
const OVERLOADED_WAIT: Duration = Duration::from_secs(5);

/// Why a request was refused, for the app.
pub(crate) fn reason(answer: &ServerFrame) -> String {
    match answer {
        ServerFrame::Error(e) => e.message.clone(),
        other => format!("unexpected answer {other:?}"),
    }
}

/// The `send` of a queued message.
fn send_request(entry: &OutboxEntry, body: &Value, client_ts: i64) -> Result<RequestBody, End> {
    let (Ok(conv), Ok(client_msg_id)) = (
        ConversationId::parse(entry.conv.as_str()),
        ClientMsgId::parse(entry.client_msg_id.as_str()),
    ) else {
        return Err(lost(None));
    };
    let mentions = entry
        .refs
        .mentions
        .iter()
        .map(UserId::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| lost(None))?;
    Ok(SendMessage {
        conv,
        client_msg_id,
        body: body.clone(),
        client_ts,
        retry: entry.attempts > 0,
        reply_to: entry.refs.reply_to,
        mentions,
        mention_all: entry.refs.mention_all,
        attachments: entry.refs.attachments.clone(),
    }
    .into())
}

impl Conn {
    /// Sends a request under the next id; returns the id.
    async fn send(&mut self, request: &RequestBody) -> Result<u64, End> {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::Text(Request::encode(id, request).into()))
            .await
            .map_err(|_| lost(None))?;
        Ok(id)
    }
}

/// The next frame; the end of the connection (with its close code) otherwise. A frame this
/// version cannot read is skipped.
async fn next_frame(conn: &mut Conn) -> Result<ServerFrame, End> {
    loop {
        match conn.ws.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str(&t) {
                Ok(frame) => return Ok(frame),
                Err(err) => tracing::debug!(error = %err, "unreadable frame"),
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(lost(frame.map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(lost(None)),
        }
    }
}

/// A message from the server as the local store keeps it.
pub(crate) fn to_local(m: WireMessage) -> LocalMessage {
    LocalMessage {
        conv: m.conv.to_string(),
        seq: Some(m.seq),
        sender: m.sender,
        device: m.device,
        client_msg_id: m.client_msg_id,
        body: m.body,
        client_ts: m.client_ts,
        server_ts: Some(m.server_ts),
        refs: Refs {
            reply_to: m.reply_to,
            mentions: m.mentions,
            mention_all: m.mention_all,
            attachments: m.attachments,
        },
        edits: m.edits,
        revoked: m.revoked,
        pinned: m.pinned,
        reactions: m.reactions,
    }
}

/// What the store does with an entry of a conversation: keep a message, apply a change.
fn to_entry(m: WireMessage) -> Entry {
    match (m.kind, m.target) {
        (EntryKind::Message, _) | (_, None) => {
            let version = m.version.unwrap_or(m.seq);
            Entry::Message(Box::new((to_local(m), version)))
        }
        (kind, Some(target)) => Entry::Change(Change {
            seq: m.seq,
            target,
            sender: m.sender,
            kind,
            body: m.body,
            emoji: m.emoji,
            on: m.added.unwrap_or(m.pinned),
        }),
    }
}

/// JSON bytes of anchors a `hello` carries at most (the edge's frames are 64 KiB by default).
const ANCHOR_BYTES: usize = 32_768;

/// The anchors of `held` (conversation, anchor, read marker) a `hello` carries: the most
/// recently active first, as many as fit in `max_bytes` of JSON, so a user in thousands of
/// conversations still signs in. The server compares the rest with what this device
/// acknowledged (`received`): at worst one it summarizes holds nothing new.
fn anchors_within(mut held: Vec<(String, u64, u64)>, max_bytes: usize) -> Vec<ConvAnchor> {
    held.sort_by_key(|h| std::cmp::Reverse(h.1));
    let mut bytes = 0;
    let mut out = Vec::new();
    for (conv, seq, read) in held {
        let Ok(conv) = ConversationId::parse(conv) else {
            continue;
        };
        let anchor = ConvAnchor {
            conv,
            seq,
            read: Some(read),
        };
        bytes += serde_json::to_string(&anchor).map_or(0, |s| s.len()) + 1;
        if bytes > max_bytes {
            break;
        }
        out.push(anchor);
    }
    out
}

#[cfg(test)]
mod anchor_tests {
    use super::*;

    #[test]
    fn a_hello_carries_the_most_recent_anchors_that_fit() {
        let held: Vec<_> = (1..=5_000u64)
            .map(|n| (format!("conversation-number-{n:06}"), n * 10, n))
            .collect();
        let anchors = anchors_within(held, ANCHOR_BYTES);
        let json = serde_json::to_string(&anchors).unwrap();
        assert!(json.len() <= ANCHOR_BYTES + 1, "{} bytes", json.len());
        assert!(anchors.len() > 300, "{} anchors", anchors.len());
        assert_eq!(anchors[0].seq, 50_000, "the most recent first");
        assert!(anchors.windows(2).all(|w| w[0].seq > w[1].seq));
        let few = anchors_within(vec![("a".into(), 1, 0), ("bad id!".into(), 2, 0)], 100);
        assert_eq!(few.len(), 1, "an id that does not parse is left out");
    }
}
