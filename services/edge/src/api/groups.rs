//! Groups and their members, decided by the same rules as the WebSocket commands, with the
//! owner's rights.

use anchorage_protocol::request::CreateGroup as CreateGroupRequest;
use anchorage_schema::admin::Scope;
use anchorage_schema::event::Role;
use anchorage_schema::{GroupId, UserId};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys::Key;
use super::problem::{Body, Page, Params, Problem};
use super::users::{AfterPage, after_id, user_id};
use super::{Id, Written, applied, caller, idempotency_key, page_limit, some_string, whole};
use crate::EdgeState;
use crate::progress::Projection;
use crate::requests::{GroupCommand, RequestError};
use anchorage_schema::subjects::stream;

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// The group's id: 1 to 64 of `A-Z a-z 0-9 _ -` (not starting with `dm-`).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub group: String,
    /// Its title (at most 200 bytes).
    #[schema(max_length = 200)]
    pub title: String,
    /// Its owner.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub owner: String,
    /// Members besides the owner (at most 1000).
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub members: Vec<Id>,
}

/// A group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// The group's id (also its conversation's).
    pub group: String,
    /// Its owner.
    pub owner: String,
    /// Its title.
    pub title: String,
    /// Its avatar reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// A 1:1 conversation.
    pub direct: bool,
    /// Present members.
    pub member_count: u64,
    /// The MEMBERSHIP stream sequence of its last change.
    pub version: u64,
}

/// A group's new profile: a title, an avatar or both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// A new title (at most 200 bytes).
    #[serde(default, deserialize_with = "some_string")]
    #[schema(max_length = 200, nullable = false)]
    pub title: Option<String>,
    /// A new avatar reference (at most 1024 bytes).
    #[serde(default, deserialize_with = "some_string")]
    #[schema(max_length = 1024, nullable = false)]
    pub avatar: Option<String>,
}

/// Members to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// 1 to 1000 users.
    #[schema(min_items = 1, max_items = 1000)]
    pub members: Vec<Id>,
}

/// A member's new role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// `admin` or `member` (ownership is never given away).
    #[schema(pattern = "^(admin|member)$")]
    pub role: String,
}

/// A member's mute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mute {
    /// Muted until this time (Unix milliseconds, 0 or more); absent or null unmutes.
    #[serde(default, deserialize_with = "whole")]
    #[schema(minimum = 0)]
    pub until: Option<i64>,
}

/// A member.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// The user.
    pub user: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// Their nickname in the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Muted until (Unix milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
}

/// A page of members.
#[derive(Debug, Serialize, ToSchema)]
pub struct Members {
    /// In id order.
    pub members: Vec<Member>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn group_id(s: String) -> Result<GroupId, Problem> {
    GroupId::parse(s).map_err(|e| Problem::invalid(e.to_string()))
}

fn users(ids: Vec<Id>) -> Result<Vec<UserId>, Problem> {
    ids.into_iter().map(|id| user_id(id.0)).collect()
}

async fn command(
    state: &EdgeState,
    key: &Key,
    headers: &HeaderMap,
    group: String,
    command: GroupCommand,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Write)?;
    let idem = idempotency_key(headers, None)?;
    let group = group_id(group)?;
    let added = match &command {
        GroupCommand::Add(members) => members.clone(),
        _ => Vec::new(),
    };
    super::not_deleted(state, &added).await?;
    let (done, duplicate) = caller(state)
        .group_command(group.clone(), command, idem.as_ref())
        .await?;
    undo_for_deleted(state, &group, &added).await?;
    applied(state, Projection::Membership, done.seq.unwrap_or(0)).await;
    Ok(Json(Written {
        seq: done.seq.unwrap_or(0),
        duplicate,
    }))
}

/// Publishes deleted `user`'s departure from `group`, decided on the group's version now;
/// its seq.
async fn depart(
    state: &EdgeState,
    deletion: &anchorage_schema::Envelope,
    group: &GroupId,
    user: &UserId,
) -> Result<u64, Problem> {
    let subject = anchorage_schema::subjects::membership(group);
    let at = state
        .bus
        .last_subject_seq(stream::MEMBERSHIP, &subject)
        .await
        .map_err(RequestError::from)?;
    let env = deletion
        .departure(group, user, at)
        .map_err(|e| Problem::from(RequestError::internal(e)))?;
    let p = state
        .bus
        .publish_event(&subject, &env, None)
        .await
        .map_err(RequestError::from)?;
    Ok(p.seq.0)
}

/// After `users` joined `group`: any of them deleted meanwhile (a deletion racing the join,
/// whose own clean-up may have looked before the join was stored) leaves again, by the same
/// removal the deletion makes.
async fn undo_for_deleted(
    state: &EdgeState,
    group: &GroupId,
    users: &[UserId],
) -> Result<(), Problem> {
    if users.is_empty() {
        return Ok(());
    }
    super::settled(state, Projection::Users, stream::USERS).await?;
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let mut tx = state.store.begin_read().await.map_err(RequestError::from)?;
    let deleted = tx.deleted_among(&ids).await.map_err(RequestError::from)?;
    tx.commit().await.map_err(RequestError::from)?;
    for user in deleted {
        let user = user_id(user)?;
        let Some((_, bytes)) = state
            .bus
            .last_subject_payload(stream::USERS, &anchorage_schema::subjects::user(&user))
            .await
            .map_err(RequestError::from)?
        else {
            continue;
        };
        let Ok(deletion) = anchorage_schema::Envelope::from_json(&bytes) else {
            continue;
        };
        depart(state, &deletion, group, &user).await?;
    }
    Ok(())
}

/// Removes deleted `user` from every group and 1:1 conversation they are still in, one
/// removal per group named after `deletion` (so doing it again stores nothing twice).
pub(super) async fn end_memberships(
    state: &EdgeState,
    deletion: &anchorage_schema::Envelope,
    user: &UserId,
) -> Result<(), Problem> {
    // Every membership stored so far, also one an add racing the deletion just stored.
    super::settled(state, Projection::Membership, stream::MEMBERSHIP).await?;
    let groups = state
        .store
        .conversations_of(user.as_str())
        .await
        .map_err(RequestError::from)?;
    for (group, _) in groups {
        let Ok(group) = GroupId::parse(group) else {
            continue;
        };
        let seq = depart(state, deletion, &group, user).await?;
        applied(state, Projection::Membership, seq).await;
    }
    Ok(())
}

/// Create a group.
#[utoipa::path(post, operation_id = "group_create", path = "/v1/groups", tag = "groups", request_body = CreateGroup,
    params(super::IdempotencyHeader),
    responses((status = 201, description = "Created (or the very same creation again)", body = Written)),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<EdgeState>,
    key: Key,
    headers: HeaderMap,
    Body(r): Body<CreateGroup>,
) -> Result<(StatusCode, Json<Written>), Problem> {
    key.require(Scope::Write)?;
    let idem = idempotency_key(&headers, None)?;
    let owner = user_id(r.owner)?;
    let request = CreateGroupRequest {
        group: group_id(r.group)?,
        title: r.title,
        members: users(r.members)?,
    };
    let mut everyone = request.members.clone();
    everyone.push(owner.clone());
    super::not_deleted(&state, &everyone).await?;
    let group = request.group.clone();
    let (done, duplicate) = caller(&state)
        .create_group(request, owner, idem.as_ref())
        .await?;
    undo_for_deleted(&state, &group, &everyone).await?;
    applied(&state, Projection::Membership, done.seq.unwrap_or(0)).await;
    Ok((
        StatusCode::CREATED,
        Json(Written {
            seq: done.seq.unwrap_or(0),
            duplicate,
        }),
    ))
}

/// Get a group.
#[utoipa::path(get, operation_id = "group_get", path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "The group", body = Group)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<EdgeState>,
    key: Key,
    Params(group): Params<String>,
) -> Result<Json<Group>, Problem> {
    key.require(Scope::Read)?;
    let group = group_id(group)?;
    match state
        .store
        .group_row(group.as_str())
        .await
        .map_err(RequestError::from)?
    {
        Some(g) if !g.dismissed => Ok(Json(Group {
            group: g.group,
            owner: g.owner,
            title: g.title,
            avatar: g.avatar,
            direct: g.direct,
            member_count: g.member_count,
            version: g.version,
        })),
        _ => Err(RequestError::NotFound(format!("group {group} does not exist")).into()),
    }
}

/// Change a group's title or avatar.
#[utoipa::path(patch, operation_id = "group_update", path = "/v1/groups/{group}", tag = "groups", request_body = UpdateGroup,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Changed", body = Written)),
    security(("api_key" = [])))]
pub async fn update(
    State(state): State<EdgeState>,
    key: Key,
    Params(group): Params<String>,
    headers: HeaderMap,
    Body(r): Body<UpdateGroup>,
) -> Result<Json<Written>, Problem> {
    let profile = GroupCommand::Profile {
        title: r.title,
        avatar: r.avatar,
    };
    command(&state, &key, &headers, group, profile).await
}

/// Dismiss a group.
#[utoipa::path(delete, operation_id = "group_dismiss", path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Dismissed", body = Written)),
    security(("api_key" = [])))]
pub async fn dismiss(
    State(state): State<EdgeState>,
    key: Key,
    Params(group): Params<String>,
    headers: HeaderMap,
) -> Result<Json<Written>, Problem> {
    command(&state, &key, &headers, group, GroupCommand::Dismiss).await
}

/// Add members.
#[utoipa::path(post, operation_id = "group_add_members", path = "/v1/groups/{group}/members", tag = "groups", request_body = AddMembers,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Added", body = Written)),
    security(("api_key" = [])))]
pub async fn add(
    State(state): State<EdgeState>,
    key: Key,
    Params(group): Params<String>,
    headers: HeaderMap,
    Body(r): Body<AddMembers>,
) -> Result<Json<Written>, Problem> {
    let members = users(r.members)?;
    command(&state, &key, &headers, group, GroupCommand::Add(members)).await
}

/// Remove a member.
#[utoipa::path(delete, operation_id = "group_remove_member", path = "/v1/groups/{group}/members/{user}", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Removed", body = Written)),
    security(("api_key" = [])))]
pub async fn remove(
    State(state): State<EdgeState>,
    key: Key,
    Params((group, user)): Params<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Written>, Problem> {
    let user = user_id(user)?;
    command(
        &state,
        &key,
        &headers,
        group,
        GroupCommand::Remove(vec![user]),
    )
    .await
}

/// Set a member's role.
#[utoipa::path(put, operation_id = "group_set_role", path = "/v1/groups/{group}/members/{user}/role", tag = "groups", request_body = SetRole,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Changed", body = Written)),
    security(("api_key" = [])))]
pub async fn role(
    State(state): State<EdgeState>,
    key: Key,
    Params((group, user)): Params<(String, String)>,
    headers: HeaderMap,
    Body(r): Body<SetRole>,
) -> Result<Json<Written>, Problem> {
    let member = user_id(user)?;
    let role = match Role::parse(&r.role) {
        Some(role @ (Role::Admin | Role::Member)) => role,
        _ => return Err(Problem::invalid("role is admin or member")),
    };
    command(
        &state,
        &key,
        &headers,
        group,
        GroupCommand::SetRole { member, role },
    )
    .await
}

/// Mute or unmute a member.
#[utoipa::path(put, operation_id = "group_mute_member", path = "/v1/groups/{group}/members/{user}/mute", tag = "groups", request_body = Mute,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Changed", body = Written)),
    security(("api_key" = [])))]
pub async fn mute(
    State(state): State<EdgeState>,
    key: Key,
    Params((group, user)): Params<(String, String)>,
    headers: HeaderMap,
    Body(r): Body<Mute>,
) -> Result<Json<Written>, Problem> {
    let member = user_id(user)?;
    let mute = GroupCommand::Mute {
        member,
        until: r.until,
    };
    command(&state, &key, &headers, group, mute).await
}

/// List members, paged by id.
#[utoipa::path(get, operation_id = "group_list_members", path = "/v1/groups/{group}/members", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), AfterPage),
    responses((status = 200, description = "A page of members", body = Members)),
    security(("api_key" = [])))]
pub async fn members(
    State(state): State<EdgeState>,
    key: Key,
    Params(group): Params<String>,
    Page(page): Page<AfterPage>,
) -> Result<Json<Members>, Problem> {
    key.require(Scope::Read)?;
    let group = group_id(group)?;
    let limit = page_limit(page.limit, 100, 1000)?;
    let after = after_id(page.after)?;
    let mut tx = state.store.begin_read().await.map_err(RequestError::from)?;
    let row = tx.group(group.as_str()).await.map_err(RequestError::from)?;
    if row.is_none_or(|g| g.dismissed) {
        return Err(RequestError::NotFound(format!("group {group} does not exist")).into());
    }
    let rows = tx
        .snapshot_page(group.as_str(), u64::MAX >> 1, &after, None, limit + 1)
        .await
        .map_err(RequestError::from)?;
    tx.commit().await.map_err(RequestError::from)?;
    let more = rows.len() > limit as usize;
    let members: Vec<Member> = rows
        .into_iter()
        .take(limit as usize)
        .map(|m| Member {
            user: m.user,
            role: m.role.as_str().to_owned(),
            nickname: m.nickname,
            muted_until: m.muted_until,
        })
        .collect();
    let next = more
        .then(|| members.last().map(|m| m.user.clone()))
        .flatten();
    Ok(Json(Members { members, next }))
}
