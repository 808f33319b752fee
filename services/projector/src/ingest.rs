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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::LazyLock;
use std::time::Duration;

use anchorage_bus::{Bus, PendingAck};
use anchorage_schema::ids::{ConversationId, GroupId, SourceId, UserId};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Envelope, Event, Seq};
use anchorage_store::{GroupRow, Store};
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
/// The largest event from another system: 1 MiB less room for what its native event adds (the
/// `ext:<source>:` id, the actor, headers).
const MAX_EVENT_BYTES: usize = 1024 * 1024 - 16 * 1024;

/// How far ahead of this server's clock an event from another system may say it happened.
const MAX_AHEAD_MS: i64 = 5 * 60 * 1000;

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
    if anchorage_schema::RESERVED_SOURCES.contains(&source.as_str()) {
        return Err(reject(
            "bad_subject",
            format!("{subject}: the source {source} is Anchorage's own"),
        ));
    }
    // Its native event, a little larger, goes to a stream that takes 1 MiB messages.
    if payload.len() > MAX_EVENT_BYTES {
        return Err(reject(
            "too_large",
            format!(
                "the event is {} bytes; the limit is {MAX_EVENT_BYTES}",
                payload.len()
            ),
        ));
    }
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
    let mut body: Value = serde_json::from_slice(payload)
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
    // Nearly every event is valid: the errors are worked out only for one that is not.
    if !schema.validator.is_valid(&body) {
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
        return Err(reject("schema_violation", errors.join("; ")));
    }

    let mut native_payload = body["payload"].take();
    if type_name == "group.members_removed" {
        native_payload["reason"] = json!("removed");
    }
    let wire = json!({
        "id": format!("ext:{source}:{}", body["id"].as_str().unwrap_or_default()),
        "type": type_name,
        "v": 1,
        "occurred_at": body["occurred_at"].take(),
        "actor": {"kind": "system", "source": source.as_str()},
        "payload": native_payload,
    });
    let envelope = Envelope::from_value(wire).map_err(|e| reject(e.code(), e.to_string()))?;
    // The time an event happened becomes its message's time and when its push is due: a time
    // ahead of this server's clock (beyond its skew) would hold back every notification of
    // the conversation until then.
    let ahead = envelope
        .occurred_at
        .saturating_sub(anchorage_schema::now_ms());
    if ahead > MAX_AHEAD_MS {
        return Err(reject(
            "in_future",
            format!(
                "occurred_at {} is {ahead} ms ahead of this server's clock (Unix milliseconds, \
                 at most {MAX_AHEAD_MS} ms ahead)",
                envelope.occurred_at
            ),
        ));
    }

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

/// How long after its start a run may still wait for the projections to apply what was
/// published before it (the wait of each run that follows starts afresh).
const CATCH_UP: Duration = Duration::from_secs(30);

/// The ingest worker.
#[derive(Debug, Default)]
pub(crate) struct Ingest {
    recent: std::sync::Mutex<Recent>,
}

/// What this worker stored that the projections may not hold yet: the sequences, and what
/// they created. Only stored events are recorded (after their acknowledgement), so all of it
/// is true of the streams; an entry goes once its projection passed it.
#[derive(Debug, Default)]
struct Recent {
    /// Sequences stored, per stream.
    ours: HashMap<&'static str, std::collections::BTreeSet<u64>>,
    /// Users created (USERS sequence).
    users: HashMap<String, u64>,
    /// Users deleted (USERS sequence): a deletion outranks what the projection still says.
    deleted: HashMap<String, u64>,
    /// Groups created (MEMBERSHIP sequence).
    groups: HashMap<String, u64>,
    /// External events applied: (source, id) → their stream and sequence.
    applied: HashMap<(String, String), (&'static str, u64)>,
}

impl Recent {
    fn record(&mut self, t: &Translated, seq: u64) {
        self.ours.entry(t.stream).or_default().insert(seq);
        match &t.envelope.event {
            Event::UserCreated(e) => {
                self.users.insert(e.user.to_string(), seq);
            }
            Event::UserDeleted(e) => {
                self.deleted.insert(e.user.to_string(), seq);
            }
            Event::GroupCreated(e) => {
                self.groups.insert(e.group.to_string(), seq);
            }
            _ => {}
        }
        if let Some(key) = origin(&t.envelope) {
            self.applied.insert(key, (t.stream, seq));
        }
    }

    /// Forgets what the projection of `stream` holds now (it is at `checkpoint`).
    fn projected(&mut self, stream: &'static str, checkpoint: u64) {
        if let Some(ours) = self.ours.get_mut(stream) {
            *ours = ours.split_off(&(checkpoint + 1));
        }
        match stream {
            stream::USERS => {
                self.users.retain(|_, seq| *seq > checkpoint);
                self.deleted.retain(|_, seq| *seq > checkpoint);
            }
            stream::MEMBERSHIP => self.groups.retain(|_, seq| *seq > checkpoint),
            _ => {}
        }
        self.applied
            .retain(|_, (s, seq)| *s != stream || *seq > checkpoint);
    }

    /// Whether every event of `stream` after `checkpoint` up to `end` is one of ours.
    fn covers(&self, stream: &'static str, checkpoint: u64, end: u64) -> bool {
        if checkpoint >= end {
            return true;
        }
        let ours = self.ours.get(stream);
        let count = ours.map_or(0, |o| o.range(checkpoint + 1..=end).count());
        count as u64 == end.saturating_sub(checkpoint)
    }
}

/// What the events of one run created, for the events after them in the same run to refer
/// to before the projections hold it.
#[derive(Debug, Default)]
struct Created {
    users: HashSet<String>,
    /// Users this worker deleted that the projection may still show.
    deleted: HashSet<String>,
    groups: HashSet<String>,
}

/// How one event of a run ended.
enum Outcome {
    /// Applied before (by its source and id): nothing to publish.
    Skipped,
    /// Handed to the stream: the acknowledgement at this index says whether it is stored.
    Published(usize),
}

/// Events of a run translated, checked and handed to their streams together: the streams store
/// one part while the next is translated and checked.
const PART: usize = 250;

/// A run being taken in, part by part: what it checked, created and handed over so far.
#[derive(Default)]
struct Run {
    /// The events taken into the run, in order.
    events: Vec<Translated>,
    /// How each ended, in order, up to the one a check stopped at.
    outcomes: Vec<Outcome>,
    /// The events handed to their streams (indices into `events`), in the order handed over.
    published: Vec<usize>,
    /// Their acknowledgements not awaited yet, in the same order.
    pending: VecDeque<PendingAck>,
    /// The stream sequences of those acknowledged, in the same order.
    stored: Vec<u64>,
    /// External events applied before, or by this run: (source, id).
    applied: HashSet<(String, String)>,
    created: Created,
    lookups: Lookups,
    /// The membership position a post is decided at, read when the run hands over its first.
    position: Option<Seq>,
    /// Whether a membership event was handed over since the last acknowledgement awaited.
    membership_unconfirmed: bool,
}

impl Ingest {
    /// Validates, checks and publishes a run of external events in their order, pipelined.
    /// Returns how many from the start are done — stored, or skipped as applied before — and,
    /// when that is fewer than all, why the first one not done is not (`None`: it starts the
    /// next run). Nothing after the first event that fails is published.
    ///
    /// One wait for each projection per run, not per event: an event may refer to what an
    /// earlier event of the same run creates (a user, then a group naming it), which the
    /// projections do not hold yet. A user's deletion runs alone: the memberships it ends are
    /// read from the projection, which must hold everything before it. A run goes in parts
    /// of [`PART`]: each is translated, looked up and checked while the streams store the part
    /// before; a part that refers to a projection the run did not wait for waits for it
    /// first. A run stops waiting once [`CATCH_UP`] has passed since it started.
    pub(crate) async fn apply_run(
        &self,
        bus: &Bus,
        store: &Store,
        events: &[(&str, &[u8])],
        still_held: &(dyn Fn() -> bool + Sync),
    ) -> (usize, Option<ApplyError>) {
        let mut run = Run::default();
        // The streams whose projections the run waited for.
        let mut current: Vec<&'static str> = Vec::new();
        // An event a check refused, and an event that cannot be read, which ends the run.
        let (mut refused_by_check, mut unreadable) = (None, None);
        // Why handing over stopped: a lookup, a publish or an acknowledgement failed, a
        // projection waited for by a later part did not catch up, or the lease is no longer
        // held.
        let mut refused = None;
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        let mut rest = events;
        while !rest.is_empty() {
            let mut part = Vec::new();
            let mut last = false;
            let mut cannot_read = None;
            for (subject, payload) in rest.iter().take(PART) {
                match translate(subject, payload) {
                    Ok(t) => {
                        let deleting = matches!(t.envelope.event, Event::UserDeleted(_));
                        if deleting && !(run.events.is_empty() && part.is_empty()) {
                            last = true;
                            break;
                        }
                        part.push(t);
                        if deleting {
                            last = true;
                            break;
                        }
                    }
                    Err(e) => {
                        cannot_read = Some(e);
                        last = true;
                        break;
                    }
                }
            }
            let mut streams: Vec<&'static str> =
                part.iter().flat_map(Translated::depends_on).collect();
            streams.sort_unstable();
            streams.dedup();
            if run.events.is_empty() {
                if part.is_empty() {
                    return (0, cannot_read);
                }
                // The memberships a deletion ends are read from the projection: it must
                // hold all.
                let strict = part.iter().any(|t| {
                    t.references
                        .iter()
                        .any(|r| matches!(r, Reference::GroupsOf(_)))
                });
                if let Err(e) = self.catch_up(bus, store, &streams, strict, deadline).await {
                    return (0, Some(e));
                }
                current = streams;
            } else if part.is_empty() {
                // A deletion starts the next run; an event that cannot be read stops this one.
                unreadable = cannot_read;
                break;
            } else {
                // Projections the run did not wait for yet are waited for now, as at a run's
                // start: no event of the run went to their streams.
                let new: Vec<&'static str> = streams
                    .into_iter()
                    .filter(|s| !current.contains(s))
                    .collect();
                if !new.is_empty() {
                    if let Err(e) = self.catch_up(bus, store, &new, false, deadline).await {
                        refused = Some(e);
                        break;
                    }
                    current.extend(new);
                }
            }
            let (first, taken) = (run.events.len(), part.len());
            run.events.extend(part);
            match self
                .take_part(bus, store, &mut run, first, still_held)
                .await
            {
                Ok(None) => {}
                Ok(Some(e)) => {
                    refused_by_check = Some(e);
                    break;
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
            rest = &rest[taken..];
            if last {
                unreadable = cannot_read;
                break;
            }
        }
        let translated = run.events.len();
        match self.settle(bus, store, run, refused).await {
            (done, Some(err)) => (done, Some(err)),
            (done, None) => (
                done,
                refused_by_check.or(unreadable.filter(|_| done == translated)),
            ),
        }
    }

    /// Looks up, checks and hands over the events of `run` from `first` on: `Some` why a
    /// check refused one (those before it are handed over); `Err` why handing over cannot go
    /// on (a lookup or a publish failed, an acknowledgement awaited for a post's membership
    /// position failed, the lease is no longer held).
    async fn take_part(
        &self,
        bus: &Bus,
        store: &Store,
        run: &mut Run,
        first: usize,
        still_held: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<ApplyError>, ApplyError> {
        let Run {
            events,
            outcomes,
            published,
            pending,
            stored,
            applied,
            created,
            lookups,
            position,
            membership_unconfirmed,
            ..
        } = run;
        let part = &events[first..];
        // Everything the part refers to, looked up at once.
        let mut users: Vec<&str> = part
            .iter()
            .flat_map(|t| &t.references)
            .filter_map(|r| match r {
                Reference::UserExists(u) | Reference::UserNotDeleted(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        users.sort_unstable();
        users.dedup();
        let known = store.users_among(&users).await?;
        // Each event's (source, id), if another system sent it.
        let origins: Vec<Option<(String, String)>> =
            part.iter().map(|t| origin(&t.envelope)).collect();
        let mut sources: Vec<&str> = origins.iter().flatten().map(|(s, _)| s.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        for source in sources {
            let ids: Vec<&str> = origins
                .iter()
                .flatten()
                .filter(|(s, _)| s == source)
                .map(|(_, id)| id.as_str())
                .collect();
            for id in store.ingested_among(source, &ids).await? {
                applied.insert((source.to_owned(), id));
            }
        }

        // What this worker stored before that the projections may not hold yet.
        {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for t in part {
                for r in &t.references {
                    match r {
                        Reference::UserExists(u) | Reference::UserNotDeleted(u)
                            if recent.deleted.contains_key(u.as_str()) =>
                        {
                            created.deleted.insert(u.to_string());
                        }
                        Reference::UserExists(u) if recent.users.contains_key(u.as_str()) => {
                            created.users.insert(u.to_string());
                        }
                        Reference::GroupExists(g) | Reference::GroupAbsent(g)
                            if recent.groups.contains_key(g.as_str()) =>
                        {
                            created.groups.insert(g.to_string());
                        }
                        Reference::ConversationExists(c)
                            if recent.groups.contains_key(c.as_str()) =>
                        {
                            created.groups.insert(c.to_string());
                        }
                        _ => {}
                    }
                }
            }
            for key in origins.iter().flatten() {
                if recent.applied.contains_key(key) {
                    applied.insert(key.clone());
                }
            }
        }
        let mut stop = None;
        let mut to_publish = Vec::with_capacity(part.len());
        for ((i, t), key) in part.iter().enumerate().zip(origins) {
            if let Some(key) = key
                && !applied.insert(key)
            {
                // Applied once per (source, id), durably: a retry — however late — changes
                // nothing. Also a repeat within this run.
                outcomes.push(Outcome::Skipped);
                continue;
            }
            let mut verdict = Ok(());
            for r in &t.references {
                verdict = check(store, r, &known, created, lookups).await;
                if verdict.is_err() {
                    break;
                }
            }
            if let Err(e) = verdict {
                stop = Some(e);
                break;
            }
            match &t.envelope.event {
                Event::UserCreated(e) => {
                    created.users.insert(e.user.to_string());
                }
                Event::GroupCreated(e) => {
                    created.groups.insert(e.group.to_string());
                }
                _ => {}
            }
            outcomes.push(Outcome::Published(published.len() + to_publish.len()));
            to_publish.push(first + i);
        }

        // What was checked is published only by the holder of the lease: a process that was
        // paused past its lease must not act on what it checked before.
        if !still_held() {
            return Err(ApplyError::Unavailable(
                "the ingest lease is no longer held".into(),
            ));
        }
        // In order on one connection: stored in this order. A post is decided at the
        // memberships stored by then: it reaches (and can be found by) those who were
        // members. Membership events of this run before a post count: the post waits until
        // they are stored, to name their position.
        for at in to_publish {
            let t = &events[at];
            if t.stream == stream::MESSAGES {
                if position.is_none() {
                    let state = bus
                        .stream_state(stream::MEMBERSHIP)
                        .await
                        .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
                    *position = Some(state.last_seq);
                }
                if *membership_unconfirmed {
                    while let Some(ack) = pending.pop_front() {
                        let n = stored.len();
                        match ack.stored().await {
                            Ok(p) => stored.push(p.seq.0),
                            Err(e) => {
                                // What was handed over after it does not count.
                                pending.clear();
                                return Err(ApplyError::Unavailable(e.to_string()));
                            }
                        }
                        if events[published[n]].stream == stream::MEMBERSHIP {
                            *position = (*position).max(Some(Seq(stored[n])));
                        }
                    }
                    *membership_unconfirmed = false;
                }
            }
            let membership = position.filter(|_| t.stream == stream::MESSAGES);
            match bus
                .publish_event_pipelined(&t.subject, &t.envelope, membership)
                .await
            {
                Ok(ack) => {
                    pending.push_back(ack);
                    published.push(at);
                }
                Err(e) => return Err(ApplyError::Unavailable(e.to_string())),
            }
            *membership_unconfirmed |= t.stream == stream::MEMBERSHIP;
        }
        Ok(stop)
    }

    /// Awaits what `run` handed over and remembers what was stored; how many events from the
    /// start are done and, if handing over failed (`refused` it already had), why. What was
    /// handed over after a failed acknowledgement does not count.
    async fn settle(
        &self,
        bus: &Bus,
        store: &Store,
        run: Run,
        mut refused: Option<ApplyError>,
    ) -> (usize, Option<ApplyError>) {
        let Run {
            events,
            outcomes,
            published,
            pending,
            mut stored,
            ..
        } = run;
        for ack in pending {
            match ack.stored().await {
                Ok(p) => stored.push(p.seq.0),
                Err(e) => {
                    refused.get_or_insert(ApplyError::Unavailable(e.to_string()));
                    break;
                }
            }
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (at, seq) in published.iter().zip(&stored) {
                recent.record(&events[*at], *seq);
            }
        }
        let stored = stored.len();
        let done = outcomes
            .iter()
            .take_while(|o| match o {
                Outcome::Skipped => true,
                Outcome::Published(i) => *i < stored,
            })
            .count();
        if refused.is_some() {
            return (done, refused);
        }
        // Also when the deletion was stored before (a retry after a failure partway through
        // the departures): they are named after it, so none is stored twice.
        if let [only] = events.as_slice()
            && let Event::UserDeleted(deleted) = &only.envelope.event
            && !outcomes.is_empty()
            && let Err(e) = self
                .end_memberships(bus, store, &only.envelope, &deleted.user)
                .await
        {
            return (0, Some(e));
        }
        (done, None)
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

    /// Waits until the projections of `streams` have applied everything those streams hold
    /// right now — whoever published it, and across restarts of this worker — except, unless
    /// `strict`, what this worker stored itself and remembers; until `deadline`.
    async fn catch_up(
        &self,
        bus: &Bus,
        store: &Store,
        streams: &[&'static str],
        strict: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApplyError> {
        // What is remembered of streams this run does not wait for goes once projected, so
        // the memory stays bounded by how far the projections are behind.
        let others: Vec<&'static str> = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent
                .ours
                .iter()
                .filter(|(s, ours)| !ours.is_empty() && !streams.contains(s))
                .map(|(s, _)| *s)
                .collect()
        };
        for stream in others {
            if let Some(p) = projection_of(stream) {
                let at = store.checkpoint(p.name()).await?.map_or(0, |c| c.last_seq);
                self.recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .projected(stream, at);
            }
        }
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
                let covered = {
                    let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
                    recent.projected(stream, at);
                    !strict && recent.covers(stream, at, end)
                };
                if at >= end || covered {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(ApplyError::Unavailable(format!(
                        "projection {} is at {at}, behind {end}",
                        p.name()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(())
    }
}

impl Translated {
    /// The streams whose projections must hold everything before this event is checked: its
    /// own (whose projection records which external events were applied) and those of what
    /// it refers to.
    fn depends_on(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.stream).chain(
            self.references
                .iter()
                .flat_map(|r| match r {
                    Reference::UserExists(_) | Reference::UserNotDeleted(_) => &[stream::USERS][..],
                    Reference::GroupsOf(_)
                    | Reference::GroupExists(_)
                    | Reference::GroupAbsent(_) => &[stream::MEMBERSHIP][..],
                    Reference::ConversationExists(_) => &[stream::MESSAGES, stream::MEMBERSHIP][..],
                })
                .copied(),
        )
    }
}

/// Groups and conversations looked up for a run, each once.
#[derive(Debug, Default)]
struct Lookups {
    groups: HashMap<String, Option<GroupRow>>,
    /// Whether the conversation holds a message.
    conversations: HashMap<String, bool>,
}

/// Checks one reference against the projections (`known`: the users the run refers to, as
/// projected; `lookups`: what the run looked up so far) and what the run created before it.
async fn check(
    store: &Store,
    r: &Reference,
    known: &anchorage_store::UsersKnown<'_>,
    created: &Created,
    lookups: &mut Lookups,
) -> Result<(), ApplyError> {
    let Lookups {
        groups,
        conversations,
    } = lookups;
    let mut group = async |g: &str| -> Result<Option<GroupRow>, ApplyError> {
        if let Some(row) = groups.get(g) {
            return Ok(row.clone());
        }
        let row = store.group_row(g).await?;
        groups.insert(g.to_owned(), row.clone());
        Ok(row)
    };
    match r {
        Reference::UserExists(u) => {
            // A deletion this worker stored first (the projection may not hold it yet), then
            // the projection's answer: it holds a deletion by anyone else.
            let active = !created.deleted.contains(u.as_str())
                && match known.get(u.as_str()) {
                    Some(deleted) => !deleted,
                    None => created.users.contains(u.as_str()),
                };
            if !active {
                return Err(reject("unknown_user", format!("user {u} does not exist")));
            }
        }
        Reference::UserNotDeleted(u) => {
            if created.deleted.contains(u.as_str()) || known.get(u.as_str()) == Some(true) {
                return Err(reject(
                    "user_deleted",
                    format!("user {u} was deleted; a deleted user's id is not taken again"),
                ));
            }
        }
        Reference::GroupsOf(_) => {}
        Reference::GroupExists(g) => {
            let exists = match group(g.as_str()).await? {
                Some(row) => !row.dismissed,
                None => created.groups.contains(g.as_str()),
            };
            if !exists {
                return Err(reject("unknown_group", format!("group {g} does not exist")));
            }
        }
        Reference::GroupAbsent(g) => {
            if created.groups.contains(g.as_str()) || group(g.as_str()).await?.is_some() {
                return Err(reject("group_exists", format!("group {g} already exists")));
            }
        }
        Reference::ConversationExists(c) => {
            // A dismissed group takes no more posts; a conversation without a group row is
            // one that holds messages.
            let exists = match group(c.as_str()).await? {
                Some(g) => !g.dismissed,
                None if created.groups.contains(c.as_str()) => true,
                None => match conversations.get(c.as_str()) {
                    Some(known) => *known,
                    None => {
                        let known = store.conversation(c.as_str()).await?.is_some();
                        conversations.insert(c.to_string(), known);
                        known
                    }
                },
            };
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
        // A time ahead of the clock (here in microseconds) would hold back pushes.
        let mut ahead = ok.clone();
        ahead["occurred_at"] = json!(anchorage_schema::now_ms() * 1000);
        assert_eq!(code("ext.crm.user.created", ahead), "in_future");
        let mut skewed = ok.clone();
        skewed["occurred_at"] = json!(anchorage_schema::now_ms() + 60_000);
        assert!(translate("ext.crm.user.created", skewed.to_string().as_bytes()).is_ok());
        // Too large for its native event to fit where it goes.
        let mut large = ok.clone();
        large["payload"]["display_name"] = json!("x".repeat(MAX_EVENT_BYTES));
        assert_eq!(code("ext.crm.user.created", large), "too_large");
        // Anchorage's own sources are nobody else's to speak as.
        for source in ["api", "anchorage"] {
            assert_eq!(
                code(&format!("ext.{source}.user.created"), ok.clone()),
                "bad_subject"
            );
        }
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
