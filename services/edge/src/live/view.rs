//! The membership view of an edge: the conversations and mutes of the users connected here,
//! kept current from the MEMBERSHIP stream in order, and the position it has reached.
//!
//! [`MembershipView::apply`] is pure: it takes one event and returns the changes it made for
//! local users, which the hub then turns into interest, notifications and frames.

use std::collections::{HashMap, HashSet, VecDeque};

use anchorage_schema::{ConversationId, Envelope, Event, UserId};

/// Membership events kept to close the gap between a projection read and the live stream.
pub(super) const RECENT_MEMBERSHIP: usize = 4096;

/// How a projection read relates to the view (see [`MembershipView::covers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coverage {
    /// The view can bring it up to its position.
    Covered,
    /// The view no longer keeps the events after it: the projection must reach this first.
    ProjectionBehind(u64),
    /// It holds events the view has yet to apply (which would reach the user twice).
    ViewBehind,
}

/// What one membership event changed for a local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// `user` joined `conv` (at the event's seq).
    Joined { user: UserId, conv: ConversationId },
    /// `user` left or was removed from `conv`.
    Left { user: UserId, conv: ConversationId },
    /// `conv` was dismissed; `user` was in it.
    Dismissed { user: UserId, conv: ConversationId },
}

#[derive(Debug, Default)]
struct UserView {
    convs: HashSet<ConversationId>,
    /// Groups the user is muted in, until when (Unix ms). Rare: a list, empty without an
    /// allocation.
    muted: Vec<(ConversationId, i64)>,
}

/// The view.
#[derive(Debug, Default)]
pub(super) struct MembershipView {
    users: HashMap<UserId, UserView>,
    recent: VecDeque<(u64, Envelope)>,
    /// The last MEMBERSHIP sequence applied: every membership event up to it is in the view.
    position: u64,
    /// Every event this view applied after this sequence is in `recent`: a projection read
    /// at a checkpoint below it may miss events this view can no longer replay.
    floor: u64,
}

impl MembershipView {
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the position past events that change no membership (ones this edge cannot
    /// decode, purged ones).
    pub fn set_position(&mut self, seq: u64) {
        self.position = seq;
    }

    /// Follows the stream from `seq` on, with nothing to replay before it: at the start, or
    /// on a stream that was recreated (the events kept are of the stream that was).
    pub fn restart_at(&mut self, seq: u64) {
        self.position = seq;
        self.floor = seq;
        self.recent.clear();
    }

    /// Whether a user's memberships read from the projection at `checkpoint` can be brought
    /// exactly to this view's position: every event after it is still kept here, and none of
    /// those the view has yet to apply is in the read already.
    pub fn covers(&self, checkpoint: u64) -> Coverage {
        if checkpoint < self.floor {
            Coverage::ProjectionBehind(self.floor)
        } else if checkpoint > self.position {
            Coverage::ViewBehind
        } else {
            Coverage::Covered
        }
    }

    /// Starts tracking `user` from the projection's view (`convs`, `muted`, as of the
    /// membership projection's `checkpoint`, which this view [covers](Self::covers)),
    /// replaying the recent events the projection had not applied. Returns the user's
    /// conversations and the joins replayed that still hold, with their seqs (the client
    /// hears of them as live joins, so it syncs them).
    pub fn track(
        &mut self,
        user: &UserId,
        convs: HashSet<ConversationId>,
        muted: HashMap<ConversationId, i64>,
        checkpoint: u64,
    ) -> (Vec<ConversationId>, Vec<(u64, ConversationId)>) {
        let mut view = UserView {
            convs,
            muted: muted.into_iter().collect(),
        };
        let mut late_joins = Vec::new();
        for (seq, env) in self.recent.iter().filter(|(seq, _)| *seq > checkpoint) {
            note_mute(&mut view, user, env);
            // Left, removed or dismissed: no longer theirs, nor a join to tell of.
            let gone = |view: &mut UserView, late: &mut Vec<(u64, ConversationId)>, conv| {
                view.muted.retain(|(c, _)| *c != conv);
                late.retain(|(_, c)| *c != conv);
                view.convs.remove(&conv);
            };
            if let Event::GroupDismissed(d) = &env.event {
                gone(&mut view, &mut late_joins, d.group.conversation());
            }
            for (u, conv, joined) in membership_changes(env) {
                if &u != user {
                    continue;
                }
                if joined {
                    view.convs.insert(conv.clone());
                    late_joins.push((*seq, conv));
                } else {
                    gone(&mut view, &mut late_joins, conv);
                }
            }
        }
        let convs = view.convs.iter().cloned().collect();
        self.users.insert(user.clone(), view);
        (convs, late_joins)
    }

    pub fn is_tracked(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    /// Stops tracking `user` (their last connection closed); returns their conversations.
    pub fn untrack(&mut self, user: &UserId) -> HashSet<ConversationId> {
        self.users.remove(user).map(|v| v.convs).unwrap_or_default()
    }

    pub fn is_member(&self, user: &UserId, conv: &ConversationId) -> bool {
        self.users.get(user).is_some_and(|v| v.convs.contains(conv))
    }

    pub fn conversations_of(&self, user: &UserId) -> impl Iterator<Item = &ConversationId> {
        self.users
            .get(user)
            .into_iter()
            .flat_map(|v| v.convs.iter())
    }

    pub fn muted_until(&self, user: &UserId, conv: &ConversationId) -> Option<i64> {
        self.users
            .get(user)
            .and_then(|v| v.muted.iter().find(|(c, _)| c == conv))
            .map(|(_, until)| *until)
    }

    /// Records a membership the caller just caused, before its event arrives; returns
    /// whether it is new.
    pub fn joined(&mut self, user: &UserId, conv: ConversationId) -> bool {
        self.users
            .get_mut(user)
            .is_some_and(|v| v.convs.insert(conv))
    }

    /// Applies the membership event stored at `seq`; returns what changed for local users.
    pub fn apply(&mut self, seq: u64, env: Envelope) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Event::MemberMuteChanged(m) = &env.event
            && let Some(v) = self.users.get_mut(&m.member)
        {
            note_mute(v, &m.member, &env);
        }
        for (user, conv, joined) in membership_changes(&env) {
            let Some(v) = self.users.get_mut(&user) else {
                continue;
            };
            if joined {
                if v.convs.insert(conv.clone()) {
                    changes.push(Change::Joined { user, conv });
                }
            } else {
                v.muted.retain(|(c, _)| *c != conv);
                if v.convs.remove(&conv) {
                    changes.push(Change::Left { user, conv });
                }
            }
        }
        if let Event::GroupDismissed(d) = &env.event {
            let conv = d.group.conversation();
            for (user, v) in &mut self.users {
                if v.convs.remove(&conv) {
                    changes.push(Change::Dismissed {
                        user: user.clone(),
                        conv: conv.clone(),
                    });
                }
            }
        }
        self.position = self.position.max(seq);
        self.recent.push_back((seq, env));
        while self.recent.len() > RECENT_MEMBERSHIP {
            if let Some((seq, _)) = self.recent.pop_front() {
                self.floor = seq;
            }
        }
        changes
    }

    /// Forgets every user (shutdown).
    pub fn clear(&mut self) {
        self.users.clear();
    }
}

/// Who joined (`true`) or left which conversation in a membership event.
fn membership_changes(env: &Envelope) -> Vec<(UserId, ConversationId, bool)> {
    let (group, users, joined): (_, Box<dyn Iterator<Item = &UserId>>, _) = match &env.event {
        Event::GroupCreated(e) => (
            &e.group,
            Box::new(std::iter::once(&e.owner).chain(e.members.iter())),
            true,
        ),
        Event::MembersAdded(e) => (&e.group, Box::new(e.members.iter()), true),
        Event::MembersRemoved(e) => (&e.group, Box::new(e.members.iter()), false),
        _ => return Vec::new(),
    };
    let conv = group.conversation();
    users.map(|u| (u.clone(), conv.clone(), joined)).collect()
}

/// Keeps a user's mutes in step with a mute event about them.
fn note_mute(view: &mut UserView, user: &UserId, env: &Envelope) {
    let Event::MemberMuteChanged(m) = &env.event else {
        return;
    };
    if &m.member != user {
        return;
    }
    let conv = m.group.conversation();
    view.muted.retain(|(c, _)| *c != conv);
    if let Some(until) = m.muted_until {
        view.muted.push((conv, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorage_schema::event::{
        GroupDismissed, MemberMuteChanged, MembersAdded, MembersRemoved, RemovalReason,
    };
    use anchorage_schema::{Actor, EventId, GroupId};

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn conv(name: &str) -> ConversationId {
        ConversationId::parse(name).unwrap()
    }

    fn env(n: u64, event: impl Into<Event>) -> Envelope {
        let actor = Actor::System {
            source: anchorage_schema::SourceId::parse("test").unwrap(),
        };
        Envelope::new(EventId::parse(format!("e{n}")).unwrap(), 0, actor, event)
    }

    fn group() -> GroupId {
        GroupId::parse("g").unwrap()
    }

    #[test]
    fn only_local_users_changes_come_out_and_the_position_follows() {
        let mut view = MembershipView::default();
        view.track(&user("ann"), HashSet::new(), HashMap::new(), 0);
        let added = MembersAdded {
            group: group(),
            members: vec![user("ann"), user("bob")],
        };
        let changes = view.apply(5, env(5, added.clone()));
        assert_eq!(
            changes,
            vec![Change::Joined {
                user: user("ann"),
                conv: conv("g")
            }]
        );
        assert!(view.is_member(&user("ann"), &conv("g")));
        assert!(!view.is_tracked(&user("bob")));
        // The same join again changes nothing.
        assert!(view.apply(6, env(6, added)).is_empty());
        assert_eq!(view.position(), 6);
        let dismissed = view.apply(7, env(7, GroupDismissed { group: group() }));
        assert_eq!(
            dismissed,
            vec![Change::Dismissed {
                user: user("ann"),
                conv: conv("g")
            }]
        );
    }

    #[test]
    fn a_user_tracked_late_gets_the_events_the_projection_had_not_applied() {
        let mut view = MembershipView::default();
        let added = MembersAdded {
            group: group(),
            members: vec![user("ann")],
        };
        view.apply(3, env(3, added));
        let mute = MemberMuteChanged {
            group: group(),
            member: user("ann"),
            muted_until: Some(99),
        };
        view.apply(4, env(4, mute));
        // The projection had applied up to 2: the join at 3 is replayed as a late join.
        let (convs, late) = view.track(&user("ann"), HashSet::new(), HashMap::new(), 2);
        assert_eq!(convs, vec![conv("g")]);
        assert_eq!(late, vec![(3, conv("g"))]);
        assert_eq!(view.muted_until(&user("ann"), &conv("g")), Some(99));
        // Leaving ends the mute and the membership.
        let left = MembersRemoved {
            group: group(),
            members: vec![user("ann")],
            reason: RemovalReason::Left,
        };
        assert_eq!(
            view.apply(5, env(5, left)),
            vec![Change::Left {
                user: user("ann"),
                conv: conv("g")
            }]
        );
        assert_eq!(view.muted_until(&user("ann"), &conv("g")), None);
        // Tracked with the projection at 4: the join at 3 is in the projection already.
        view.untrack(&user("ann"));
        let (_, late) = view.track(&user("ann"), HashSet::new(), HashMap::new(), 4);
        assert!(late.is_empty());
    }

    #[test]
    fn a_dismissal_the_projection_had_not_applied_is_replayed() {
        let mut view = MembershipView::default();
        let other = GroupId::parse("h").unwrap();
        view.apply(
            3,
            env(
                3,
                MembersAdded {
                    group: other.clone(),
                    members: vec![user("ann")],
                },
            ),
        );
        view.apply(4, env(4, GroupDismissed { group: group() }));
        view.apply(5, env(5, GroupDismissed { group: other }));
        // The projection had applied up to 2, with ann in g (and muted there): g was
        // dismissed since, and h joined and dismissed — neither is hers, nor a join to tell.
        let held = HashSet::from([conv("g")]);
        let muted = HashMap::from([(conv("g"), 99)]);
        let (convs, late) = view.track(&user("ann"), held, muted, 2);
        assert!(convs.is_empty(), "{convs:?}");
        assert!(late.is_empty(), "{late:?}");
        assert!(!view.is_member(&user("ann"), &conv("g")));
        assert_eq!(view.muted_until(&user("ann"), &conv("g")), None);
    }

    #[test]
    fn a_checkpoint_is_covered_while_the_events_after_it_are_kept() {
        let mut view = MembershipView::default();
        view.restart_at(10);
        assert_eq!(view.covers(10), Coverage::Covered);
        assert_eq!(
            view.covers(9),
            Coverage::ProjectionBehind(10),
            "what came before the start is not kept"
        );
        assert_eq!(view.covers(11), Coverage::ViewBehind);
        let added = MembersAdded {
            group: group(),
            members: vec![user("ann")],
        };
        let last = 10 + RECENT_MEMBERSHIP as u64 + 5;
        for seq in 11..=last {
            view.apply(seq, env(seq, added.clone()));
        }
        // The oldest five went: a read at 14 could miss the event at 15, kept no more.
        assert_eq!(view.covers(14), Coverage::ProjectionBehind(15));
        assert_eq!(view.covers(15), Coverage::Covered);
        assert_eq!(view.covers(last), Coverage::Covered);
        // Events this edge cannot decode, or purged ones, change no membership.
        view.set_position(last + 1);
        assert_eq!(view.covers(15), Coverage::Covered);
        assert_eq!(view.covers(last + 1), Coverage::Covered);
        // A recreated stream is followed from its end: nothing of the old one is replayed.
        view.restart_at(3);
        assert_eq!(view.covers(3), Coverage::Covered);
        assert_eq!(view.covers(2), Coverage::ProjectionBehind(3));
        let (_, late) = view.track(&user("ann"), HashSet::new(), HashMap::new(), 3);
        assert!(late.is_empty());
    }
}
