//! Errors as `application/problem+json` (RFC 9457), with the WebSocket protocol's stable codes.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::requests::RequestError;

/// Why a request was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem: `urn:anchorage:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The code in words.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
    /// The stable code (the same as the WebSocket protocol's): `invalid_request`,
    /// `unauthorized`, `forbidden`, `not_found`, `conflict`, `too_large`, `rejected`,
    /// `rate_limited`, `overloaded`, `internal`.
    pub code: String,
    /// For `rate_limited` and `overloaded`: when to come back (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl From<RequestError> for Problem {
    fn from(err: RequestError) -> Self {
        use anchorage_protocol::ErrorCode as C;
        let code = err.code();
        let status = match code {
            C::Unauthorized => StatusCode::UNAUTHORIZED,
            C::Forbidden => StatusCode::FORBIDDEN,
            C::NotFound => StatusCode::NOT_FOUND,
            C::Conflict => StatusCode::CONFLICT,
            C::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            C::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let retry_after_ms = err.retry_after_ms();
        let code = code.as_str();
        Problem {
            kind: format!("urn:anchorage:problem:{code}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: err.message(),
            code: code.to_owned(),
            retry_after_ms,
        }
    }
}

impl Problem {
    /// A request that is not what the route reads.
    pub fn invalid(detail: impl Into<String>) -> Self {
        RequestError::Invalid(detail.into()).into()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let retry = self.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
        let mut response = (status, serde_json::to_vec(&self).unwrap_or_default()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON body whose rejections are problems: `invalid_request` (400), `too_large` (413).
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<serde_json::Map<String, serde_json::Value>>::from_request(req, state)
            .await
        {
            // An object, and only an object (serde would read a struct from an array too).
            Ok(axum::Json(object)) => serde_json::from_value(serde_json::Value::Object(object))
                .map(Body)
                .map_err(|e| Problem::invalid(format!("the body does not fit: {e}"))),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(RequestError::TooLarge("the body exceeds edge.max_frame_bytes".into()).into())
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Problem::invalid(
                "the body must be JSON with Content-Type: application/json",
            )),
            Err(e) => Err(Problem::invalid(e.body_text())),
        }
    }
}

/// Path parameters whose rejections are problems.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Params(p.0))
            .map_err(|e: PathRejection| Problem::invalid(e.body_text()))
    }
}

/// A query string whose rejections are problems.
#[derive(Debug)]
pub struct Page<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Page<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Page(q.0))
            .map_err(|e: QueryRejection| Problem::invalid(e.body_text()))
    }
}
