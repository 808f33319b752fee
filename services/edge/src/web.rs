//! The web chat page (`edge.chat_page`): the page at `/`, its script and style, and the
//! TypeScript SDK it runs on under `/sdk/` — all compiled into the binary, so `anchorage dev`
//! serves them with nothing else installed.
//!
//! With the development secret (which anyone may know), `POST /dev/token` mints a device
//! token for any user, so the page can sign in as a development user. With any other secret
//! the route does not exist and the page asks for a token.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use anchorage_schema::{DeviceId, UserId};

use crate::EdgeState;

/// The files served, by path: (content type, text).
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../shared/sdk-ts/web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/web/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_str!("../../../shared/sdk-ts/web/app.css"),
    ),
    (
        "/sdk/index.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/index.js"),
    ),
    (
        "/sdk/client.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/client.js"),
    ),
    (
        "/sdk/store.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/store.js"),
    ),
    (
        "/sdk/digest.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/digest.js"),
    ),
    (
        "/sdk/xxh3.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/xxh3.js"),
    ),
    (
        "/sdk/backoff.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/backoff.js"),
    ),
    (
        "/sdk/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../shared/sdk-ts/dist/protocol.js"),
    ),
];

/// The page only talks to the edge that served it: scripts, styles and sockets from this
/// origin, nothing inline, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes.
pub fn router() -> Router<EdgeState> {
    let mut router = Router::new();
    for &(path, content_type, text) in FILES {
        router = router.route(path, get(move || async move { file(content_type, text) }));
    }
    router.route("/dev/token", post(dev_token))
}

fn file(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    device: String,
}

/// A development token for any user — only while the edge signs with the public development
/// secret, where anyone could mint one anyway.
async fn dev_token(
    State(state): State<EdgeState>,
    request: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let auth = &state.auth;
    if !(auth.accept_hmac && auth.hmac_secret == anchorage_config::DEV_HMAC_SECRET) {
        return (
            StatusCode::NOT_FOUND,
            "no development sign-in on this edge\n",
        )
            .into_response();
    }
    let Ok(Json(request)) = request else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"user\": …, \"device\": …}\n",
        )
            .into_response();
    };
    let (user, device) = match (UserId::parse(request.user), DeviceId::parse(request.device)) {
        (Ok(user), Ok(device)) => (user, device),
        (Err(e), _) | (_, Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    match crate::auth::mint_configured(auth, user, device, auth.token_ttl_secs) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
