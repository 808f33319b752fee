//! The server API: HTTP and JSON under `/v1`, for an app's own backend (not for end users).
//!
//! Every write goes through the event path the WebSocket and ingest paths use — the event is
//! decided on the stream's versions and published, never written into SQL — and answers with
//! its stream sequence (`seq`). Writes take an `Idempotency-Key` header (messages also a
//! `client_msg_id`): a repeat is stored once and answered with the first `seq`; the same key
//! on another request is a `conflict`. The backend keeps the rules a device keeps (members,
//! mutes, deleted users) and decides group commands with the owner's rights. Callers authenticate with API keys
//! (`Authorization: Bearer ak_…`, managed by `anchorage apikey`), each with a scope and a
//! rate. Errors are `application/problem+json` with the WebSocket protocol's stable codes.
//! The OpenAPI 3.1 document is generated from these handlers: `GET /v1/openapi.json`, or
//! `anchorage openapi`.

mod attachments;
mod groups;
mod keys;
mod messages;
mod problem;
mod push;
mod users;
mod webhooks;

use anchorage_schema::{Actor, ClientMsgId, EventId, SourceId};
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};

pub use keys::KeyLimits;
pub use problem::Problem;

use crate::EdgeState;
use crate::progress::Projection;
use crate::requests::{Caller, PROJECTION_WAIT, RequestError};

/// The device messages posted for a user through this API are stored with (device tokens for
/// it are refused, so no device of a user can be mistaken for it).
pub const API_DEVICE: &str = "api";
/// The source system messages posted through this API are stored with (`system:api`).
pub const API_SOURCE: &str = "api";
/// The first part of the ids of the events this API publishes. A user id holds no `.`, so no
/// event a user's device causes (`<user>:…`) can carry one of these ids.
pub const EVENT_PREFIX: &str = "api.backend";

/// What a write stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct Written {
    /// The stream sequence of the event (the version it made).
    pub seq: u64,
    /// The request was a repeat; `seq` is the first one's.
    pub duplicate: bool,
}

/// The idempotency key of a write.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read from the headers by `idempotency_key`; this names it in the document
pub struct IdempotencyHeader {
    /// A repeat of a write with the same key is applied once and answered like the first;
    /// 1 to 128 of `A-Z a-z 0-9 _ - . :`.
    #[param(rename = "Idempotency-Key", pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    idempotency_key: Option<String>,
}

/// The idempotency key of a write: the `Idempotency-Key` header, or the body's id; both
/// given must agree.
fn idempotency_key(
    headers: &HeaderMap,
    body: Option<&str>,
) -> Result<Option<ClientMsgId>, Problem> {
    let header = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::invalid("Idempotency-Key is not text"))?,
        ),
        None => None,
    };
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(RequestError::Conflict(
                "Idempotency-Key and client_msg_id name different keys; give one".into(),
            )
            .into());
        }
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => return Ok(None),
    };
    ClientMsgId::parse(key)
        .map(Some)
        .map_err(|e| Problem::invalid(format!("idempotency key: {e}")))
}

/// A page size: `default` when absent, refused outside `1..=max`.
fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, Problem> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(Problem::invalid(format!("limit is between 1 and {max}"))),
    }
}

/// Waits (up to [`PROJECTION_WAIT`]) until `projection` applied `seq`, so what a write
/// answered is what the next read shows; a projection further behind answers later reads
/// from where it is.
async fn applied(state: &EdgeState, projection: Projection, seq: u64) {
    let _ = state
        .progress
        .reached(projection, seq, PROJECTION_WAIT)
        .await;
}

/// An id in a list: 1 to 64 of `A-Z a-z 0-9 _ -`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
pub struct Id(pub String);

/// A field that may be absent but, when present, is a string (never `null`).
pub(crate) fn some_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Some)
}

/// A whole number that JSON may write as `5` or `5.0`; `null` is absent.
pub(crate) fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match <Option<serde_json::Number> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(n) => whole_number::<D::Error>(&n).map(Some),
    }
}

/// A field that may be absent but, when present, is a whole number (never `null`).
pub(crate) fn some_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = <serde_json::Number as serde::Deserialize>::deserialize(d)?;
    whole_number::<D::Error>(&n).map(Some)
}

fn whole_number<E: serde::de::Error>(n: &serde_json::Number) -> Result<i64, E> {
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
        .ok_or_else(|| E::custom(format!("{n} is not a whole number")))
}

/// The seq of the last event on `subject` of `stream` if it is event `id`: a repeat of a
/// write that was done (its answer lost), told apart after the state moved on — if that
/// event is `event`; the same id on another event is a `conflict`.
async fn repeat_of(
    state: &EdgeState,
    stream: &str,
    subject: &str,
    id: &str,
    event: &anchorage_schema::Event,
) -> Result<Option<u64>, Problem> {
    let last = state
        .bus
        .last_subject_payload(stream, subject)
        .await
        .map_err(RequestError::from)?;
    let Some((seq, env)) = last.and_then(|(seq, bytes)| {
        anchorage_schema::Envelope::from_json(&bytes)
            .ok()
            .filter(|env| env.id.as_str() == id)
            .map(|env| (seq, env))
    }) else {
        return Ok(None);
    };
    if &env.event != event {
        return Err(RequestError::Conflict(
            "the idempotency key was used for another request".into(),
        )
        .into());
    }
    Ok(Some(seq.0))
}

/// Waits until `projection` holds everything `stream` holds now; `overloaded` if it does not
/// get there in time.
async fn settled(state: &EdgeState, projection: Projection, stream: &str) -> Result<(), Problem> {
    let end = state
        .bus
        .stream_state(stream)
        .await
        .map_err(RequestError::from)?
        .last_seq;
    let reached = state
        .progress
        .reached(projection, end.0, PROJECTION_WAIT)
        .await
        .map_err(RequestError::from)?;
    if reached {
        Ok(())
    } else {
        Err(RequestError::Overloaded(format!("the {stream} projection is catching up")).into())
    }
}

/// Refuses users that were deleted, as of every deletion stored so far (a user known only
/// from its tokens is not refused).
async fn not_deleted(state: &EdgeState, users: &[anchorage_schema::UserId]) -> Result<(), Problem> {
    settled(
        state,
        Projection::Users,
        anchorage_schema::subjects::stream::USERS,
    )
    .await?;
    let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    let mut tx = state.store.begin_read().await.map_err(RequestError::from)?;
    let deleted = tx.deleted_among(&ids).await.map_err(RequestError::from)?;
    tx.commit().await.map_err(RequestError::from)?;
    match deleted.first() {
        Some(user) => Err(RequestError::NotFound(format!("{user} was deleted")).into()),
        None => Ok(()),
    }
}

fn conversation(s: String) -> Result<anchorage_schema::ConversationId, Problem> {
    anchorage_schema::ConversationId::parse(s).map_err(|e| Problem::invalid(e.to_string()))
}

/// `not_found` unless `group` exists and was not dismissed.
async fn live_group(state: &EdgeState, group: &anchorage_schema::GroupId) -> Result<(), Problem> {
    let live = state
        .store
        .group_row(group.as_str())
        .await
        .map_err(RequestError::from)?
        .is_some_and(|g| !g.dismissed);
    if live {
        Ok(())
    } else {
        Err(RequestError::NotFound(format!("{group} does not exist")).into())
    }
}

/// `user`'s row in `group` if they are a member now; `forbidden` otherwise.
async fn member_now(
    state: &EdgeState,
    group: &anchorage_schema::GroupId,
    user: &anchorage_schema::UserId,
) -> Result<anchorage_store::MemberRow, Problem> {
    let mut tx = state.store.begin_read().await.map_err(RequestError::from)?;
    let mut rows = tx
        .members_of(group.as_str(), &[user.as_str()])
        .await
        .map_err(RequestError::from)?;
    tx.commit().await.map_err(RequestError::from)?;
    rows.remove(user.as_str())
        .filter(|m| m.removed_seq.is_none())
        .ok_or_else(|| RequestError::Forbidden(format!("{user} is not a member of {group}")).into())
}

fn event_id(id: String) -> Result<EventId, Problem> {
    EventId::parse(id).map_err(|e| Problem::from(RequestError::internal(e)))
}

/// The actor of the events this API publishes.
fn backend() -> Actor {
    Actor::System {
        source: SourceId::parse(API_SOURCE).unwrap_or_else(|_| unreachable!("a valid id")),
    }
}

/// The app's backend as the caller of group commands (every key alike: an idempotency key
/// names a request whichever API key sends it).
fn caller(state: &EdgeState) -> Caller {
    Caller {
        state: state.clone(),
        user: None,
        actor: backend(),
        key: EVENT_PREFIX.to_owned(),
    }
}

/// The OpenAPI document of the server API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Anchorage server API",
        description = "For an app's own backend: users, device tokens, sessions, groups, members and messages. Every write is an event on the streams and answers with its sequence.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        users::create, users::get, users::update, users::delete, users::mint,
        users::sessions, users::revoke, users::conversations,
        groups::create, groups::get, groups::update, groups::dismiss, groups::add,
        groups::remove, groups::role, groups::mute, groups::members,
        messages::post, messages::history, messages::search,
        attachments::upload, attachments::download,
        push::set, push::remove, push::get,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::redeliver,
    ),
    components(schemas(Problem)),
    modifiers(&Conventions),
    tags(
        (name = "users", description = "Users, device tokens, sessions, conversations"),
        (name = "groups", description = "Groups and members"),
        (name = "messages", description = "Posting, history and search"),
        (name = "webhooks", description = "Signed, durable deliveries of events to your endpoints"),
    )
)]
struct ApiDoc;

/// What every operation shares: the API key scheme and the problem answers.
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ak_<id>_<secret>")
                    .build(),
            ),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let answers = [
            (
                "400",
                "invalid_request: a field is missing, malformed or out of bounds",
            ),
            ("401", "unauthorized: no valid API key"),
            (
                "403",
                "forbidden: the key's scope or the group's rules do not allow it",
            ),
            (
                "404",
                "not_found: the user, group or conversation does not exist",
            ),
            (
                "409",
                "conflict: the state changed, or an idempotency key was reused",
            ),
            ("413", "too_large: the body exceeds edge.max_frame_bytes"),
            ("422", "rejected: the before-send hook refused the message"),
            (
                "429",
                "rate_limited: the key's rate is spent; see Retry-After",
            ),
            ("500", "internal: retry with the same idempotency key"),
            (
                "503",
                "overloaded: a projection is catching up; see Retry-After",
            ),
        ];
        // A profile change names a title, an avatar or both.
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
            components.schemas.get_mut("UpdateGroup")
        {
            o.min_properties = Some(1);
            o.max_properties = None;
        }
        // The event types an endpoint may name.
        components.schemas.insert(
            "EventFilter".to_owned(),
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .description(Some(
                    "An event type, a family (`group.*`) or everything (`*`).",
                ))
                .enum_values(Some(webhooks::event_filters()))
                .into(),
        );
        // A redelivery names one start.
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
            components.schemas.get_mut("RedeliverFrom")
        {
            o.min_properties = Some(1);
            o.max_properties = Some(1);
        }
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in answers {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// The OpenAPI 3.1 document, as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
}

async fn no_route() -> Problem {
    let mut p = Problem::from(RequestError::NotFound("no such route".into()));
    p.detail = "no such route; see /v1/openapi.json".into();
    p
}

/// The server API's routes.
pub fn router() -> Router<EdgeState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/users", post(users::create))
        .route(
            "/v1/users/{user}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/v1/users/{user}/tokens", post(users::mint))
        .route("/v1/users/{user}/sessions", get(users::sessions))
        .route(
            "/v1/users/{user}/sessions/{device}",
            axum::routing::delete(users::revoke),
        )
        .route("/v1/users/{user}/conversations", get(users::conversations))
        .route("/v1/users/{user}/search", get(messages::search))
        .route(
            "/v1/users/{user}/devices/{device}/push",
            axum::routing::put(push::set).delete(push::remove),
        )
        .route("/v1/users/{user}/push", get(push::get))
        .route("/v1/groups", post(groups::create))
        .route(
            "/v1/groups/{group}",
            get(groups::get)
                .patch(groups::update)
                .delete(groups::dismiss),
        )
        .route(
            "/v1/groups/{group}/members",
            get(groups::members).post(groups::add),
        )
        .route(
            "/v1/groups/{group}/members/{user}",
            axum::routing::delete(groups::remove),
        )
        .route("/v1/groups/{group}/members/{user}/role", put(groups::role))
        .route("/v1/groups/{group}/members/{user}/mute", put(groups::mute))
        .route(
            "/v1/conversations/{conv}/messages",
            get(messages::history).post(messages::post),
        )
        .route(
            "/v1/conversations/{conv}/attachments",
            post(attachments::upload),
        )
        .route(
            "/v1/conversations/{conv}/messages/{seq}/attachments/{id}",
            get(attachments::download),
        )
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v1/webhooks/{name}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/v1/webhooks/{name}/redeliver", post(webhooks::redeliver))
        .route("/v1/{*rest}", axum::routing::any(no_route))
}
