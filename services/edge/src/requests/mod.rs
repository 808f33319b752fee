//! What a signed-in connection can ask, and the answers.
//!
//! [`Session::handle`] is the dispatcher: it takes one decoded [`Request`], hands its body to
//! the handler of its family, attaches the request's `id` to whatever comes back, and turns a
//! refusal into its error frame in one place ([`RequestError`]). The families:
//!
//! - [`send`](self::send): messages into the stream, answered in order, pipelined;
//! - [`messages`](self::messages): sync, history and the read and delivery markers;
//! - [`changes`](self::changes): edits, revokes, reactions and pins, each an entry of the
//!   conversation, and who reacted;
//! - [`welcome`](self::welcome): the summary `hello` is answered with;
//! - [`groups`](self::groups): 1:1 conversations and group commands, decided by the pure
//!   [`rules`](self::rules);
//! - [`members`](self::members): member-list sync;
//! - [`typing`](self::typing): the conversations a connection views, and who is typing;
//! - [`search`](self::search): full-text search of the messages that reached the user;
//! - [`state`](self::state): the user's own state (conversation preferences, messages deleted
//!   for oneself, privacy), the same on all their devices.
//!
//! Every request is authorized against the caller's memberships, which the hub keeps current
//! from the live membership events: only members read or write a conversation, only owners
//! and admins add or remove others.

mod attachments;
mod changes;
mod dispatch;
mod error;
mod groups;
mod members;
mod messages;
mod rules;
mod search;
mod send;
mod session;
mod state;
mod typing;
mod welcome;

pub(crate) use error::RequestError;
pub(crate) use groups::Caller;
pub(crate) use messages::PROJECTION_WAIT;
pub(crate) use rules::GroupCommand;
pub(crate) use send::{AckFuture, SendAnswer};
pub use session::Session;
