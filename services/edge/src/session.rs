//! What a signed-in connection can ask, and the answers.
//!
//! Every request is authorized against the caller's memberships, which the hub keeps current
//! from the live membership events: only members read or write a conversation, only owners and
//! admins add or remove others. Membership commands are decided on the group's current version
//! and published with `Nats-Expected-Last-Subject-Sequence`; a lost race re-reads and decides
//! again, up to three times, then answers `conflict`.

use anchorage_schema::now_ms;
use std::collections::HashMap;
use std::time::Duration;

use anchorage_bus::PublishError;
use anchorage_protocol::{ClientFrame, ConvChange, ErrorCode, Message, RequestId, ServerFrame};
use anchorage_schema::event::{
    GroupCreated, GroupDismissed, GroupProfileChanged, MemberMuteChanged, MemberProfileChanged,
    MemberRoleChanged, MembersAdded, MembersRemoved, MessageSent, ReadMarked, RemovalReason, Role,
};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, Envelope, Event, EventId, GroupId, Seq, UserId,
};

use crate::EdgeState;
use crate::auth::Claims;
use crate::hub::ConnHandle;
use crate::ws::error_frame;

/// Most messages one `sync` or `history` answer carries.
const MAX_PAGE: u32 = 500;
/// Conversations per `welcome`; more come with a cursor.
const CHANGES_PER_WELCOME: u32 = 200;
/// Bytes of message bodies one `sync` or `history` answer carries at most (at least one
/// message); the rest comes with `more`.
const PAGE_BYTES: usize = 1024 * 1024;
/// Unread counts stop counting here.
const UNREAD_CAP: u32 = 1000;

type Answer = Result<ServerFrame, (ErrorCode, String)>;

fn internal(err: impl std::fmt::Display) -> (ErrorCode, String) {
    tracing::warn!(error = %err, "request failed");
    (
        ErrorCode::Internal,
        format!("temporary failure, retry: {err}"),
    )
}

/// A publish that failed: `overloaded` (retry after a moment, with the same ids) when the
/// servers are passing through an election, a restart or back-pressure; `internal` otherwise.
fn publish_failed(err: PublishError) -> (ErrorCode, String) {
    if err.is_transient() {
        tracing::info!(error = %err, "message store unavailable for a moment");
        (
            ErrorCode::Overloaded,
            "the message store is unavailable for a moment (e.g. electing a leader); retry \
             with the same ids"
                .into(),
        )
    } else {
        internal(err)
    }
}

/// A request to NATS that failed (a server restarting, a leader election, a lost
/// connection): `overloaded`, to retry after a moment.
pub(crate) fn bus_failed(err: anchorage_bus::BusError) -> (ErrorCode, String) {
    tracing::info!(error = %err, "NATS unavailable for a moment");
    (
        ErrorCode::Overloaded,
        "the message store is unavailable for a moment; retry".into(),
    )
}

fn forbidden(conv: &ConversationId) -> (ErrorCode, String) {
    (ErrorCode::Forbidden, format!("not a member of {conv}"))
}

fn to_message(row: anchorage_store::MessageRow) -> Option<Message> {
    Some(Message {
        conv: ConversationId::parse(row.conv).ok()?,
        seq: row.seq,
        sender: row.sender,
        device: row.device,
        client_msg_id: row.client_msg_id,
        body: serde_json::from_str(&row.body).unwrap_or(serde_json::Value::String(row.body)),
        client_ts: row.client_ts,
        server_ts: row.server_ts,
    })
}

/// Polls `reached` every 10 ms until it holds or `limit` passes; returns whether it held.
async fn wait_for<F, Fut>(limit: Duration, mut reached: F) -> Result<bool, (ErrorCode, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, (ErrorCode, String)>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if reached().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One signed-in connection.
#[derive(Debug)]
pub struct Session {
    pub(crate) state: EdgeState,
    pub(crate) claims: Claims,
    pub(crate) conn: ConnHandle,
    /// The send that was refused for a passing reason: later sends are refused until it is
    /// sent again.
    blocked: Option<Box<(ConversationId, ClientMsgId)>>,
}

/// The answer of a send, once JetStream acknowledged it.
pub type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = SendAnswer> + Send>>;

/// The answer to a send, and which send it was if it was refused for a passing reason.
#[derive(Debug)]
pub struct SendAnswer {
    pub frame: ServerFrame,
    pub refused: Option<Box<(ConversationId, ClientMsgId)>>,
}

/// Whether a refusal is one the client retries (and so must keep its order through).
fn passing(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RateLimited | ErrorCode::Overloaded | ErrorCode::Internal
    )
}

/// What a send turned into: its answer, or the acknowledgement that will give it.
enum SendStart {
    Done(ServerFrame),
    Pending(AckFuture),
}

/// What a group command is decided on, read in one snapshot at the group's current version:
/// the caller's role and the roles of the members the command names (absent: not a member).
pub(crate) struct Decision {
    pub my_role: Option<Role>,
    pub roles: HashMap<UserId, Role>,
}

impl Decision {
    fn role(&self, user: &UserId) -> Option<Role> {
        self.roles.get(user).copied()
    }
}

impl Session {
    pub fn new(state: EdgeState, claims: Claims, conn: ConnHandle) -> Self {
        Self {
            state,
            claims,
            conn,
            blocked: None,
        }
    }

    /// Queues an answer (waits for a free slot: answers are never dropped; past the byte
    /// bounds the connection is closed as too slow).
    pub async fn reply(&self, f: ServerFrame) {
        let frame = crate::ws::frame(&f);
        drop(f);
        self.conn.reply(frame).await;
    }

    fn actor(&self) -> Actor {
        Actor::User {
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
        }
    }

    pub(crate) fn member(&self, conv: &ConversationId) -> Result<(), (ErrorCode, String)> {
        if self.state.hub.is_member(&self.claims.sub, conv) {
            Ok(())
        } else {
            Err(forbidden(conv))
        }
    }

    /// Answers `hello`: the conversations changed since the client's anchors.
    pub async fn hello(&mut self, id: RequestId, hello: &ClientFrame) {
        let ClientFrame::Hello {
            anchors, cursor, ..
        } = hello
        else {
            return;
        };
        let answer = self.changes(id, anchors, cursor.as_deref()).await;
        self.reply(answer.unwrap_or_else(|(code, message)| error_frame(Some(id), code, message)))
            .await;
    }

    async fn changes(
        &self,
        id: RequestId,
        anchors: &[anchorage_protocol::ConvAnchor],
        cursor: Option<&str>,
    ) -> Answer {
        let store = &self.state.store;
        // Everything stored before the live subscriptions were in place must be in the
        // summary: wait (briefly) for the projection to get there. If it does not (the
        // projector is down or far behind), each conversation's last seq comes from the stream
        // itself, so no change is left out.
        let end = self
            .state
            .bus
            .stream_state(stream::MESSAGES)
            .await
            .map_err(bus_failed)?
            .last_seq;
        let projected = self.messages_projected(end).await?;
        let anchors: HashMap<&str, u64> =
            anchors.iter().map(|a| (a.conv.as_str(), a.seq)).collect();
        let user = self.claims.sub.as_str();
        let states = store
            .conversation_states(
                user,
                self.claims.device.as_str(),
                cursor.unwrap_or(""),
                CHANGES_PER_WELCOME,
            )
            .await
            .map_err(internal)?;
        let next_cursor = (states.len() == CHANGES_PER_WELCOME as usize)
            .then(|| states.last().map(|s| s.conv.clone()))
            .flatten();
        let mut states = states;
        if !projected && next_cursor.is_none() {
            // Conversations joined since the projection stopped: the edge's own view of the
            // membership stream has them; their history is all in the stream.
            let known: std::collections::HashSet<String> =
                states.iter().map(|s| s.conv.clone()).collect();
            for conv in self.state.hub.conversations_of(&self.claims.sub) {
                if !known.contains(conv.as_str()) {
                    states.push(anchorage_store::ConversationState {
                        conv: conv.to_string(),
                        last_seq: 0,
                        read_seq: 0,
                        delivered_seq: 0,
                    });
                }
            }
        }
        let mut changes = Vec::new();
        for s in states {
            let anchor = anchors
                .get(s.conv.as_str())
                .copied()
                .unwrap_or(s.delivered_seq);
            let Ok(conv) = ConversationId::parse(s.conv.clone()) else {
                continue;
            };
            let last_seq = if projected {
                s.last_seq
            } else {
                self.conversation_end(&conv).await?.0.max(s.last_seq)
            };
            if last_seq <= anchor {
                continue;
            }
            let unread = store
                .count_after(&s.conv, s.read_seq, UNREAD_CAP)
                .await
                .map_err(internal)?;
            let last_message = store
                .messages_before(&s.conv, 0, 1)
                .await
                .map_err(internal)?
                .into_iter()
                .next()
                .and_then(to_message);
            changes.push(ConvChange {
                conv,
                last_seq,
                unread,
                read_seq: s.read_seq,
                last_message,
            });
        }
        Ok(ServerFrame::Welcome {
            id,
            protocol: anchorage_protocol::PROTOCOL_VERSION,
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
            max_frame_bytes: self.state.config.max_frame_bytes,
            changes,
            cursor: next_cursor,
        })
    }

    /// Handles one request and queues its answer — except a send: its answer is returned, for
    /// the caller to queue after the answers of the sends before it.
    pub async fn handle(&mut self, frame: ClientFrame) -> Option<AckFuture> {
        let id = crate::ws::request_id(&frame);
        let answer = match frame {
            ClientFrame::Ping { id } => Ok(ServerFrame::Pong { id }),
            ClientFrame::Hello {
                id,
                anchors,
                cursor,
                ..
            } => self.changes(id, &anchors, cursor.as_deref()).await,
            ClientFrame::Send {
                id,
                conv,
                client_msg_id,
                body,
                client_ts,
                retry,
            } => {
                // Every answer to a send takes its place behind the sends before it, also one
                // given at once (a refusal, a duplicate): answers keep the order of requests.
                let frame = if let Some(err) = self.out_of_order(&conv, &client_msg_id) {
                    error_frame(Some(id), err.0, err.1)
                } else {
                    let send = (conv.clone(), client_msg_id.clone());
                    match self
                        .start_send(id, conv, client_msg_id, body, client_ts, retry)
                        .await
                    {
                        Ok(SendStart::Pending(ack)) => return Some(ack),
                        Ok(SendStart::Done(frame)) => frame,
                        Err(err) => {
                            if passing(err.0) {
                                self.block(send.0, send.1);
                            }
                            error_frame(Some(id), err.0, err.1)
                        }
                    }
                };
                return Some(Box::pin(std::future::ready(SendAnswer {
                    frame,
                    refused: None,
                })));
            }
            ClientFrame::Sync {
                id,
                conv,
                after,
                limit,
            } => self.sync(id, conv, after, limit).await,
            ClientFrame::History {
                id,
                conv,
                before,
                limit,
            } => self.history(id, conv, before, limit).await,
            ClientFrame::Read { id, conv, seq } => self.read(id, conv, seq).await,
            ClientFrame::Received { id, conv, seq } => self.received(id, conv, seq).await,
            ClientFrame::OpenDirect { id, peer } => self.open_direct(id, peer).await,
            ClientFrame::CreateGroup {
                id,
                group,
                title,
                members,
            } => self.create_group(id, group, title, members).await,
            ClientFrame::AddMembers { id, group, members } => {
                self.change_members(id, group, members, true).await
            }
            ClientFrame::RemoveMembers { id, group, members } => {
                self.change_members(id, group, members, false).await
            }
            ClientFrame::Leave { id, group } => self.leave(id, group).await,
            ClientFrame::SetRole {
                id,
                group,
                member,
                role,
            } => self.set_role(id, group, member, role).await,
            ClientFrame::MuteMember {
                id,
                group,
                member,
                until,
            } => self.mute(id, group, member, until).await,
            ClientFrame::SetNickname {
                id,
                group,
                member,
                nickname,
            } => self.set_nickname(id, group, member, nickname).await,
            ClientFrame::UpdateGroup {
                id,
                group,
                title,
                avatar,
            } => self.update_group(id, group, title, avatar).await,
            ClientFrame::DismissGroup { id, group } => self.dismiss(id, group).await,
            ClientFrame::GroupVersions { id, cursor } => self.group_versions(id, cursor).await,
            ClientFrame::MembersSync {
                id,
                group,
                epoch,
                version,
                digest,
            } => self.members_sync(id, group, epoch, version, digest).await,
            ClientFrame::MembersFetch {
                id,
                group,
                epoch,
                anchor,
                cursor,
                buckets,
            } => {
                self.members_fetch(id, group, epoch, anchor, cursor, buckets)
                    .await
            }
            ClientFrame::MembersSyncBatch {
                id,
                groups,
                budget_bytes,
                cursor,
            } => {
                self.members_sync_batch(id, groups, budget_bytes, cursor)
                    .await
            }
            ClientFrame::MembersSearch {
                id,
                group,
                query,
                limit,
            } => self.members_search(id, group, query, limit).await,
            ClientFrame::MembersUnsubscribe { id, group } => self.members_unsubscribe(id, group),
        };
        let frame = answer.unwrap_or_else(|(code, message)| error_frame(id, code, message));
        self.reply(frame).await;
        None
    }

    /// Queues the answer of a send whose acknowledgement came (or failed).
    pub async fn answer_send(&mut self, answer: SendAnswer) {
        if let Some(refused) = answer.refused {
            let (conv, client_msg_id) = *refused;
            self.block(conv, client_msg_id);
        }
        self.reply(answer.frame).await;
    }

    /// Remembers a send refused for a passing reason (the first one: the client retries from
    /// there).
    pub(crate) fn block(&mut self, conv: ConversationId, client_msg_id: ClientMsgId) {
        if self.blocked.is_none() {
            self.blocked = Some(Box::new((conv, client_msg_id)));
        }
    }

    /// Refuses a send that would overtake a refused one; the refused one itself, sent again,
    /// lifts the block.
    fn out_of_order(
        &mut self,
        conv: &ConversationId,
        client_msg_id: &ClientMsgId,
    ) -> Option<(ErrorCode, String)> {
        let blocked = self.blocked.as_deref()?;
        if (&blocked.0, &blocked.1) == (conv, client_msg_id) {
            self.blocked = None;
            return None;
        }
        Some((
            ErrorCode::OutOfOrder,
            format!(
                "{} in {} was refused: send it again before later messages",
                blocked.1, blocked.0
            ),
        ))
    }

    /// Checks and hands a message to the stream without waiting for it to be stored: the
    /// answer comes from the returned acknowledgement. Messages started one after another are
    /// stored in that order, so a connection can keep many sends in flight.
    async fn start_send(
        &self,
        id: RequestId,
        conv: ConversationId,
        client_msg_id: ClientMsgId,
        body: serde_json::Value,
        client_ts: i64,
        retry: bool,
    ) -> Result<SendStart, (ErrorCode, String)> {
        let user = &self.claims.sub;
        // The membership position this send is decided on travels with the message: edges
        // deliver it only once their view has reached it.
        let position = self
            .state
            .hub
            .member_position(user, &conv)
            .ok_or_else(|| forbidden(&conv))?;
        if let Some(until) = self.state.hub.muted_until(user, &conv)
            && until > now_ms()
        {
            return Err((
                ErrorCode::Forbidden,
                format!("muted in {conv} until {until}"),
            ));
        }
        // A retry may come after the stream's duplicate window: then the projection is what
        // says whether the first attempt was stored, and it can say so only once it holds
        // everything the stream holds for this conversation. Until then: come back later,
        // never a second copy.
        if retry && !self.settled_conversation(&conv).await? {
            return Err((
                ErrorCode::Overloaded,
                format!("the history of {conv} is catching up; retry {client_msg_id} in a moment"),
            ));
        }
        // A repeat after the stream's duplicate window must get the original from the
        // history, never a second copy the history would not hold. A send can be such a
        // repeat only if it says so (`retry`) or was written long enough ago (its `client_ts`
        // older than half the window, or from a clock running ahead): only those pay for the
        // history lookup, fresh sends go straight to the stream (which deduplicates them).
        let age = now_ms().saturating_sub(client_ts);
        let maybe_repeat = retry || !(-1_000..=self.state.fresh_send_ms).contains(&age);
        if maybe_repeat
            && let Some(row) = self
                .state
                .store
                .message_by_client_id(
                    conv.as_str(),
                    user.as_str(),
                    self.claims.device.as_str(),
                    client_msg_id.as_str(),
                )
                .await
                .map_err(internal)?
        {
            return Ok(SendStart::Done(ServerFrame::Ack {
                id,
                client_msg_id,
                seq: row.seq,
                server_ts: row.server_ts,
                duplicate: true,
            }));
        }
        // The idempotency key names the conversation: the same client id in two conversations
        // is two messages.
        let event_id = EventId::parse(format!(
            "{user}:{}:{conv}:{client_msg_id}",
            self.claims.device
        ))
        .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let server_ts = now_ms();
        let env = Envelope::new(
            event_id,
            server_ts,
            self.actor(),
            MessageSent {
                conv: conv.clone(),
                sender: user.clone(),
                device: self.claims.device.clone(),
                client_msg_id: client_msg_id.clone(),
                body,
                client_ts,
            },
        );
        let pending = self
            .state
            .bus
            .publish_event_pipelined(&subjects::message(&conv), &env, Some(Seq(position)))
            .await
            .map_err(publish_failed)?;
        let bus = self.state.bus.clone();
        Ok(SendStart::Pending(Box::pin(async move {
            let published = match pending.stored().await {
                Ok(p) => p,
                Err(err) => {
                    let err = publish_failed(err);
                    let refused = passing(err.0).then(|| Box::new((conv, client_msg_id)));
                    return SendAnswer {
                        frame: error_frame(Some(id), err.0, err.1),
                        refused,
                    };
                }
            };
            let server_ts = if published.duplicate {
                // The original's time, from the stored copy.
                bus.stored_event(stream::MESSAGES, published.seq)
                    .await
                    .map(|e| e.occurred_at)
                    .unwrap_or(server_ts)
            } else {
                server_ts
            };
            SendAnswer {
                frame: ServerFrame::Ack {
                    id,
                    client_msg_id,
                    seq: published.seq.0,
                    server_ts,
                    duplicate: published.duplicate,
                },
                refused: None,
            }
        })))
    }

    /// Waits (briefly) until the message projection holds everything the stream holds for
    /// `conv` right now, so a sync never answers from a projection that lags behind messages
    /// the client may have missed live. Returns whether it does; if not (the projector is far
    /// behind), the answer says `more` and the client asks again.
    async fn settled_conversation(
        &self,
        conv: &ConversationId,
    ) -> Result<bool, (ErrorCode, String)> {
        let last = self.conversation_end(conv).await?;
        self.messages_projected(last).await
    }

    /// The seq of the conversation's last message, from the stream itself.
    async fn conversation_end(&self, conv: &ConversationId) -> Result<Seq, (ErrorCode, String)> {
        self.state
            .bus
            .last_subject_seq(stream::MESSAGES, &subjects::message(conv))
            .await
            .map_err(bus_failed)
    }

    /// Waits (up to 2 s) until the message projection has applied the MESSAGES stream up to
    /// `seq` — its checkpoint, not a conversation's last seq, so an event the projection set
    /// aside holds nothing up. Returns whether it got there.
    async fn messages_projected(&self, seq: Seq) -> Result<bool, (ErrorCode, String)> {
        let store = &self.state.store;
        wait_for(Duration::from_secs(2), || async {
            Ok(store
                .checkpoint("messages")
                .await
                .map_err(internal)?
                .map_or(0, |c| c.last_seq)
                >= seq.0)
        })
        .await
    }

    async fn sync(
        &self,
        id: RequestId,
        conv: ConversationId,
        after: u64,
        limit: Option<u32>,
    ) -> Answer {
        self.member(&conv)?;
        let settled = self.settled_conversation(&conv).await?;
        let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let mut rows = self
            .state
            .store
            .messages_after(conv.as_str(), after, limit + 1)
            .await
            .map_err(internal)?;
        if !settled && rows.is_empty() {
            // Nothing to show yet, and more may be coming: say when to ask again rather than
            // an empty page with `more`.
            return Err((
                ErrorCode::Overloaded,
                format!("the history of {conv} is catching up; sync again in a moment"),
            ));
        }
        let more = rows.len() > limit as usize || !settled;
        rows.truncate(limit as usize);
        let more = cut_to_bytes(&mut rows) || more;
        Ok(ServerFrame::Messages {
            id,
            conv,
            messages: rows.into_iter().filter_map(to_message).collect(),
            more,
        })
    }

    async fn history(
        &self,
        id: RequestId,
        conv: ConversationId,
        before: u64,
        limit: Option<u32>,
    ) -> Answer {
        self.member(&conv)?;
        let limit = limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let mut rows = self
            .state
            .store
            .messages_before(conv.as_str(), before, limit + 1)
            .await
            .map_err(internal)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let more = cut_to_bytes(&mut rows) || more;
        Ok(ServerFrame::Messages {
            id,
            conv,
            messages: rows.into_iter().filter_map(to_message).collect(),
            more,
        })
    }

    /// Refuses a position past the conversation's last message: a marker there would hide
    /// every later message from the device's summaries.
    async fn within_conversation(
        &self,
        conv: &ConversationId,
        seq: u64,
    ) -> Result<(), (ErrorCode, String)> {
        let last = self.conversation_end(conv).await?;
        if seq > last.0 {
            return Err((
                ErrorCode::InvalidRequest,
                format!("seq {seq} is past the last message of {conv} ({})", last.0),
            ));
        }
        Ok(())
    }

    async fn read(&self, id: RequestId, conv: ConversationId, seq: u64) -> Answer {
        self.member(&conv)?;
        self.within_conversation(&conv, seq).await?;
        let user = &self.claims.sub;
        let event_id = EventId::parse(format!("{user}:read:{conv}:{seq}"))
            .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let env = Envelope::new(
            event_id,
            now_ms(),
            self.actor(),
            ReadMarked {
                user: user.clone(),
                conv: conv.clone(),
                read_seq: seq,
            },
        );
        self.state
            .bus
            .publish_event(&subjects::read(user, &conv), &env, None)
            .await
            .map_err(publish_failed)?;
        Ok(ServerFrame::Ok {
            id,
            conv: Some(conv),
            seq: Some(seq),
        })
    }

    async fn received(&self, id: RequestId, conv: ConversationId, seq: u64) -> Answer {
        self.member(&conv)?;
        self.within_conversation(&conv, seq).await?;
        self.state
            .store
            .set_delivered(
                self.claims.sub.as_str(),
                self.claims.device.as_str(),
                conv.as_str(),
                seq,
            )
            .await
            .map_err(internal)?;
        Ok(ServerFrame::Ok {
            id,
            conv: Some(conv),
            seq: Some(seq),
        })
    }

    /// Opens the 1:1 conversation with `peer`: joins the existing one only if its members are
    /// exactly the caller and the peer (under its id, or the id it had before direct ids were
    /// cryptographic), otherwise creates it. Who is a member is decided by the stream and the
    /// projection, never assumed here.
    async fn open_direct(&self, id: RequestId, peer: UserId) -> Answer {
        let me = &self.claims.sub;
        if &peer == me {
            return Err((
                ErrorCode::InvalidRequest,
                "a 1:1 conversation needs another user".into(),
            ));
        }
        let conv = ConversationId::direct(me, &peer);
        // Twice: the second time after losing the race to create it (to the peer).
        for _ in 0..2 {
            for candidate in [conv.clone(), ConversationId::legacy_direct(me, &peer)] {
                if let Some(answer) = self.enter_direct(id, &candidate, &peer).await? {
                    return Ok(answer);
                }
            }
            let group = GroupId::parse(conv.as_str()).map_err(internal)?;
            let env = Envelope::new(
                EventId::parse(format!("direct:{conv}")).map_err(internal)?,
                now_ms(),
                self.actor(),
                GroupCreated {
                    group: group.clone(),
                    owner: me.clone(),
                    title: String::new(),
                    members: vec![peer.clone()],
                    direct: true,
                },
            );
            match self
                .state
                .bus
                .publish_event(&subjects::membership(&group), &env, Some(Seq(0)))
                .await
            {
                Ok(p) if !p.duplicate => {
                    self.state.hub.joined(me, conv.clone());
                    return Ok(ServerFrame::Ok {
                        id,
                        conv: Some(conv),
                        seq: Some(p.seq.0),
                    });
                }
                // It exists (the peer opened it a moment ago): look again.
                Ok(_) | Err(PublishError::Conflict { .. }) => {}
                Err(err) => return Err(publish_failed(err)),
            }
        }
        Err((
            ErrorCode::Conflict,
            format!("the conversation with {peer} is being created; retry"),
        ))
    }

    /// Enters `conv` if it is the caller's and `peer`'s 1:1 conversation: answers `ok` (after
    /// bringing the caller back if they had left it), `None` if it does not exist or is not
    /// theirs.
    async fn enter_direct(
        &self,
        id: RequestId,
        conv: &ConversationId,
        peer: &UserId,
    ) -> Result<Option<ServerFrame>, (ErrorCode, String)> {
        let me = &self.claims.sub;
        let group = GroupId::parse(conv.as_str()).map_err(internal)?;
        let version = self.settled_version(&group).await?;
        if version.0 == 0 {
            return Ok(None);
        }
        let (row, roles) = self
            .group_and_roles(&group, std::slice::from_ref(peer))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let pair = [me.as_str(), peer.as_str()];
        let theirs = row.direct
            && !row.dismissed
            && pair.contains(&row.owner.as_str())
            && row.member_count == roles.len() as u64;
        if !theirs {
            return Ok(None);
        }
        let mut seq = version;
        if !roles.contains_key(me) {
            // The caller had left: coming back is an event like any membership change.
            let env = Envelope::new(
                EventId::parse(format!("{me}:rejoin:{group}:{}", version.0)).map_err(internal)?,
                now_ms(),
                self.actor(),
                MembersAdded {
                    group: group.clone(),
                    members: vec![me.clone()],
                },
            );
            seq = match self
                .state
                .bus
                .publish_event(&subjects::membership(&group), &env, Some(version))
                .await
            {
                Ok(p) => p.seq,
                Err(PublishError::Conflict { .. }) => {
                    return Err((
                        ErrorCode::Conflict,
                        format!("{conv} changed meanwhile; retry"),
                    ));
                }
                Err(err) => return Err(publish_failed(err)),
            };
        }
        // Answer once this edge's view holds the membership, so the next send is accepted.
        self.state.hub.reach(seq.0).await;
        Ok(Some(ServerFrame::Ok {
            id,
            conv: Some(conv.clone()),
            seq: None,
        }))
    }

    async fn create_group(
        &self,
        id: RequestId,
        group: GroupId,
        title: String,
        members: Vec<UserId>,
    ) -> Answer {
        if group.is_direct() {
            return Err((
                ErrorCode::InvalidRequest,
                format!(
                    "group ids starting with {} are reserved for 1:1 conversations",
                    anchorage_schema::DIRECT_PREFIX
                ),
            ));
        }
        if members.len() > 1000 || title.len() > 200 {
            return Err((
                ErrorCode::InvalidRequest,
                "at most 1000 members and 200 bytes of title".into(),
            ));
        }
        let me = &self.claims.sub;
        let env = Envelope::new(
            EventId::parse(format!("create:{group}")).map_err(internal)?,
            now_ms(),
            self.actor(),
            GroupCreated {
                group: group.clone(),
                owner: me.clone(),
                title,
                members,
                direct: false,
            },
        );
        match self
            .state
            .bus
            .publish_event(&subjects::membership(&group), &env, Some(Seq(0)))
            .await
        {
            Ok(p) if !p.duplicate => {
                let conv = ConversationId::parse(group.as_str()).map_err(internal)?;
                self.state.hub.joined(me, conv.clone());
                Ok(ServerFrame::Ok {
                    id,
                    conv: Some(conv),
                    seq: Some(p.seq.0),
                })
            }
            Ok(_) | Err(PublishError::Conflict { .. }) => {
                Err((ErrorCode::Conflict, format!("group {group} already exists")))
            }
            Err(err) => Err(publish_failed(err)),
        }
    }

    /// Adds or removes members (owner and admins; only the owner removes admins; nobody
    /// removes the owner).
    async fn change_members(
        &self,
        id: RequestId,
        group: GroupId,
        members: Vec<UserId>,
        add: bool,
    ) -> Answer {
        if members.is_empty() || members.len() > 1000 {
            return Err((
                ErrorCode::InvalidRequest,
                "between 1 and 1000 members".into(),
            ));
        }
        self.group_command(id, &group, &members, "members", |d| {
            staff(d, &group)?;
            if add {
                return Ok(MembersAdded {
                    group: group.clone(),
                    members: members.clone(),
                }
                .into());
            }
            for (m, role) in &d.roles {
                if *role == Role::Owner || (*role == Role::Admin && d.my_role != Some(Role::Owner))
                {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("{m} cannot be removed by you"),
                    ));
                }
            }
            Ok(MembersRemoved {
                group: group.clone(),
                members: members.clone(),
                reason: RemovalReason::Kicked,
            }
            .into())
        })
        .await
    }

    async fn set_role(&self, id: RequestId, group: GroupId, member: UserId, role: Role) -> Answer {
        if role == Role::Owner {
            return Err((
                ErrorCode::InvalidRequest,
                "ownership cannot be given away; roles are admin or member".into(),
            ));
        }
        self.group_command(id, &group, std::slice::from_ref(&member), "role", |d| {
            if d.my_role != Some(Role::Owner) {
                return Err((
                    ErrorCode::Forbidden,
                    format!("only the owner changes roles in {group}"),
                ));
            }
            target_below(d, &member, Role::Owner)?;
            Ok(MemberRoleChanged {
                group: group.clone(),
                member: member.clone(),
                role,
            }
            .into())
        })
        .await
    }

    async fn mute(
        &self,
        id: RequestId,
        group: GroupId,
        member: UserId,
        until: Option<i64>,
    ) -> Answer {
        self.group_command(id, &group, std::slice::from_ref(&member), "mute", |d| {
            staff(d, &group)?;
            // Admins mute plain members; the owner mutes admins too.
            let ceiling = if d.my_role == Some(Role::Owner) {
                Role::Owner
            } else {
                Role::Admin
            };
            target_below(d, &member, ceiling)?;
            Ok(MemberMuteChanged {
                group: group.clone(),
                member: member.clone(),
                muted_until: until,
            }
            .into())
        })
        .await
    }

    async fn set_nickname(
        &self,
        id: RequestId,
        group: GroupId,
        member: UserId,
        nickname: Option<String>,
    ) -> Answer {
        if nickname.as_ref().is_some_and(|n| n.len() > 64) {
            return Err((
                ErrorCode::InvalidRequest,
                "a nickname has at most 64 bytes".into(),
            ));
        }
        let me = self.claims.sub.clone();
        self.group_command(id, &group, std::slice::from_ref(&member), "nick", |d| {
            if member != me {
                staff(d, &group)?;
            }
            if d.role(&member).is_none() {
                return Err((
                    ErrorCode::NotFound,
                    format!("{member} is not a member of {group}"),
                ));
            }
            Ok(MemberProfileChanged {
                group: group.clone(),
                member: member.clone(),
                nickname: nickname.clone(),
            }
            .into())
        })
        .await
    }

    async fn update_group(
        &self,
        id: RequestId,
        group: GroupId,
        title: Option<String>,
        avatar: Option<String>,
    ) -> Answer {
        if title.as_ref().is_some_and(|t| t.len() > 200)
            || avatar.as_ref().is_some_and(|a| a.len() > 1024)
            || (title.is_none() && avatar.is_none())
        {
            return Err((
                ErrorCode::InvalidRequest,
                "a title (at most 200 bytes) or an avatar (at most 1024 bytes)".into(),
            ));
        }
        self.group_command(id, &group, &[], "profile", |d| {
            staff(d, &group)?;
            Ok(GroupProfileChanged {
                group: group.clone(),
                title: title.clone(),
                avatar: avatar.clone(),
            }
            .into())
        })
        .await
    }

    async fn dismiss(&self, id: RequestId, group: GroupId) -> Answer {
        self.group_command(id, &group, &[], "dismiss", |d| {
            if d.my_role != Some(Role::Owner) {
                return Err((
                    ErrorCode::Forbidden,
                    format!("only the owner dismisses {group}"),
                ));
            }
            Ok(GroupDismissed {
                group: group.clone(),
            }
            .into())
        })
        .await
    }

    /// Decides a command on the group's current version and publishes its event with
    /// `Nats-Expected-Last-Subject-Sequence` of that version; a lost race decides again (up
    /// to three times), then answers `conflict`.
    async fn group_command<F>(
        &self,
        id: RequestId,
        group: &GroupId,
        targets: &[UserId],
        kind: &str,
        decide: F,
    ) -> Answer
    where
        F: Fn(&Decision) -> Result<Event, (ErrorCode, String)>,
    {
        let me = &self.claims.sub;
        let subject = subjects::membership(group);
        for attempt in 0..3u32 {
            let version = self.settled_version(group).await?;
            let (row, mut roles) = self.group_and_roles(group, targets).await?;
            let Some(row) = row.filter(|g| !g.dismissed) else {
                return Err((ErrorCode::NotFound, format!("group {group} does not exist")));
            };
            let my_role = roles.get(me).copied();
            if my_role.is_none() {
                // Whether two other users have a 1:1 conversation is nobody else's business.
                return Err(if row.direct {
                    (ErrorCode::NotFound, format!("group {group} does not exist"))
                } else {
                    (ErrorCode::Forbidden, format!("not a member of {group}"))
                });
            }
            if row.direct {
                return Err((
                    ErrorCode::Forbidden,
                    "a 1:1 conversation has fixed members and no roles".into(),
                ));
            }
            if !targets.contains(me) {
                roles.remove(me);
            }
            let event = decide(&Decision { my_role, roles })?;
            let env = Envelope::new(
                EventId::parse(format!("{me}:{kind}:{group}:{}", version.0)).map_err(internal)?,
                now_ms(),
                self.actor(),
                event,
            );
            match self
                .state
                .bus
                .publish_event(&subject, &env, Some(version))
                .await
            {
                Ok(p) => {
                    return Ok(ServerFrame::Ok {
                        id,
                        conv: ConversationId::parse(group.as_str()).ok(),
                        seq: Some(p.seq.0),
                    });
                }
                Err(PublishError::Conflict { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                Err(err) => return Err(publish_failed(err)),
            }
        }
        Err((
            ErrorCode::Conflict,
            format!("group {group} kept changing; read it again and retry"),
        ))
    }

    /// The group row and the roles of the caller and of `users` who are present members, read
    /// in one snapshot.
    async fn group_and_roles(
        &self,
        group: &GroupId,
        users: &[UserId],
    ) -> Result<(Option<anchorage_store::GroupRow>, HashMap<UserId, Role>), (ErrorCode, String)>
    {
        let mut tx = self.state.store.begin_read().await.map_err(internal)?;
        let row = tx.group(group.as_str()).await.map_err(internal)?;
        let ids: Vec<&str> = std::iter::once(&self.claims.sub)
            .chain(users)
            .map(UserId::as_str)
            .collect();
        let rows = tx
            .members_of(group.as_str(), &ids)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        let roles = rows
            .into_values()
            .filter(|m| m.removed_seq.is_none())
            .filter_map(|m| Some((UserId::parse(m.user).ok()?, Role::from_name(&m.role))))
            .collect();
        Ok((row, roles))
    }

    /// The group's version on the stream, once the projection has caught up with it.
    pub(crate) async fn settled_version(
        &self,
        group: &GroupId,
    ) -> Result<Seq, (ErrorCode, String)> {
        let subject = subjects::membership(group);
        let version = self
            .state
            .bus
            .last_subject_seq(stream::MEMBERSHIP, &subject)
            .await
            .map_err(bus_failed)?;
        let store = &self.state.store;
        wait_for(Duration::from_secs(2), || async {
            Ok(store
                .group_row(group.as_str())
                .await
                .map_err(internal)?
                .map_or(0, |g| g.version)
                >= version.0)
        })
        .await?;
        Ok(version)
    }

    async fn leave(&self, id: RequestId, group: GroupId) -> Answer {
        let me = &self.claims.sub;
        let conv = ConversationId::parse(group.as_str()).map_err(internal)?;
        self.member(&conv)?;
        if conv.is_direct() {
            return Err((
                ErrorCode::Forbidden,
                "a 1:1 conversation has fixed members and cannot be left".into(),
            ));
        }
        let role = self
            .state
            .store
            .member_role(group.as_str(), me.as_str())
            .await
            .map_err(internal)?;
        if role.as_deref() == Some("owner") {
            return Err((
                ErrorCode::Forbidden,
                format!("the owner cannot leave {group}: dismiss it instead"),
            ));
        }
        let env = Envelope::new(
            EventId::parse(format!("{me}:leave:{group}:{}", now_ms())).map_err(internal)?,
            now_ms(),
            self.actor(),
            MembersRemoved {
                group: group.clone(),
                members: vec![me.clone()],
                reason: RemovalReason::Left,
            },
        );
        let p = self
            .state
            .bus
            .publish_event(&subjects::membership(&group), &env, None)
            .await
            .map_err(publish_failed)?;
        Ok(ServerFrame::Ok {
            id,
            conv: Some(conv),
            seq: Some(p.seq.0),
        })
    }
}

/// Cuts a page of messages to [`PAGE_BYTES`] of bodies (keeping at least one); returns
/// whether it cut anything.
fn cut_to_bytes(rows: &mut Vec<anchorage_store::MessageRow>) -> bool {
    let mut total = 0usize;
    let keep = rows
        .iter()
        .position(|r| {
            total += r.body.len();
            total > PAGE_BYTES
        })
        .map_or(rows.len(), |i| i.max(1));
    let cut = keep < rows.len();
    rows.truncate(keep);
    cut
}

/// Only the owner and admins.
fn staff(d: &Decision, group: &GroupId) -> Result<(), (ErrorCode, String)> {
    if matches!(d.my_role, Some(Role::Owner | Role::Admin)) {
        Ok(())
    } else {
        Err((
            ErrorCode::Forbidden,
            format!("only owners and admins do this in {group}"),
        ))
    }
}

/// The target must be a member whose role ranks below `ceiling`.
fn target_below(d: &Decision, member: &UserId, ceiling: Role) -> Result<(), (ErrorCode, String)> {
    let rank = |r: Role| match r {
        Role::Owner => 2,
        Role::Admin => 1,
        Role::Member => 0,
    };
    match d.role(member) {
        None => Err((ErrorCode::NotFound, format!("{member} is not a member"))),
        Some(r) if rank(r) >= rank(ceiling) => Err((
            ErrorCode::Forbidden,
            format!("{member} is {r:?} and cannot be changed by you"),
        )),
        Some(_) => Ok(()),
    }
}
