//! Users, their device tokens and sessions, and their conversations.

use anchorage_schema::admin::Scope;
use anchorage_schema::event::{SessionRevoked, UserCreated, UserDeleted, UserUpdated};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{ClientMsgId, DeviceId, Envelope, Event, Seq, UserId, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::keys::Key;
use super::problem::{Body, Page, Params, Problem};
use super::{
    API_DEVICE, EVENT_PREFIX, Written, applied, backend, event_id, idempotency_key, page_limit,
    repeat_of,
};
use crate::EdgeState;
use crate::progress::Projection;
use crate::requests::{PROJECTION_WAIT, RequestError};

/// Longest display name, in bytes.
const MAX_DISPLAY_NAME: usize = 200;
/// Longest device token lifetime the API mints: 30 days.
const MAX_TOKEN_TTL: u64 = 30 * 24 * 3600;

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// The user's id: 1 to 64 of `A-Z a-z 0-9 _ -`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub user: String,
    /// The name shown for them (at most 200 bytes).
    #[schema(max_length = 200)]
    pub display_name: String,
}

/// A user's new profile.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// The name shown for them (at most 200 bytes).
    #[schema(max_length = 200)]
    pub display_name: String,
}

/// A user.
#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    /// The user's id.
    pub user: String,
    /// The name shown for them.
    pub display_name: String,
    /// The USERS stream sequence of the user's last change.
    pub version: u64,
}

/// A device token to mint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// The device: 1 to 64 of `A-Z a-z 0-9 _ -` (`api` is reserved).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub device: String,
    /// Lifetime in seconds (default `auth.token_ttl_secs`, at most 30 days).
    #[serde(default, deserialize_with = "super::whole")]
    #[schema(minimum = 1, maximum = 2592000)]
    pub ttl_secs: Option<i64>,
}

/// A device token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    /// The JWT the device signs in with (`hello.token`).
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A device of a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The device.
    pub device: String,
    /// Whether its session was revoked.
    pub revoked: bool,
}

/// A user's devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sessions {
    /// Devices that received messages or were revoked, sorted.
    pub sessions: Vec<Session>,
}

/// A conversation of a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationSummary {
    /// The conversation.
    pub conv: String,
    /// Its last message's seq.
    pub last_seq: u64,
    /// The user's read marker.
    pub read_seq: u64,
    /// Messages after the read marker (counted up to 1000).
    pub unread: u64,
}

/// A page of a user's conversations.
#[derive(Debug, Serialize, ToSchema)]
pub struct Conversations {
    /// In id order.
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Paging by id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AfterPage {
    /// Start after this id.
    #[param(pattern = "^[A-Za-z0-9_-]{0,64}$")]
    pub after: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The `after` of a page: empty, or an id.
pub(super) fn after_id(after: Option<String>) -> Result<String, Problem> {
    match after {
        Some(a) if !a.is_empty() => Ok(user_id(a)?.into()),
        _ => Ok(String::new()),
    }
}

pub(super) fn user_id(s: String) -> Result<UserId, Problem> {
    UserId::parse(s).map_err(|e| Problem::invalid(e.to_string()))
}

fn display_name(name: &str) -> Result<(), Problem> {
    if name.len() > MAX_DISPLAY_NAME {
        return Err(Problem::invalid("a display name has at most 200 bytes"));
    }
    Ok(())
}

/// The user as projected once the projection holds the user's last event.
async fn settled_user(
    state: &EdgeState,
    user: &UserId,
) -> Result<(Seq, Option<(String, bool, u64)>), RequestError> {
    let version = state
        .bus
        .last_subject_seq(stream::USERS, &subjects::user(user))
        .await?;
    if !state
        .progress
        .reached(Projection::Users, version.0, PROJECTION_WAIT)
        .await?
    {
        return Err(RequestError::Overloaded(format!(
            "the users are catching up; retry {user} in a moment"
        )));
    }
    Ok((version, state.store.user_row(user.as_str()).await?))
}

/// Publishes a user event decided on `version`; a repeat of an idempotency key answers what
/// its first use stored.
/// The id of a user event sent under idempotency key `k`, whatever its kind: one key is one
/// request.
fn keyed_id(user: &UserId, k: &ClientMsgId) -> String {
    format!("{EVENT_PREFIX}:user:{user}:key:{k}")
}

/// With an idempotency key whose event is the user's last: that event's seq (a repeat).
async fn repeated(
    state: &EdgeState,
    headers: &HeaderMap,
    user: &UserId,
    event: &Event,
) -> Result<Option<u64>, Problem> {
    match idempotency_key(headers, None)? {
        Some(k) => {
            let id = keyed_id(user, &k);
            repeat_of(state, stream::USERS, &subjects::user(user), &id, event).await
        }
        None => Ok(None),
    }
}

async fn publish_user(
    state: &EdgeState,
    headers: &HeaderMap,
    kind: &str,
    user: &UserId,
    version: Seq,
    event: Event,
) -> Result<Written, Problem> {
    let idem = idempotency_key(headers, None)?;
    let id = match &idem {
        Some(k) => keyed_id(user, k),
        // Without a key each request is its own: two changes decided on the same version must
        // not share an id (the second would be dropped as a repeat); the version check
        // refuses the second as a conflict.
        None => format!(
            "{EVENT_PREFIX}:{kind}:{user}:{}:{:016x}",
            version.0,
            anchorage_schema::backoff::random()
        ),
    };
    let env = Envelope::new(event_id(id)?, now_ms(), backend(), event);
    let caller = super::caller(state);
    match state
        .bus
        .publish_event(&subjects::user(user), &env, Some(version))
        .await
    {
        Ok(p) => {
            if p.duplicate && idem.is_some() {
                caller.same_request(stream::USERS, p.seq, &env).await?;
            }
            applied(state, Projection::Users, p.seq.0).await;
            Ok(Written {
                seq: p.seq.0,
                duplicate: p.duplicate,
            })
        }
        Err(anchorage_bus::PublishError::Conflict { .. }) => Err(RequestError::Conflict(format!(
            "{user} changed meanwhile; read it again and retry"
        ))
        .into()),
        Err(e) => Err(RequestError::from(e).into()),
    }
}

/// Create a user.
#[utoipa::path(post, operation_id = "user_create", path = "/v1/users", tag = "users", request_body = CreateUser,
    params(super::IdempotencyHeader),
    responses((status = 201, description = "Created (or the same creation again)", body = Written)),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<EdgeState>,
    key: Key,
    headers: HeaderMap,
    Body(r): Body<CreateUser>,
) -> Result<(StatusCode, Json<Written>), Problem> {
    key.require(Scope::Write)?;
    idempotency_key(&headers, None)?;
    let user = user_id(r.user)?;
    display_name(&r.display_name)?;
    let (version, row) = settled_user(&state, &user).await?;
    match row {
        Some((_, true, _)) => Err(RequestError::Conflict(format!(
            "{user} was deleted; a user id is never reused"
        ))
        .into()),
        Some((name, false, at)) if name == r.display_name => Ok((
            StatusCode::CREATED,
            Json(Written {
                seq: at,
                duplicate: true,
            }),
        )),
        Some(_) => Err(RequestError::Conflict(format!("{user} exists")).into()),
        None => {
            let event = UserCreated {
                user: user.clone(),
                display_name: r.display_name,
            };
            let w = publish_user(&state, &headers, "create", &user, version, event.into()).await?;
            Ok((StatusCode::CREATED, Json(w)))
        }
    }
}

/// Get a user.
#[utoipa::path(get, operation_id = "user_get", path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "The user", body = User)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
) -> Result<Json<User>, Problem> {
    key.require(Scope::Read)?;
    let user = user_id(user)?;
    match state
        .store
        .user_row(user.as_str())
        .await
        .map_err(RequestError::from)?
    {
        Some((display_name, false, version)) => Ok(Json(User {
            user: user.to_string(),
            display_name,
            version,
        })),
        _ => Err(RequestError::NotFound(format!("no user {user}")).into()),
    }
}

/// An existing, undeleted user's version, or `not_found`.
async fn existing(state: &EdgeState, user: &UserId) -> Result<Seq, Problem> {
    match settled_user(state, user).await? {
        (version, Some((_, false, _))) => Ok(version),
        _ => Err(RequestError::NotFound(format!("no user {user}")).into()),
    }
}

/// Change a user's profile.
#[utoipa::path(patch, operation_id = "user_update", path = "/v1/users/{user}", tag = "users", request_body = UpdateUser,
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Changed", body = Written)),
    security(("api_key" = [])))]
pub async fn update(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
    headers: HeaderMap,
    Body(r): Body<UpdateUser>,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Write)?;
    let user = user_id(user)?;
    display_name(&r.display_name)?;
    let event: Event = UserUpdated {
        user: user.clone(),
        display_name: r.display_name,
    }
    .into();
    if let Some(seq) = repeated(&state, &headers, &user, &event).await? {
        return Ok(Json(Written {
            seq,
            duplicate: true,
        }));
    }
    let version = existing(&state, &user).await?;
    let w = publish_user(&state, &headers, "update", &user, version, event).await?;
    Ok(Json(w))
}

/// Delete a user: every session ends and every membership with it; the id is never reused.
#[utoipa::path(delete, operation_id = "user_delete", path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Deleted", body = Written)),
    security(("api_key" = [])))]
pub async fn delete(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
    headers: HeaderMap,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Admin)?;
    let user = user_id(user)?;
    let event: Event = UserDeleted { user: user.clone() }.into();
    let written = match repeated(&state, &headers, &user, &event).await? {
        Some(seq) => Written {
            seq,
            duplicate: true,
        },
        None => match settled_user(&state, &user).await? {
            (version, Some((_, false, _))) => {
                publish_user(&state, &headers, "delete", &user, version, event).await?
            }
            (version, Some((_, true, _))) => {
                // Deleted before: finish what a crash or a race may have left, then say so.
                let deletion = state
                    .bus
                    .stored_event(stream::USERS, version)
                    .await
                    .map_err(RequestError::from)?;
                if matches!(deletion.event, Event::UserDeleted(_)) {
                    super::groups::end_memberships(&state, &deletion, &user).await?;
                }
                return Err(RequestError::NotFound(format!("{user} was deleted")).into());
            }
            (_, None) => return Err(RequestError::NotFound(format!("no user {user}")).into()),
        },
    };
    // The deleted user leaves every group and 1:1 conversation (a repeat finishes what a
    // crash in between left undone).
    let deletion = state
        .bus
        .stored_event(stream::USERS, Seq(written.seq))
        .await
        .map_err(RequestError::from)?;
    super::groups::end_memberships(&state, &deletion, &user).await?;
    Ok(Json(written))
}

/// Mint a device token for a user (the app has signed its user in and asks for a token).
#[utoipa::path(post, operation_id = "user_mint_token", path = "/v1/users/{user}/tokens", tag = "users", request_body = MintToken,
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 201, description = "The token", body = Token)),
    security(("api_key" = [])))]
pub async fn mint(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
    Body(r): Body<MintToken>,
) -> Result<(StatusCode, Json<Token>), Problem> {
    key.require(Scope::Write)?;
    let user = user_id(user)?;
    let device = DeviceId::parse(r.device).map_err(|e| Problem::invalid(e.to_string()))?;
    if device.as_str() == API_DEVICE {
        return Err(RequestError::Forbidden(
            "device `api` is reserved for messages posted through the server API".into(),
        )
        .into());
    }
    let ttl = match r.ttl_secs {
        Some(t) => u64::try_from(t).unwrap_or(0),
        None => state.auth.token_ttl_secs,
    };
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(Problem::invalid("ttl_secs is between 1 and 2592000"));
    }
    if !state.auth.accept_hmac {
        return Err(RequestError::Forbidden(
            "this server accepts only tokens of its own issuer (auth.accept_hmac = false)".into(),
        )
        .into());
    }
    existing(&state, &user).await?;
    let token = crate::auth::mint_configured(&state.auth, user, device, ttl)
        .map_err(|e| Problem::from(RequestError::internal(e)))?;
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_add(ttl);
    Ok((StatusCode::CREATED, Json(Token { token, expires_at })))
}

/// List a user's sessions (devices).
#[utoipa::path(get, operation_id = "user_list_sessions", path = "/v1/users/{user}/sessions", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "The devices", body = Sessions)),
    security(("api_key" = [])))]
pub async fn sessions(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
) -> Result<Json<Sessions>, Problem> {
    key.require(Scope::Read)?;
    let user = user_id(user)?;
    super::not_deleted(&state, std::slice::from_ref(&user)).await?;
    let devices = state
        .store
        .devices_of(user.as_str())
        .await
        .map_err(RequestError::from)?;
    Ok(Json(Sessions {
        sessions: devices
            .into_iter()
            .map(|(device, revoked)| Session { device, revoked })
            .collect(),
    }))
}

/// End a device's session: its sockets close and its tokens are refused on every edge.
#[utoipa::path(delete, operation_id = "user_revoke_session", path = "/v1/users/{user}/sessions/{device}", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("device" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Revoked", body = Written)),
    security(("api_key" = [])))]
pub async fn revoke(
    State(state): State<EdgeState>,
    key: Key,
    Params((user, device)): Params<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Admin)?;
    let user = user_id(user)?;
    let device = DeviceId::parse(device).map_err(|e| Problem::invalid(e.to_string()))?;
    // A deleted user has no sessions left to end (and their deletion stays their last event).
    super::not_deleted(&state, std::slice::from_ref(&user)).await?;
    let id = match idempotency_key(&headers, None)? {
        Some(k) => keyed_id(&user, &k),
        None => format!("{EVENT_PREFIX}:revoke:{user}:{device}:{}", now_ms()),
    };
    let env = Envelope::new(
        event_id(id)?,
        now_ms(),
        backend(),
        SessionRevoked {
            user: user.clone(),
            device,
        },
    );
    let p = state
        .bus
        .publish_event(&subjects::user(&user), &env, None)
        .await
        .map_err(RequestError::from)?;
    if p.duplicate {
        super::caller(&state)
            .same_request(stream::USERS, p.seq, &env)
            .await?;
    }
    // Answer once the projection refuses the device, so a reconnect after this is refused.
    applied(&state, Projection::Users, p.seq.0).await;
    Ok(Json(Written {
        seq: p.seq.0,
        duplicate: p.duplicate,
    }))
}

/// A user's conversations with unread counts.
#[utoipa::path(get, operation_id = "user_list_conversations", path = "/v1/users/{user}/conversations", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), AfterPage),
    responses((status = 200, description = "A page of conversations", body = Conversations)),
    security(("api_key" = [])))]
pub async fn conversations(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
    Page(page): Page<AfterPage>,
) -> Result<Json<Conversations>, Problem> {
    key.require(Scope::Read)?;
    let user = user_id(user)?;
    super::not_deleted(&state, std::slice::from_ref(&user)).await?;
    let limit = page_limit(page.limit, 100, 1000)?;
    let after = after_id(page.after)?;
    let store = &state.store;
    let rows = store
        .conversation_states(user.as_str(), "", &after, limit + 1)
        .await
        .map_err(RequestError::from)?;
    let more = rows.len() > limit as usize;
    let mut conversations = Vec::with_capacity(rows.len().min(limit as usize));
    for s in rows.into_iter().take(limit as usize) {
        let unread = store
            .count_after(&s.conv, s.read_seq, 1000)
            .await
            .map_err(RequestError::from)?;
        conversations.push(ConversationSummary {
            conv: s.conv,
            last_seq: s.last_seq,
            read_seq: s.read_seq,
            unread,
        });
    }
    let next = more
        .then(|| conversations.last().map(|c| c.conv.clone()))
        .flatten();
    Ok(Json(Conversations {
        conversations,
        next,
    }))
}
