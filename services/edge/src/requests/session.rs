//! One signed-in connection's state, and what every family of requests uses from it.

use std::collections::HashMap;

use anchorage_protocol::request::Hello;
use anchorage_protocol::{ReplyBody, RequestId, ServerFrame};
use anchorage_schema::{Actor, ClientMsgId, ConversationId};

use super::error::RequestError;
use super::send::Lane;
use crate::EdgeState;
use crate::auth::{Claims, SignInError};
use crate::live::ConnHandle;

/// A handler's outcome: the answer's body, or why the request was refused.
pub(super) type Answer = Result<ReplyBody, RequestError>;

/// One signed-in connection.
#[derive(Debug)]
pub struct Session {
    pub(crate) state: EdgeState,
    pub(crate) claims: Claims,
    pub(crate) conn: ConnHandle,
    /// The send that was refused for a passing reason: later sends are refused until it is
    /// sent again.
    pub(super) blocked: Option<Box<(u64, ConversationId, ClientMsgId)>>,
    /// Per conversation, the last send handed to the stream (or waiting to be): the next one
    /// waits for it.
    pub(super) lanes: HashMap<ConversationId, Lane>,
    /// Sends read so far (numbers them in the order they came).
    pub(super) read: u64,
}

impl Session {
    /// A session for a connection signed in with `claims`.
    pub fn new(state: EdgeState, claims: Claims, conn: ConnHandle) -> Self {
        Self {
            state,
            claims,
            conn,
            blocked: None,
            lanes: HashMap::new(),
            read: 0,
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
    pub(super) async fn answer(&self, id: RequestId, answer: Answer) {
        let frame = match answer {
            Ok(body) => ServerFrame::reply(id, body),
            Err(err) => err.into_frame(Some(id)),
        };
        self.reply(frame).await;
    }

    pub(super) fn actor(&self) -> Actor {
        Actor::User {
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
        }
    }

    /// A `hello` on a signed-in connection (to page through a long welcome, or to catch up
    /// again) must speak the connection's protocol and carry a valid token of the same user
    /// and device: a repeated `hello` never changes who the connection is, and never passes
    /// with a token that would not sign in.
    pub(super) fn same_sign_in(&self, hello: &Hello) -> Result<(), RequestError> {
        let claims = self.state.verifier.sign_in(hello).map_err(|e| match e {
            SignInError::Protocol => RequestError::UnsupportedProtocol,
            SignInError::Token(e) => RequestError::Forbidden(format!("token refused: {e}")),
        })?;
        if claims.sub != self.claims.sub || claims.device != self.claims.device {
            return Err(RequestError::Forbidden(
                "the token is another device's; this connection stays signed in as it was".into(),
            ));
        }
        Ok(())
    }

    /// Refuses a caller who is not a member of `conv`.
    pub(crate) fn member(&self, conv: &ConversationId) -> Result<(), RequestError> {
        if self.state.hub.is_member(&self.claims.sub, conv) {
            Ok(())
        } else {
            Err(RequestError::Forbidden(format!("not a member of {conv}")))
        }
    }
}
