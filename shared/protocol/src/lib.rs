//! The Anchorage wire protocol: JSON frames over the `/ws` WebSocket.
//!
//! Every client request carries a client-chosen `id`; every answer and every error about that
//! request carries the same `id`. Frames are tagged by `type`. The protocol is versioned at
//! connect (the `hello` frame names the version the client speaks); [`PROTOCOL_VERSION`] is the
//! newest one this software speaks.
//!
//! Decoding is strict and precise: [`decode_client_frame`] says whether a frame was too large,
//! not JSON, of an unknown type or missing a field, so the edge can answer with an [`ErrorCode`]
//! and keep the connection.

use serde::{Deserialize, Serialize};

use anchorage_schema::event::Role;
use anchorage_schema::limits::{MAX_JSON_DEPTH, json_depth};
use anchorage_schema::{ClientMsgId, ConversationId, DeviceId, GroupId, UserId};

/// The newest protocol version this software speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A client-chosen request id, echoed in the answer.
pub type RequestId = u64;

/// Requests a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame on a connection: the protocol version, the device token, and optionally the
    /// client's anchors. Answered with `welcome` and the conversations changed since.
    Hello {
        id: RequestId,
        protocol: u16,
        token: String,
        /// The client's highest contiguous seq per conversation; conversations not listed are
        /// compared with what this device last acknowledged.
        #[serde(default)]
        anchors: Vec<ConvAnchor>,
        /// Continue a bounded list of changes from a previous `welcome`'s cursor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Liveness check; answered with `pong`.
    Ping { id: RequestId },
    /// Send a message. Retries reuse `client_msg_id` and get the same `seq`.
    Send {
        id: RequestId,
        conv: ConversationId,
        client_msg_id: ClientMsgId,
        /// Text or any JSON; opaque to the server.
        body: serde_json::Value,
        /// The sender's clock, Unix milliseconds.
        client_ts: i64,
        /// Set on every attempt after the first: the server then also looks for the message
        /// in history, so a retry long after the stream's duplicate window gets the same seq.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retry: bool,
    },
    /// Messages of a conversation after `after`, oldest first, bounded.
    Sync {
        id: RequestId,
        conv: ConversationId,
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Messages of a conversation before `before` (0: the latest), newest first, bounded.
    History {
        id: RequestId,
        conv: ConversationId,
        #[serde(default)]
        before: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// The user has read `conv` up to `seq` (markers only move forward).
    Read {
        id: RequestId,
        conv: ConversationId,
        seq: u64,
    },
    /// This device has received everything in `conv` up to `seq`.
    Received {
        id: RequestId,
        conv: ConversationId,
        seq: u64,
    },
    /// Open (or find) the 1:1 conversation with `peer`.
    OpenDirect { id: RequestId, peer: UserId },
    /// Create a group with the caller as owner.
    CreateGroup {
        id: RequestId,
        group: GroupId,
        title: String,
        #[serde(default)]
        members: Vec<UserId>,
    },
    /// Add members (owner and admins only).
    AddMembers {
        id: RequestId,
        group: GroupId,
        members: Vec<UserId>,
    },
    /// Remove members (owner and admins only).
    RemoveMembers {
        id: RequestId,
        group: GroupId,
        members: Vec<UserId>,
    },
    /// Leave a group.
    Leave { id: RequestId, group: GroupId },
    /// Change a member's role (owner only; the owner's own role is fixed).
    SetRole {
        id: RequestId,
        group: GroupId,
        member: UserId,
        role: Role,
    },
    /// Mute a member until a Unix millisecond, or unmute (`until` absent). Owner and admins;
    /// admins cannot mute the owner or each other.
    MuteMember {
        id: RequestId,
        group: GroupId,
        member: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<i64>,
    },
    /// Set or clear a member's nickname in the group: one's own, or anyone's as owner or admin.
    SetNickname {
        id: RequestId,
        group: GroupId,
        member: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nickname: Option<String>,
    },
    /// Change the group's title or avatar (owner and admins).
    UpdateGroup {
        id: RequestId,
        group: GroupId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avatar: Option<String>,
    },
    /// End the group for everyone (owner only).
    DismissGroup { id: RequestId, group: GroupId },
    /// The versions of the caller's groups, bounded; continue with `cursor`. Cheap: no member
    /// lists. Answered with `group_versions`.
    GroupVersions {
        id: RequestId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Bring one group's member list up to date from the client's copy (`epoch`, `version`,
    /// `digest`; all absent for no copy). Answered with exactly one of `members_unchanged`,
    /// `members_diff`, `members_page` (realignment) or `members_buckets`. Also subscribes this
    /// connection to the group's `members_changed` notifications.
    MembersSync {
        id: RequestId,
        group: GroupId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(default)]
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// The next snapshot page of a realignment pinned to `anchor`, or the members of some
    /// digest buckets only.
    MembersFetch {
        id: RequestId,
        group: GroupId,
        epoch: String,
        anchor: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        buckets: Option<Vec<u8>>,
    },
    /// `members_sync` over many groups in one answer, in the order given (most important
    /// first), until `budget_bytes` is spent; the answer's `cursor` says where to go on.
    MembersSyncBatch {
        id: RequestId,
        groups: Vec<GroupSync>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_bytes: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<u32>,
    },
    /// Members whose id or nickname starts with `query`, from the server's list.
    MembersSearch {
        id: RequestId,
        group: GroupId,
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Stop `members_changed` notifications of a group on this connection.
    MembersUnsubscribe { id: RequestId, group: GroupId },
}

/// One group's entry in `members_sync_batch`: the client's copy, as in `members_sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSync {
    pub group: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A member as member lists carry it: the role is left out for plain members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub user: UserId,
    #[serde(default = "plain_member", skip_serializing_if = "is_plain_member")]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
}

fn plain_member() -> Role {
    Role::Member
}

fn is_plain_member(role: &Role) -> bool {
    *role == Role::Member
}

impl MemberInfo {
    /// A member from its stored fields; `None` if the id is not a valid user id.
    pub fn from_stored(
        user: &str,
        role: &str,
        nickname: Option<String>,
        muted_until: Option<i64>,
    ) -> Option<MemberInfo> {
        Some(MemberInfo {
            user: UserId::parse(user).ok()?,
            role: Role::from_name(role),
            nickname,
            muted_until,
        })
    }

    /// A plain member with nothing set is sent as its bare id in snapshot pages.
    pub fn is_plain(&self) -> bool {
        self.role == Role::Member && self.nickname.is_none() && self.muted_until.is_none()
    }
}

/// A group and its version, as `group_versions` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersion {
    pub group: GroupId,
    pub version: u64,
    pub members: u64,
}

/// What changed in one membership event, as notifications carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersChange {
    /// Members who joined or whose row changed, as they are now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserts: Vec<MemberInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dismissed: bool,
}

/// One group's answer in `members_batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum GroupSyncResult {
    /// The client's copy is current.
    Unchanged { group: GroupId },
    /// Apply these changes; continue from `version` while `more`.
    Diff {
        group: GroupId,
        epoch: String,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        upserts: Vec<MemberInfo>,
        removed: Vec<UserId>,
        more: bool,
    },
    /// The copy cannot be diffed (another epoch, past the horizon, too many changes, or a
    /// digest mismatch): realign with `members_sync` when the group is needed.
    Realign { group: GroupId },
    /// The group cannot be synced by this caller.
    Error {
        group: GroupId,
        code: ErrorCode,
        message: String,
    },
}

/// The client's version of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvAnchor {
    pub conv: ConversationId,
    pub seq: u64,
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub conv: ConversationId,
    pub seq: u64,
    pub sender: String,
    pub device: String,
    pub client_msg_id: String,
    pub body: serde_json::Value,
    pub client_ts: i64,
    pub server_ts: i64,
}

/// A conversation that changed since the client's anchor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvChange {
    pub conv: ConversationId,
    pub last_seq: u64,
    /// Messages after the user's read marker (capped at 1000).
    pub unread: u64,
    pub read_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Message>,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        id: RequestId,
        protocol: u16,
        user: UserId,
        device: DeviceId,
        /// Largest frame the server accepts, in bytes.
        max_frame_bytes: u32,
        /// Conversations changed since the client's anchors, oldest change first.
        changes: Vec<ConvChange>,
        /// Present when more changes remain: send `hello` again with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Pong {
        id: RequestId,
    },
    /// A message was stored: its sequence and the server's time.
    Ack {
        id: RequestId,
        client_msg_id: ClientMsgId,
        seq: u64,
        server_ts: i64,
        /// The message had been sent before; `seq` is the original's.
        duplicate: bool,
    },
    /// Answer to `sync` and `history`.
    Messages {
        id: RequestId,
        conv: ConversationId,
        messages: Vec<Message>,
        /// More messages remain in the requested direction.
        more: bool,
    },
    /// A request succeeded with nothing else to say (read, received, group changes).
    Ok {
        id: RequestId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<ConversationId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Live: a new message; `prev` is the previous seq of the conversation (0 if none). A
    /// client holding `prev` appends it; otherwise it syncs from its anchor.
    Message {
        prev: u64,
        message: Message,
    },
    /// Live: the user's read marker moved (on another device).
    Read {
        conv: ConversationId,
        seq: u64,
    },
    /// Live: the caller joined or left a conversation.
    Membership {
        conv: ConversationId,
        joined: bool,
        /// MEMBERSHIP stream sequence of the change.
        version: u64,
    },
    /// Answer to `group_versions`.
    GroupVersions {
        id: RequestId,
        /// The MEMBERSHIP stream's epoch: versions of another epoch cannot be compared.
        epoch: String,
        groups: Vec<GroupVersion>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// The client's member list is current (constant size).
    MembersUnchanged {
        id: RequestId,
    },
    /// Changes since the client's version, oldest first. `digest` (of the whole list at
    /// `version`) comes with the last page; while `more`, sync again from `version`.
    MembersDiff {
        id: RequestId,
        group: GroupId,
        epoch: String,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        upserts: Vec<MemberInfo>,
        removed: Vec<UserId>,
        more: bool,
    },
    /// A snapshot page pinned to `anchor`, members in id order: plain members by id in
    /// `members`, the others in `details`. Fetch the next page with `cursor`; after the last,
    /// sync from `anchor` for what changed since.
    MembersPage {
        id: RequestId,
        group: GroupId,
        epoch: String,
        anchor: u64,
        members: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        details: Vec<MemberInfo>,
        /// Only these digest buckets (a partial realignment).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        buckets: Option<Vec<u8>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Same version, different digest: the server's non-empty bucket digests at `version`,
    /// so the client fetches only the buckets that differ.
    MembersBuckets {
        id: RequestId,
        group: GroupId,
        epoch: String,
        version: u64,
        /// `[bucket, digest]` pairs.
        buckets: Vec<(u8, String)>,
    },
    /// Answer to `members_sync_batch`, in request order.
    MembersBatch {
        id: RequestId,
        results: Vec<GroupSyncResult>,
        /// Index of the first group not answered (the budget was spent); absent when done.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<u32>,
    },
    /// Answer to `members_search`.
    MembersFound {
        id: RequestId,
        group: GroupId,
        members: Vec<MemberInfo>,
    },
    /// Live: a group's members changed (to connections that synced its list). A client at
    /// `prev` applies `change` and is then at `version` with `digest`; otherwise it syncs.
    MembersChanged {
        group: GroupId,
        version: u64,
        prev: u64,
        digest: String,
        change: MembersChange,
    },
    /// A request failed, or a frame could not be read (then `id` is absent).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        /// For `rate_limited` and `overloaded`: when to try again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// WebSocket close codes the server uses (4000–4999 are ours).
pub mod close {
    /// The token was missing, malformed, forged or of an unknown key.
    pub const AUTH_FAILED: u16 = 4001;
    /// The token expired (also during a connection): reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// No `hello` within the time allowed.
    pub const HELLO_TIMEOUT: u16 = 4003;
    /// The protocol version is not spoken here.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4004;
    /// The session was revoked.
    pub const REVOKED: u16 = 4005;
    /// The client fell behind its live queue: reconnect and resync from your anchors.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client kept sending after being told `rate_limited`: back off before reconnecting.
    pub const RATE_LIMITED: u16 = 4029;
    /// The server is shutting down or over capacity: reconnect elsewhere or later.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame was not valid UTF-8 (RFC 6455).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
}

/// Stable error codes; clients match on these, the message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON (or not UTF-8 text).
    BadFrame,
    /// The frame is JSON but not a known request type.
    UnknownType,
    /// A known request with a missing or invalid field.
    InvalidRequest,
    /// The frame exceeds the size limit.
    TooLarge,
    /// The client speaks a protocol version this server does not.
    UnsupportedProtocol,
    /// A request other than `hello` came before `hello`.
    HelloRequired,
    /// The caller may not do this (e.g. not a member of the conversation).
    Forbidden,
    /// The conversation, group or user does not exist.
    NotFound,
    /// The state changed under the request too often; re-read and retry.
    Conflict,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimited,
    /// The server is shedding load; retry after `retry_after_ms`.
    Overloaded,
    /// A failure on our side; the request may be retried with the same ids.
    Internal,
    /// An earlier send on this connection was refused (`rate_limited`, `overloaded`,
    /// `internal`): later ones are refused too until that one is sent again, so a client that
    /// retries in order keeps its order.
    OutOfOrder,
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    #[error("frame has no \"type\" field")]
    MissingType,
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("invalid {type_name:?} frame: {reason}")]
    Invalid { type_name: String, reason: String },
    #[error("frame nests {depth} levels of arrays and objects; the limit is {max}")]
    TooDeep { depth: usize, max: usize },
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::NotJson(_) | FrameError::MissingType => ErrorCode::BadFrame,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::Invalid { .. } | FrameError::TooDeep { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// The request types this version of the protocol knows.
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "hello",
    "ping",
    "send",
    "sync",
    "history",
    "read",
    "received",
    "open_direct",
    "create_group",
    "add_members",
    "remove_members",
    "leave",
    "set_role",
    "mute_member",
    "set_nickname",
    "update_group",
    "dismiss_group",
    "group_versions",
    "members_sync",
    "members_fetch",
    "members_sync_batch",
    "members_search",
    "members_unsubscribe",
];

/// Decodes one client frame, refusing anything larger than `max_len` bytes before parsing.
///
/// Returns the request id alongside the error when the frame was readable enough to have one,
/// so the error frame can reference it.
pub fn decode_client_frame(
    text: &str,
    max_len: usize,
) -> Result<ClientFrame, (Option<RequestId>, FrameError)> {
    if text.len() > max_len {
        return Err((
            None,
            FrameError::TooLarge {
                len: text.len(),
                max: max_len,
            },
        ));
    }
    // Whatever is accepted here is stored inside an envelope a few levels deeper: bound the
    // nesting so every reader of the stream can decode it (see `limits::MAX_JSON_DEPTH`).
    let depth = json_depth(text.as_bytes());
    if depth > MAX_JSON_DEPTH {
        // The id, if the parser can still reach it, so a pipelining client knows which
        // request this was.
        #[derive(Deserialize)]
        struct Id {
            id: Option<RequestId>,
        }
        let id = serde_json::from_str::<Id>(text).ok().and_then(|f| f.id);
        return Err((
            id,
            FrameError::TooDeep {
                depth,
                max: MAX_JSON_DEPTH,
            },
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (None, FrameError::NotJson(e.to_string())))?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let type_name = match value.get("type").and_then(serde_json::Value::as_str) {
        Some(t) => t.to_owned(),
        None => return Err((id, FrameError::MissingType)),
    };
    if !CLIENT_FRAME_TYPES.contains(&type_name.as_str()) {
        return Err((id, FrameError::UnknownType(type_name)));
    }
    if let Some(field) = out_of_range_number(&value) {
        return Err((
            id,
            FrameError::Invalid {
                type_name,
                reason: format!("{field} must be below 2^63"),
            },
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        (
            id,
            FrameError::Invalid {
                type_name,
                reason: e.to_string(),
            },
        )
    })
}

/// Largest value of any sequence, version or id number in a frame: sequences are stored as
/// signed 64-bit integers.
pub const MAX_NUMBER: u64 = i64::MAX as u64;

/// The name of the first field outside a message body whose number is over [`MAX_NUMBER`].
fn out_of_range_number(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(v: &Value, name: &str) -> Option<String> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .is_some_and(|n| n > MAX_NUMBER)
                .then(|| name.to_owned()),
            Value::Array(items) => items.iter().find_map(|i| walk(i, name)),
            Value::Object(fields) => fields
                .iter()
                // A message body is the client's own JSON, stored as it is.
                .filter(|(k, _)| k.as_str() != "body")
                .find_map(|(k, v)| walk(v, k)),
            _ => None,
        }
    }
    walk(value, "")
}

impl ServerFrame {
    /// An error frame for a failed decode.
    pub fn from_frame_error(id: Option<RequestId>, err: &FrameError) -> Self {
        ServerFrame::Error {
            id,
            code: err.code(),
            message: err.to_string(),
            retry_after_ms: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Server frames hold only strings, numbers and enums: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hello() {
        let f = decode_client_frame(
            r#"{"type":"hello","id":1,"protocol":1,"token":"t","anchors":[{"conv":"c1","seq":9}]}"#,
            1024,
        )
        .unwrap();
        match f {
            ClientFrame::Hello {
                id,
                protocol,
                anchors,
                ..
            } => {
                assert_eq!((id, protocol), (1, 1));
                assert_eq!(anchors[0].seq, 9);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_in_frames_are_validated() {
        let (id, err) = decode_client_frame(
            r#"{"type":"send","id":3,"conv":"a.b","client_msg_id":"m","body":"x","client_ts":1}"#,
            1024,
        )
        .unwrap_err();
        assert_eq!((id, err.code()), (Some(3), ErrorCode::InvalidRequest));
        assert!(
            err.to_string().contains("conversation id contains '.'"),
            "{err}"
        );
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = [
            r#"{"type":"ping","id":1}"#,
            r#"{"type":"send","id":2,"conv":"c","client_msg_id":"m1","body":{"t":"hi"},"client_ts":5}"#,
            r#"{"type":"sync","id":3,"conv":"c","after":4,"limit":10}"#,
            r#"{"type":"history","id":4,"conv":"c","before":9}"#,
            r#"{"type":"read","id":5,"conv":"c","seq":7}"#,
            r#"{"type":"received","id":6,"conv":"c","seq":7}"#,
            r#"{"type":"open_direct","id":7,"peer":"bob"}"#,
            r#"{"type":"create_group","id":8,"group":"g","title":"G","members":["bob"]}"#,
            r#"{"type":"add_members","id":9,"group":"g","members":["carol"]}"#,
            r#"{"type":"remove_members","id":10,"group":"g","members":["carol"]}"#,
            r#"{"type":"leave","id":11,"group":"g"}"#,
            r#"{"type":"set_role","id":12,"group":"g","member":"bob","role":"admin"}"#,
            r#"{"type":"mute_member","id":13,"group":"g","member":"bob","until":99}"#,
            r#"{"type":"set_nickname","id":14,"group":"g","member":"bob","nickname":"B"}"#,
            r#"{"type":"update_group","id":15,"group":"g","title":"T"}"#,
            r#"{"type":"dismiss_group","id":16,"group":"g"}"#,
            r#"{"type":"group_versions","id":17}"#,
            r#"{"type":"members_sync","id":18,"group":"g","epoch":"5","version":9,"digest":"0000000000000001:1"}"#,
            r#"{"type":"members_fetch","id":19,"group":"g","epoch":"5","anchor":9,"cursor":"u1","buckets":[3]}"#,
            r#"{"type":"members_sync_batch","id":20,"groups":[{"group":"g","version":3}],"budget_bytes":4096}"#,
            r#"{"type":"members_search","id":21,"group":"g","query":"al"}"#,
            r#"{"type":"members_unsubscribe","id":22,"group":"g"}"#,
        ];
        assert_eq!(frames.len() + 1, CLIENT_FRAME_TYPES.len());
        for text in frames {
            let frame = decode_client_frame(text, 1024).unwrap();
            let again = serde_json::to_string(&frame).unwrap();
            assert_eq!(decode_client_frame(&again, 1024).unwrap(), frame, "{text}");
        }
    }

    #[test]
    fn member_lists_are_compact() {
        let plain = MemberInfo {
            user: UserId::parse("u0012345").unwrap(),
            role: Role::Member,
            nickname: None,
            muted_until: None,
        };
        assert!(plain.is_plain());
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"user":"u0012345"}"#
        );
        let admin: MemberInfo = serde_json::from_str(r#"{"user":"a","role":"admin"}"#).unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert_eq!(
            ServerFrame::MembersUnchanged { id: 4_000_000_000 }
                .to_json()
                .len(),
            44,
            "an unchanged answer is constant size"
        );
    }

    #[test]
    fn each_bad_frame_gets_its_own_code() {
        let cases = [
            ("x".repeat(2000), ErrorCode::TooLarge, None),
            ("{not json".into(), ErrorCode::BadFrame, None),
            (r#"{"id":4}"#.into(), ErrorCode::BadFrame, Some(4)),
            (
                r#"{"id":5,"type":"dance"}"#.into(),
                ErrorCode::UnknownType,
                Some(5),
            ),
            (
                r#"{"id":6,"type":"hello"}"#.into(),
                ErrorCode::InvalidRequest,
                Some(6),
            ),
            (
                r#"{"id":7,"type":"ping","extra":true}"#.into(),
                ErrorCode::InvalidRequest,
                Some(7),
            ),
        ];
        for (text, code, id) in cases {
            let (got_id, err) = decode_client_frame(&text, 1024).unwrap_err();
            assert_eq!(err.code(), code, "{text}");
            assert_eq!(got_id, id, "{text}");
        }
    }

    #[test]
    fn error_frame_shape() {
        let (id, err) = decode_client_frame(r#"{"id":9,"type":"dance"}"#, 64).unwrap_err();
        let json = ServerFrame::from_frame_error(id, &err).to_json();
        assert_eq!(
            json,
            r#"{"type":"error","id":9,"code":"unknown_type","message":"unknown frame type \"dance\""}"#
        );
    }
}
