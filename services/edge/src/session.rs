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
    GroupCreated, MembersAdded, MembersRemoved, MessageSent, ReadMarked, RemovalReason,
};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, Envelope, Event, EventId, GroupId, Seq, UserId,
};
use tokio::sync::mpsc;

use crate::EdgeState;
use crate::auth::Claims;
use crate::hub::Frame;

/// Most messages one `sync` or `history` answer carries.
const MAX_PAGE: u32 = 500;
/// Conversations per `welcome`; more come with a cursor.
const CHANGES_PER_WELCOME: u32 = 200;
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
    state: EdgeState,
    claims: Claims,
    tx: mpsc::Sender<Frame>,
}

impl Session {
    pub fn new(state: EdgeState, claims: Claims, tx: mpsc::Sender<Frame>) -> Self {
        Self { state, claims, tx }
    }

    /// Queues an answer (waits for room: answers are never dropped).
    pub async fn reply(&self, f: ServerFrame) {
        let _ = self.tx.send(crate::ws::frame(&f)).await;
    }

    fn actor(&self) -> Actor {
        Actor::User {
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
        }
    }

    fn member(&self, conv: &ConversationId) -> Result<(), (ErrorCode, String)> {
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
        self.reply(answer.unwrap_or_else(|(code, message)| ServerFrame::Error {
            id: Some(id),
            code,
            message,
            retry_after_ms: None,
        }))
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
        // projection this summary reads: wait (briefly) for the projector to get there.
        let end = self
            .state
            .bus
            .stream_state(stream::MESSAGES)
            .await
            .map_err(internal)?
            .last_seq;
        self.messages_projected(end).await?;
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
        let mut changes = Vec::new();
        for s in states {
            let anchor = anchors
                .get(s.conv.as_str())
                .copied()
                .unwrap_or(s.delivered_seq);
            if s.last_seq <= anchor {
                continue;
            }
            let Ok(conv) = ConversationId::parse(s.conv.clone()) else {
                continue;
            };
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
                last_seq: s.last_seq,
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

    /// Handles one request and queues its answer.
    pub async fn handle(&mut self, frame: ClientFrame) {
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
                self.send(id, conv, client_msg_id, body, client_ts, retry)
                    .await
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
        };
        let frame = answer.unwrap_or_else(|(code, message)| ServerFrame::Error {
            id,
            code,
            message,
            retry_after_ms: None,
        });
        self.reply(frame).await;
    }

    async fn send(
        &self,
        id: RequestId,
        conv: ConversationId,
        client_msg_id: ClientMsgId,
        body: serde_json::Value,
        client_ts: i64,
        retry: bool,
    ) -> Answer {
        self.member(&conv)?;
        let user = &self.claims.sub;
        if retry
            && let Some(row) = self
                .state
                .store
                .message_by_client_id(conv.as_str(), user.as_str(), client_msg_id.as_str())
                .await
                .map_err(internal)?
        {
            return Ok(ServerFrame::Ack {
                id,
                client_msg_id,
                seq: row.seq,
                server_ts: row.server_ts,
                duplicate: true,
            });
        }
        let event_id = EventId::parse(format!("{user}:{}:{client_msg_id}", self.claims.device))
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
        let published = self
            .state
            .bus
            .publish_event(&subjects::message(&conv), &env, None)
            .await
            .map_err(internal)?;
        let server_ts = if published.duplicate {
            // The original's time, from the stored copy.
            self.state
                .bus
                .stored_event(stream::MESSAGES, published.seq)
                .await
                .map(|e| e.occurred_at)
                .unwrap_or(server_ts)
        } else {
            server_ts
        };
        Ok(ServerFrame::Ack {
            id,
            client_msg_id,
            seq: published.seq.0,
            server_ts,
            duplicate: published.duplicate,
        })
    }

    /// Waits (briefly) until the message projection holds everything the stream holds for
    /// `conv` right now, so a sync never answers from a projection that lags behind messages
    /// the client may have missed live. Returns whether it does; if not (the projector is far
    /// behind), the answer says `more` and the client asks again.
    async fn settled_conversation(
        &self,
        conv: &ConversationId,
    ) -> Result<bool, (ErrorCode, String)> {
        let last = self
            .state
            .bus
            .last_subject_seq(stream::MESSAGES, &subjects::message(conv))
            .await
            .map_err(internal)?;
        self.messages_projected(last).await
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
        let more = rows.len() > limit as usize || !settled;
        rows.truncate(limit as usize);
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
        Ok(ServerFrame::Messages {
            id,
            conv,
            messages: rows.into_iter().filter_map(to_message).collect(),
            more,
        })
    }

    async fn read(&self, id: RequestId, conv: ConversationId, seq: u64) -> Answer {
        self.member(&conv)?;
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
            .map_err(internal)?;
        Ok(ServerFrame::Ok {
            id,
            conv: Some(conv),
            seq: Some(seq),
        })
    }

    async fn received(&self, id: RequestId, conv: ConversationId, seq: u64) -> Answer {
        self.member(&conv)?;
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

    async fn open_direct(&self, id: RequestId, peer: UserId) -> Answer {
        let me = &self.claims.sub;
        if &peer == me {
            return Err((
                ErrorCode::InvalidRequest,
                "a 1:1 conversation needs another user".into(),
            ));
        }
        let conv = ConversationId::direct(me, &peer);
        if !self.state.hub.is_member(me, &conv) {
            let group = GroupId::parse(conv.as_str()).map_err(internal)?;
            let env = Envelope::new(
                EventId::parse(format!("direct:{conv}")).map_err(internal)?,
                now_ms(),
                self.actor(),
                GroupCreated {
                    group: group.clone(),
                    owner: me.clone(),
                    title: String::new(),
                    members: vec![peer],
                    direct: true,
                },
            );
            match self
                .state
                .bus
                .publish_event(&subjects::membership(&group), &env, Some(Seq(0)))
                .await
            {
                // Created now, or by the peer a moment ago: either way it exists.
                Ok(_) | Err(PublishError::Conflict { .. }) => {}
                Err(err) => return Err(internal(err)),
            }
            self.state.hub.joined(me, conv.clone());
        }
        Ok(ServerFrame::Ok {
            id,
            conv: Some(conv),
            seq: None,
        })
    }

    async fn create_group(
        &self,
        id: RequestId,
        group: GroupId,
        title: String,
        members: Vec<UserId>,
    ) -> Answer {
        if group.as_str().starts_with("dm-") {
            return Err((
                ErrorCode::InvalidRequest,
                "group ids starting with dm- are reserved".into(),
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
            Err(err) => Err(internal(err)),
        }
    }

    /// Adds or removes members, decided on the group's current version.
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
        let me = &self.claims.sub;
        let subject = subjects::membership(&group);
        for attempt in 0..3u32 {
            let version = self.settled_version(&group).await?;
            let row = self
                .state
                .store
                .group_row(group.as_str())
                .await
                .map_err(internal)?;
            let Some(row) = row.filter(|g| !g.dismissed) else {
                return Err((ErrorCode::NotFound, format!("group {group} does not exist")));
            };
            if row.direct {
                return Err((
                    ErrorCode::Forbidden,
                    "the members of a 1:1 conversation are fixed".into(),
                ));
            }
            let role = self
                .state
                .store
                .member_role(group.as_str(), me.as_str())
                .await
                .map_err(internal)?;
            if !matches!(role.as_deref(), Some("owner" | "admin")) {
                return Err((
                    ErrorCode::Forbidden,
                    format!("only owners and admins change the members of {group}"),
                ));
            }
            let event: Event = if add {
                MembersAdded {
                    group: group.clone(),
                    members: members.clone(),
                }
                .into()
            } else {
                MembersRemoved {
                    group: group.clone(),
                    members: members.clone(),
                    reason: RemovalReason::Kicked,
                }
                .into()
            };
            let env = Envelope::new(
                EventId::parse(format!("{me}:members:{group}:{}", version.0)).map_err(internal)?,
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
                Err(err) => return Err(internal(err)),
            }
        }
        Err((
            ErrorCode::Conflict,
            format!("group {group} kept changing; read it again and retry"),
        ))
    }

    /// The group's version on the stream, once the projection has caught up with it.
    async fn settled_version(&self, group: &GroupId) -> Result<Seq, (ErrorCode, String)> {
        let subject = subjects::membership(group);
        let version = self
            .state
            .bus
            .last_subject_seq(stream::MEMBERSHIP, &subject)
            .await
            .map_err(internal)?;
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
            .map_err(internal)?;
        Ok(ServerFrame::Ok {
            id,
            conv: Some(conv),
            seq: Some(p.seq.0),
        })
    }
}
