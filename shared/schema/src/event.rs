//! Events: the facts appended to the streams.
//!
//! On the wire an event is one JSON object, the [`Envelope`]:
//!
//! ```json
//! {"id":"d1:m-42","type":"message.sent","v":1,"occurred_at":1763840000000,
//!  "actor":{"kind":"user","user":"alice","device":"d1"},
//!  "payload":{"conv":"c1","sender":"alice","device":"d1","client_msg_id":"m-42",
//!             "body":"hi","client_ts":1763839999000}}
//! ```
//!
//! `type` names the payload; `v` is the schema version of that payload. Decoding checks both
//! before it looks at the payload, so a consumer can tell apart an event type it has never
//! heard of ([`DecodeError::UnknownType`]), one written by newer software
//! ([`DecodeError::NewerVersion`]) and a broken payload ([`DecodeError::InvalidPayload`]).
//! Those are the reasons a dead-letter entry carries.
//!
//! Event names are past tense: they state what happened, never what someone wants to happen.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ClientMsgId, ConversationId, DeviceId, EventId, GroupId, SourceId, UserId};

/// The current time in Unix milliseconds, as events carry it (`occurred_at`, client and
/// server timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A signed-in device.
    User {
        /// The user.
        user: UserId,
        /// Their device.
        device: DeviceId,
    },
    /// Another system, through the ingest subjects, or Anchorage itself (`source: "anchorage"`).
    System {
        /// Which system.
        source: SourceId,
    },
}

/// A message into a conversation, from a user's device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageSent {
    /// The conversation.
    pub conv: ConversationId,
    /// Who sent it.
    pub sender: UserId,
    /// From which device.
    pub device: DeviceId,
    /// The sender's id for the message; retries reuse it, so it is the idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Opaque to the server: text or any JSON (end-to-end encrypted payloads pass untouched).
    pub body: Value,
    /// The sender's clock when the message was composed, Unix milliseconds.
    pub client_ts: i64,
    /// The message this one replies to (its seq in the conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Users the message mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// The message mentions everyone in the conversation (`@all`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// Files the message carries (uploaded before it was sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::attachment::Attachment>,
}

/// A message's sender replaced its body. An entry of the conversation's own (with its seq);
/// the message keeps its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageEdited {
    /// The conversation.
    pub conv: ConversationId,
    /// The edited message's seq.
    pub target: u64,
    /// Who edited it (its sender).
    pub editor: UserId,
    /// From which device.
    pub device: DeviceId,
    /// The new body.
    pub body: Value,
}

/// A message was revoked for everyone. Its body and the bodies of its edits are erased from
/// the streams and the projections; what remains is a tombstone: who sent it, under which id,
/// when. Those are carried here, so a rebuild from the streams has the tombstone too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageRevoked {
    /// The conversation.
    pub conv: ConversationId,
    /// The revoked message's seq.
    pub target: u64,
    /// Its sender, as messages show it (a user id, or `system:<source>`).
    pub sender: String,
    /// Its sender's device (empty for a system post).
    pub device: String,
    /// Its client id.
    pub client_msg_id: String,
    /// Its sender's clock, Unix milliseconds.
    pub client_ts: i64,
    /// When it was stored, Unix milliseconds.
    pub sent_at: i64,
}

/// A user added or removed a reaction on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReactionChanged {
    /// The conversation.
    pub conv: ConversationId,
    /// The message's seq.
    pub target: u64,
    /// Who reacted.
    pub user: UserId,
    /// The reaction: an emoji (at most 32 bytes, no control characters).
    pub emoji: String,
    /// Added (or removed).
    pub added: bool,
}

/// A message was pinned in its conversation, or unpinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PinChanged {
    /// The conversation.
    pub conv: ConversationId,
    /// The message's seq.
    pub target: u64,
    /// Pinned (or unpinned).
    pub pinned: bool,
}

/// A user changed how a conversation looks to them, on all their devices. Only the fields
/// present change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConversationPrefsChanged {
    /// Whose view.
    pub user: UserId,
    /// The conversation.
    pub conv: ConversationId,
    /// Pinned to the top of their list (or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    /// Archived (or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Do not disturb until this Unix millisecond; 0 ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
    /// The unsent text; empty clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// Which messages notify while offline: `all`, `mentions`, `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// A user changed what others may see of them. Only the fields present change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PrivacyChanged {
    /// The user.
    pub user: UserId,
    /// Others see how far they read (read receipts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<bool>,
    /// Others see whether they are online and when they were last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
}

/// A user deleted messages for themselves: their devices stop showing them; nobody else is
/// affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessagesHidden {
    /// Whose view.
    pub user: UserId,
    /// The conversation.
    pub conv: ConversationId,
    /// The messages' seqs.
    pub seqs: Vec<u64>,
}

/// What an entry of a conversation is: a message, or a change to the message it names. The
/// same names on the wire (`kind`) and in the store.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A message.
    #[default]
    Message,
    /// A new body for a message.
    Edit,
    /// A message revoked for everyone.
    Revoke,
    /// A reaction added or removed.
    Reaction,
    /// A message pinned or unpinned.
    Pin,
}

impl EntryKind {
    /// Whether this is a message (not a change to one).
    pub fn is_message(&self) -> bool {
        *self == EntryKind::Message
    }

    /// The name, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Message => "message",
            EntryKind::Edit => "edit",
            EntryKind::Revoke => "revoke",
            EntryKind::Reaction => "reaction",
            EntryKind::Pin => "pin",
        }
    }

    /// Reads a name (anything unknown is a message).
    pub fn parse(name: &str) -> EntryKind {
        match name {
            "edit" => EntryKind::Edit,
            "revoke" => EntryKind::Revoke,
            "reaction" => EntryKind::Reaction,
            "pin" => EntryKind::Pin,
            _ => EntryKind::Message,
        }
    }
}

/// A message into a conversation from another system (a bot, a notifier, an admin tool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SystemMessagePosted {
    /// The conversation.
    pub conv: ConversationId,
    /// Text or any JSON, as posted.
    pub body: Value,
}

/// A user has read a conversation up to `read_seq`. Read markers only move forward: a marker
/// lower than the current one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReadMarked {
    /// Whose marker.
    pub user: UserId,
    /// The conversation.
    pub conv: ConversationId,
    /// Read up to this seq (markers only move forward).
    pub read_seq: u64,
}

/// The role of a group member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Created the group; cannot be removed, demoted or muted.
    Owner,
    /// Adds and removes members, mutes plain members, changes the profile.
    Admin,
    /// A plain member.
    Member,
}

impl Role {
    /// The stored name: `owner`, `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Reads a stored name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// Why members left a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// The member left by themselves.
    Left,
    /// An owner or admin removed the member.
    Kicked,
    /// Another system removed the member (directory sync, account deletion).
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A group (or a 1:1 conversation) was created.
pub struct GroupCreated {
    /// The group.
    pub group: GroupId,
    /// Who created it; the owner.
    pub owner: UserId,
    /// Its title.
    pub title: String,
    /// Initial members besides the owner.
    #[serde(default)]
    pub members: Vec<UserId>,
    /// A 1:1 conversation: exactly two members, who can neither add nor remove anyone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// Members joined a group.
pub struct MembersAdded {
    /// The group.
    pub group: GroupId,
    /// Who joined.
    pub members: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// Members left or were removed from a group.
pub struct MembersRemoved {
    /// The group.
    pub group: GroupId,
    /// Who left.
    pub members: Vec<UserId>,
    /// Why.
    pub reason: RemovalReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A member's role changed.
pub struct MemberRoleChanged {
    /// The group.
    pub group: GroupId,
    /// The member.
    pub member: UserId,
    /// The new role.
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A member was muted or unmuted.
pub struct MemberMuteChanged {
    /// The group.
    pub group: GroupId,
    /// The member.
    pub member: UserId,
    /// Muted until this Unix millisecond; `None` unmutes.
    pub muted_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A member's nickname in a group changed.
pub struct MemberProfileChanged {
    /// The group.
    pub group: GroupId,
    /// The member.
    pub member: UserId,
    /// The member's nickname in this group; `None` clears it.
    pub nickname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A group's title or avatar changed.
pub struct GroupProfileChanged {
    /// The group.
    pub group: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The new title.
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The new avatar.
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A group ended for everyone.
pub struct GroupDismissed {
    /// The group.
    pub group: GroupId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A user was created (by another system, through ingest).
pub struct UserCreated {
    /// The user.
    pub user: UserId,
    /// The name shown for them.
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A user's profile changed.
pub struct UserUpdated {
    /// The user.
    pub user: UserId,
    /// The name shown for them.
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
/// A user was deleted: every session ends and every membership with it.
pub struct UserDeleted {
    /// The user.
    pub user: UserId,
}

/// One device's session was ended; its sockets are closed and its token refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionRevoked {
    /// The user.
    pub user: UserId,
    /// The device whose session ended.
    pub device: DeviceId,
}

/// A device registered where it is reached while offline (replacing what it registered
/// before). The same address registered by another device or user before is theirs no more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PushTargetSet {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The provider and address.
    pub target: crate::push::PushTarget,
    /// Notifications show the message's text (`false`: only that a message came, for
    /// end-to-end encrypted bodies or private screens).
    pub preview: bool,
}

/// A device's push target was removed: by the device (`address` absent), or because the
/// provider said the address is no longer valid (`address` names it, so a newer registration
/// of the device stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PushTargetRemoved {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// Only if the device's target still has this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Why, in a word: `unregistered` (by the device), `rejected` (by the provider).
    pub reason: String,
}

/// Why bytes are not an event this software can apply.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it is
pub enum DecodeError {
    #[error("not a JSON event envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event {type_name:?} has schema version {got}; this software reads up to {supported}")]
    NewerVersion {
        type_name: String,
        got: u16,
        supported: u16,
    },
    #[error("event {type_name:?} has schema version 0; versions start at 1")]
    ZeroVersion { type_name: String },
    #[error("invalid {type_name:?} payload: {source}")]
    InvalidPayload {
        type_name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// A short stable code for dead-letter headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::NewerVersion { .. } => "newer_version",
            DecodeError::ZeroVersion { .. } => "bad_version",
            DecodeError::InvalidPayload { .. } => "invalid_payload",
        }
    }
}

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal v $ver:literal ),* $(,)?) => {
        /// Every event Anchorage knows, by type name.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $( $(#[$doc])* $variant($variant), )*
        }

        impl Event {
            /// Every known type name with the newest schema version this software reads
            /// and writes.
            pub const TYPES: &'static [(&'static str, u16)] = &[$(($name, $ver)),*];

            /// The type name, e.g. `"message.sent"`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $name, )*
                }
            }

            /// The schema version this software writes for this event.
            pub fn version(&self) -> u16 {
                match self {
                    $( Event::$variant(_) => $ver, )*
                }
            }

            fn payload(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $( Event::$variant(p) => serde_json::to_value(p), )*
                }
            }

            fn from_payload(type_name: &str, payload: Value) -> Option<Result<Event, serde_json::Error>> {
                match type_name {
                    $( $name => Some(serde_json::from_value(payload).map(Event::$variant)), )*
                    _ => None,
                }
            }
        }

        $(
            impl From<$variant> for Event {
                fn from(p: $variant) -> Event {
                    Event::$variant(p)
                }
            }
        )*
    };
}

events! {
    /// A user sent a message.
    MessageSent = "message.sent" v 1,
    /// Another system posted a message.
    SystemMessagePosted = "message.system_posted" v 1,
    /// A sender edited a message.
    MessageEdited = "message.edited" v 1,
    /// A message was revoked for everyone.
    MessageRevoked = "message.revoked" v 1,
    /// A reaction was added or removed.
    ReactionChanged = "message.reaction_changed" v 1,
    /// A message was pinned or unpinned.
    PinChanged = "message.pin_changed" v 1,
    /// A user deleted messages for themselves.
    MessagesHidden = "message.hidden" v 1,
    /// A user changed how a conversation looks to them.
    ConversationPrefsChanged = "conversation.prefs_changed" v 1,
    /// A user changed what others may see of them.
    PrivacyChanged = "user.privacy_changed" v 1,
    /// A user read a conversation up to a point.
    ReadMarked = "read.marked" v 1,
    /// A group was created.
    GroupCreated = "group.created" v 1,
    /// Members joined.
    MembersAdded = "group.members_added" v 1,
    /// Members left or were removed.
    MembersRemoved = "group.members_removed" v 1,
    /// A member's role changed.
    MemberRoleChanged = "group.member_role_changed" v 1,
    /// A member was muted or unmuted.
    MemberMuteChanged = "group.member_mute_changed" v 1,
    /// A member's nickname changed.
    MemberProfileChanged = "group.member_profile_changed" v 1,
    /// A group's title or avatar changed.
    GroupProfileChanged = "group.profile_changed" v 1,
    /// A group ended.
    GroupDismissed = "group.dismissed" v 1,
    /// A user was created.
    UserCreated = "user.created" v 1,
    /// A user's profile changed.
    UserUpdated = "user.updated" v 1,
    /// A user was deleted.
    UserDeleted = "user.deleted" v 1,
    /// A session was ended.
    SessionRevoked = "session.revoked" v 1,
    /// A device registered a push target.
    PushTargetSet = "device.push_set" v 1,
    /// A device's push target was removed.
    PushTargetRemoved = "device.push_removed" v 1,
}

impl Event {
    /// The newest schema version known for `type_name`, if the type is known.
    pub fn supported_version(type_name: &str) -> Option<u16> {
        Self::TYPES
            .iter()
            .find(|(name, _)| *name == type_name)
            .map(|(_, v)| *v)
    }
}

/// An event with its metadata: the unit stored on a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique per event; used as `Nats-Msg-Id` so a re-publish is stored once.
    pub id: EventId,
    /// When the event happened, Unix milliseconds (server clock for native events).
    pub occurred_at: i64,
    /// Who caused it.
    pub actor: Actor,
    /// What happened.
    pub event: Event,
}

/// The JSON shape of an envelope, before the payload is interpreted.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Wire {
    id: EventId,
    #[serde(rename = "type")]
    type_name: String,
    v: u16,
    occurred_at: i64,
    actor: Actor,
    payload: Value,
}

impl Envelope {
    /// The removal of deleted `user` from `group` that follows their deletion (`self`), decided
    /// on the group's version `at`: named after both, so doing it again on the same version
    /// stores nothing twice, and a membership that came back since is removed again.
    pub fn departure(
        &self,
        group: &GroupId,
        user: &UserId,
        at: crate::Seq,
    ) -> Result<Envelope, crate::IdError> {
        Ok(Envelope::new(
            EventId::parse(format!("{}:leave:{group}:{}", self.id, at.0))?,
            self.occurred_at,
            self.actor.clone(),
            MembersRemoved {
                group: group.clone(),
                members: vec![user.clone()],
                reason: RemovalReason::Removed,
            },
        ))
    }

    /// An envelope around `event`.
    pub fn new(id: EventId, occurred_at: i64, actor: Actor, event: impl Into<Event>) -> Self {
        Self {
            id,
            occurred_at,
            actor,
            event: event.into(),
        }
    }

    /// The schema version this envelope is written with.
    pub fn version(&self) -> u16 {
        self.event.version()
    }

    /// Encodes the envelope as one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            id: self.id.clone(),
            type_name: self.event.type_name().to_owned(),
            v: self.event.version(),
            occurred_at: self.occurred_at,
            actor: self.actor.clone(),
            // Every payload is a plain struct of strings, numbers, enums and JSON values:
            // serializing it into a `Value` has no failure case.
            payload: self.event.payload().unwrap_or(Value::Null),
        };
        // `Wire` holds only JSON-representable data (see above), so this cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes an envelope, checking the type and schema version before the payload.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::from_wire(serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?)
    }

    /// Decodes an envelope built as a JSON value (not written out and read back), with the
    /// checks of [`Envelope::from_json`]. A value cannot repeat a key, and an error in it has no
    /// line and column.
    pub fn from_value(value: Value) -> Result<Self, DecodeError> {
        Self::from_wire(serde_json::from_value(value).map_err(DecodeError::Malformed)?)
    }

    fn from_wire(wire: Wire) -> Result<Self, DecodeError> {
        let supported = Event::supported_version(&wire.type_name)
            .ok_or_else(|| DecodeError::UnknownType(wire.type_name.clone()))?;
        if wire.v == 0 {
            return Err(DecodeError::ZeroVersion {
                type_name: wire.type_name,
            });
        }
        if wire.v > supported {
            return Err(DecodeError::NewerVersion {
                type_name: wire.type_name,
                got: wire.v,
                supported,
            });
        }
        let event = match Event::from_payload(&wire.type_name, wire.payload) {
            Some(Ok(event)) => event,
            Some(Err(source)) => {
                return Err(DecodeError::InvalidPayload {
                    type_name: wire.type_name,
                    source,
                });
            }
            None => return Err(DecodeError::UnknownType(wire.type_name)),
        };
        Ok(Envelope {
            id: wire.id,
            occurred_at: wire.occurred_at,
            actor: wire.actor,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn alice() -> Actor {
        Actor::User {
            user: user("alice"),
            device: DeviceId::parse("d1").unwrap(),
        }
    }

    fn samples() -> Vec<Event> {
        let conv = ConversationId::parse("c1").unwrap();
        let group = GroupId::parse("g1").unwrap();
        vec![
            MessageSent {
                conv: conv.clone(),
                sender: user("alice"),
                device: DeviceId::parse("d1").unwrap(),
                client_msg_id: ClientMsgId::parse("m-1").unwrap(),
                body: serde_json::json!({"text": "hi", "e2e": [1, 2, 3]}),
                client_ts: 1_763_839_999_000,
                reply_to: Some(3),
                mentions: vec![user("bob")],
                mention_all: false,
                attachments: Vec::new(),
            }
            .into(),
            MessageEdited {
                conv: conv.clone(),
                target: 4,
                editor: user("alice"),
                device: DeviceId::parse("d1").unwrap(),
                body: serde_json::json!("hi, edited"),
            }
            .into(),
            MessageRevoked {
                conv: conv.clone(),
                target: 4,
                sender: "alice".into(),
                device: "d1".into(),
                client_msg_id: "m-1".into(),
                client_ts: 1_763_839_999_000,
                sent_at: 1_763_840_000_000,
            }
            .into(),
            ReactionChanged {
                conv: conv.clone(),
                target: 4,
                user: user("bob"),
                emoji: "👍".into(),
                added: true,
            }
            .into(),
            PinChanged {
                conv: conv.clone(),
                target: 4,
                pinned: true,
            }
            .into(),
            MessagesHidden {
                user: user("bob"),
                conv: conv.clone(),
                seqs: vec![4, 5],
            }
            .into(),
            ConversationPrefsChanged {
                user: user("bob"),
                conv: conv.clone(),
                pinned: Some(true),
                archived: None,
                muted_until: Some(1_763_900_000_000),
                draft: Some("see you".into()),
                notify: Some("mentions".into()),
            }
            .into(),
            PrivacyChanged {
                user: user("bob"),
                receipts: Some(false),
                presence: None,
            }
            .into(),
            SystemMessagePosted {
                conv: conv.clone(),
                body: Value::String("deploy finished".into()),
            }
            .into(),
            ReadMarked {
                user: user("bob"),
                conv,
                read_seq: 42,
            }
            .into(),
            GroupCreated {
                group: group.clone(),
                owner: user("alice"),
                title: "Ops".into(),
                members: vec![user("bob")],
                direct: false,
            }
            .into(),
            MembersAdded {
                group: group.clone(),
                members: vec![user("carol"), user("dave")],
            }
            .into(),
            MembersRemoved {
                group: group.clone(),
                members: vec![user("dave")],
                reason: RemovalReason::Kicked,
            }
            .into(),
            MemberRoleChanged {
                group: group.clone(),
                member: user("bob"),
                role: Role::Admin,
            }
            .into(),
            MemberMuteChanged {
                group: group.clone(),
                member: user("bob"),
                muted_until: Some(1),
            }
            .into(),
            MemberProfileChanged {
                group: group.clone(),
                member: user("bob"),
                nickname: None,
            }
            .into(),
            GroupProfileChanged {
                group: group.clone(),
                title: Some("Ops 2".into()),
                avatar: None,
            }
            .into(),
            GroupDismissed { group }.into(),
            UserCreated {
                user: user("erin"),
                display_name: "Erin".into(),
            }
            .into(),
            UserUpdated {
                user: user("erin"),
                display_name: "Erin K.".into(),
            }
            .into(),
            UserDeleted { user: user("erin") }.into(),
            SessionRevoked {
                user: user("alice"),
                device: DeviceId::parse("d1").unwrap(),
            }
            .into(),
            PushTargetSet {
                user: user("alice"),
                device: DeviceId::parse("d1").unwrap(),
                target: crate::push::PushTarget::Apns {
                    token: "ab".repeat(32),
                    sandbox: true,
                },
                preview: false,
            }
            .into(),
            PushTargetRemoved {
                user: user("alice"),
                device: DeviceId::parse("d1").unwrap(),
                address: Some("ab".repeat(32)),
                reason: "rejected".into(),
            }
            .into(),
        ]
    }

    /// Decodes `bytes` from the bytes and, when they are JSON, from the parsed value: both
    /// decode the same envelope, or refuse with the same code.
    fn decoded(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let from_bytes = Envelope::from_json(bytes);
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            let from_value = Envelope::from_value(value);
            assert_eq!(
                from_bytes.as_ref().map_err(DecodeError::code),
                from_value.as_ref().map_err(DecodeError::code)
            );
        }
        from_bytes
    }

    #[test]
    fn every_event_type_round_trips() {
        let events = samples();
        assert_eq!(events.len(), Event::TYPES.len(), "a sample per type");
        for (i, event) in events.into_iter().enumerate() {
            let env = Envelope::new(
                EventId::parse(format!("e-{i}")).unwrap(),
                1_763_840_000_000,
                alice(),
                event,
            );
            let back = decoded(&env.to_json()).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn wire_shape_is_stable() {
        let env = Envelope::new(
            EventId::parse("e1").unwrap(),
            5,
            Actor::System {
                source: SourceId::parse("crm").unwrap(),
            },
            GroupDismissed {
                group: GroupId::parse("g1").unwrap(),
            },
        );
        let json: Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "e1", "type": "group.dismissed", "v": 1, "occurred_at": 5,
                "actor": {"kind": "system", "source": "crm"},
                "payload": {"group": "g1"}
            })
        );
    }

    fn raw(type_name: &str, v: u16, payload: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "e1", "type": type_name, "v": v, "occurred_at": 1,
            "actor": {"kind": "system", "source": "crm"}, "payload": payload
        }))
        .unwrap()
    }

    #[test]
    fn unknown_type_is_named() {
        let err = decoded(&raw("group.exploded", 1, Value::Null)).unwrap_err();
        assert!(matches!(&err, DecodeError::UnknownType(t) if t == "group.exploded"));
        assert_eq!(err.code(), "unknown_type");
    }

    #[test]
    fn newer_schema_version_is_refused_with_both_versions() {
        let err = decoded(&raw(
            "group.dismissed",
            2,
            serde_json::json!({"group": "g1"}),
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "event \"group.dismissed\" has schema version 2; this software reads up to 1"
        );
    }

    #[test]
    fn bad_payload_and_bad_json_are_told_apart() {
        let err = decoded(&raw(
            "group.dismissed",
            1,
            serde_json::json!({"group": "no.dots"}),
        ))
        .unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        assert!(err.to_string().contains("group id contains '.'"), "{err}");
        let err = decoded(b"{not json").unwrap_err();
        assert_eq!(err.code(), "malformed");
        let err = decoded(&raw("group.dismissed", 0, Value::Null)).unwrap_err();
        assert_eq!(err.code(), "bad_version");
    }

    #[test]
    fn entry_kinds_are_stored_under_the_names_they_travel_with() {
        use EntryKind::*;
        for kind in [Message, Edit, Revoke, Reaction, Pin] {
            let wire = serde_json::to_value(kind).unwrap();
            assert_eq!(wire, serde_json::json!(kind.as_str()));
            assert_eq!(EntryKind::parse(kind.as_str()), kind);
        }
    }

    proptest! {
        #[test]
        fn message_bodies_pass_through_untouched(text in ".{0,200}", n in any::<i64>()) {
            let body = serde_json::json!({"t": text, "n": n});
            let env = Envelope::new(
                EventId::parse("e").unwrap(),
                n,
                alice(),
                MessageSent {
                    conv: ConversationId::parse("c").unwrap(),
                    sender: user("alice"),
                    device: DeviceId::parse("d1").unwrap(),
                    client_msg_id: ClientMsgId::parse("m").unwrap(),
                    body: body.clone(),
                    client_ts: n,
                    reply_to: None,
                    mentions: Vec::new(),
                    mention_all: false,
                    attachments: Vec::new(),
                },
            );
            let back = decoded(&env.to_json()).unwrap();
            match back.event {
                Event::MessageSent(m) => prop_assert_eq!(m.body, body),
                other => prop_assert!(false, "decoded as {:?}", other),
            }
        }
    }
}
