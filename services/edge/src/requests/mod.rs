//! What a signed-in connection can ask, and the answers.
//!
//! [`Session::handle`] is the dispatcher: it takes one decoded [`Request`], hands its body to
//! the handler of its family, attaches the request's `id` to whatever comes back, and turns a
//! refusal into its error frame in one place ([`RequestError`]). The families:
//!
//! - [`send`](self::send): messages into the stream, answered in order, pipelined;
//! - [`messages`](self::messages): sync, history and the read and delivery markers;
//! - [`welcome`](self::welcome): the summary `hello` is answered with;
//! - [`groups`](self::groups): 1:1 conversations and group commands, decided by the pure
//!   [`rules`](self::rules);
//! - [`members`](self::members): member-list sync.
//!
//! Every request is authorized against the caller's memberships, which the hub keeps current
//! from the live membership events: only members read or write a conversation, only owners
//! and admins add or remove others.

mod error;
mod groups;
mod members;
mod messages;
mod rules;
mod send;
mod welcome;

pub(crate) use error::RequestError;
pub(crate) use send::{AckFuture, SendAnswer};

use anchorage_protocol::{ReplyBody, Request, RequestBody, RequestId, ServerFrame, request::Hello};
use anchorage_schema::{Actor, ClientMsgId, ConversationId};

use crate::EdgeState;
use crate::auth::Claims;
use crate::live::ConnHandle;

/// A handler's outcome: the answer's body, or why the request was refused.
type Answer = Result<ReplyBody, RequestError>;

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

impl Session {
    /// A session for a connection signed in with `claims`.
    pub fn new(state: EdgeState, claims: Claims, conn: ConnHandle) -> Self {
        Self {
            state,
            claims,
            conn,
            blocked: None,
        }
    }

    /// Queues a frame (waits for a free slot: answers are never dropped; past the byte bounds
    /// the connection is closed as too slow).
    pub async fn reply(&self, f: ServerFrame) {
        let frame = crate::live::frame(&f);
        drop(f);
        self.conn.reply(frame).await;
    }

    /// Queues the answer to request `id`.
    async fn answer(&self, id: RequestId, answer: Answer) {
        let frame = match answer {
            Ok(body) => ServerFrame::reply(id, body),
            Err(err) => err.into_frame(Some(id)),
        };
        self.reply(frame).await;
    }

    fn actor(&self) -> Actor {
        Actor::User {
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
        }
    }

    /// Refuses a caller who is not a member of `conv`.
    pub(crate) fn member(&self, conv: &ConversationId) -> Result<(), RequestError> {
        if self.state.hub.is_member(&self.claims.sub, conv) {
            Ok(())
        } else {
            Err(RequestError::Forbidden(format!("not a member of {conv}")))
        }
    }

    /// Answers `hello`: the conversations changed since the client's anchors.
    pub async fn hello(&mut self, id: RequestId, hello: &Hello) {
        let answer = self.welcome(hello).await.map(Into::into);
        self.answer(id, answer).await;
    }

    /// Handles one request and queues its answer — except a send: its answer is returned, for
    /// the caller to queue after the answers of the sends before it.
    #[tracing::instrument(level = "debug", skip_all, fields(
        conn = self.conn.id,
        user = %self.claims.sub,
        device = %self.claims.device,
        request = request.id,
        kind = request.body.type_name(),
    ))]
    pub async fn handle(&mut self, request: Request) -> Option<AckFuture> {
        let Request { id, body } = request;
        let answer = match body {
            RequestBody::Send(send) => return Some(self.send(id, send).await),
            RequestBody::Ping {} => Ok(ReplyBody::Pong),
            RequestBody::Hello(hello) => self.welcome(&hello).await.map(Into::into),
            RequestBody::Sync(r) => self.sync(r).await.map(Into::into),
            RequestBody::History(r) => self.history(r).await.map(Into::into),
            RequestBody::Read(r) => self.read(r).await.map(Into::into),
            RequestBody::Received(r) => self.received(r).await.map(Into::into),
            RequestBody::OpenDirect(r) => self.open_direct(r).await.map(Into::into),
            RequestBody::CreateGroup(r) => self.create_group(r).await.map(Into::into),
            RequestBody::Leave(r) => self.leave(r).await.map(Into::into),
            RequestBody::AddMembers(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::RemoveMembers(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::SetRole(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::MuteMember(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::SetNickname(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::UpdateGroup(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::DismissGroup(r) => {
                self.group_command(r.group, rules::GroupCommand::Dismiss)
                    .await
            }
            RequestBody::GroupVersions(r) => self.group_versions(r).await.map(Into::into),
            RequestBody::MembersSync(r) => self.members_sync(r).await,
            RequestBody::MembersFetch(r) => self.members_fetch(r).await.map(Into::into),
            RequestBody::MembersSyncBatch(r) => self.members_sync_batch(r).await.map(Into::into),
            RequestBody::MembersSearch(r) => self.members_search(r).await.map(Into::into),
            RequestBody::MembersUnsubscribe(r) => self.members_unsubscribe(r).map(Into::into),
        };
        self.answer(id, answer).await;
        None
    }
}
