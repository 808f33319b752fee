//! Users' push targets, for backends that keep their apps' push tokens themselves: register
//! and remove a device's target, and see where a user is reached and what their last
//! notifications came to.

use anchorage_schema::admin::Scope;
use anchorage_schema::event::{PushTargetRemoved, PushTargetSet};
use anchorage_schema::push::PushTarget;
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{DeviceId, Envelope, Event, UserId, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys::Key;
use super::problem::{Body, Params, Problem};
use super::users::user_id;
use super::{EVENT_PREFIX, Written, applied, backend, event_id, idempotency_key};
use crate::EdgeState;
use crate::progress::Projection;
use crate::requests::RequestError;

/// Where a device is reached while it is not connected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTarget {
    /// The provider and the address it gave the device.
    #[schema(value_type = Target)]
    pub target: serde_json::Value,
    /// Notifications show the message's text (default `true`).
    #[serde(default)]
    pub preview: Option<bool>,
}

/// A push target as documented. The server reads `anchorage_schema::push::PushTarget`; the
/// document is at least as strict, so a target it describes is never refused as malformed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the body for the OpenAPI document
pub enum Target {
    Fcm(FcmTarget),
    Apns(ApnsTarget),
    WebPush(WebPushTarget),
}

/// `fcm`.
#[derive(Debug, Deserialize, ToSchema)]
pub enum FcmName {
    #[serde(rename = "fcm")]
    Fcm,
}

/// `apns`.
#[derive(Debug, Deserialize, ToSchema)]
pub enum ApnsName {
    #[serde(rename = "apns")]
    Apns,
}

/// `web_push`.
#[derive(Debug, Deserialize, ToSchema)]
pub enum WebPushName {
    #[serde(rename = "web_push")]
    WebPush,
}

/// An FCM registration token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FcmTarget {
    provider: FcmName,
    /// The registration token (printable ASCII).
    #[schema(pattern = "^[!-~]{1,4096}$", max_length = 4096)]
    token: String,
}

/// An APNs device token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ApnsTarget {
    provider: ApnsName,
    /// The device token in hex.
    #[schema(pattern = "^([0-9a-fA-F]{2}){16,100}$")]
    token: String,
    /// Registered by a development build (the sandbox environment).
    #[serde(default)]
    sandbox: bool,
}

/// A browser's Web Push subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct WebPushTarget {
    provider: WebPushName,
    /// The push service URL (a push service this server calls).
    #[schema(
        pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/:=+-]*)?$",
        max_length = 2048
    )]
    endpoint: String,
    /// The browser's P-256 public key, uncompressed (65 bytes), base64url.
    #[schema(pattern = "^B[A-P][A-Za-z0-9_-]{85}$")]
    p256dh: String,
    /// The browser's 16-byte secret, base64url.
    #[schema(pattern = "^[A-Za-z0-9_-]{22}$")]
    auth: String,
}

/// How one device is notified.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceTarget {
    /// The device.
    pub device: String,
    /// `fcm`, `apns` or `web_push`.
    pub provider: String,
    /// Notifications show the text.
    pub preview: bool,
}

/// What a notification came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Outcome {
    /// The device.
    pub device: String,
    /// The conversation.
    pub conv: String,
    /// The newest message queued for it.
    pub seq: u64,
    /// The newest announced or passed over.
    pub pushed_seq: u64,
    /// `delivered`, `suppressed: <why>`, `retrying: <why>`, `failed: <why>`.
    pub outcome: Option<String>,
    /// When it was last written (Unix ms).
    pub updated_at: i64,
}

/// A user's push targets and their latest notifications.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPush {
    /// Devices with a target.
    pub devices: Vec<DeviceTarget>,
    /// The 50 notifications written last, newest first.
    pub recent: Vec<Outcome>,
}

fn device_id(d: String) -> Result<DeviceId, Problem> {
    DeviceId::parse(d).map_err(|e| Problem::invalid(e.to_string()))
}

/// Publishes a push event of `user` under the request's idempotency key (or a new id) and
/// answers once the projection holds it.
async fn publish(
    state: &EdgeState,
    headers: &HeaderMap,
    user: &UserId,
    what: &str,
    device: &DeviceId,
    event: Event,
) -> Result<Json<Written>, Problem> {
    // Without a key every request is its own: two in the same millisecond are two.
    let id = match idempotency_key(headers, None)? {
        Some(k) => format!("{EVENT_PREFIX}:user:{user}:key:{k}"),
        None => format!(
            "{EVENT_PREFIX}:{what}:{user}:{device}:{}:{:016x}",
            now_ms(),
            anchorage_schema::backoff::random()
        ),
    };
    let env = Envelope::new(event_id(id)?, now_ms(), backend(), event);
    let p = state
        .bus
        .publish_event(&subjects::user(user), &env, None)
        .await
        .map_err(RequestError::from)?;
    if p.duplicate {
        super::caller(state)
            .same_request(stream::USERS, p.seq, &env)
            .await?;
    }
    applied(state, Projection::Users, p.seq.0).await;
    Ok(Json(Written {
        seq: p.seq.0,
        duplicate: p.duplicate,
    }))
}

/// Register where a user's device is reached while offline (replacing its previous target;
/// the same address held by another device or user is theirs no more).
#[utoipa::path(put, operation_id = "user_set_push_target", path = "/v1/users/{user}/devices/{device}/push", tag = "users", request_body = SetTarget,
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("device" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Registered", body = Written)),
    security(("api_key" = [])))]
pub async fn set(
    State(state): State<EdgeState>,
    key: Key,
    Params((user, device)): Params<(String, String)>,
    headers: HeaderMap,
    Body(r): Body<SetTarget>,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Write)?;
    let user = user_id(user)?;
    let device = device_id(device)?;
    let target: PushTarget =
        serde_json::from_value(r.target).map_err(|e| Problem::invalid(format!("target: {e}")))?;
    state.push_target_allowed(&target)?;
    super::not_deleted(&state, std::slice::from_ref(&user)).await?;
    let event = PushTargetSet {
        user: user.clone(),
        device: device.clone(),
        target,
        preview: r.preview.unwrap_or(true),
    };
    publish(&state, &headers, &user, "push", &device, event.into()).await
}

/// Stop notifying a user's device while it is offline.
#[utoipa::path(delete, operation_id = "user_remove_push_target", path = "/v1/users/{user}/devices/{device}/push", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("device" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 200, description = "Removed", body = Written)),
    security(("api_key" = [])))]
pub async fn remove(
    State(state): State<EdgeState>,
    key: Key,
    Params((user, device)): Params<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Written>, Problem> {
    key.require(Scope::Write)?;
    let user = user_id(user)?;
    let device = device_id(device)?;
    super::not_deleted(&state, std::slice::from_ref(&user)).await?;
    let event = PushTargetRemoved {
        user: user.clone(),
        device: device.clone(),
        address: None,
        reason: "unregistered".into(),
    };
    publish(&state, &headers, &user, "unpush", &device, event.into()).await
}

/// Where a user is reached while offline, and what their latest notifications came to.
#[utoipa::path(get, operation_id = "user_push", path = "/v1/users/{user}/push", tag = "users",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "Targets and outcomes", body = UserPush)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
) -> Result<Json<UserPush>, Problem> {
    key.require(Scope::Read)?;
    let user = user_id(user)?;
    let rows = state
        .store
        .push_targets_since(user.as_str(), 0, 1000)
        .await
        .map_err(RequestError::from)?;
    let devices = rows
        .into_iter()
        .filter_map(|r| {
            let target: PushTarget = serde_json::from_str(r.target.as_deref()?).ok()?;
            Some(DeviceTarget {
                device: r.device,
                provider: target.provider().to_owned(),
                preview: r.preview,
            })
        })
        .collect();
    let recent = state
        .store
        .recent_pushes(user.as_str(), 50)
        .await
        .map_err(RequestError::from)?
        .into_iter()
        .map(|r| Outcome {
            device: r.device,
            conv: r.conv,
            seq: r.seq,
            pushed_seq: r.pushed_seq,
            outcome: r.outcome,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(Json(UserPush { devices, recent }))
}
