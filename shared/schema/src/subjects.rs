//! Every stream name, subject and header name Anchorage uses, built in one place.
//!
//! The grammar (also in `streams/README.md`):
//!
//! | stream       | subjects                   | live copy (RePublish)           |
//! |--------------|----------------------------|---------------------------------|
//! | `MESSAGES`   | `msg.<conv>`               | `live.msg.<conv>`               |
//! | `MEMBERSHIP` | `grp.<group>`              | `live.grp.<group>`              |
//! | `READS`      | `read.<user>.<conv>`       | `live.read.<user>.<conv>`       |
//! | `USERS`      | `user.<user>`              | `live.user.<user>`              |
//! | `INGEST`     | `ext.<source>.<type…>`     | —                               |
//! | `DEADLETTER` | `dlq.<stream>`             | —                               |
//! | `ADMIN`      | `admin.apikey.<id>`, `admin.webhook.<name>` | —              |
//! | `PRESENCE`   | `presence.<user>.<edge>`   | `live.presence.<user>.<edge>`   |
//!
//! Not stored: `typing.<conv>` (who is typing, between edges), `notify.grp.<group>` and
//! `notify.progress.<projection>` (from the projector).
//!
//! Ids are subject-safe by construction (see [`crate::ids`]), so no function here escapes.

use crate::ids::{ConversationId, GroupId, SourceId, UserId};

/// Stream names.
pub mod stream {
    /// Messages of every conversation.
    pub const MESSAGES: &str = "MESSAGES";
    /// Group and membership changes.
    pub const MEMBERSHIP: &str = "MEMBERSHIP";
    /// Read markers.
    pub const READS: &str = "READS";
    /// Users and sessions.
    pub const USERS: &str = "USERS";
    /// Events from other systems, before validation.
    pub const INGEST: &str = "INGEST";
    /// Events no consumer could apply, with the reason.
    pub const DEADLETTER: &str = "DEADLETTER";
    /// Server API keys and webhook endpoints (the last record on a subject is current).
    pub const ADMIN: &str = "ADMIN";
    /// Who is connected where (records that expire unless their edge refreshes them).
    pub const PRESENCE: &str = "PRESENCE";
    /// Which projector process applies each projection (records that expire unless their
    /// holder renews them).
    pub const LEASES: &str = "LEASES";

    /// All streams, in the order `streams apply` creates them.
    pub const ALL: &[&str] = &[
        MESSAGES, MEMBERSHIP, READS, USERS, INGEST, DEADLETTER, ADMIN, PRESENCE, LEASES,
    ];
}

/// Header names: the JetStream ones we rely on and our own.
pub mod header {
    /// Idempotency key for a publish (JetStream deduplicates within the duplicate window).
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Optimistic concurrency: the publish succeeds only if the subject's last sequence is this.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    /// On a republished message: its stream sequence.
    pub const SEQUENCE: &str = "Nats-Sequence";
    /// On a republished message: the previous sequence on the same subject (0 if none).
    pub const LAST_SEQUENCE: &str = "Nats-Last-Sequence";
    /// On a republished message: the stream it was stored in.
    pub const STREAM: &str = "Nats-Stream";
    /// On a republished message: the time the stream stored it (RFC 3339).
    pub const TIME_STAMP: &str = "Nats-Time-Stamp";

    /// The event type, so consumers can route without parsing the body.
    pub const EVENT_TYPE: &str = "Anchorage-Event-Type";
    /// On a message: the MEMBERSHIP position (last applied sequence) the sending edge decided
    /// on. An edge delivers it only once its own membership view has reached that position,
    /// so a member removed before the message was decided never receives it.
    pub const MEMBERSHIP_SEQ: &str = "Anchorage-Membership-Seq";

    /// Dead-letter entries: why the event was set aside (a stable code, then a sentence).
    pub const DLQ_REASON: &str = "Anchorage-Dlq-Reason";
    /// Dead-letter entries: the stable reason code alone (`malformed`, `unknown_type`, …).
    pub const DLQ_CODE: &str = "Anchorage-Dlq-Code";
    /// Dead-letter entries: the stream the event came from.
    pub const DLQ_STREAM: &str = "Anchorage-Dlq-Stream";
    /// Dead-letter entries: its sequence in that stream.
    pub const DLQ_SEQ: &str = "Anchorage-Dlq-Seq";
    /// Dead-letter entries: the subject it was published on.
    pub const DLQ_SUBJECT: &str = "Anchorage-Dlq-Subject";
    /// Dead-letter entries: the consumer that gave up on it.
    pub const DLQ_CONSUMER: &str = "Anchorage-Dlq-Consumer";
    /// On a dead letter whose copy of the event was cut to fit: the event's size in bytes (the
    /// whole event is where `Anchorage-Dlq-Stream` and `-Seq` say).
    pub const DLQ_TRUNCATED: &str = "Anchorage-Dlq-Truncated";
}

/// The prefix of every live (republished) subject.
pub const LIVE_PREFIX: &str = "live.";

/// Where a conversation's messages are stored.
pub fn message(conv: &ConversationId) -> String {
    format!("msg.{conv}")
}

/// Where the server republishes them live.
pub fn live_message(conv: &ConversationId) -> String {
    format!("live.msg.{conv}")
}

/// Where a group's membership changes are stored.
pub fn membership(group: &GroupId) -> String {
    format!("grp.{group}")
}

/// Where the server republishes them live.
pub fn live_membership(group: &GroupId) -> String {
    format!("live.grp.{group}")
}

/// Where the projector announces a group's applied membership changes (core NATS, not
/// stored: a missed one shows as a gap in `prev` and the client syncs).
pub fn notify_members(group: &GroupId) -> String {
    format!("notify.grp.{group}")
}

/// Every group's membership notifications.
pub const NOTIFY_MEMBERS_ALL: &str = "notify.grp.>";

/// Where the projector announces a projection's new checkpoint (core NATS, not stored; the
/// payload is the last applied stream sequence in decimal). Readers that wait for a
/// projection wait for this instead of asking the database again and again; one that missed
/// an announcement reads the checkpoint itself.
pub fn notify_progress(projection: &str) -> String {
    format!("notify.progress.{projection}")
}

/// Every projection's progress announcements.
pub const NOTIFY_PROGRESS_ALL: &str = "notify.progress.>";

/// Every group's live membership events (what every edge follows).
pub const LIVE_MEMBERSHIP_ALL: &str = "live.grp.>";

/// Every user's live account events.
pub const LIVE_USERS_ALL: &str = "live.user.>";

/// Where a user's read marker of a conversation is stored.
pub fn read(user: &UserId, conv: &ConversationId) -> String {
    format!("read.{user}.{conv}")
}

/// Every live read marker (what an edge follows for its connected users).
pub const LIVE_READS_ALL: &str = "live.read.>";

/// Every live read marker of one user.
pub fn live_reads_of(user: &UserId) -> String {
    format!("live.read.{user}.>")
}

/// Where a user's account and session events are stored.
pub fn user(user: &UserId) -> String {
    format!("user.{user}")
}

/// Where the server republishes them live.
pub fn live_user(user: &UserId) -> String {
    format!("live.user.{user}")
}

/// Where another system publishes an event of `type_name` (e.g. `user.created`).
pub fn ingest(source: &SourceId, type_name: &str) -> String {
    format!("ext.{source}.{type_name}")
}

/// Where an event from `stream` goes when it cannot be applied.
pub fn deadletter(stream: &str) -> String {
    format!("dlq.{stream}")
}

/// Where a server API key's record is kept (hashed; the last record is current).
pub fn api_key(id: &str) -> String {
    format!("admin.apikey.{id}")
}

/// Where a webhook endpoint's record is kept (the last record is current).
pub fn webhook(name: &str) -> String {
    format!("admin.webhook.{name}")
}

/// Every webhook endpoint's records.
pub const WEBHOOKS_ALL: &str = "admin.webhook.*";

/// Where an edge records how many devices `user` has connected to it (the last record is
/// current; it expires unless the edge refreshes it).
pub fn presence(user: &UserId, edge: &str) -> String {
    format!("presence.{user}.{edge}")
}

/// Every live presence record (what every edge follows).
pub const LIVE_PRESENCE_ALL: &str = "live.presence.>";

/// Where edges tell each other who is typing in a conversation (core NATS, never stored).
pub fn typing(conv: &ConversationId) -> String {
    format!("typing.{conv}")
}

/// The lease of a projection (`lease.messages`): who applies it now.
pub fn lease(name: &str) -> String {
    format!("lease.{name}")
}

/// Every lease.
pub const LEASES_ALL: &str = "lease.*";

/// The last token of a subject (`msg.c1` → `c1`).
pub fn last_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_grammar() {
        let c = ConversationId::parse("c1").unwrap();
        let u = UserId::parse("alice").unwrap();
        let g = GroupId::parse("g1").unwrap();
        let s = SourceId::parse("crm").unwrap();
        assert_eq!(message(&c), "msg.c1");
        assert_eq!(live_message(&c), "live.msg.c1");
        assert_eq!(membership(&g), "grp.g1");
        assert_eq!(live_membership(&g), "live.grp.g1");
        assert_eq!(read(&u, &c), "read.alice.c1");
        assert_eq!(live_reads_of(&u), "live.read.alice.>");
        assert_eq!(user(&u), "user.alice");
        assert_eq!(live_user(&u), "live.user.alice");
        assert_eq!(ingest(&s, "user.created"), "ext.crm.user.created");
        assert_eq!(deadletter("INGEST"), "dlq.INGEST");
        assert_eq!(last_token("read.alice.c1"), "c1");
        assert_eq!(typing(&c), "typing.c1");
    }
}
