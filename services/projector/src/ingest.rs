//! Events from other systems: validation and translation into native events.
//!
//! Other systems publish on `ext.<source>.<type>` (stream `INGEST`) a JSON document described by
//! `streams/schemas/ext/<type>.v1.json` — the schema is the contract, not our Rust types. The
//! ingest worker reads them in order and, for each:
//!
//! 1. checks the subject, the JSON, the type (known, and the same in subject and body), the
//!    schema version (not newer than we read) and the schema itself;
//! 2. translates it into the native event (`ext.crm.group.members_added` becomes a
//!    `group.members_added` event on `grp.<group>`, with actor `system:crm` and event id
//!    `ext:<source>:<id>`);
//! 3. checks the ids it refers to against the projections (known users, an existing group, an
//!    existing conversation) — after waiting until those projections have applied everything
//!    their streams hold, so a `user.created` followed at once by a `group.created` naming that
//!    user is accepted, also right after a restart;
//! 4. publishes the native event with its event id as `Nats-Msg-Id`.
//!
//! A valid event therefore changes state exactly as a native one does, and a repeat of the same
//! external id is applied once (deduplicated by the stream, and idempotent in the projections
//! beyond the duplicate window). An invalid one is rejected with a stable code and a reason and
//! goes to the dead-letter stream; the worker carries on.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_schema::ids::{ConversationId, GroupId, SourceId, UserId};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Envelope, Event};
use anchorage_store::Store;
use serde_json::{Value, json};

use crate::projections::{ApplyError, Projection};

/// The external event types, with the schema version we read and the schema.
const SCHEMAS: &[(&str, u16, &str)] = &[
    (
        "user.created",
        1,
        include_str!("../../../streams/schemas/ext/user.created.v1.json"),
    ),
    (
        "user.updated",
        1,
        include_str!("../../../streams/schemas/ext/user.updated.v1.json"),
    ),
    (
        "user.deleted",
        1,
        include_str!("../../../streams/schemas/ext/user.deleted.v1.json"),
    ),
    (
        "group.created",
        1,
        include_str!("../../../streams/schemas/ext/group.created.v1.json"),
    ),
    (
        "group.members_added",
        1,
        include_str!("../../../streams/schemas/ext/group.members_added.v1.json"),
    ),
    (
        "group.members_removed",
        1,
        include_str!("../../../streams/schemas/ext/group.members_removed.v1.json"),
    ),
    (
        "message.system_posted",
        1,
        include_str!("../../../streams/schemas/ext/message.system_posted.v1.json"),
    ),
];

struct Schema {
    version: u16,
    validator: jsonschema::Validator,
}

/// Compiled once; the schemas are part of the binary.
static VALIDATORS: LazyLock<Result<HashMap<&'static str, Schema>, String>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(name, version, text)| {
            let schema: Value =
                serde_json::from_str(text).map_err(|e| format!("schema {name}: {e}"))?;
            let validator =
                jsonschema::validator_for(&schema).map_err(|e| format!("schema {name}: {e}"))?;
            Ok((
                *name,
                Schema {
                    version: *version,
                    validator,
                },
            ))
        })
        .collect()
});

fn reject(code: &'static str, reason: impl Into<String>) -> ApplyError {
    ApplyError::Rejected {
        code,
        reason: reason.into(),
    }
}

/// What a valid external event refers to, checked before it is published.
#[derive(Debug, Clone, PartialEq)]
enum Reference {
    UserExists(UserId),
    /// The id was never a deleted user's.
    UserNotDeleted(UserId),
    GroupExists(GroupId),
    GroupAbsent(GroupId),
    ConversationExists(ConversationId),
    /// The groups the user is in (read after the membership projection caught up).
    GroupsOf(UserId),
}

/// A validated external event, ready to publish.
#[derive(Debug, Clone, PartialEq)]
struct Translated {
    subject: String,
    stream: &'static str,
    envelope: Envelope,
    references: Vec<Reference>,
}

/// Validates and translates one external event published on `subject`.
fn translate(subject: &str, payload: &[u8]) -> Result<Translated, ApplyError> {
    let rest = subject
        .strip_prefix("ext.")
        .ok_or_else(|| reject("bad_subject", format!("{subject} is not under ext.")))?;
    let (source, type_name) = rest.split_once('.').ok_or_else(|| {
        reject(
            "bad_subject",
            format!("{subject} is not ext.<source>.<type>"),
        )
    })?;
    let source =
        SourceId::parse(source).map_err(|e| reject("bad_subject", format!("{subject}: {e}")))?;
    let depth = anchorage_schema::limits::json_depth(payload);
    if depth > anchorage_schema::limits::MAX_JSON_DEPTH {
        return Err(reject(
            "too_deep",
            format!(
                "the event nests {depth} levels of arrays and objects; the limit is {}",
                anchorage_schema::limits::MAX_JSON_DEPTH
            ),
        ));
    }
    let body: Value = serde_json::from_slice(payload)
        .map_err(|e| reject("malformed", format!("not JSON: {e}")))?;
    let validators = VALIDATORS
        .as_ref()
        .map_err(|e| reject("internal", e.clone()))?;
    let schema = validators
        .get(type_name)
        .ok_or_else(|| reject("unknown_type", format!("unknown event type {type_name:?}")))?;
    if let Some(body_type) = body.get("type").and_then(Value::as_str)
        && body_type != type_name
    {
        return Err(reject(
            "type_mismatch",
            format!("body says {body_type:?} but the subject says {type_name:?}"),
        ));
    }
    if let Some(v) = body.get("v").and_then(Value::as_u64)
        && v > u64::from(schema.version)
    {
        return Err(reject(
            "newer_version",
            format!(
                "{type_name} has schema version {v}; this software reads up to {}",
                schema.version
            ),
        ));
    }
    let errors: Vec<String> = schema
        .validator
        .iter_errors(&body)
        .take(3)
        .map(|e| {
            let path = e.instance_path().to_string();
            let at = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            format!("at {at}: {e}")
        })
        .collect();
    if !errors.is_empty() {
        return Err(reject("schema_violation", errors.join("; ")));
    }

    let (native_type, mut native_payload) = (type_name, body["payload"].clone());
    if type_name == "group.members_removed" {
        native_payload["reason"] = json!("removed");
    }
    let wire = json!({
        "id": format!("ext:{source}:{}", body["id"].as_str().unwrap_or_default()),
        "type": native_type,
        "v": 1,
        "occurred_at": body["occurred_at"],
        "actor": {"kind": "system", "source": source.as_str()},
        "payload": native_payload,
    });
    let envelope = Envelope::from_json(wire.to_string().as_bytes())
        .map_err(|e| reject(e.code(), e.to_string()))?;

    // 1:1 conversations belong to their two users: no other system creates, changes or
    // writes into one.
    let direct = match &envelope.event {
        Event::GroupCreated(e) => e.group.is_direct().then(|| e.group.to_string()),
        Event::MembersAdded(e) => e.group.is_direct().then(|| e.group.to_string()),
        Event::MembersRemoved(e) => e.group.is_direct().then(|| e.group.to_string()),
        Event::SystemMessagePosted(e) => e.conv.is_direct().then(|| e.conv.to_string()),
        _ => None,
    };
    if let Some(id) = direct {
        return Err(reject(
            "reserved_id",
            format!(
                "{id}: ids starting with {} are 1:1 conversations, which other systems cannot \
                 create, change or write into",
                anchorage_schema::DIRECT_PREFIX
            ),
        ));
    }

    use Reference::*;
    let (subject, stream, references) = match &envelope.event {
        Event::UserCreated(e) => (
            subjects::user(&e.user),
            stream::USERS,
            vec![UserNotDeleted(e.user.clone())],
        ),
        Event::UserUpdated(e) => (
            subjects::user(&e.user),
            stream::USERS,
            vec![UserExists(e.user.clone())],
        ),
        Event::UserDeleted(e) => (
            subjects::user(&e.user),
            stream::USERS,
            // Its memberships end with it: the membership projection must be current.
            vec![UserExists(e.user.clone()), GroupsOf(e.user.clone())],
        ),
        Event::GroupCreated(e) => {
            let mut refs = vec![GroupAbsent(e.group.clone()), UserExists(e.owner.clone())];
            refs.extend(e.members.iter().cloned().map(UserExists));
            (subjects::membership(&e.group), stream::MEMBERSHIP, refs)
        }
        Event::MembersAdded(e) => {
            let mut refs = vec![GroupExists(e.group.clone())];
            refs.extend(e.members.iter().cloned().map(UserExists));
            (subjects::membership(&e.group), stream::MEMBERSHIP, refs)
        }
        Event::MembersRemoved(e) => (
            subjects::membership(&e.group),
            stream::MEMBERSHIP,
            vec![GroupExists(e.group.clone())],
        ),
        Event::SystemMessagePosted(e) => (
            subjects::message(&e.conv),
            stream::MESSAGES,
            vec![ConversationExists(e.conv.clone())],
        ),
        other => {
            return Err(reject(
                "unknown_type",
                format!("{} cannot come from another system", other.type_name()),
            ));
        }
    };
    Ok(Translated {
        subject,
        stream,
        envelope,
        references,
    })
}

/// The system and the id an event came from, if another system sent it (its native id is
/// `ext:<source>:<id>`).
pub(crate) fn origin(env: &Envelope) -> Option<(String, String)> {
    let anchorage_schema::Actor::System { source } = &env.actor else {
        return None;
    };
    let id = env
        .id
        .as_str()
        .strip_prefix("ext:")?
        .strip_prefix(source.as_str())?
        .strip_prefix(':')?;
    Some((source.to_string(), id.to_owned()))
}

/// The projection that applies events of a native stream.
fn projection_of(stream: &str) -> Option<Projection> {
    Projection::ALL
        .iter()
        .copied()
        .find(|p| p.stream() == stream)
}

/// How long an event waits for the projections to apply what was published before it.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The ingest worker.
#[derive(Debug, Default)]
pub(crate) struct Ingest;

impl Ingest {
    /// Validates, checks and publishes one external event.
    pub(crate) async fn apply(
        &self,
        bus: &Bus,
        store: &Store,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), ApplyError> {
        let t = translate(subject, payload)?;
        // Applied once per (source, id), durably: a retry — however late — changes nothing.
        // The projection of the event's own stream says so once it holds everything.
        self.catch_up(bus, store, &t.references, t.stream).await?;
        if let Some((source, id)) = origin(&t.envelope)
            && let Some(seq) = store.ingested(&source, &id).await?
        {
            tracing::debug!(%source, %id, native_seq = seq, "already applied; skipped");
            return Ok(());
        }
        for r in &t.references {
            check(store, r).await?;
        }
        bus.publish_event(&t.subject, &t.envelope, None)
            .await
            .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        if let Event::UserDeleted(deleted) = &t.envelope.event {
            self.end_memberships(bus, store, &t.envelope, &deleted.user)
                .await?;
        }
        Ok(())
    }

    /// A deleted user leaves every group and 1:1 conversation they were in, as membership
    /// events like any removal (edges and member lists follow them); groups they owned carry
    /// on without an owner. Idempotent: each removal has its own event id.
    async fn end_memberships(
        &self,
        bus: &Bus,
        store: &Store,
        deleted: &Envelope,
        user: &UserId,
    ) -> Result<(), ApplyError> {
        for (group, _) in store.conversations_of(user.as_str()).await? {
            let Ok(group) = GroupId::parse(group) else {
                continue;
            };
            let at = bus
                .last_subject_seq(stream::MEMBERSHIP, &subjects::membership(&group))
                .await
                .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
            let env = deleted
                .departure(&group, user, at)
                .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
            bus.publish_event(&subjects::membership(&group), &env, None)
                .await
                .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// Waits until the projections the references are checked against have applied
    /// everything their streams hold right now — whoever published it, and across restarts
    /// of this worker.
    async fn catch_up(
        &self,
        bus: &Bus,
        store: &Store,
        references: &[Reference],
        target: &'static str,
    ) -> Result<(), ApplyError> {
        let mut streams: Vec<&'static str> = std::iter::once(target)
            .chain(
                references
                    .iter()
                    .flat_map(|r| match r {
                        Reference::UserExists(_) | Reference::UserNotDeleted(_) => {
                            &[stream::USERS][..]
                        }
                        Reference::GroupsOf(_) => &[stream::MEMBERSHIP][..],
                        Reference::GroupExists(_) | Reference::GroupAbsent(_) => {
                            &[stream::MEMBERSHIP][..]
                        }
                        Reference::ConversationExists(_) => {
                            &[stream::MESSAGES, stream::MEMBERSHIP][..]
                        }
                    })
                    .copied(),
            )
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        for stream in streams {
            let Some(p) = projection_of(stream) else {
                continue;
            };
            let end = bus
                .stream_state(stream)
                .await
                .map_err(|e| ApplyError::Unavailable(e.to_string()))?
                .last_seq
                .0;
            loop {
                let at = store.checkpoint(p.name()).await?.map_or(0, |c| c.last_seq);
                if at >= end {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(ApplyError::Unavailable(format!(
                        "projection {} is at {at}, behind {end}",
                        p.name()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

async fn check(store: &Store, r: &Reference) -> Result<(), ApplyError> {
    match r {
        Reference::UserExists(u) => {
            if !store.user_active(u.as_str()).await? {
                return Err(reject("unknown_user", format!("user {u} does not exist")));
            }
        }
        Reference::UserNotDeleted(u) => {
            if store.user_deleted(u.as_str()).await? {
                return Err(reject(
                    "user_deleted",
                    format!("user {u} was deleted; a deleted user's id is not taken again"),
                ));
            }
        }
        Reference::GroupsOf(_) => {}
        Reference::GroupExists(g) => match store.group_row(g.as_str()).await? {
            Some(row) if !row.dismissed => {}
            _ => return Err(reject("unknown_group", format!("group {g} does not exist"))),
        },
        Reference::GroupAbsent(g) => {
            if store.group_row(g.as_str()).await?.is_some() {
                return Err(reject("group_exists", format!("group {g} already exists")));
            }
        }
        Reference::ConversationExists(c) => {
            let exists = store.conversation(c.as_str()).await?.is_some()
                || store
                    .group_row(c.as_str())
                    .await?
                    .is_some_and(|g| !g.dismissed);
            if !exists {
                return Err(reject(
                    "unknown_conversation",
                    format!("conversation {c} does not exist"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(subject: &str, body: Value) -> &'static str {
        match translate(subject, body.to_string().as_bytes()) {
            Err(ApplyError::Rejected { code, .. }) => code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn ev(type_name: &str, payload: Value) -> Value {
        json!({"id": "crm-1", "type": type_name, "v": 1, "occurred_at": 5, "payload": payload})
    }

    #[test]
    fn schemas_compile() {
        assert_eq!(VALIDATORS.as_ref().unwrap().len(), SCHEMAS.len());
    }

    #[test]
    fn translates_to_native_events() {
        let t = translate(
            "ext.crm.group.members_removed",
            ev(
                "group.members_removed",
                json!({"group": "g1", "members": ["bob"]}),
            )
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(t.subject, "grp.g1");
        assert_eq!(t.stream, "MEMBERSHIP");
        assert_eq!(t.envelope.id.as_str(), "ext:crm:crm-1");
        assert_eq!(t.envelope.event.type_name(), "group.members_removed");
        assert_eq!(
            t.references,
            vec![Reference::GroupExists(GroupId::parse("g1").unwrap())]
        );
    }

    #[test]
    fn every_kind_of_bad_input_has_its_code() {
        let ok = ev("user.created", json!({"user": "u1", "display_name": "U"}));
        assert!(translate("ext.crm.user.created", ok.to_string().as_bytes()).is_ok());
        assert_eq!(code("ext.crm.user.created", json!("x")), "schema_violation");
        assert_eq!(
            translate("ext.crm.user.created", b"{oops")
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "malformed: not JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(code("ext.crm.user.exploded", ok.clone()), "unknown_type");
        assert_eq!(code("ext.crm.user.updated", ok.clone()), "type_mismatch");
        assert_eq!(code("ext.c.r.m", ok.clone()), "unknown_type");
        let mut newer = ok.clone();
        newer["v"] = json!(2);
        assert_eq!(code("ext.crm.user.created", newer), "newer_version");
        assert_eq!(
            code(
                "ext.crm.user.created",
                ev("user.created", json!({"user": "u.1", "display_name": "U"}))
            ),
            "schema_violation"
        );
        assert_eq!(
            code(
                "ext.crm.group.members_added",
                ev("group.members_added", json!({"group": "g", "members": []}))
            ),
            "schema_violation"
        );
        // Nobody else creates or changes 1:1 conversations.
        for (subject, kind, payload) in [
            (
                "ext.crm.group.created",
                "group.created",
                json!({"group": "dm-0123456789abcdef", "owner": "u1", "title": "t"}),
            ),
            (
                "ext.crm.group.members_added",
                "group.members_added",
                json!({"group": "dm-x", "members": ["u1"]}),
            ),
            (
                "ext.crm.group.members_removed",
                "group.members_removed",
                json!({"group": "dm-x", "members": ["u1"]}),
            ),
            (
                "ext.crm.message.system_posted",
                "message.system_posted",
                json!({"conv": "dm-x", "body": "log in at https://evil.example"}),
            ),
        ] {
            assert_eq!(code(subject, ev(kind, payload)), "reserved_id", "{subject}");
        }
        // What is accepted can be wrapped in an envelope and still decoded by every reader.
        let mut deep = json!("x");
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert_eq!(
            code(
                "ext.crm.message.system_posted",
                ev("message.system_posted", json!({"conv": "c1", "body": deep}))
            ),
            "too_deep"
        );
        let mut extra = ok;
        extra["payload"]["admin"] = json!(true);
        let err = translate("ext.crm.user.created", extra.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("/payload"), "{err}");
    }
}
