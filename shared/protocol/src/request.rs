//! What clients ask: one [`Request`] per frame, its `id` beside one struct per request type.
//!
//! On the wire a request is a flat JSON object: `{"type": "send", "id": 7, "conv": …}`.

use serde::{Deserialize, Serialize};

use anchorage_schema::event::Role;
use anchorage_schema::{ClientMsgId, ConversationId, GroupId, UserId};

use crate::RequestId;
use crate::members::GroupSync;

/// One client request: the client-chosen `id` its answer echoes, and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the answer (and in an error about this request).
    pub id: RequestId,
    /// What is asked.
    pub body: RequestBody,
}

impl Request {
    /// A request with its id.
    pub fn new(id: RequestId, body: impl Into<RequestBody>) -> Self {
        Self {
            id,
            body: body.into(),
        }
    }

    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        Self::encode(self.id, &self.body)
    }

    /// The JSON text of request `id` asking `body` (without owning it).
    pub fn encode(id: RequestId, body: &RequestBody) -> String {
        // Requests hold only strings, numbers, enums and JSON values: serialization cannot
        // fail.
        serde_json::to_string(&Wire { body, id }).unwrap_or_default()
    }
}

/// A request as it goes on the wire: the body's fields and the id, side by side.
#[derive(Serialize, schemars::JsonSchema)]
struct Wire<'a> {
    #[serde(flatten)]
    body: &'a RequestBody,
    id: RequestId,
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            body: &self.body,
            id: self.id,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let id = value
            .as_object_mut()
            .and_then(|fields| fields.remove("id"))
            .ok_or_else(|| D::Error::missing_field("id"))?;
        let id = RequestId::deserialize(id).map_err(D::Error::custom)?;
        let body = RequestBody::deserialize(value).map_err(D::Error::custom)?;
        Ok(Request { id, body })
    }
}

/// The request types, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestBody {
    /// First frame on a connection. Answered with `welcome`.
    Hello(Hello),
    /// Liveness check; answered with `pong`.
    Ping {},
    /// Send a message; answered with `ack`.
    Send(SendMessage),
    /// Messages after an anchor; answered with `messages`.
    Sync(Sync),
    /// Messages before a point; answered with `messages`.
    History(History),
    /// Move the user's read marker; answered with `ok`.
    Read(MarkRead),
    /// Move this device's delivery marker; answered with `ok`.
    Received(MarkReceived),
    /// Open (or find) a 1:1 conversation; answered with `ok`.
    OpenDirect(OpenDirect),
    /// Create a group; answered with `ok`.
    CreateGroup(CreateGroup),
    /// Add members; answered with `ok`.
    AddMembers(AddMembers),
    /// Remove members; answered with `ok`.
    RemoveMembers(RemoveMembers),
    /// Leave a group; answered with `ok`.
    Leave(Leave),
    /// Change a member's role; answered with `ok`.
    SetRole(SetRole),
    /// Mute or unmute a member; answered with `ok`.
    MuteMember(MuteMember),
    /// Set or clear a nickname; answered with `ok`.
    SetNickname(SetNickname),
    /// Change a group's title or avatar; answered with `ok`.
    UpdateGroup(UpdateGroup),
    /// End a group; answered with `ok`.
    DismissGroup(DismissGroup),
    /// The versions of the caller's groups; answered with `group_versions`.
    GroupVersions(GroupVersions),
    /// Bring one member list up to date; answered with one `members_*` frame.
    MembersSync(MembersSync),
    /// A realignment page, some digest buckets or members by hash; answered with
    /// `members_page`.
    MembersFetch(MembersFetch),
    /// A sketch of the members of some digest buckets; answered with `members_sketch`.
    MembersSketch(MembersSketch),
    /// Member lists of many groups in one answer; answered with `members_batch`.
    MembersSyncBatch(MembersSyncBatch),
    /// Members by id or nickname prefix; answered with `members_found`.
    MembersSearch(MembersSearch),
    /// Stop `members_changed` notifications of a group; answered with `ok`.
    MembersUnsubscribe(MembersUnsubscribe),
    /// Replace the body of one's own message; answered with `ok`.
    Edit(Edit),
    /// Revoke a message for everyone; answered with `ok`.
    Revoke(Revoke),
    /// Add or remove a reaction; answered with `ok`.
    React(React),
    /// Pin or unpin a message; answered with `ok`.
    Pin(Pin),
    /// Who reacted with an emoji; answered with `reactors`.
    Reactors(ReactorsQuery),
    /// A message's edits, oldest first; answered with `messages`.
    Edits(Edits),
    /// This connection shows a conversation (typing indicators start); answered with `ok`.
    View(View),
    /// It stopped showing it; answered with `ok`.
    Unview(View),
    /// The user is typing (or stopped); answered with `ok`.
    Typing(Typing),
    /// Change the user's own view of a conversation; answered with `ok`.
    SetPrefs(SetPrefs),
    /// Delete messages for oneself; answered with `ok`.
    Hide(Hide),
    /// Change what others may see of the user; answered with `ok`.
    SetPrivacy(SetPrivacy),
    /// The user's own state since a version; answered with `user_state`.
    UserState(UserStateQuery),
    /// How far the others read; answered with `receipts`.
    Receipts(ReceiptsQuery),
    /// Who is online; answered with `presence`.
    Presence(PresenceQuery),
    /// Full-text search of the user's messages; answered with `search_results`.
    Search(Search),
    /// Where this device is reached while offline; answered with `ok`.
    SetPush(SetPush),
    /// This device is not to be reached while offline any more; answered with `ok`.
    RemovePush(RemovePush),
    /// Where to upload a file for a message; answered with `upload`.
    Upload(Upload),
    /// Where to download a message's file; answered with `download`.
    Download(Download),
}

impl RequestBody {
    /// The request's `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            RequestBody::Hello(_) => "hello",
            RequestBody::Ping {} => "ping",
            RequestBody::Send(_) => "send",
            RequestBody::Sync(_) => "sync",
            RequestBody::History(_) => "history",
            RequestBody::Read(_) => "read",
            RequestBody::Received(_) => "received",
            RequestBody::OpenDirect(_) => "open_direct",
            RequestBody::CreateGroup(_) => "create_group",
            RequestBody::AddMembers(_) => "add_members",
            RequestBody::RemoveMembers(_) => "remove_members",
            RequestBody::Leave(_) => "leave",
            RequestBody::SetRole(_) => "set_role",
            RequestBody::MuteMember(_) => "mute_member",
            RequestBody::SetNickname(_) => "set_nickname",
            RequestBody::UpdateGroup(_) => "update_group",
            RequestBody::DismissGroup(_) => "dismiss_group",
            RequestBody::GroupVersions(_) => "group_versions",
            RequestBody::MembersSync(_) => "members_sync",
            RequestBody::MembersFetch(_) => "members_fetch",
            RequestBody::MembersSketch(_) => "members_sketch",
            RequestBody::MembersSyncBatch(_) => "members_sync_batch",
            RequestBody::MembersSearch(_) => "members_search",
            RequestBody::MembersUnsubscribe(_) => "members_unsubscribe",
            RequestBody::Edit(_) => "edit",
            RequestBody::Revoke(_) => "revoke",
            RequestBody::React(_) => "react",
            RequestBody::Pin(_) => "pin",
            RequestBody::Reactors(_) => "reactors",
            RequestBody::Edits(_) => "edits",
            RequestBody::View(_) => "view",
            RequestBody::Unview(_) => "unview",
            RequestBody::Typing(_) => "typing",
            RequestBody::SetPrefs(_) => "set_prefs",
            RequestBody::Hide(_) => "hide",
            RequestBody::SetPrivacy(_) => "set_privacy",
            RequestBody::UserState(_) => "user_state",
            RequestBody::Receipts(_) => "receipts",
            RequestBody::Presence(_) => "presence",
            RequestBody::Search(_) => "search",
            RequestBody::SetPush(_) => "set_push",
            RequestBody::RemovePush(_) => "remove_push",
            RequestBody::Upload(_) => "upload",
            RequestBody::Download(_) => "download",
        }
    }
}

/// The request types this version of the protocol knows.
pub const REQUEST_TYPES: &[&str] = &[
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
    "members_sketch",
    "members_sync_batch",
    "members_search",
    "members_unsubscribe",
    "edit",
    "revoke",
    "react",
    "pin",
    "reactors",
    "edits",
    "view",
    "unview",
    "typing",
    "set_prefs",
    "hide",
    "set_privacy",
    "user_state",
    "receipts",
    "presence",
    "search",
    "set_push",
    "remove_push",
    "upload",
    "download",
];

macro_rules! into_body {
    ($($request:ident => $variant:ident),* $(,)?) => {
        $(impl From<$request> for RequestBody {
            fn from(request: $request) -> Self {
                RequestBody::$variant(request)
            }
        })*
    };
}

into_body! {
    Hello => Hello,
    SendMessage => Send,
    Sync => Sync,
    History => History,
    MarkRead => Read,
    MarkReceived => Received,
    OpenDirect => OpenDirect,
    CreateGroup => CreateGroup,
    AddMembers => AddMembers,
    RemoveMembers => RemoveMembers,
    Leave => Leave,
    SetRole => SetRole,
    MuteMember => MuteMember,
    SetNickname => SetNickname,
    UpdateGroup => UpdateGroup,
    DismissGroup => DismissGroup,
    GroupVersions => GroupVersions,
    MembersSync => MembersSync,
    MembersFetch => MembersFetch,
    MembersSketch => MembersSketch,
    MembersSyncBatch => MembersSyncBatch,
    MembersSearch => MembersSearch,
    MembersUnsubscribe => MembersUnsubscribe,
    Edit => Edit,
    Revoke => Revoke,
    React => React,
    Pin => Pin,
    ReactorsQuery => Reactors,
    Edits => Edits,
    Typing => Typing,
    SetPrefs => SetPrefs,
    Hide => Hide,
    SetPrivacy => SetPrivacy,
    UserStateQuery => UserState,
    ReceiptsQuery => Receipts,
    PresenceQuery => Presence,
    Search => Search,
    SetPush => SetPush,
    RemovePush => RemovePush,
    Upload => Upload,
    Download => Download,
}

/// `hello`: the protocol version, the device token, and optionally the client's anchors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol: u16,
    /// The device token.
    pub token: String,
    /// The client's highest contiguous seq per conversation; conversations not listed are
    /// compared with what this device last acknowledged.
    #[serde(default)]
    pub anchors: Vec<ConvAnchor>,
    /// Continue a bounded list of changes from a previous `welcome`'s cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The version of the user's own state the client holds (`welcome.state.version`); the
    /// welcome then carries what changed since (0 or absent: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u64>,
}

/// The client's version of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConvAnchor {
    /// The conversation.
    pub conv: ConversationId,
    /// The client's highest contiguous seq in it.
    pub seq: u64,
    /// The read marker the client holds for it: a conversation whose marker moved past it (a
    /// read on another device while this one was away) is summarized even with no new
    /// message. Without it, only new messages make a conversation summarized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
}

/// `send`: a message. Retries reuse `client_msg_id` and get the same `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The conversation.
    pub conv: ConversationId,
    /// The client's id of the message, its idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Text or any JSON; opaque to the server.
    pub body: serde_json::Value,
    /// The sender's clock, Unix milliseconds.
    pub client_ts: i64,
    /// Set on every attempt after the first: the server then also looks for the message in
    /// history, so a retry long after the stream's duplicate window gets the same seq.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// The message this one replies to (its seq in the conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Users the message mentions (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// Mention everyone (`@all`): owners and admins of a group, either side of a 1:1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// Files the message carries (at most 10), each uploaded first through `upload` for
    /// this conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<anchorage_schema::attachment::Attachment>,
}

/// `edit`: a new body for one's own message `seq`, within the edit window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
    /// The new body.
    pub body: serde_json::Value,
}

/// `revoke`: revoke message `seq` for everyone — its sender, or an owner or admin of the
/// group. The text is erased; a tombstone stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
}

/// `react`: add (or with `remove`, take back) a reaction on message `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct React {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
    /// An emoji: 1 to 32 bytes, no control characters or whitespace.
    pub emoji: String,
    /// Take the reaction back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
}

/// `pin`: pin (or with `unpin`, unpin) message `seq` — owners and admins of a group, either
/// side of a 1:1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
    /// Unpin it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpin: bool,
}

/// `reactors`: who reacted to message `seq` with `emoji`, in the order they did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactorsQuery {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
    /// The emoji.
    pub emoji: String,
    /// The previous page's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `edits`: the edits of message `seq`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    /// The conversation.
    pub conv: ConversationId,
    /// The message.
    pub seq: u64,
}

/// `sync`: messages of a conversation after `after`, oldest first, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// The conversation.
    pub conv: ConversationId,
    /// The client's anchor: messages after this seq.
    pub after: u64,
    /// At most this many messages (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `history`: messages of a conversation before `before` (0: the latest), newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// The conversation.
    pub conv: ConversationId,
    /// Messages before this seq; 0 for the latest.
    #[serde(default)]
    pub before: u64,
    /// At most this many messages (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `read`: the user has read `conv` up to `seq` (markers only move forward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The conversation.
    pub conv: ConversationId,
    /// Read up to here.
    pub seq: u64,
}

/// `received`: this device has received everything in `conv` up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkReceived {
    /// The conversation.
    pub conv: ConversationId,
    /// Received up to here.
    pub seq: u64,
}

/// `open_direct`: open (or find) the 1:1 conversation with `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenDirect {
    /// The other user.
    pub peer: UserId,
}

/// `create_group`: a group with the caller as owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// The new group's id (ids starting with `dm-` are reserved).
    pub group: GroupId,
    /// At most 200 bytes.
    pub title: String,
    /// The first members besides the caller (at most 1000).
    #[serde(default)]
    pub members: Vec<UserId>,
}

/// `add_members` (owner and admins only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// The group.
    pub group: GroupId,
    /// Between 1 and 1000 users.
    pub members: Vec<UserId>,
}

/// `remove_members` (owner and admins; only the owner removes admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveMembers {
    /// The group.
    pub group: GroupId,
    /// Between 1 and 1000 users.
    pub members: Vec<UserId>,
}

/// `leave` a group (not as its owner, not a 1:1 conversation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Leave {
    /// The group.
    pub group: GroupId,
}

/// `set_role`: change a member's role (owner only; the owner's own role is fixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// The group.
    pub group: GroupId,
    /// The member whose role changes.
    pub member: UserId,
    /// `admin` or `member`.
    pub role: Role,
}

/// `mute_member` until a Unix millisecond, or unmute (`until` absent). Owner and admins;
/// admins cannot mute the owner or each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteMember {
    /// The group.
    pub group: GroupId,
    /// The member to mute or unmute.
    pub member: UserId,
    /// Muted until this Unix millisecond; absent to unmute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// `set_nickname`: one's own, or anyone's as owner or admin; absent to clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetNickname {
    /// The group.
    pub group: GroupId,
    /// Whose nickname.
    pub member: UserId,
    /// At most 64 bytes; absent to clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
}

/// `update_group`: the title or avatar (owner and admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// The group.
    pub group: GroupId,
    /// A new title (at most 200 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A new avatar (at most 1024 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

/// `dismiss_group`: end the group for everyone (owner only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DismissGroup {
    /// The group.
    pub group: GroupId,
}

/// `group_versions`: the versions of the caller's groups, bounded; continue with `cursor`.
/// Cheap: no member lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupVersions {
    /// Where a previous answer stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `members_sync`: bring one group's member list up to date from the client's copy (all
/// absent for no copy). Answered with exactly one of `members_unchanged`, `members_diff`,
/// `members_page` (realignment) or `members_buckets`; also subscribes this connection to the
/// group's `members_changed` notifications. The same fields as one group of
/// `members_sync_batch`.
pub type MembersSync = GroupSync;

/// `members_fetch`: the next snapshot page of a realignment pinned to `anchor`, the members
/// of some digest buckets only, or the members with some hashes (found by a sketch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersFetch {
    /// The group.
    pub group: GroupId,
    /// The epoch of the realignment.
    pub epoch: String,
    /// The version the realignment is pinned to.
    pub anchor: u64,
    /// Where the previous page stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only these digest buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<u8>>,
    /// Only the members with these hashes (16 hex digits each, at most
    /// [`MAX_FETCH_HASHES`]); without `cursor` and `buckets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Vec<String>>,
}

/// Hashes one `members_fetch` may ask for.
pub const MAX_FETCH_HASHES: usize = 1000;

/// `members_sketch`: an invertible sketch of `cells` cells of the members of `buckets` in the
/// snapshot pinned to `anchor` (the version of a `members_buckets` answer). The client
/// subtracts its own sketch of the same buckets and decodes the member hashes that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersSketch {
    /// The group.
    pub group: GroupId,
    /// The epoch of the copy.
    pub epoch: String,
    /// The version the sketch is pinned to.
    pub anchor: u64,
    /// The digest buckets whose members it covers (at least one).
    pub buckets: Vec<u8>,
    /// Its size: a multiple of 4, at most 6,144.
    pub cells: u32,
}

/// `members_sync_batch`: `members_sync` over many groups in one answer, in the order given
/// (most important first), until `budget_bytes` is spent; the answer's `cursor` says where to
/// go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersSyncBatch {
    /// The client's copies.
    pub groups: Vec<GroupSync>,
    /// Bytes of member data the answer may carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u32>,
    /// Index of the first group to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u32>,
}

/// `members_search`: members whose id or nickname starts with `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersSearch {
    /// The group.
    pub group: GroupId,
    /// The prefix.
    pub query: String,
    /// At most this many members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `set_push`: where this device is reached while it is not connected (replacing what it
/// set before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPush {
    /// The provider and the address it gave the device.
    pub target: anchorage_schema::push::PushTarget,
    /// Notifications show the message's text (default); `false`: only that one came.
    #[serde(default = "yes")]
    pub preview: bool,
}

fn yes() -> bool {
    true
}

/// `upload`: where to put a file for a message to `conv`. The answer's attachment is named
/// in the message once the file is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// The conversation the file is for (only there can a message carry it).
    pub conv: ConversationId,
    /// The file's name.
    pub name: String,
    /// Its media type, e.g. `image/png`.
    pub content_type: String,
    /// Its exact size in bytes.
    pub size: u64,
}

/// `download`: where to get file `attachment` of message `seq` in `conv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// The conversation.
    pub conv: ConversationId,
    /// The message carrying the file.
    pub seq: u64,
    /// The attachment's id.
    pub attachment: anchorage_schema::attachment::AttachmentId,
}

/// `remove_push`: this device is not notified while offline any more.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovePush {}

/// `search`: the user's messages whose text matches `query` — in every conversation they are
/// or were a member of, or in `conv` — newest first. Only messages that reached the user are
/// found: none from before they joined or after they left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// Words to find (every one must match; a word of three characters or more also matches
    /// words that start with it).
    pub query: String,
    /// Only this conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConversationId>,
    /// Messages before this seq (the last result's, for the next page); 0 for the newest.
    #[serde(default)]
    pub before: u64,
    /// At most this many results (default 20, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `members_unsubscribe`: stop `members_changed` notifications of a group on this
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersUnsubscribe {
    /// The group.
    pub group: GroupId,
}

/// `view` and `unview`: this connection starts or stops showing a conversation. Only
/// connections viewing a conversation get its `typing` pushes; one connection views at most 8
/// conversations (viewing another stops the oldest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// The conversation.
    pub conv: ConversationId,
}

/// `typing`: the user is typing in a conversation (`"stop": true`: no longer). Never stored;
/// a typing user is shown for 6 seconds unless the client says so again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    /// The conversation.
    pub conv: ConversationId,
    /// Stopped typing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
}

/// `set_prefs`: the user's own view of a conversation, on all their devices. Only the fields
/// given change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrefs {
    /// The conversation.
    pub conv: ConversationId,
    /// Pinned to the top of the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// Archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Do not disturb until this Unix millisecond; 0 ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
    /// The unsent text (at most 4 KiB); empty clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// Which messages notify the user while offline: `all` (the default), `mentions` (only
    /// those that mention them), `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// `hide`: delete messages for oneself (at most 100 per request); others keep them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hide {
    /// The conversation.
    pub conv: ConversationId,
    /// The messages' seqs.
    pub seqs: Vec<u64>,
}

/// `set_privacy`: what others may see of the user. Only the fields given change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrivacy {
    /// Others see how far the user read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<bool>,
    /// Others see whether the user is online, and when last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
}

/// `user_state`: what changed of the user's own state after version `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserStateQuery {
    /// The version the client holds.
    #[serde(default)]
    pub after: u64,
}

/// `receipts`: how far the other members read (a 1:1 or a small group), or how many read a
/// message (`seq`, in any group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsQuery {
    /// The conversation.
    pub conv: ConversationId,
    /// Count those who read this message or further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `presence`: whether users are online and when they were last seen (at most 100, each
/// sharing a conversation with the caller), and with `conv` how many of its members are
/// online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// The users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserId>,
    /// Count the online members of this conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConversationId>,
}
