//! Who may change a group, decided without I/O: a [`GroupCommand`] and the [`GroupState`] it
//! is decided on (read in one snapshot at the group's current version) give the event to
//! publish, or the refusal.
//!
//! The rules: owners and admins add and remove members, change the profile and mute; only
//! the owner removes or mutes admins, changes roles and dismisses; nobody removes, mutes or
//! demotes the owner, and ownership is never given away; anyone sets their own nickname, staff
//! set anyone's; a 1:1 conversation has fixed members and no roles, and to a non-member it
//! does not exist.

use std::collections::HashMap;

use anchorage_schema::event::{
    GroupDismissed, GroupProfileChanged, MemberMuteChanged, MemberProfileChanged,
    MemberRoleChanged, MembersAdded, MembersRemoved, RemovalReason, Role,
};
use anchorage_schema::{Event, GroupId, UserId};

use super::error::RequestError;

/// Most members one command names.
pub(crate) const MAX_MEMBERS_PER_COMMAND: usize = 1000;
/// Longest group title, in bytes.
pub(crate) const MAX_TITLE: usize = 200;
/// Longest avatar reference, in bytes.
const MAX_AVATAR: usize = 1024;
/// Longest nickname, in bytes.
const MAX_NICKNAME: usize = 64;

/// A change to a group's members or profile, as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupCommand {
    Add(Vec<UserId>),
    Remove(Vec<UserId>),
    SetRole {
        member: UserId,
        role: Role,
    },
    Mute {
        member: UserId,
        until: Option<i64>,
    },
    Nickname {
        member: UserId,
        nickname: Option<String>,
    },
    Profile {
        title: Option<String>,
        avatar: Option<String>,
    },
    Dismiss,
}

/// What a command is decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupState {
    pub group: GroupId,
    /// The group exists and was not dismissed.
    pub live: bool,
    /// A 1:1 conversation.
    pub direct: bool,
    /// The caller.
    pub me: UserId,
    /// The caller's role; `None`: not a member.
    pub my_role: Option<Role>,
    /// The roles of the members the command names who are present members (the caller's
    /// own only if named).
    pub roles: HashMap<UserId, Role>,
}

impl GroupCommand {
    /// The members the command names, whose roles it is decided on.
    pub fn targets(&self) -> &[UserId] {
        match self {
            GroupCommand::Add(members) | GroupCommand::Remove(members) => members,
            GroupCommand::SetRole { member, .. }
            | GroupCommand::Mute { member, .. }
            | GroupCommand::Nickname { member, .. } => std::slice::from_ref(member),
            GroupCommand::Profile { .. } | GroupCommand::Dismiss => &[],
        }
    }

    /// The command's part of its event id (one event per caller, kind, group and version).
    pub fn kind(&self) -> &'static str {
        match self {
            GroupCommand::Add(_) | GroupCommand::Remove(_) => "members",
            GroupCommand::SetRole { .. } => "role",
            GroupCommand::Mute { .. } => "mute",
            GroupCommand::Nickname { .. } => "nick",
            GroupCommand::Profile { .. } => "profile",
            GroupCommand::Dismiss => "dismiss",
        }
    }

    /// Refuses a command that no group state could allow (checked before reading any).
    pub fn check(&self) -> Result<(), RequestError> {
        let invalid = |why: &str| Err(RequestError::Invalid(why.into()));
        match self {
            GroupCommand::Add(m) | GroupCommand::Remove(m)
                if m.is_empty() || m.len() > MAX_MEMBERS_PER_COMMAND =>
            {
                invalid("between 1 and 1000 members")
            }
            GroupCommand::SetRole {
                role: Role::Owner, ..
            } => invalid("ownership cannot be given away; roles are admin or member"),
            GroupCommand::Mute { until: Some(t), .. } if *t < 0 => {
                invalid("until is a Unix millisecond time (0 or more); null unmutes")
            }
            GroupCommand::Nickname {
                nickname: Some(n), ..
            } if n.len() > MAX_NICKNAME => invalid("a nickname has at most 64 bytes"),
            GroupCommand::Profile { title, avatar }
                if title.as_ref().is_some_and(|t| t.len() > MAX_TITLE)
                    || avatar.as_ref().is_some_and(|a| a.len() > MAX_AVATAR)
                    || (title.is_none() && avatar.is_none()) =>
            {
                invalid("a title (at most 200 bytes) or an avatar (at most 1024 bytes)")
            }
            _ => Ok(()),
        }
    }
}

/// Decides `command` on `state`: the event to publish, or why not.
pub(crate) fn decide(state: &GroupState, command: &GroupCommand) -> Result<Event, RequestError> {
    command.check()?;
    let group = &state.group;
    let missing = || RequestError::NotFound(format!("group {group} does not exist"));
    if !state.live {
        return Err(missing());
    }
    if state.my_role.is_none() {
        // Whether two other users have a 1:1 conversation is nobody else's business.
        return Err(if state.direct {
            missing()
        } else {
            RequestError::Forbidden(format!("not a member of {group}"))
        });
    }
    if state.direct {
        return Err(RequestError::Forbidden(
            "a 1:1 conversation has fixed members and no roles".into(),
        ));
    }
    match command {
        GroupCommand::Add(_) | GroupCommand::Profile { .. } => staff(state)?,
        GroupCommand::Remove(_) => {
            staff(state)?;
            for (member, role) in &state.roles {
                if *role == Role::Owner || (*role == Role::Admin && !owner(state)) {
                    return Err(RequestError::Forbidden(format!(
                        "{member} cannot be removed by you"
                    )));
                }
            }
        }
        GroupCommand::SetRole { member, .. } => {
            if !owner(state) {
                return Err(RequestError::Forbidden(format!(
                    "only the owner changes roles in {group}"
                )));
            }
            target_below(state, member, Role::Owner)?;
        }
        GroupCommand::Mute { member, .. } => {
            staff(state)?;
            // Admins mute plain members; the owner mutes admins too.
            let ceiling = if owner(state) {
                Role::Owner
            } else {
                Role::Admin
            };
            target_below(state, member, ceiling)?;
        }
        GroupCommand::Nickname { member, .. } => {
            if *member != state.me {
                staff(state)?;
            }
            if !state.roles.contains_key(member) {
                return Err(RequestError::NotFound(format!(
                    "{member} is not a member of {group}"
                )));
            }
        }
        GroupCommand::Dismiss => {
            if !owner(state) {
                return Err(RequestError::Forbidden(format!(
                    "only the owner dismisses {group}"
                )));
            }
        }
    }
    Ok(command.event(group))
}

impl GroupCommand {
    /// The event the command becomes on `group`, once allowed.
    pub fn event(&self, group: &GroupId) -> Event {
        let group = group.clone();
        match self.clone() {
            GroupCommand::Add(members) => MembersAdded { group, members }.into(),
            GroupCommand::Remove(members) => MembersRemoved {
                group,
                members,
                reason: RemovalReason::Kicked,
            }
            .into(),
            GroupCommand::SetRole { member, role } => MemberRoleChanged {
                group,
                member,
                role,
            }
            .into(),
            GroupCommand::Mute { member, until } => MemberMuteChanged {
                group,
                member,
                muted_until: until,
            }
            .into(),
            GroupCommand::Nickname { member, nickname } => MemberProfileChanged {
                group,
                member,
                nickname,
            }
            .into(),
            GroupCommand::Profile { title, avatar } => GroupProfileChanged {
                group,
                title,
                avatar,
            }
            .into(),
            GroupCommand::Dismiss => GroupDismissed { group }.into(),
        }
    }
}

fn owner(state: &GroupState) -> bool {
    state.my_role == Some(Role::Owner)
}

/// Only the owner and admins.
fn staff(state: &GroupState) -> Result<(), RequestError> {
    if matches!(state.my_role, Some(Role::Owner | Role::Admin)) {
        Ok(())
    } else {
        Err(RequestError::Forbidden(format!(
            "only owners and admins do this in {}",
            state.group
        )))
    }
}

/// The target must be a member whose role ranks below `ceiling`.
fn target_below(state: &GroupState, member: &UserId, ceiling: Role) -> Result<(), RequestError> {
    let rank = |r: Role| match r {
        Role::Owner => 2,
        Role::Admin => 1,
        Role::Member => 0,
    };
    match state.roles.get(member) {
        None => Err(RequestError::NotFound(format!("{member} is not a member"))),
        Some(r) if rank(*r) >= rank(ceiling) => Err(RequestError::Forbidden(format!(
            "{member} is {r:?} and cannot be changed by you"
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorage_protocol::ErrorCode;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    /// Given: the caller `me` with `my_role` in a live group where `others` have these roles.
    fn given(my_role: Option<Role>, others: &[(&str, Role)]) -> GroupState {
        GroupState {
            group: GroupId::parse("g").unwrap(),
            live: true,
            direct: false,
            me: user("me"),
            my_role,
            roles: others.iter().map(|(u, r)| (user(u), *r)).collect(),
        }
    }

    fn refused(state: &GroupState, command: GroupCommand) -> ErrorCode {
        decide(state, &command).unwrap_err().code()
    }

    #[test]
    fn staff_add_and_remove_plain_members_and_members_do_not() {
        let add = GroupCommand::Add(vec![user("bob")]);
        let remove = GroupCommand::Remove(vec![user("bob")]);
        for role in [Role::Owner, Role::Admin] {
            let state = given(Some(role), &[("bob", Role::Member)]);
            assert!(matches!(decide(&state, &add), Ok(Event::MembersAdded(_))));
            assert!(matches!(
                decide(&state, &remove),
                Ok(Event::MembersRemoved(r)) if r.reason == RemovalReason::Kicked
            ));
        }
        let member = given(Some(Role::Member), &[("bob", Role::Member)]);
        assert_eq!(refused(&member, add), ErrorCode::Forbidden);
        assert_eq!(refused(&member, remove), ErrorCode::Forbidden);
    }

    #[test]
    fn only_the_owner_removes_admins_and_nobody_removes_the_owner() {
        let remove_admin = GroupCommand::Remove(vec![user("ann")]);
        let owner = given(Some(Role::Owner), &[("ann", Role::Admin)]);
        assert!(decide(&owner, &remove_admin).is_ok());
        let admin = given(Some(Role::Admin), &[("ann", Role::Admin)]);
        assert_eq!(refused(&admin, remove_admin), ErrorCode::Forbidden);
        let admin = given(Some(Role::Admin), &[("olga", Role::Owner)]);
        assert_eq!(
            refused(&admin, GroupCommand::Remove(vec![user("olga")])),
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn roles_are_the_owners_to_give_and_ownership_is_not() {
        let promote = GroupCommand::SetRole {
            member: user("bob"),
            role: Role::Admin,
        };
        let owner = given(Some(Role::Owner), &[("bob", Role::Member)]);
        assert!(matches!(
            decide(&owner, &promote),
            Ok(Event::MemberRoleChanged(c)) if c.role == Role::Admin
        ));
        let admin = given(Some(Role::Admin), &[("bob", Role::Member)]);
        assert_eq!(refused(&admin, promote.clone()), ErrorCode::Forbidden);
        let give_away = GroupCommand::SetRole {
            member: user("bob"),
            role: Role::Owner,
        };
        assert_eq!(refused(&owner, give_away), ErrorCode::InvalidRequest);
        let stranger = given(Some(Role::Owner), &[]);
        assert_eq!(refused(&stranger, promote), ErrorCode::NotFound);
    }

    #[test]
    fn admins_mute_members_the_owner_mutes_admins_nobody_mutes_the_owner() {
        let mute = |who: &str| GroupCommand::Mute {
            member: user(who),
            until: Some(99),
        };
        let admin = given(
            Some(Role::Admin),
            &[("bob", Role::Member), ("ann", Role::Admin)],
        );
        assert!(decide(&admin, &mute("bob")).is_ok());
        assert_eq!(refused(&admin, mute("ann")), ErrorCode::Forbidden);
        let owner = given(Some(Role::Owner), &[("ann", Role::Admin)]);
        assert!(decide(&owner, &mute("ann")).is_ok());
        let admin = given(Some(Role::Admin), &[("olga", Role::Owner)]);
        assert_eq!(refused(&admin, mute("olga")), ErrorCode::Forbidden);
        let before_1970 = GroupCommand::Mute {
            member: user("bob"),
            until: Some(-1),
        };
        assert_eq!(refused(&owner, before_1970), ErrorCode::InvalidRequest);
    }

    #[test]
    fn own_nickname_for_anyone_others_for_staff() {
        let mine = GroupCommand::Nickname {
            member: user("me"),
            nickname: Some("Me".into()),
        };
        let theirs = GroupCommand::Nickname {
            member: user("bob"),
            nickname: None,
        };
        let member = given(
            Some(Role::Member),
            &[("me", Role::Member), ("bob", Role::Member)],
        );
        assert!(decide(&member, &mine).is_ok());
        assert_eq!(refused(&member, theirs.clone()), ErrorCode::Forbidden);
        let admin = given(Some(Role::Admin), &[("bob", Role::Member)]);
        assert!(decide(&admin, &theirs).is_ok());
        let admin = given(Some(Role::Admin), &[]);
        assert_eq!(refused(&admin, theirs), ErrorCode::NotFound);
        let long = GroupCommand::Nickname {
            member: user("me"),
            nickname: Some("x".repeat(65)),
        };
        assert_eq!(refused(&member, long), ErrorCode::InvalidRequest);
    }

    #[test]
    fn profile_by_staff_dismissal_by_the_owner() {
        let profile = GroupCommand::Profile {
            title: Some("T".into()),
            avatar: None,
        };
        let admin = given(Some(Role::Admin), &[]);
        assert!(decide(&admin, &profile).is_ok());
        assert_eq!(refused(&admin, GroupCommand::Dismiss), ErrorCode::Forbidden);
        let owner = given(Some(Role::Owner), &[]);
        assert!(matches!(
            decide(&owner, &GroupCommand::Dismiss),
            Ok(Event::GroupDismissed(_))
        ));
        let empty = GroupCommand::Profile {
            title: None,
            avatar: None,
        };
        assert_eq!(refused(&owner, empty), ErrorCode::InvalidRequest);
        let member = given(Some(Role::Member), &[]);
        assert_eq!(refused(&member, profile), ErrorCode::Forbidden);
    }

    #[test]
    fn a_direct_conversation_is_fixed_and_hidden_from_strangers() {
        let mut state = given(Some(Role::Owner), &[("bob", Role::Member)]);
        state.direct = true;
        let add = GroupCommand::Add(vec![user("carol")]);
        assert_eq!(refused(&state, add.clone()), ErrorCode::Forbidden);
        state.my_role = None;
        assert_eq!(refused(&state, add.clone()), ErrorCode::NotFound);
        // A stranger to a group learns it exists, not more.
        let stranger = given(None, &[]);
        assert_eq!(refused(&stranger, add.clone()), ErrorCode::Forbidden);
        let mut gone = given(Some(Role::Owner), &[]);
        gone.live = false;
        assert_eq!(refused(&gone, add), ErrorCode::NotFound);
    }

    #[test]
    fn commands_out_of_bounds_are_refused_before_any_state() {
        let none = GroupCommand::Add(vec![]);
        assert!(none.check().is_err());
        let many = GroupCommand::Remove((0..1001).map(|i| user(&format!("u{i}"))).collect());
        assert!(many.check().is_err());
        let long = GroupCommand::Profile {
            title: Some("t".repeat(201)),
            avatar: None,
        };
        assert!(long.check().is_err());
        assert_eq!(GroupCommand::Dismiss.targets(), &[] as &[UserId]);
        assert_eq!(GroupCommand::Add(vec![user("a")]).kind(), "members");
    }
}
