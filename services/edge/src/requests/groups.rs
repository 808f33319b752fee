//! 1:1 conversations and group commands.
//!
//! A group command is decided ([`rules::decide`]) on the group's current version and
//! published with `Nats-Expected-Last-Subject-Sequence` of that version; a lost race re-reads
//! and decides again, up to three times, then answers `conflict`.

use std::collections::HashMap;
use std::time::Duration;

use anchorage_bus::PublishError;
use anchorage_protocol::Done;
use anchorage_protocol::request::{
    AddMembers, CreateGroup, Leave, MuteMember, OpenDirect, RemoveMembers, SetNickname, SetRole,
    UpdateGroup,
};
use anchorage_schema::backoff::Backoff;
use anchorage_schema::event::{GroupCreated, MembersAdded, MembersRemoved, RemovalReason, Role};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, Envelope, Event, EventId, GroupId, Seq, UserId, now_ms,
};
use anchorage_store::GroupRow;

use super::error::RequestError;
use super::messages::PROJECTION_WAIT;
use super::rules::{self, GroupCommand, GroupState};
use super::session::{Answer, Session};
use crate::EdgeState;
use crate::progress::Projection;

/// How long a command that lost a race waits before deciding again (the racers spread out).
const CONFLICT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200));

impl From<AddMembers> for GroupCommand {
    fn from(r: AddMembers) -> Self {
        GroupCommand::Add(r.members)
    }
}

impl From<RemoveMembers> for GroupCommand {
    fn from(r: RemoveMembers) -> Self {
        GroupCommand::Remove(r.members)
    }
}

impl From<SetRole> for GroupCommand {
    fn from(r: SetRole) -> Self {
        GroupCommand::SetRole {
            member: r.member,
            role: r.role,
        }
    }
}

impl From<MuteMember> for GroupCommand {
    fn from(r: MuteMember) -> Self {
        GroupCommand::Mute {
            member: r.member,
            until: r.until,
        }
    }
}

impl From<SetNickname> for GroupCommand {
    fn from(r: SetNickname) -> Self {
        GroupCommand::Nickname {
            member: r.member,
            nickname: r.nickname,
        }
    }
}

impl From<UpdateGroup> for GroupCommand {
    fn from(r: UpdateGroup) -> Self {
        GroupCommand::Profile {
            title: r.title,
            avatar: r.avatar,
        }
    }
}

fn event_id(id: String) -> Result<EventId, RequestError> {
    EventId::parse(id).map_err(RequestError::internal)
}

/// Who a group command or creation is decided for: a signed-in user, or the app's backend
/// through the server API (which decides with the owner's rights, and cannot do what the owner
/// cannot: remove or demote the owner, or change a 1:1 conversation).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) state: EdgeState,
    /// The user decided as; `None` for the app's backend.
    pub(crate) user: Option<UserId>,
    /// Who the events name as their cause.
    pub(crate) actor: Actor,
    /// The first part of the ids of this caller's events.
    pub(crate) key: String,
}

impl Caller {
    /// The id of an event on `group` named by an idempotency key — whatever its kind, so one
    /// key is one request (a repeat is stored once, another request under it is a
    /// `conflict`); without a key, a creation is named by its group alone.
    fn event_key(&self, kind: &str, group: &GroupId, idempotency: Option<&ClientMsgId>) -> String {
        match idempotency {
            Some(k) => format!("{}:group:{group}:key:{k}", self.key),
            None => format!("{kind}:{group}"),
        }
    }

    /// Refuses a repeated idempotency key whose first use stored another event.
    pub(crate) async fn same_request(
        &self,
        stream: &str,
        seq: Seq,
        env: &Envelope,
    ) -> Result<(), RequestError> {
        let stored = self.state.bus.stored_event(stream, seq).await?;
        if stored.event == env.event {
            Ok(())
        } else {
            Err(RequestError::Conflict(
                "the idempotency key was used for another request".into(),
            ))
        }
    }
}

/// What publishing a group's creation found.
enum Created {
    /// The group is new: the answer.
    New(Done),
    /// The group existed: its creation and that event's seq, if its first event can be read.
    Exists(Option<(GroupCreated, u64)>),
}

impl Session {
    /// The caller of this connection's commands: its user.
    pub(crate) fn caller(&self) -> Caller {
        Caller {
            state: self.state.clone(),
            user: Some(self.claims.sub.clone()),
            actor: self.actor(),
            key: self.claims.sub.to_string(),
        }
    }

    pub(super) async fn group_command(&self, group: GroupId, command: GroupCommand) -> Answer {
        self.caller()
            .group_command(group, command, None)
            .await
            .map(|(done, _)| done.into())
    }

    /// Opens the 1:1 conversation with `peer`: joins the existing one only if its members are
    /// exactly the caller and the peer (under its id, or the id it had before direct ids were
    /// cryptographic), otherwise creates it. Who is a member is decided by the stream and the
    /// projection, never assumed here.
    pub(super) async fn open_direct(&self, r: OpenDirect) -> Result<Done, RequestError> {
        let OpenDirect { peer } = r;
        let me = &self.claims.sub;
        if &peer == me {
            return Err(RequestError::Invalid(
                "a 1:1 conversation needs another user".into(),
            ));
        }
        let conv = ConversationId::direct(me, &peer);
        // Twice: the second time after losing the race to create it (to the peer).
        for _ in 0..2 {
            for candidate in [conv.clone(), ConversationId::legacy_direct(me, &peer)] {
                if let Some(done) = self.enter_direct(&candidate, &peer).await? {
                    return Ok(done);
                }
            }
            let created = GroupCreated {
                group: conv.group(),
                owner: me.clone(),
                title: String::new(),
                members: vec![peer.clone()],
                direct: true,
            };
            match self
                .caller()
                .create(format!("direct:{conv}"), created)
                .await?
            {
                Created::New(done) => return Ok(done),
                // It exists (the peer opened it a moment ago): look again.
                Created::Exists(_) => {}
            }
        }
        Err(RequestError::Conflict(format!(
            "the conversation with {peer} is being created; retry"
        )))
    }

    /// Enters `conv` if it is the caller's and `peer`'s 1:1 conversation: answers `ok` (after
    /// bringing the caller back if they had left it), `None` if it does not exist or is not
    /// theirs.
    async fn enter_direct(
        &self,
        conv: &ConversationId,
        peer: &UserId,
    ) -> Result<Option<Done>, RequestError> {
        let me = &self.claims.sub;
        let group = conv.group();
        let caller = self.caller();
        let version = caller.settled_version(&group).await?;
        if version.0 == 0 {
            return Ok(None);
        }
        let (row, roles) = caller
            .group_and_roles(&group, std::slice::from_ref(peer))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let pair = [me.as_str(), peer.as_str()];
        let theirs = row.direct
            && !row.dismissed
            && pair.contains(&row.owner.as_str())
            && row.member_count == roles.len() as u64;
        if !theirs {
            return Ok(None);
        }
        let mut seq = version;
        if !roles.contains_key(me) {
            // The caller had left: coming back is an event like any membership change.
            let env = Envelope::new(
                event_id(format!("{me}:rejoin:{group}:{}", version.0))?,
                now_ms(),
                self.actor(),
                MembersAdded {
                    group: group.clone(),
                    members: vec![me.clone()],
                },
            );
            seq = match self
                .state
                .bus
                .publish_event(&subjects::membership(&group), &env, Some(version))
                .await
            {
                Ok(p) => p.seq,
                Err(PublishError::Conflict { .. }) => {
                    return Err(RequestError::Conflict(format!(
                        "{conv} changed meanwhile; retry"
                    )));
                }
                Err(err) => return Err(err.into()),
            };
        }
        // Answer once this edge's view holds the membership, so the next send is accepted.
        self.state.hub.reach(seq.0).await;
        Ok(Some(Done {
            conv: Some(conv.clone()),
            seq: None,
        }))
    }

    pub(super) async fn create_group(&self, r: CreateGroup) -> Result<Done, RequestError> {
        let owner = self.claims.sub.clone();
        Ok(self.caller().create_group(r, owner, None).await?.0)
    }

    pub(super) async fn leave(&self, r: Leave) -> Result<Done, RequestError> {
        let Leave { group } = r;
        let me = &self.claims.sub;
        let conv = group.conversation();
        self.member(&conv)?;
        if conv.is_direct() {
            return Err(RequestError::Forbidden(
                "a 1:1 conversation has fixed members and cannot be left".into(),
            ));
        }
        let role = self
            .state
            .store
            .member_role(group.as_str(), me.as_str())
            .await?;
        if role == Some(Role::Owner) {
            return Err(RequestError::Forbidden(format!(
                "the owner cannot leave {group}: dismiss it instead"
            )));
        }
        let env = Envelope::new(
            event_id(format!("{me}:leave:{group}:{}", now_ms()))?,
            now_ms(),
            self.actor(),
            MembersRemoved {
                group: group.clone(),
                members: vec![me.clone()],
                reason: RemovalReason::Left,
            },
        );
        let p = self
            .state
            .bus
            .publish_event(&subjects::membership(&group), &env, None)
            .await?;
        Ok(Done {
            conv: Some(conv),
            seq: Some(p.seq.0),
        })
    }
}

impl Caller {
    /// Creates a group owned by `owner`. A repeat of the very same creation (an answer lost on
    /// the way) gets the same answer, and `true`.
    pub(crate) async fn create_group(
        &self,
        r: CreateGroup,
        owner: UserId,
        idempotency: Option<&ClientMsgId>,
    ) -> Result<(Done, bool), RequestError> {
        let CreateGroup {
            group,
            title,
            members,
        } = r;
        if group.is_direct() {
            return Err(RequestError::Invalid(format!(
                "group ids starting with {} are reserved for 1:1 conversations",
                anchorage_schema::DIRECT_PREFIX
            )));
        }
        if members.len() > rules::MAX_MEMBERS_PER_COMMAND || title.len() > rules::MAX_TITLE {
            return Err(RequestError::Invalid(
                "at most 1000 members and 200 bytes of title".into(),
            ));
        }
        let created = GroupCreated {
            group: group.clone(),
            owner,
            title,
            members,
            direct: false,
        };
        match self
            .create(
                self.event_key("create", &group, idempotency),
                created.clone(),
            )
            .await?
        {
            Created::New(done) => Ok((done, false)),
            // The very same creation, asked again (an answer lost on the way):
            // the same answer, never a refusal of what was done. Anything else under that id —
            // another owner's, or another title or member list — is a conflict.
            Created::Exists(Some((original, seq))) if original == created => {
                // Unless it was dismissed since: a dismissed group's id is never reused.
                let dismissed = self
                    .state
                    .store
                    .group_row(group.as_str())
                    .await?
                    .is_some_and(|g| g.dismissed);
                if dismissed {
                    return Err(RequestError::Conflict(format!(
                        "group {group} was dismissed; its id is not reused"
                    )));
                }
                let done = Done {
                    conv: Some(group.conversation()),
                    seq: Some(seq),
                };
                Ok((done, true))
            }
            Created::Exists(_) => Err(RequestError::Conflict(format!(
                "group {group} already exists"
            ))),
        }
    }

    /// Publishes a group's creation, only if the group has no event yet.
    async fn create(&self, id: String, created: GroupCreated) -> Result<Created, RequestError> {
        let group = created.group.clone();
        let subject = subjects::membership(&group);
        let env = Envelope::new(event_id(id)?, now_ms(), self.actor.clone(), created);
        match self
            .state
            .bus
            .publish_event(&subject, &env, Some(Seq(0)))
            .await
        {
            Ok(p) if !p.duplicate => {
                let conv = group.conversation();
                if let Some(user) = &self.user {
                    self.state.hub.joined(user, conv.clone());
                }
                Ok(Created::New(Done {
                    conv: Some(conv),
                    seq: Some(p.seq.0),
                }))
            }
            Ok(_) | Err(PublishError::Conflict { .. }) => {
                // The group's first event says who created it.
                let first = self
                    .state
                    .bus
                    .first_subject_event(stream::MEMBERSHIP, &subject)
                    .await?;
                if first.is_none() {
                    // Another creation is on its way into a clustered stream and not stored
                    // yet: which one it is is known in a moment.
                    return Err(RequestError::Overloaded(format!(
                        "group {group} is being created; retry in a moment"
                    )));
                }
                Ok(Created::Exists(first.and_then(
                    |(seq, env)| match env.event {
                        Event::GroupCreated(c) => Some((c, seq.0)),
                        _ => None,
                    },
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Decides a command on the group's current version and publishes its event with
    /// `Nats-Expected-Last-Subject-Sequence` of that version; a lost race decides again (up
    /// to three times), then answers `conflict`.
    pub(crate) async fn group_command(
        &self,
        group: GroupId,
        command: GroupCommand,
        idempotency: Option<&ClientMsgId>,
    ) -> Result<(Done, bool), RequestError> {
        command.check()?;
        let subject = subjects::membership(&group);
        if idempotency.is_some() {
            // Done already, the answer lost: the group's last event is this one.
            let id = self.event_key(command.kind(), &group, idempotency);
            if let Some((seq, bytes)) = self
                .state
                .bus
                .last_subject_payload(stream::MEMBERSHIP, &subject)
                .await?
                && let Ok(env) = Envelope::from_json(&bytes)
                && env.id.as_str() == id
            {
                if env.event != command.event(&group) {
                    return Err(RequestError::Conflict(
                        "the idempotency key was used for another request".into(),
                    ));
                }
                let done = Done {
                    conv: Some(group.conversation()),
                    seq: Some(seq.0),
                };
                return Ok((done, true));
            }
        }
        for attempt in 0..3u32 {
            let version = self.settled_version(&group).await?;
            let state = self.group_state(&group, command.targets()).await?;
            let event = rules::decide(&state, &command)?;
            let id = match idempotency {
                Some(_) => self.event_key(command.kind(), &group, idempotency),
                // Without a key each request is its own: two different commands decided on
                // the same version must not share an id (the stream would take the second
                // for a repeat of the first and drop it); the version check turns the second
                // into a conflict, decided again.
                None => format!(
                    "{}:{}:{group}:{}:{:016x}",
                    self.key,
                    command.kind(),
                    version.0,
                    anchorage_schema::backoff::random()
                ),
            };
            let env = Envelope::new(event_id(id)?, now_ms(), self.actor.clone(), event);
            match self
                .state
                .bus
                .publish_event(&subject, &env, Some(version))
                .await
            {
                Ok(p) => {
                    if p.duplicate && idempotency.is_some() {
                        self.same_request(stream::MEMBERSHIP, p.seq, &env).await?;
                    }
                    let done = Done {
                        conv: Some(group.conversation()),
                        seq: Some(p.seq.0),
                    };
                    return Ok((done, p.duplicate));
                }
                Err(PublishError::Conflict { .. }) => {
                    tokio::time::sleep(CONFLICT_BACKOFF.delay(attempt, None)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(RequestError::Conflict(format!(
            "group {group} kept changing; read it again and retry"
        )))
    }

    /// What a command on `group` naming `targets` is decided on.
    async fn group_state(
        &self,
        group: &GroupId,
        targets: &[UserId],
    ) -> Result<GroupState, RequestError> {
        let (row, mut roles) = self.group_and_roles(group, targets).await?;
        let live = row.as_ref().is_some_and(|g| !g.dismissed);
        // The app's backend decides with the owner's rights.
        let (me, my_role) = match &self.user {
            Some(user) => (user.clone(), roles.get(user).copied()),
            None => {
                let owner = row
                    .as_ref()
                    .filter(|_| live)
                    .map(|g| UserId::parse(g.owner.clone()));
                match owner {
                    Some(Ok(owner)) => (owner, Some(Role::Owner)),
                    Some(Err(e)) => return Err(RequestError::internal(e)),
                    None => {
                        return Err(RequestError::NotFound(format!(
                            "group {group} does not exist"
                        )));
                    }
                }
            }
        };
        if !targets.contains(&me) {
            roles.remove(&me);
        }
        Ok(GroupState {
            group: group.clone(),
            live,
            direct: row.as_ref().is_some_and(|g| g.direct),
            me,
            my_role,
            roles,
        })
    }

    /// The group row and the roles of the caller and of `users` who are present members, read
    /// in one snapshot.
    pub(super) async fn group_and_roles(
        &self,
        group: &GroupId,
        users: &[UserId],
    ) -> Result<(Option<GroupRow>, HashMap<UserId, Role>), RequestError> {
        let mut tx = self.state.store.begin_read().await?;
        let row = tx.group(group.as_str()).await?;
        let ids: Vec<&str> = self.user.iter().chain(users).map(UserId::as_str).collect();
        let rows = tx.members_of(group.as_str(), &ids).await?;
        tx.commit().await?;
        let roles = rows
            .into_values()
            .filter(|m| m.removed_seq.is_none())
            .filter_map(|m| Some((UserId::parse(m.user).ok()?, m.role)))
            .collect();
        Ok((row, roles))
    }

    /// The group's version on the stream, once the projection holds it: a command is only
    /// ever decided on the group as it is. If the projection does not get there within
    /// [`PROJECTION_WAIT`] (the projector is down or far behind), `overloaded`: deciding on an
    /// older state would let a demoted admin or a removed member act, and publishing against
    /// the newest version would let the decision through.
    pub(crate) async fn settled_version(&self, group: &GroupId) -> Result<Seq, RequestError> {
        let version = self
            .state
            .bus
            .last_subject_seq(stream::MEMBERSHIP, &subjects::membership(group))
            .await?;
        let reached = self
            .state
            .progress
            .reached(Projection::Membership, version.0, PROJECTION_WAIT)
            .await?;
        if !reached {
            return Err(RequestError::Overloaded(format!(
                "the members of {group} are catching up; retry in a moment"
            )));
        }
        Ok(version)
    }
}
