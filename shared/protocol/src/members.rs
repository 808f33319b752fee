//! Member lists as the protocol carries them: members, versions, changes and batch results.

use serde::{Deserialize, Serialize};

use anchorage_schema::GroupId;
use anchorage_schema::UserId;
use anchorage_schema::event::Role;

use crate::error::ErrorCode;

/// One group's entry in `members_sync_batch`: the client's copy, as in `members_sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSync {
    /// The group.
    pub group: GroupId,
    /// The epoch of the client's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The version of the client's copy (0: none).
    #[serde(default)]
    pub version: u64,
    /// The digest of the client's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `members_sync` only (refused in a batch): answer a diff in its positional form,
    /// `MembersDelta`. Ask it only of an edge whose `welcome` says `compact`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compact: bool,
}

/// A member as member lists carry it: the role is left out for plain members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemberInfo {
    /// The member.
    pub user: UserId,
    /// Owner, admin or (left out) member.
    #[serde(default = "plain_member", skip_serializing_if = "is_plain_member")]
    pub role: Role,
    /// The member's nickname in the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Muted until this Unix millisecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
}

fn plain_member() -> Role {
    Role::Member
}

fn is_plain_member(role: &Role) -> bool {
    *role == Role::Member
}

impl MemberInfo {
    /// A member from its stored fields; `None` if the id is not a valid user id.
    pub fn from_stored(
        user: &str,
        role: Role,
        nickname: Option<String>,
        muted_until: Option<i64>,
    ) -> Option<MemberInfo> {
        Some(MemberInfo {
            user: UserId::parse(user).ok()?,
            role,
            nickname,
            muted_until,
        })
    }

    /// A plain member: no role, nickname or mute (what a bare id in a page or a positional
    /// diff stands for).
    pub fn plain(user: UserId) -> MemberInfo {
        MemberInfo {
            user,
            role: Role::Member,
            nickname: None,
            muted_until: None,
        }
    }

    /// A plain member with nothing set is sent as its bare id in snapshot pages.
    pub fn is_plain(&self) -> bool {
        self.role == Role::Member && self.nickname.is_none() && self.muted_until.is_none()
    }
}

/// A group and its version, as `group_versions` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GroupVersion {
    /// The group.
    pub group: GroupId,
    /// Its member list's version (MEMBERSHIP stream sequence of its last change).
    pub version: u64,
    /// How many members it has.
    pub members: u64,
}

/// What changed in one membership event, as notifications carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembersChange {
    /// Members who joined or whose row changed, as they are now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserts: Vec<MemberInfo>,
    /// Members who left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<UserId>,
    /// The group's new title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The group's new avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// The group was dismissed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dismissed: bool,
}

/// One group's answer in `members_batch` (fields as in `members_diff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
#[allow(missing_docs)] // the fields are those of the single-group answers
pub enum GroupSyncResult {
    /// The client's copy is current.
    Unchanged { group: GroupId },
    /// Apply these changes; continue from `version` while `more`.
    Diff {
        group: GroupId,
        epoch: String,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        upserts: Vec<MemberInfo>,
        removed: Vec<UserId>,
        more: bool,
    },
    /// The copy cannot be diffed (another epoch, past the horizon, too many changes, or a
    /// digest mismatch): realign with `members_sync` when the group is needed.
    Realign { group: GroupId },
    /// The group cannot be synced by this caller.
    Error {
        group: GroupId,
        code: ErrorCode,
        message: String,
    },
}
