//! What the server sends: a [`Reply`] to a request (carrying its `id`), a [`Push`] nobody
//! asked for (live messages, markers, membership), or an [`ErrorFrame`].
//!
//! On the wire every frame is a flat JSON object tagged by `type`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, DeviceId, EntryKind, Envelope, Event, GroupId, UserId,
};

use crate::RequestId;
use crate::compact::MembersDelta;
use crate::error::ErrorCode;
use crate::members::{GroupSyncResult, GroupVersion, MemberInfo, MembersChange};

/// Any frame the server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// The answer to a request.
    Reply(Reply),
    /// A frame without a request: live messages, markers, membership.
    Push(Push),
    /// A request failed, or a frame could not be read.
    Error(ErrorFrame),
    /// The answer to a `members_sync` with `compact` that is a diff, in its positional form
    /// (see [`crate::compact`]).
    Delta(MembersDelta),
}

/// The answer to the request with the same `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The request's id.
    pub id: RequestId,
    /// The answer.
    pub body: ReplyBody,
}

/// Answers, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    /// Answer to `hello`.
    Welcome(Welcome),
    /// Answer to `ping`.
    Pong,
    /// A message was stored: its sequence and the server's time.
    Ack(Ack),
    /// Answer to `sync` and `history`.
    Messages(Messages),
    /// A request succeeded with nothing else to say (read, received, group changes).
    Ok(Done),
    /// Answer to `group_versions`.
    GroupVersions(GroupVersions),
    /// The client's member list is current (constant size).
    MembersUnchanged,
    /// Changes since the client's member-list version.
    MembersDiff(MembersDiff),
    /// A realignment page.
    MembersPage(MembersPage),
    /// Same version, different digest: the server's bucket digests.
    MembersBuckets(MembersBuckets),
    /// Answer to `members_sketch`.
    MembersSketch(MembersSketch),
    /// Answer to `members_sync_batch`.
    MembersBatch(MembersBatch),
    /// Answer to `members_search`.
    MembersFound(MembersFound),
    /// Answer to `search`.
    SearchResults(SearchResults),
    /// Answer to `reactors`.
    Reactors(Reactors),
    /// Answer to `user_state`.
    UserState(UserState),
    /// Answer to `receipts`.
    Receipts(Receipts),
    /// Answer to `presence`.
    Presence(PresenceAnswer),
    /// Answer to `upload`.
    Upload(UploadGrant),
    /// Answer to `download`.
    Download(DownloadGrant),
}

/// Frames without a request, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    /// A new message; `prev` is the previous seq of the conversation (0 if none). A client
    /// holding `prev` appends it; otherwise it syncs from its anchor.
    Message(LiveMessage),
    /// The user's read marker moved (on another device).
    Read(ReadMoved),
    /// The caller joined or left a conversation.
    Membership(MembershipChanged),
    /// A group's members changed (to connections that synced its list). A client at `prev`
    /// applies `change` and is then at `version` with `digest`; otherwise it syncs.
    MembersChanged(MembersChanged),
    /// Reaction entries of a conversation, coalesced: a client at `prev` applies the counts
    /// and is then at `seq`; otherwise it syncs.
    Reactions(ReactionsChanged),
    /// Who is typing in a conversation this connection views (the whole state, not a change).
    Typing(TypingNow),
    /// The user's own state changed (on another device, or this one): apply `change` if the
    /// client's state version is `prev`, else ask `user_state`.
    State(StateChanged),
    /// Another member read further (1:1s and small groups; not for members who hide their
    /// receipts).
    Receipt(Receipt),
    /// The other member of a 1:1 came online or went offline.
    PresenceChanged(PresenceInfo),
}

/// `error`: a request failed, or a frame could not be read (then `id` is absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorFrame {
    /// The request's id, when the frame was readable enough to have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// The stable code clients match on.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
    /// For `rate_limited` and `overloaded`: when to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The frame types only the server sends that carry no request id.
const PUSH_TYPES: &[&str] = &[
    "message",
    "read",
    "membership",
    "members_changed",
    "reactions",
    "typing",
    "state",
    "receipt",
    "presence_changed",
];

impl ServerFrame {
    /// A reply to request `id`.
    pub fn reply(id: RequestId, body: impl Into<ReplyBody>) -> Self {
        ServerFrame::Reply(Reply {
            id,
            body: body.into(),
        })
    }

    /// An error about request `id` (absent when the frame had none).
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error(ErrorFrame {
            id,
            code,
            message: message.into(),
            retry_after_ms: None,
        })
    }

    /// The id of the request this frame answers.
    pub fn id(&self) -> Option<RequestId> {
        match self {
            ServerFrame::Reply(r) => Some(r.id),
            ServerFrame::Push(_) => None,
            ServerFrame::Error(e) => e.id,
            ServerFrame::Delta(d) => Some(d.id),
        }
    }

    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        // Server frames hold only strings, numbers, enums and JSON values: serialization
        // cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for ServerFrame {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize, schemars::JsonSchema)]
        struct ReplyWire<'a> {
            #[serde(flatten)]
            body: &'a ReplyBody,
            id: RequestId,
        }
        #[derive(Serialize, schemars::JsonSchema)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum ErrorWire<'a> {
            Error(&'a ErrorFrame),
        }
        match self {
            ServerFrame::Reply(r) => ReplyWire {
                body: &r.body,
                id: r.id,
            }
            .serialize(serializer),
            ServerFrame::Push(p) => p.serialize(serializer),
            ServerFrame::Error(e) => ErrorWire::Error(e).serialize(serializer),
            ServerFrame::Delta(d) => d.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if value.is_array() {
            return MembersDelta::from_value(value)
                .map(ServerFrame::Delta)
                .map_err(D::Error::custom);
        }
        let Some(fields) = value.as_object_mut() else {
            return Err(D::Error::custom("a server frame is a JSON object or array"));
        };
        let kind = match fields.get("type").and_then(serde_json::Value::as_str) {
            Some(kind) => kind.to_owned(),
            None => return Err(D::Error::missing_field("type")),
        };
        if kind == "error" {
            fields.remove("type");
            return ErrorFrame::deserialize(value)
                .map(ServerFrame::Error)
                .map_err(D::Error::custom);
        }
        if PUSH_TYPES.contains(&kind.as_str()) {
            return Push::deserialize(value)
                .map(ServerFrame::Push)
                .map_err(D::Error::custom);
        }
        let id = fields
            .remove("id")
            .ok_or_else(|| D::Error::missing_field("id"))?;
        let id = RequestId::deserialize(id).map_err(D::Error::custom)?;
        let body = ReplyBody::deserialize(value).map_err(D::Error::custom)?;
        Ok(ServerFrame::Reply(Reply { id, body }))
    }
}

macro_rules! into_reply {
    ($($reply:ident => $variant:ident),* $(,)?) => {
        $(impl From<$reply> for ReplyBody {
            fn from(reply: $reply) -> Self {
                ReplyBody::$variant(reply)
            }
        })*
    };
}

into_reply! {
    Welcome => Welcome,
    Ack => Ack,
    Messages => Messages,
    Done => Ok,
    GroupVersions => GroupVersions,
    MembersDiff => MembersDiff,
    MembersPage => MembersPage,
    MembersBuckets => MembersBuckets,
    MembersSketch => MembersSketch,
    MembersBatch => MembersBatch,
    MembersFound => MembersFound,
    SearchResults => SearchResults,
    Reactors => Reactors,
    UserState => UserState,
    Receipts => Receipts,
    PresenceAnswer => Presence,
    UploadGrant => Upload,
    DownloadGrant => Download,
}

/// What a message event is, as every view of it (a live push, a stored row) shows it, with
/// the body borrowed: a user's message, or a system post (sender `system:<source>` — `:`
/// cannot occur in a user id, so it never collides with a user — and the event id as its
/// client id).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageParts<'a> {
    /// The conversation.
    pub conv: &'a ConversationId,
    /// Who sent it.
    pub sender: String,
    /// From which device (empty for a system post).
    pub device: String,
    /// The sender's id of the message.
    pub client_msg_id: String,
    /// The body, as sent.
    pub body: &'a serde_json::Value,
    /// The sender's clock, Unix milliseconds.
    pub client_ts: i64,
    /// When it was stored, Unix milliseconds.
    pub server_ts: i64,
}

impl<'a> MessageParts<'a> {
    /// The parts of `env`, if it is a message event.
    pub fn of(env: &'a Envelope) -> Option<Self> {
        Some(match &env.event {
            Event::MessageSent(m) => MessageParts {
                conv: &m.conv,
                sender: m.sender.to_string(),
                device: m.device.to_string(),
                client_msg_id: m.client_msg_id.to_string(),
                body: &m.body,
                client_ts: m.client_ts,
                server_ts: env.occurred_at,
            },
            Event::SystemMessagePosted(m) => MessageParts {
                conv: &m.conv,
                sender: match &env.actor {
                    Actor::System { source } => format!("system:{source}"),
                    Actor::User { user, .. } => format!("system:{user}"),
                },
                device: String::new(),
                client_msg_id: env.id.to_string(),
                body: &m.body,
                client_ts: env.occurred_at,
                server_ts: env.occurred_at,
            },
            _ => return None,
        })
    }
}

impl Message {
    /// The entry an event stored at `seq` is, if it is one: a message (see
    /// [`MessageParts`]) or a change to one.
    pub fn from_event(seq: u64, env: &Envelope) -> Option<Message> {
        if let Some(p) = MessageParts::of(env) {
            let (reply_to, mentions, mention_all, attachments) = match &env.event {
                Event::MessageSent(m) => (
                    m.reply_to,
                    m.mentions.iter().map(ToString::to_string).collect(),
                    m.mention_all,
                    m.attachments.clone(),
                ),
                _ => (None, Vec::new(), false, Vec::new()),
            };
            return Some(Message {
                reply_to,
                mentions,
                mention_all,
                attachments,
                ..Message::entry(
                    p.conv.clone(),
                    seq,
                    p.sender,
                    p.device,
                    p.client_msg_id,
                    p.body.clone(),
                    (p.client_ts, p.server_ts),
                )
            });
        }
        let (sender, device) = match &env.actor {
            Actor::User { user, device } => (user.to_string(), device.to_string()),
            Actor::System { source } => (format!("system:{source}"), String::new()),
        };
        let times = (env.occurred_at, env.occurred_at);
        let id = env.id.to_string();
        let entry = |conv: &ConversationId, body, kind, target| Message {
            kind,
            target: Some(target),
            ..Message::entry(
                conv.clone(),
                seq,
                sender.clone(),
                device.clone(),
                id.clone(),
                body,
                times,
            )
        };
        Some(match &env.event {
            Event::MessageEdited(e) => entry(&e.conv, e.body.clone(), EntryKind::Edit, e.target),
            Event::MessageRevoked(e) => entry(
                &e.conv,
                serde_json::Value::Null,
                EntryKind::Revoke,
                e.target,
            ),
            Event::ReactionChanged(e) => Message {
                emoji: Some(e.emoji.clone()),
                added: Some(e.added),
                ..entry(
                    &e.conv,
                    serde_json::Value::Null,
                    EntryKind::Reaction,
                    e.target,
                )
            },
            Event::PinChanged(e) => Message {
                pinned: e.pinned,
                ..entry(&e.conv, serde_json::Value::Null, EntryKind::Pin, e.target)
            },
            _ => return None,
        })
    }

    /// A plain entry: who, what and when, with no state beyond it.
    pub fn entry(
        conv: ConversationId,
        seq: u64,
        sender: String,
        device: String,
        client_msg_id: String,
        body: serde_json::Value,
        (client_ts, server_ts): (i64, i64),
    ) -> Message {
        Message {
            conv,
            seq,
            sender,
            device,
            client_msg_id,
            body,
            client_ts,
            server_ts,
            kind: EntryKind::Message,
            target: None,
            emoji: None,
            added: None,
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            edits: 0,
            revoked: false,
            pinned: false,
            reactions: Vec::new(),
            version: None,
            attachments: Vec::new(),
        }
    }
}

impl From<Push> for ServerFrame {
    fn from(push: Push) -> Self {
        ServerFrame::Push(push)
    }
}

impl From<ErrorFrame> for ServerFrame {
    fn from(error: ErrorFrame) -> Self {
        ServerFrame::Error(error)
    }
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Message {
    /// The conversation.
    pub conv: ConversationId,
    /// Its place in the conversation (the MESSAGES stream sequence).
    pub seq: u64,
    /// Who sent it: a user id, or `system:<source>` for a message from another system.
    pub sender: String,
    /// From which device (empty for a system message).
    pub device: String,
    /// The sender's id of the message (the event id for a system message).
    pub client_msg_id: String,
    /// Text or any JSON, as sent.
    pub body: serde_json::Value,
    /// The sender's clock, Unix milliseconds.
    pub client_ts: i64,
    /// When the server stored it, Unix milliseconds.
    pub server_ts: i64,
    /// What the entry is: a message (absent), or a change to message `target` — `edit`
    /// (`body` is the new body), `revoke`, `reaction` (`emoji`, `added`) or `pin` (`pinned`).
    #[serde(default, skip_serializing_if = "EntryKind::is_message")]
    pub kind: EntryKind,
    /// The message a change is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// A reaction entry's emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// A reaction entry: added (or removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<bool>,
    /// The message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Users the message mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// The message mentions everyone (`@all`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// How often the message was edited (`body` is the latest).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edits: u32,
    /// Revoked for everyone: a tombstone, `body` is null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// A message: pinned in its conversation; a pin entry: pinned (or unpinned).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// Reactions, by emoji in the order each first came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// The seq of the last entry reflected in this state (absent: none since the message).
    /// A client applies an entry about this message only if the entry's seq is higher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Files the message carries (get one with `download`); none once revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<anchorage_schema::attachment::Attachment>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The reactions with one emoji on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many reacted with it.
    pub count: u64,
    /// Whether the user reading is one of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mine: bool,
}

/// A conversation that changed since the client's anchor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConvChange {
    /// The conversation.
    pub conv: ConversationId,
    /// Its last message's seq.
    pub last_seq: u64,
    /// Messages after the user's read marker (capped at 1000).
    pub unread: u64,
    /// The user's read marker.
    pub read_seq: u64,
    /// The last message, for a conversation list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Message>,
    /// Messages after the user's read marker that mention them or everyone (capped at
    /// 1000).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub mentions: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// `welcome`: the answer to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Welcome {
    /// The protocol version spoken on this connection.
    pub protocol: u16,
    /// The signed-in user.
    pub user: UserId,
    /// The signed-in device.
    pub device: DeviceId,
    /// Largest frame the server accepts, in bytes.
    pub max_frame_bytes: u32,
    /// Conversations changed since the client's anchors, oldest change first.
    pub changes: Vec<ConvChange>,
    /// Present when more changes remain: send `hello` again with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The user's own state: what changed since the `hello`'s `state_version` (boxed: a
    /// welcome is rare, the frames it shares a type with are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<UserState>>,
    /// This edge answers a `members_sync` with `compact` in the positional form
    /// (`MembersDelta`); an edge that does not say so refuses the field.
    #[serde(default)]
    pub compact: bool,
}

/// `ack`: a message was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Ack {
    /// The sender's id of the message.
    pub client_msg_id: ClientMsgId,
    /// Its place in the conversation.
    pub seq: u64,
    /// When the server stored it.
    pub server_ts: i64,
    /// The message had been sent before; `seq` is the original's.
    pub duplicate: bool,
}

/// `messages`: the answer to `sync` and `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Messages {
    /// The conversation.
    pub conv: ConversationId,
    /// Oldest first for `sync`, newest first for `history`.
    pub messages: Vec<Message>,
    /// More messages remain in the requested direction.
    pub more: bool,
}

/// `ok`: a request succeeded with nothing else to say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Done {
    /// The conversation it concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConversationId>,
    /// The stream sequence of the event it published, or the marker's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `group_versions`: the caller's groups and their versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GroupVersions {
    /// The MEMBERSHIP stream's epoch: versions of another epoch cannot be compared.
    pub epoch: String,
    /// The groups.
    pub groups: Vec<GroupVersion>,
    /// Present when more groups remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `members_diff`: changes since the client's version, oldest first. `digest` (of the whole
/// list at `version`) comes with the last page; while `more`, sync again from `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersDiff {
    /// The group.
    pub group: GroupId,
    /// The MEMBERSHIP stream's epoch.
    pub epoch: String,
    /// The version the list is at after applying this page.
    pub version: u64,
    /// The digest of the whole list at `version` (on the last page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Members who joined or changed, as they are now.
    pub upserts: Vec<MemberInfo>,
    /// Members who left.
    pub removed: Vec<UserId>,
    /// More changes remain.
    pub more: bool,
}

/// `members_page`: a snapshot page pinned to `anchor`, members in id order: plain members by
/// id in `members`, the others in `details`. Fetch the next page with `cursor`; after the
/// last, sync from `anchor` for what changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersPage {
    /// The group.
    pub group: GroupId,
    /// The MEMBERSHIP stream's epoch.
    pub epoch: String,
    /// The version the snapshot is pinned to.
    pub anchor: u64,
    /// Plain members.
    pub members: Vec<UserId>,
    /// Members with a role, nickname or mute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<MemberInfo>,
    /// Only these digest buckets (a partial realignment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<u8>>,
    /// Present when more pages remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `members_buckets`: same version, different digest: the server's bucket digests at
/// `version`, so the client looks only under the buckets that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersBuckets {
    /// The group.
    pub group: GroupId,
    /// The MEMBERSHIP stream's epoch.
    pub epoch: String,
    /// The version the digests are of.
    pub version: u64,
    /// The bucket digests in their compact wire form (base64: a bitmap of the non-empty
    /// buckets, then sum and count of each).
    pub digests: String,
}

/// `members_sketch`: the sketch asked for, of the members of `buckets` at `anchor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersSketch {
    /// The group.
    pub group: GroupId,
    /// The MEMBERSHIP stream's epoch.
    pub epoch: String,
    /// The version it is pinned to.
    pub anchor: u64,
    /// Its cells.
    pub cells: u32,
    /// The cells in their wire form (base64, 16 bytes each).
    pub sketch: String,
}

/// `members_batch`: the answer to `members_sync_batch`, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersBatch {
    /// One result per group answered.
    pub results: Vec<GroupSyncResult>,
    /// Index of the first group not answered (the budget was spent); absent when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u32>,
}

/// `upload`: the answer to `upload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadGrant {
    /// The attachment to name in the message once the file is uploaded.
    pub attachment: anchorage_schema::attachment::Attachment,
    /// Where to upload it: absolute, or a path on the edge the client is connected to.
    pub url: String,
    /// The HTTP method (`PUT`); the body is the file, exactly `size` bytes.
    pub method: String,
    /// Headers the upload must carry, with these values (`content-type`).
    pub headers: BTreeMap<String, String>,
    /// When the URL stops working, Unix milliseconds.
    pub expires_at: i64,
}

/// `download`: the answer to `download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DownloadGrant {
    /// The file as the message names it.
    pub attachment: anchorage_schema::attachment::Attachment,
    /// Where to get it with `GET`: absolute, or a path on the edge the client is connected to.
    pub url: String,
    /// When the URL stops working, Unix milliseconds.
    pub expires_at: i64,
}

/// `search_results`: the answer to `search`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchResults {
    /// The messages found.
    pub results: Vec<SearchResult>,
    /// More may be found before the last result's seq.
    pub more: bool,
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchResult {
    /// The message in its current state.
    pub message: Message,
    /// The pieces of its text that matched, as written there (to highlight).
    pub highlights: Vec<String>,
}

/// `members_found`: the answer to `members_search`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersFound {
    /// The group.
    pub group: GroupId,
    /// The members found, in id order.
    pub members: Vec<MemberInfo>,
}

/// `message`: a new message, live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LiveMessage {
    /// The conversation's previous seq (0 if none).
    pub prev: u64,
    /// The message (boxed: frames are moved around far more often than messages are read).
    pub message: Box<Message>,
}

/// `read`: the user's read marker moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReadMoved {
    /// The conversation.
    pub conv: ConversationId,
    /// The new marker.
    pub seq: u64,
}

/// `membership`: the caller joined or left a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembershipChanged {
    /// The conversation.
    pub conv: ConversationId,
    /// Joined (or left).
    pub joined: bool,
    /// MEMBERSHIP stream sequence of the change.
    pub version: u64,
}

/// `members_changed`: one committed membership change, to connections that watch the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersChanged {
    /// The group.
    pub group: GroupId,
    /// The list's version after the change.
    pub version: u64,
    /// The list's version before it.
    pub prev: u64,
    /// The digest of the whole list at `version`.
    pub digest: String,
    /// What changed.
    pub change: MembersChange,
}

/// `reactions`: the reaction entries (prev, seq] of a conversation, coalesced into count
/// changes — one frame for many reactions, never one per reaction per member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReactionsChanged {
    /// The conversation.
    pub conv: ConversationId,
    /// The conversation's seq before the first of these entries.
    pub prev: u64,
    /// The last of these entries.
    pub seq: u64,
    /// Count changes per message and emoji.
    pub deltas: Vec<ReactionDelta>,
    /// The reading user's own reactions among them (from their other devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mine: Vec<OwnReaction>,
}

/// How the count of one emoji on one message changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReactionDelta {
    /// The message.
    pub target: u64,
    /// The emoji.
    pub emoji: String,
    /// The change of its count.
    pub delta: i64,
}

/// One of the reading user's own reactions, added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OwnReaction {
    /// The message.
    pub target: u64,
    /// The emoji.
    pub emoji: String,
    /// Added (or removed).
    pub added: bool,
}

/// `reactors`: who reacted to a message with an emoji, in the order they did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reactors {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
    /// The emoji.
    pub emoji: String,
    /// The users.
    pub users: Vec<String>,
    /// Present when more remain: ask again with `after` set to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
}

/// `typing`: who is typing in a conversation now — a few of them by name, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TypingNow {
    /// The conversation.
    pub conv: ConversationId,
    /// Some of those typing (at most 3), in id order.
    pub users: Vec<UserId>,
    /// How many are typing (0: nobody any more).
    pub count: u32,
}

/// The user's own state since a version: views of conversations that changed, messages
/// deleted for themselves, privacy settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserState {
    /// Views of conversations that changed (their whole current view).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefs: Vec<ConvPrefs>,
    /// Messages deleted for themselves since, by conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<HiddenMessages>,
    /// Devices whose push target changed since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<DevicePush>,
    /// Others see the user's read receipts.
    pub receipts: bool,
    /// Others see the user's presence.
    pub presence: bool,
    /// The version this state is complete up to.
    pub version: u64,
    /// More changes remain: ask `user_state` after `version`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// The user's own view of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConvPrefs {
    /// The conversation.
    pub conv: String,
    /// Pinned to the top of the list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// Archived.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
    /// Do not disturb until (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
    /// The unsent text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// `mentions` or `none` (absent: every message notifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// Messages of one conversation deleted for oneself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HiddenMessages {
    /// The conversation.
    pub conv: String,
    /// The messages' seqs.
    pub seqs: Vec<u64>,
}

/// `state`: one change of the user's own state, live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StateChanged {
    /// The state version this change applies to.
    pub prev: u64,
    /// The state version after it.
    pub version: u64,
    /// What changed.
    pub change: StateChange,
}

/// One change of the user's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateChange {
    /// A view of a conversation: only the fields present changed (`muted_until` 0 and an
    /// empty `draft` clear them).
    Prefs {
        /// The conversation.
        conv: String,
        /// Pinned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pinned: Option<bool>,
        /// Archived.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        archived: Option<bool>,
        /// Do not disturb until.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        muted_until: Option<i64>,
        /// The unsent text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        draft: Option<String>,
        /// Which messages notify (`all` restores the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notify: Option<String>,
    },
    /// Messages deleted for oneself.
    Hidden(HiddenMessages),
    /// Privacy: only the fields present changed.
    Privacy {
        /// Read receipts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipts: Option<bool>,
        /// Presence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<bool>,
    },
    /// A device's push target was set or removed.
    Push(DevicePush),
}

/// Whether one of the user's devices is notified while offline, and how (never its address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DevicePush {
    /// The device.
    pub device: String,
    /// `fcm`, `apns` or `web_push`; absent once removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Notifications show the text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preview: bool,
}

/// How far one member read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Receipt {
    /// The conversation.
    pub conv: ConversationId,
    /// The member.
    pub user: String,
    /// Read up to here.
    pub seq: u64,
}

/// `receipts`: how far the other members read, or how many read a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Receipts {
    /// The conversation.
    pub conv: ConversationId,
    /// Each other member's position (1:1s and groups up to `receipts_max_members`), without
    /// members who hide their receipts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<Receipt>,
    /// With `seq`: how many others read that message or further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Whether a user is online, and when they were last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PresenceInfo {
    /// The user.
    pub user: String,
    /// Connected now (from any device, to any edge).
    pub online: bool,
    /// When their last device went away (Unix ms), if known and they are offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
    /// The user hides their presence (or shares no conversation with the caller): nothing
    /// else is said.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// `presence`: the users asked about, and the online members of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PresenceAnswer {
    /// One per user asked about, in the order asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<PresenceInfo>,
    /// With `conv`: how many of its members are online (those who hide their presence are
    /// not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<u64>,
}
