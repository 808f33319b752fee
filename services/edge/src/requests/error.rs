//! Why a request was refused, and the one place that turns a refusal into its error code.

use anchorage_bus::{BusError, PublishError};
use anchorage_protocol::{ErrorCode, ErrorFrame, FrameError, RequestId, ServerFrame};
use anchorage_store::StoreError;

/// A refused request. Each kind has exactly one error code ([`RequestError::code`]); the
/// message is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// A field is out of bounds or the request makes no sense.
    Invalid(String),
    /// The caller may not do this.
    Forbidden(String),
    /// The conversation, group or member does not exist (or is none of the caller's
    /// business).
    NotFound(String),
    /// The state changed under the request too often.
    Conflict(String),
    /// A passing condition (a projection catching up, NATS electing a leader): retry with the
    /// same ids after a moment.
    Overloaded(String),
    /// Too many requests: retry after `retry_after_ms`.
    RateLimited { retry_after_ms: u64 },
    /// A failure on our side.
    Internal(String),
    /// A send after a refused one, before that one was sent again.
    OutOfOrder(String),
    /// A request other than `hello` before `hello`.
    HelloRequired,
    /// A `hello` in a protocol version this server does not speak.
    UnsupportedProtocol,
    /// A frame that could not be decoded.
    Frame(FrameError),
    /// A binary frame.
    NotText,
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// Server API: no valid API key.
    Unauthorized(String),
    /// A request or body over its size limit.
    TooLarge(String),
    /// The before-send hook refused the message.
    Rejected(String),
}

impl RequestError {
    /// The stable code clients match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Invalid(_) => ErrorCode::InvalidRequest,
            RequestError::Forbidden(_) => ErrorCode::Forbidden,
            RequestError::NotFound(_) => ErrorCode::NotFound,
            RequestError::Conflict(_) => ErrorCode::Conflict,
            RequestError::Overloaded(_) => ErrorCode::Overloaded,
            RequestError::RateLimited { .. } => ErrorCode::RateLimited,
            RequestError::Internal(_) => ErrorCode::Internal,
            RequestError::OutOfOrder(_) => ErrorCode::OutOfOrder,
            RequestError::HelloRequired => ErrorCode::HelloRequired,
            RequestError::UnsupportedProtocol => ErrorCode::UnsupportedProtocol,
            RequestError::Frame(err) => err.code(),
            RequestError::NotText | RequestError::NotUtf8 => ErrorCode::BadFrame,
            RequestError::Unauthorized(_) => ErrorCode::Unauthorized,
            RequestError::TooLarge(_) => ErrorCode::TooLarge,
            RequestError::Rejected(_) => ErrorCode::Rejected,
        }
    }

    /// Whether the client retries this send (so it must keep its order through it).
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            RequestError::RateLimited { .. }
                | RequestError::Overloaded(_)
                | RequestError::Internal(_)
        )
    }

    /// The code and the message.
    pub fn into_parts(self) -> (ErrorCode, String) {
        (self.code(), self.message())
    }

    pub fn message(self) -> String {
        match self {
            RequestError::Invalid(m)
            | RequestError::Forbidden(m)
            | RequestError::NotFound(m)
            | RequestError::Conflict(m)
            | RequestError::Overloaded(m)
            | RequestError::Internal(m)
            | RequestError::OutOfOrder(m)
            | RequestError::Unauthorized(m)
            | RequestError::TooLarge(m)
            | RequestError::Rejected(m) => m,
            RequestError::RateLimited { .. } => "too many requests".into(),
            RequestError::HelloRequired => "send hello with a device token first".into(),
            RequestError::UnsupportedProtocol => format!(
                "this server speaks protocol {}",
                anchorage_protocol::PROTOCOL_VERSION
            ),
            RequestError::Frame(err) => err.to_string(),
            RequestError::NotText => "frames are JSON text".into(),
            RequestError::NotUtf8 => "text frames must be UTF-8".into(),
        }
    }

    /// The error frame answering request `id`; `overloaded` and `rate_limited` say when to
    /// come back (`overloaded` jittered, so refused clients come back spread out).
    pub fn into_frame(self, id: Option<RequestId>) -> ServerFrame {
        let code = self.code();
        let retry_after_ms = self.retry_after_ms();
        ServerFrame::Error(ErrorFrame {
            id,
            code,
            message: self.message(),
            retry_after_ms,
        })
    }

    /// When to come back, for `rate_limited` and `overloaded`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            RequestError::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            RequestError::Overloaded(_) => Some(250 + anchorage_schema::backoff::jitter(750)),
            _ => None,
        }
    }

    /// A failure on our side, logged.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "request failed");
        RequestError::Internal(format!("temporary failure, retry: {err}"))
    }
}

impl From<StoreError> for RequestError {
    fn from(err: StoreError) -> Self {
        RequestError::internal(err)
    }
}

/// A publish that failed: `overloaded` (retry after a moment, with the same ids) when the
/// servers are passing through an election, a restart or back-pressure; `internal` otherwise.
impl From<PublishError> for RequestError {
    fn from(err: PublishError) -> Self {
        if err.is_transient() {
            tracing::info!(error = %err, "message store unavailable for a moment");
            RequestError::Overloaded(
                "the message store is unavailable for a moment (e.g. electing a leader); retry \
                 with the same ids"
                    .into(),
            )
        } else {
            RequestError::internal(err)
        }
    }
}

/// A request to NATS that failed (a server restarting, a leader election, a lost
/// connection): `overloaded`, to retry after a moment.
impl From<BusError> for RequestError {
    fn from(err: BusError) -> Self {
        tracing::info!(error = %err, "NATS unavailable for a moment");
        RequestError::Overloaded("the message store is unavailable for a moment; retry".into())
    }
}

impl From<FrameError> for RequestError {
    fn from(err: FrameError) -> Self {
        RequestError::Frame(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_one_code_and_passing_ones_say_when_to_retry() {
        let overloaded = RequestError::Overloaded("x".into()).into_frame(Some(3));
        let ServerFrame::Error(e) = overloaded else {
            panic!("not an error frame")
        };
        assert_eq!((e.id, e.code), (Some(3), ErrorCode::Overloaded));
        assert!((250..1000).contains(&e.retry_after_ms.unwrap()));

        let limited = RequestError::RateLimited { retry_after_ms: 40 }.into_frame(None);
        assert_eq!(
            limited.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"too many requests","retry_after_ms":40}"#
        );
        assert!(RequestError::Internal("x".into()).is_passing());
        assert!(!RequestError::Forbidden("x".into()).is_passing());
        let bad = RequestError::from(FrameError::MissingType);
        assert_eq!(bad.code(), ErrorCode::BadFrame);
    }
}
