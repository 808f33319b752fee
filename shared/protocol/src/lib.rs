//! The Anchorage wire protocol: JSON frames over the `/ws` WebSocket.
//!
//! A client sends [`Request`]s, each with a client-chosen `id`; the server answers each with a
//! [`Reply`] or an [`ErrorFrame`] carrying the same `id`, and sends [`Push`] frames nobody asked
//! for (live messages, markers, membership). Frames are flat JSON objects tagged by `type`
//! (except a member-list diff in its positional form, for clients that ask for it).
//! The protocol is versioned at connect (the `hello` frame names the version the client
//! speaks); [`PROTOCOL_VERSION`] is the newest one this software speaks.
//!
//! - [`request`]: what clients ask, one struct per request type;
//! - [`reply`]: what the server sends;
//! - [`members`]: member lists as both directions carry them;
//! - [`compact`]: the positional form of a member-list diff, for clients that ask for it;
//! - [`codec`]: strict decoding of client frames, with a precise error for each way a frame can
//!   be wrong;
//! - [`error`]: stable error codes and WebSocket close codes;
//! - [`schema`]: all of it as a JSON Schema, for clients in other languages.

#![warn(missing_docs)]

pub mod codec;
pub mod compact;
pub mod error;
pub mod members;
pub mod reply;
pub mod request;
pub mod schema;

pub use anchorage_schema::EntryKind;
pub use codec::{FrameError, MAX_NUMBER, decode_request};
pub use compact::MembersDelta;
pub use error::{ErrorCode, close};
pub use members::{GroupSync, GroupSyncResult, GroupVersion, MemberInfo, MembersChange};
pub use reply::{
    Ack, ConvChange, ConvPrefs, DevicePush, Done, DownloadGrant, ErrorFrame, GroupVersions,
    HiddenMessages, LiveMessage, MembersBatch, MembersBuckets, MembersChanged, MembersDiff,
    MembersFound, MembersPage, MembersSketch, MembershipChanged, Message, MessageParts, Messages,
    OwnReaction, PresenceAnswer, PresenceInfo, Push, Reaction, ReactionDelta, ReactionsChanged,
    Reactors, ReadMoved, Receipt, Receipts, Reply, ReplyBody, SearchResult, SearchResults,
    ServerFrame, StateChange, StateChanged, TypingNow, UploadGrant, UserState, Welcome,
};
pub use request::{ConvAnchor, REQUEST_TYPES, Request, RequestBody};

/// The newest protocol version this software speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A client-chosen request id, echoed in the answer.
pub type RequestId = u64;
