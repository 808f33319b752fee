//! What each projection does with an event: the decisions, on top of the store's writes.
//!
//! Each function gets one decoded event with its stream sequence and subject and writes through
//! the transaction it is given. An event that can never apply — it names another subject than
//! the one it was published on, belongs to another stream, or refers to a group that does not
//! exist — is [`ApplyError::Rejected`] with a stable code, and goes to the dead-letter stream.
//! Database errors are [`ApplyError::Store`]: retried, never dead-lettered while the database
//! is down.

use std::collections::{BTreeMap, HashSet};

use crate::ingest;
use anchorage_bus::Bus;
use anchorage_digest::{SetDigest, bucket_of};
use anchorage_protocol::{MemberInfo, MembersChange, MembersChanged, Message, Push, ServerFrame};
use anchorage_schema::event::{
    GroupCreated, MemberMuteChanged, MemberProfileChanged, MemberRoleChanged, MembersAdded,
    MembersRemoved, Role,
};
use anchorage_schema::ids::UserId;
use anchorage_schema::now_ms;
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Envelope, Event, Seq};
use anchorage_store::{
    Checkpoint, EntryKind, GroupRow, MemberRow, NewMessage, PrefsChange, Store, StoreError,
    Tombstone, Tx,
};

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event can never apply; it is set aside with this reason.
    #[error("{code}: {reason}")]
    Rejected { code: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something the event needs is not available right now (NATS, a lagging projection).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The checkpoint moved under the worker: start over from it.
    #[error("contended: {0}")]
    Contended(String),
}

fn reject(code: &'static str, reason: impl Into<String>) -> ApplyError {
    ApplyError::Rejected {
        code,
        reason: reason.into(),
    }
}

/// The projections, one per stream and durable consumer (`streams/consumers/<STREAM>/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Messages,
    Reads,
    Users,
    Membership,
}

impl Projection {
    pub const ALL: &'static [Projection] = &[
        Projection::Messages,
        Projection::Reads,
        Projection::Users,
        Projection::Membership,
    ];

    /// Name of the checkpoint row.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Messages => "messages",
            Projection::Reads => "reads",
            Projection::Users => "users",
            Projection::Membership => "membership",
        }
    }

    pub fn stream(self) -> &'static str {
        match self {
            Projection::Messages => stream::MESSAGES,
            Projection::Reads => stream::READS,
            Projection::Users => stream::USERS,
            Projection::Membership => stream::MEMBERSHIP,
        }
    }

    /// The durable consumer it reads through.
    pub fn consumer(self) -> &'static str {
        match self {
            Projection::Messages => "projector_messages",
            Projection::Reads => "projector_reads",
            Projection::Users => "projector_users",
            Projection::Membership => "projector_membership",
        }
    }

    /// Applies one event at stream sequence `seq`, published on `subject`; returns the
    /// notification to publish once the transaction committed, if any.
    pub async fn apply(
        self,
        tx: &mut Tx,
        seq: u64,
        subject: &str,
        env: &Envelope,
        rules: MembershipRules,
    ) -> Result<Option<Notice>, ApplyError> {
        match self {
            // Messages apply in runs, with the changes between them (`apply_events`).
            Projection::Messages => Err(wrong_stream(env, "this path")),
            Projection::Reads => apply_read(tx, seq, subject, env).await.map(|_| None),
            Projection::Users => apply_user(tx, seq, subject, env).await.map(|_| None),
            Projection::Membership => apply_membership(tx, seq, subject, env, rules)
                .await
                .map(Some),
        }
    }
}

/// Where a batch moves a projection's checkpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    /// The checkpoint row: the projection's name, or its partition's.
    pub name: &'a str,
    /// Where it stands: the batch's events come after.
    pub from: u64,
    /// Where the batch moves it.
    pub next: Checkpoint,
    /// How far the workers of the messages projection under earlier partition counts went:
    /// an entry one of them passed is not applied again.
    pub reached: &'a [Reached],
    /// The partition count this worker of the messages projection applies under: the
    /// transaction commits only while it is the one in force. `None`: no such check (a
    /// rebuild, another projection).
    pub layout: Option<u16>,
}

impl<'a> Span<'a> {
    /// The whole of projection `p`, from `from` to `next`.
    pub fn of(p: Projection, from: u64, next: Checkpoint) -> Span<'a> {
        Span {
            name: p.name(),
            from,
            next,
            reached: &[],
            layout: None,
        }
    }

    /// Whether a worker under another partition count passed entry `seq` of `conv` already.
    fn passed(&self, seq: u64, conv: &str) -> bool {
        self.reached
            .iter()
            .any(|r| r.through >= seq && r.part.is_none_or(|p| p.holds(conv)))
    }
}

/// How far one worker of the messages projection went: through this sequence it passed every
/// entry of its conversations — the whole projection's (`part` is `None`) or one partition's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reached {
    pub part: Option<crate::Partition>,
    pub through: u64,
}

/// The setting row holding the partition count of the messages projection in force.
pub(crate) const LAYOUT_ROW: &str = "messages-layout";

/// A stored event to apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stored<'a> {
    /// Its stream sequence.
    pub seq: u64,
    /// The subject it was stored on.
    pub subject: &'a str,
    /// The stored bytes.
    pub payload: &'a [u8],
    /// The MEMBERSHIP position it was decided on, if it says (a message's).
    pub membership: Option<u64>,
}

/// The conversation an event of the MESSAGES stream belongs to, by its subject.
pub(crate) fn conv_of_subject(subject: &str) -> &str {
    subject.strip_prefix("msg.").unwrap_or(subject)
}

/// Entries of the messages stream decoded, checked and with their search terms — all of
/// applying them that needs no database — ahead of their transaction, which then spends its
/// time on SQL (a rebuild prepares the next batch while one commits).
pub(crate) struct Prepared {
    /// Per entry, in order: its sequence, and the entry or why it can never apply.
    entries: Vec<(u64, Result<Entry, ApplyError>)>,
}

/// An entry of the messages stream: its event, and its row.
type Entry = (Envelope, NewMessage);

impl Prepared {
    /// Prepares `events` of the messages stream.
    pub(crate) fn messages(events: &[Stored<'_>]) -> Prepared {
        let entries = events
            .iter()
            .map(|e| {
                let entry = decode(e.payload).and_then(|env| {
                    let mut row = message_row(e, &env)?;
                    if row.kind == EntryKind::Message {
                        row.terms = Some(anchorage_store::message_terms(&row.body));
                    }
                    Ok((env, row))
                });
                (e.seq, entry)
            })
            .collect();
        Prepared { entries }
    }
}

fn decode(payload: &[u8]) -> Result<Envelope, ApplyError> {
    Envelope::from_json(payload).map_err(|e| ApplyError::Rejected {
        code: e.code(),
        reason: e.to_string(),
    })
}

/// Applies `events` (sequence, subject, payload) to projection `p` in one transaction that
/// also moves the checkpoint as `span` says: all of it lands, or none. Returns the
/// notifications of what was applied, to publish now that it is committed.
pub(crate) async fn apply_events(
    store: &Store,
    bus: &Bus,
    p: Projection,
    span: Span<'_>,
    events: &[Stored<'_>],
    rules: MembershipRules,
) -> Result<Vec<Notice>, ApplyError> {
    apply_prepared(store, bus, p, span, events, None, rules).await
}

/// [`apply_events`] with the entries of the messages stream prepared already (`prepared`,
/// from exactly `events`; `None`: prepared here; ignored for another projection).
pub(crate) async fn apply_prepared(
    store: &Store,
    bus: &Bus,
    p: Projection,
    span: Span<'_>,
    events: &[Stored<'_>],
    prepared: Option<Prepared>,
    rules: MembershipRules,
) -> Result<Vec<Notice>, ApplyError> {
    let Span {
        name, from, next, ..
    } = span;
    // Before the transaction: it holds the database's writer while it lasts.
    let prepared = match prepared {
        _ if p != Projection::Messages => None,
        Some(prepared) => Some(prepared),
        None => Some(Prepared::messages(events)),
    };
    let mut tx = store.begin().await?;
    // One writer per projection: if the checkpoint moved under us, another projector is
    // applying the same stream; back off rather than interleave.
    if tx.checkpoint(name).await?.map_or(0, |c| c.last_seq) != from {
        return Err(contended(name));
    }
    // Workers under another partition count write other checkpoints: the count in force is
    // their fence (a change of it waits for this transaction).
    if let Some(count) = span.layout
        && tx.setting_locked(LAYOUT_ROW).await?.unwrap_or(1) != u64::from(count)
    {
        return Err(ApplyError::Contended(format!(
            "the messages projection is no longer applied in {count} partition(s)"
        )));
    }
    let mut notices = Vec::new();
    // Events that came from other systems, recorded with what they became.
    let mut ingested = Vec::new();
    // Whether text was erased (a revoke).
    let mut erased = false;
    if let Some(prepared) = prepared {
        if prepared.entries.len() != events.len()
            || prepared
                .entries
                .iter()
                .zip(events)
                .any(|((seq, _), e)| *seq != e.seq)
        {
            return Err(ApplyError::Unavailable(
                "the prepared entries are not those of the batch".into(),
            ));
        }
        // Messages go in together: multi-row inserts, one version move per conversation; a
        // change to a message applies in its place between them.
        let mut run = Vec::new();
        for (e, (_, entry)) in events.iter().zip(prepared.entries) {
            if span.passed(e.seq, conv_of_subject(e.subject)) {
                continue;
            }
            let (env, row) = entry?;
            ingested.extend(ingest::origin(&env).map(|(src, id)| (src, id, e.seq)));
            if row.kind == EntryKind::Message {
                run.push(row);
                continue;
            }
            tx.insert_messages(&run).await?;
            run.clear();
            erased |= apply_change(&mut tx, bus, row, &env).await?;
        }
        tx.insert_messages(&run).await?;
    } else {
        // Users created or renamed go in together, many per statement; anything else applies
        // in its place between them.
        let mut named: Vec<(UserId, String, u64)> = Vec::new();
        for &Stored {
            seq,
            subject,
            payload,
            ..
        } in events
        {
            let env = decode(payload)?;
            ingested.extend(ingest::origin(&env).map(|(src, id)| (src, id, seq)));
            let naming = match &env.event {
                Event::UserCreated(e) if p == Projection::Users => Some((&e.user, &e.display_name)),
                Event::UserUpdated(e) if p == Projection::Users => Some((&e.user, &e.display_name)),
                _ => None,
            };
            if let Some((user, name)) = naming {
                expect_subject(subject, subjects::user(user))?;
                named.push((user.clone(), name.clone(), seq));
                continue;
            }
            put_users(&mut tx, &mut named).await?;
            notices.extend(p.apply(&mut tx, seq, subject, &env, rules).await?);
        }
        put_users(&mut tx, &mut named).await?;
    }
    tx.record_ingested(&ingested).await?;
    if !tx
        .advance_checkpoint(name, p.stream(), from, next, now_ms())
        .await?
    {
        return Err(contended(name));
    }
    tx.commit().await?;
    if erased {
        // The old versions of the rows are gone from the database file; its log must not
        // keep them either.
        store.truncate_log().await?;
    }
    Ok(notices)
}

/// Stores the users named so far (and forgets them).
async fn put_users(tx: &mut Tx, named: &mut Vec<(UserId, String, u64)>) -> Result<(), StoreError> {
    let rows: Vec<(&str, &str, u64)> = named
        .iter()
        .map(|(u, name, seq)| (u.as_str(), name.as_str(), *seq))
        .collect();
    tx.put_users(&rows).await?;
    named.clear();
    Ok(())
}

/// The checkpoint moved under its writer: another process applies the same stream.
fn contended(name: &str) -> ApplyError {
    ApplyError::Contended(format!(
        "the checkpoint of {name} moved: another projector is applying this stream"
    ))
}

/// Moves a checkpoint from `from` to `next` without applying anything (past an event that was
/// set aside, or events from other systems that were republished).
pub(crate) async fn save_checkpoint(
    store: &Store,
    name: &str,
    stream: &str,
    from: u64,
    next: Checkpoint,
) -> Result<(), ApplyError> {
    let mut tx = store.begin().await?;
    if !tx
        .advance_checkpoint(name, stream, from, next, now_ms())
        .await?
    {
        return Err(contended(name));
    }
    tx.commit().await?;
    Ok(())
}

fn expect_subject(subject: &str, expected: String) -> Result<(), ApplyError> {
    if subject == expected {
        Ok(())
    } else {
        Err(reject(
            "subject_mismatch",
            format!("event for {expected} was published on {subject}"),
        ))
    }
}

fn wrong_stream(env: &Envelope, stream: &str) -> ApplyError {
    reject(
        "wrong_stream",
        format!("{} events do not belong on {stream}", env.event.type_name()),
    )
}

/// The row an entry of a conversation stores — a message, or a change to one — or why it
/// cannot be stored.
fn message_row(stored: &Stored, env: &Envelope) -> Result<NewMessage, ApplyError> {
    let (seq, subject) = (stored.seq, stored.subject);
    let entry = Message::from_event(seq, env).ok_or_else(|| wrong_stream(env, stream::MESSAGES))?;
    expect_subject(subject, subjects::message(&entry.conv))?;
    if let Some(target) = entry.target
        && target >= seq
    {
        return Err(reject(
            "bad_target",
            format!("entry {seq} changes message {target}, which is not before it"),
        ));
    }
    if entry.attachments.len() > anchorage_schema::attachment::MAX_PER_MESSAGE {
        return Err(reject(
            "bad_attachment",
            format!("message {seq} carries {} files", entry.attachments.len()),
        ));
    }
    if let Some(err) = entry.attachments.iter().find_map(|a| a.check().err()) {
        return Err(reject("bad_attachment", format!("message {seq}: {err}")));
    }
    let mut mentions = entry.mentions;
    if entry.mention_all {
        mentions.push("*".to_owned());
    }
    Ok(NewMessage {
        conv: entry.conv.to_string(),
        seq,
        sender: entry.sender,
        device: entry.device,
        client_msg_id: entry.client_msg_id,
        body: entry.body.to_string(),
        client_ts: entry.client_ts,
        server_ts: entry.server_ts,
        event_id: env.id.to_string(),
        kind: entry.kind,
        target: entry.target,
        reply_to: entry.reply_to,
        mentions,
        flag: entry
            .added
            .or((entry.kind == EntryKind::Pin).then_some(entry.pinned)),
        emoji: entry.emoji,
        membership: stored.membership,
        attachments: entry.attachments,
        terms: None,
    })
}

/// Applies a change to a message (its entry `row` stored too). A revoke erases the events
/// that held the message's text — the message and its edits — from the stream before the
/// projection forgets them, so nothing is committed that says "erased" while the text is
/// still stored; an edit that comes after its message was revoked is erased itself. Returns
/// whether anything was erased.
async fn apply_change(
    tx: &mut Tx,
    bus: &Bus,
    row: NewMessage,
    env: &Envelope,
) -> Result<bool, ApplyError> {
    let (conv, seq) = (row.conv.clone(), row.seq);
    let target = row.target.unwrap_or_default();
    let mut erase = Vec::new();
    match &env.event {
        Event::MessageEdited(_) => {
            if tx.apply_edit(&conv, target, seq, &row.body).await? {
                tx.insert_message(&row).await?;
            } else {
                // Decided before the revoke it came after: its text goes too, as if it had
                // been erased with the others (a rebuild never sees it either).
                erase.push(seq);
            }
        }
        Event::MessageRevoked(r) => {
            tx.insert_message(&row).await?;
            erase = tx
                .apply_revoke(&Tombstone {
                    conv: conv.clone(),
                    target,
                    seq,
                    sender: r.sender.clone(),
                    device: r.device.clone(),
                    client_msg_id: r.client_msg_id.clone(),
                    client_ts: r.client_ts,
                    sent_at: r.sent_at,
                })
                .await?;
        }
        Event::ReactionChanged(r) => {
            tx.insert_message(&row).await?;
            tx.apply_reaction(&conv, target, r.user.as_str(), &r.emoji, r.added, seq)
                .await?;
        }
        Event::PinChanged(p) => {
            tx.insert_message(&row).await?;
            tx.apply_pin(&conv, target, p.pinned, seq).await?;
        }
        _ => return Err(wrong_stream(env, stream::MESSAGES)),
    }
    for at in &erase {
        bus.erase(stream::MESSAGES, Seq(*at))
            .await
            .map_err(|e| ApplyError::Unavailable(format!("erasing {conv}#{at}: {e}")))?;
    }
    Ok(!erase.is_empty())
}

async fn apply_read(
    tx: &mut Tx,
    seq: u64,
    subject: &str,
    env: &Envelope,
) -> Result<(), ApplyError> {
    let Event::ReadMarked(r) = &env.event else {
        return Err(wrong_stream(env, stream::READS));
    };
    expect_subject(subject, subjects::read(&r.user, &r.conv))?;
    tx.raise_read_marker(r.user.as_str(), r.conv.as_str(), r.read_seq, seq)
        .await?;
    Ok(())
}

async fn apply_user(
    tx: &mut Tx,
    seq: u64,
    subject: &str,
    env: &Envelope,
) -> Result<(), ApplyError> {
    match &env.event {
        // Users created or renamed go in together (`apply_events`).
        Event::UserCreated(_) | Event::UserUpdated(_) => {
            return Err(wrong_stream(env, "this path"));
        }
        Event::UserDeleted(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            tx.delete_user(e.user.as_str(), seq).await?;
            tx.remove_push_targets_of(e.user.as_str(), seq).await?;
        }
        Event::SessionRevoked(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            tx.revoke_session(e.user.as_str(), e.device.as_str(), seq)
                .await?;
            // A device signed out is not notified any more.
            tx.remove_push_target(e.user.as_str(), e.device.as_str(), None, seq)
                .await?;
        }
        Event::PushTargetSet(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            if let Err(bad) = e.target.check() {
                return Err(reject("invalid_payload", format!("push target: {bad}")));
            }
            let target = serde_json::to_string(&e.target)
                .map_err(|err| ApplyError::Unavailable(err.to_string()))?;
            let target = anchorage_store::push::NewTarget {
                provider: e.target.provider(),
                address: e.target.address(),
                json: &target,
                preview: e.preview,
            };
            // A device signed out for good is not notified again, whoever registers it
            // afterwards (an app's backend refreshing its token, a request racing the
            // revocation).
            if !tx
                .session_revoked(e.user.as_str(), e.device.as_str())
                .await?
            {
                tx.set_push_target(e.user.as_str(), e.device.as_str(), &target, seq)
                    .await?;
            }
        }
        Event::PushTargetRemoved(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            tx.remove_push_target(
                e.user.as_str(),
                e.device.as_str(),
                e.address.as_deref(),
                seq,
            )
            .await?;
        }
        Event::ConversationPrefsChanged(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            let change = PrefsChange {
                pinned: e.pinned,
                archived: e.archived,
                muted_until: e.muted_until,
                draft: e.draft.as_deref(),
                notify: e.notify.as_deref(),
            };
            tx.set_prefs(e.user.as_str(), e.conv.as_str(), &change, seq)
                .await?;
        }
        Event::MessagesHidden(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            tx.hide_messages(e.user.as_str(), e.conv.as_str(), &e.seqs, seq)
                .await?;
        }
        Event::PrivacyChanged(e) => {
            expect_subject(subject, subjects::user(&e.user))?;
            tx.set_privacy(e.user.as_str(), e.receipts, e.presence, seq)
                .await?;
        }
        _ => return Err(wrong_stream(env, stream::USERS)),
    }
    Ok(())
}

fn member_info(m: &MemberRow) -> Option<MemberInfo> {
    MemberInfo::from_stored(&m.user, m.role, m.nickname.clone(), m.muted_until)
}

/// A membership change to announce once its transaction committed: the subject and the
/// `members_changed` frame, serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub subject: String,
    pub frame: String,
}

/// Rules of the membership projection.
#[derive(Debug, Clone, Copy)]
pub struct MembershipRules {
    /// Tombstones are purged this many MEMBERSHIP sequences after the removal.
    pub tombstone_horizon: u64,
}

impl Default for MembershipRules {
    fn default() -> Self {
        Self {
            tombstone_horizon: 1_000_000,
        }
    }
}

/// One event's effect on a group: the change of each digest bucket (members added and
/// removed, as a digest of its own to combine with the bucket's) and what notifications carry.
#[derive(Default)]
struct Effect {
    buckets: BTreeMap<u8, SetDigest>,
    change: MembersChange,
}

/// Adds those of `users` who are not present members, keeping digests in step.
async fn join(
    tx: &mut Tx,
    group: &mut GroupRow,
    users: &[(&UserId, Role)],
    seq: u64,
    effect: &mut Effect,
) -> Result<(), StoreError> {
    let ids: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
    let existing = tx.members_of(&group.group, &ids).await?;
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for (user, role) in users {
        let present = existing
            .get(user.as_str())
            .is_some_and(|m| m.removed_seq.is_none());
        if present || !seen.insert(user.as_str()) {
            continue;
        }
        let row = MemberRow {
            group: group.group.clone(),
            user: user.to_string(),
            role: *role,
            nickname: None,
            muted_until: None,
            version: seq,
            removed_seq: None,
        };
        let id = user.as_str();
        effect.buckets.entry(bucket_of(id)).or_default().insert(id);
        let mut digest = group.digest();
        digest.insert(id);
        group.set_digest(digest);
        effect.change.upserts.extend(member_info(&row));
        rows.push(row);
    }
    tx.put_members(&rows).await?;
    let joined: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
    tx.open_spans(&group.group, &joined, seq).await
}

/// Turns those of `users` who are present members into tombstones at `seq`.
async fn leave(
    tx: &mut Tx,
    group: &mut GroupRow,
    users: &[UserId],
    seq: u64,
    effect: &mut Effect,
) -> Result<(), StoreError> {
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let mut existing = tx.members_of(&group.group, &ids).await?;
    let mut rows = Vec::new();
    for user in users {
        let Some(mut m) = existing
            .remove(user.as_str())
            .filter(|m| m.removed_seq.is_none())
        else {
            continue;
        };
        m.removed_seq = Some(seq);
        m.version = seq;
        let id = user.as_str();
        effect.buckets.entry(bucket_of(id)).or_default().remove(id);
        let mut digest = group.digest();
        digest.remove(id);
        group.set_digest(digest);
        effect.change.removed.push(user.clone());
        rows.push(m);
    }
    tx.put_members(&rows).await?;
    let left: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
    tx.close_spans(&group.group, &left, seq).await
}

/// Changes a present member's row; a change to a non-member is rejected.
async fn update_member(
    tx: &mut Tx,
    group: &GroupRow,
    user: &UserId,
    seq: u64,
    effect: &mut Effect,
    change: impl FnOnce(&mut MemberRow),
) -> Result<(), ApplyError> {
    match tx.member(&group.group, user.as_str()).await? {
        Some(mut m) if m.removed_seq.is_none() => {
            change(&mut m);
            m.version = seq;
            tx.put_member(&m).await?;
            effect.change.upserts.extend(member_info(&m));
            Ok(())
        }
        _ => Err(reject(
            "not_a_member",
            format!("{user} is not a member of group {}", group.group),
        )),
    }
}

async fn apply_membership(
    tx: &mut Tx,
    seq: u64,
    subject: &str,
    env: &Envelope,
    rules: MembershipRules,
) -> Result<Notice, ApplyError> {
    let group_id = match &env.event {
        Event::GroupCreated(e) => &e.group,
        Event::MembersAdded(e) => &e.group,
        Event::MembersRemoved(e) => &e.group,
        Event::MemberRoleChanged(e) => &e.group,
        Event::MemberMuteChanged(e) => &e.group,
        Event::MemberProfileChanged(e) => &e.group,
        Event::GroupProfileChanged(e) => &e.group,
        Event::GroupDismissed(e) => &e.group,
        _ => return Err(wrong_stream(env, stream::MEMBERSHIP)),
    };
    expect_subject(subject, subjects::membership(group_id))?;
    let existing = tx.group(group_id.as_str()).await?;
    let mut effect = Effect::default();

    let (mut group, prev) = if let Event::GroupCreated(GroupCreated {
        group,
        owner,
        title,
        members,
        direct,
    }) = &env.event
    {
        if existing.is_some() {
            return Err(reject(
                "group_exists",
                format!("group {group} already exists"),
            ));
        }
        let mut row = GroupRow {
            group: group.to_string(),
            owner: owner.to_string(),
            title: title.clone(),
            avatar: None,
            direct: *direct,
            dismissed: false,
            created_seq: seq,
            version: seq,
            digest_sum: 0,
            member_count: 0,
            horizon: 0,
        };
        let joining: Vec<(&UserId, Role)> = std::iter::once((owner, Role::Owner))
            .chain(
                members
                    .iter()
                    .filter(|m| *m != owner)
                    .map(|m| (m, Role::Member)),
            )
            .collect();
        join(tx, &mut row, &joining, seq, &mut effect).await?;
        effect.change.title = Some(title.clone());
        (row, 0)
    } else {
        let Some(group) = existing else {
            return Err(reject(
                "unknown_group",
                format!("group {group_id} does not exist"),
            ));
        };
        if group.dismissed {
            return Err(reject(
                "group_dismissed",
                format!("group {group_id} was dismissed"),
            ));
        }
        let prev = group.version;
        let mut group = group;
        match &env.event {
            Event::MembersAdded(MembersAdded { members, .. }) => {
                let joining: Vec<(&UserId, Role)> =
                    members.iter().map(|m| (m, Role::Member)).collect();
                join(tx, &mut group, &joining, seq, &mut effect).await?;
            }
            Event::MembersRemoved(MembersRemoved { members, .. }) => {
                leave(tx, &mut group, members, seq, &mut effect).await?;
            }
            Event::MemberRoleChanged(MemberRoleChanged { member, role, .. }) => {
                update_member(tx, &group, member, seq, &mut effect, |m| m.role = *role).await?;
            }
            Event::MemberMuteChanged(MemberMuteChanged {
                member,
                muted_until,
                ..
            }) => {
                update_member(tx, &group, member, seq, &mut effect, |m| {
                    m.muted_until = *muted_until
                })
                .await?;
            }
            Event::MemberProfileChanged(MemberProfileChanged {
                member, nickname, ..
            }) => {
                update_member(tx, &group, member, seq, &mut effect, |m| {
                    m.nickname = nickname.clone()
                })
                .await?;
            }
            Event::GroupProfileChanged(e) => {
                if let Some(title) = &e.title {
                    group.title = title.clone();
                }
                if e.avatar.is_some() {
                    group.avatar = e.avatar.clone();
                }
                effect.change.title = e.title.clone();
                effect.change.avatar = e.avatar.clone();
            }
            Event::GroupDismissed(_) => {
                group.dismissed = true;
                effect.change.dismissed = true;
                // Nothing decided after its end reached anyone.
                tx.end_spans(&group.group, seq).await?;
            }
            _ => return Err(wrong_stream(env, stream::MEMBERSHIP)),
        }
        (group, prev)
    };
    tx.adjust_buckets(&group.group, &effect.buckets).await?;
    // Tombstones older than the horizon go; diffs from before them become realignments.
    if let Some(bound) = seq.checked_sub(rules.tombstone_horizon)
        && bound > group.horizon
        && tx.purge_tombstones(&group.group, bound).await? > 0
    {
        group.horizon = bound;
    }
    group.version = seq;
    tx.put_group(&group).await?;
    let frame: ServerFrame = Push::MembersChanged(MembersChanged {
        group: group_id.clone(),
        version: seq,
        prev,
        digest: group.digest().to_wire(),
        change: effect.change,
    })
    .into();
    Ok(Notice {
        subject: subjects::notify_members(group_id),
        frame: frame.to_json(),
    })
}
