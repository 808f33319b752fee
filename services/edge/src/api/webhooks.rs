//! Webhook endpoints managed through the API: records on `admin.webhook.<name>`, which the
//! webhook worker follows (endpoints from configuration are not listed here).

use anchorage_schema::admin::{Redeliver, Scope, WebhookRecord};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Seq, UserId, now_ms};
use anchorage_webhooks::Secret;
use anchorage_webhooks::worker::{consumer_name, stream_of, streams_for};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys::Key;
use super::problem::{Body, Params, Problem};
use super::{Written, idempotency_key, some_string, some_whole};
use crate::EdgeState;
use crate::requests::RequestError;

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// Where deliveries are posted: `http://` or `https://`, a host, no user or password
    /// (deliveries are signed; credentials in a URL end up in logs) and no `#fragment`.
    #[schema(
        pattern = r"^https?://[^/?#@\x00-\x20]+([/?][^#\x00-\x20]*)?$",
        max_length = 2048
    )]
    pub url: String,
    /// Event types (`message.sent`, `group.*`, `*`); empty or absent: every type.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub events: Vec<EventFilter>,
    /// The signing secret (`whsec_` and base64 of at least 16 bytes); absent: a new one.
    #[serde(default, deserialize_with = "some_string")]
    #[schema(
        pattern = "^whsec_(?:[A-Za-z0-9+/]{4}){5}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)$",
        max_length = 200,
        nullable = false
    )]
    pub secret: Option<String>,
}

/// An event type (`message.sent`), a family (`group.*`) or everything (`*`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct EventFilter(pub String);

/// Every filter an endpoint may name: each selects events a webhook carries.
pub fn event_filters() -> Vec<String> {
    let families = [
        "*",
        "message.*",
        "conversation.*",
        "group.*",
        "user.*",
        "session.*",
        "read.*",
    ];
    families
        .iter()
        .map(|f| (*f).to_owned())
        .chain(
            anchorage_schema::Event::TYPES
                .iter()
                .filter(|(t, _)| stream_of(t).is_some())
                .map(|(t, _)| (*t).to_owned()),
        )
        .collect()
}

/// An endpoint just created: the only answer that shows its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// Its name.
    pub name: String,
    /// The signing secret: verify every delivery's `webhook-signature` with it.
    pub secret: String,
    /// The ADMIN stream sequence of the record.
    pub seq: u64,
}

/// An endpoint and its backlog.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    /// Its name.
    pub name: String,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives (empty: all).
    pub events: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Events not yet delivered, over its streams (counted while its consumers exist).
    pub backlog: u64,
}

/// Every endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhooks {
    /// By name.
    pub webhooks: Vec<Webhook>,
}

/// Where deliveries start again: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverFrom {
    /// From this sequence of each of the endpoint's streams.
    #[serde(default, deserialize_with = "some_whole")]
    #[schema(minimum = 1, nullable = false)]
    pub from_seq: Option<i64>,
    /// From the events stored at or after this time, Unix milliseconds (before the year 10000).
    #[serde(default, deserialize_with = "some_whole")]
    #[schema(minimum = 0, maximum = 253_402_300_799_999_i64, nullable = false)]
    pub from_time: Option<i64>,
}

fn name_of(name: String) -> Result<String, Problem> {
    UserId::parse(name.as_str()).map(|_| name).map_err(|e| {
        Problem::invalid(format!(
            "webhook name: {}",
            e.to_string().replace("user id", "name")
        ))
    })
}

/// The endpoint's current record (unless deleted), with the sequence of its last record (0 if
/// it never had one) for the next write to expect.
async fn record(state: &EdgeState, name: &str) -> Result<(Seq, Option<WebhookRecord>), Problem> {
    let stored = state
        .bus
        .last_subject_payload(stream::ADMIN, &subjects::webhook(name))
        .await
        .map_err(RequestError::from)?;
    Ok(match stored {
        Some((seq, bytes)) => (
            seq,
            serde_json::from_slice::<WebhookRecord>(&bytes)
                .ok()
                .filter(|r| !r.deleted),
        ),
        None => (Seq(0), None),
    })
}

/// Stores `r` if no other record came after the one at `expected`.
async fn store(state: &EdgeState, r: &WebhookRecord, expected: Seq) -> Result<u64, Problem> {
    let bytes = serde_json::to_vec(r).map_err(|e| Problem::from(RequestError::internal(e)))?;
    match state
        .bus
        .publish_record(&subjects::webhook(&r.name), bytes, expected)
        .await
    {
        Ok(p) => Ok(p.seq.0),
        Err(anchorage_bus::PublishError::Conflict { .. }) => Err(RequestError::Conflict(format!(
            "webhook {} changed meanwhile; read it again and retry",
            r.name
        ))
        .into()),
        Err(e) => Err(RequestError::from(e).into()),
    }
}

async fn view(state: &EdgeState, r: WebhookRecord) -> Webhook {
    let mut backlog = 0;
    for s in streams_for(&r.events) {
        if let Ok((pending, ack_pending)) =
            state.bus.consumer_pending(s, &consumer_name(&r.name)).await
        {
            backlog += pending + ack_pending;
        }
    }
    Webhook {
        name: r.name,
        url: r.url,
        events: r.events,
        created_at: r.created_at,
        backlog,
    }
}

/// Add a webhook endpoint.
#[utoipa::path(post, operation_id = "webhook_create", path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    params(super::IdempotencyHeader),
    responses((status = 201, description = "Created; the secret is shown this once (and to the same creation again, under its Idempotency-Key)", body = CreatedWebhook)),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<EdgeState>,
    key: Key,
    headers: HeaderMap,
    Body(r): Body<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), Problem> {
    key.require(Scope::Admin)?;
    let idem = idempotency_key(&headers, None)?.map(|k| k.to_string());
    let name = name_of(r.name)?;
    anchorage_webhooks::check_url(&r.url).map_err(|why| Problem::invalid(format!("url: {why}")))?;
    let events: Vec<String> = r.events.into_iter().map(|e| e.0).collect();
    let known = event_filters();
    if events.len() > 64 || events.iter().any(|e| !known.contains(e)) {
        return Err(Problem::invalid(format!(
            "at most 64 event types, each one of: {}",
            known.join(", ")
        )));
    }
    let given_secret = r.secret.is_some();
    let secret = match r.secret {
        Some(s) => {
            Secret::parse(&s).map_err(|e| Problem::invalid(e.to_string()))?;
            s
        }
        None => Secret::generate().map_err(|e| Problem::from(RequestError::internal(e)))?,
    };
    let (last, existing) = record(&state, &name).await?;
    if let Some(existing) = existing {
        // The same creation again (its answer lost): the same answer, secret included.
        let same = idem.is_some()
            && existing.key == idem
            && existing.redeliver.is_none()
            && existing.url == r.url
            && existing.events == events
            && (!given_secret || secret == existing.secret);
        if same {
            return Ok((
                StatusCode::CREATED,
                Json(CreatedWebhook {
                    name,
                    secret: existing.secret,
                    seq: last.0,
                }),
            ));
        }
        return Err(RequestError::Conflict(format!("webhook {name} exists")).into());
    }
    let seq = store(
        &state,
        &WebhookRecord {
            name: name.clone(),
            url: r.url,
            secret: secret.clone(),
            events,
            created_at: now_ms(),
            redeliver: None,
            redeliver_at: None,
            deleted: false,
            key: idem,
        },
        last,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { name, secret, seq }),
    ))
}

/// List the webhook endpoints and their backlogs.
#[utoipa::path(get, operation_id = "webhook_list", path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The endpoints", body = Webhooks)),
    security(("api_key" = [])))]
pub async fn list(State(state): State<EdgeState>, key: Key) -> Result<Json<Webhooks>, Problem> {
    key.require(Scope::Admin)?;
    let subjects = state
        .bus
        .subjects(stream::ADMIN, subjects::WEBHOOKS_ALL)
        .await
        .map_err(RequestError::from)?;
    let mut webhooks = Vec::new();
    for subject in subjects {
        if let (_, Some(r)) = record(&state, subjects::last_token(&subject)).await? {
            webhooks.push(view(&state, r).await);
        }
    }
    Ok(Json(Webhooks { webhooks }))
}

/// Get a webhook endpoint and its backlog.
#[utoipa::path(get, operation_id = "webhook_get", path = "/v1/webhooks/{name}", tag = "webhooks",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "The endpoint", body = Webhook)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<EdgeState>,
    key: Key,
    Params(name): Params<String>,
) -> Result<Json<Webhook>, Problem> {
    key.require(Scope::Admin)?;
    let name = name_of(name)?;
    match record(&state, &name).await?.1 {
        Some(r) => Ok(Json(view(&state, r).await)),
        None => Err(RequestError::NotFound(format!("no webhook {name}")).into()),
    }
}

/// Delete a webhook endpoint: nothing more is delivered to it.
#[utoipa::path(delete, operation_id = "webhook_delete", path = "/v1/webhooks/{name}", tag = "webhooks",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "Deleted", body = Written)),
    security(("api_key" = [])))]
pub async fn delete(
    State(state): State<EdgeState>,
    key: Key,
    Params(name): Params<String>,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Admin)?;
    let name = name_of(name)?;
    let (last, Some(mut r)) = record(&state, &name).await? else {
        return Err(RequestError::NotFound(format!("no webhook {name}")).into());
    };
    r.deleted = true;
    let seq = store(&state, &r, last).await?;
    Ok(Json(Written {
        seq,
        duplicate: false,
    }))
}

/// The last Unix millisecond of the year 9999: the latest time a redelivery may start from.
const LATEST_MS: i64 = 253_402_300_799_999;

/// Deliver again from a sequence or a time (also what was delivered or dead-lettered).
#[utoipa::path(post, operation_id = "webhook_redeliver", path = "/v1/webhooks/{name}/redeliver", tag = "webhooks",
    request_body = RedeliverFrom,
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Deliveries start again from there", body = Written)),
    security(("api_key" = [])))]
pub async fn redeliver(
    State(state): State<EdgeState>,
    key: Key,
    Params(name): Params<String>,
    headers: HeaderMap,
    Body(r): Body<RedeliverFrom>,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Admin)?;
    let idem = idempotency_key(&headers, None)?.map(|k| k.to_string());
    let name = name_of(name)?;
    let from = match (r.from_seq, r.from_time) {
        (Some(s), None) if s >= 1 => Redeliver::FromSeq(s as u64),
        (None, Some(t)) if (0..=LATEST_MS).contains(&t) => Redeliver::FromTime(t),
        _ => {
            return Err(Problem::invalid(
                "give from_seq (at least 1) or from_time (Unix milliseconds, before the year \
                 10000), not both",
            ));
        }
    };
    let (last, Some(mut rec)) = record(&state, &name).await? else {
        return Err(RequestError::NotFound(format!("no webhook {name}")).into());
    };
    if idem.is_some() && rec.key == idem {
        // The same ask again: deliveries started over once already.
        if rec.redeliver.as_ref() == Some(&from) {
            return Ok(Json(Written {
                seq: last.0,
                duplicate: true,
            }));
        }
        return Err(RequestError::Conflict(
            "the idempotency key was used for another request".into(),
        )
        .into());
    }
    rec.redeliver = Some(from);
    rec.redeliver_at = Some(now_ms());
    rec.key = idem;
    let seq = store(&state, &rec, last).await?;
    Ok(Json(Written {
        seq,
        duplicate: false,
    }))
}
