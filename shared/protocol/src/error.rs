//! Stable error codes and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// WebSocket close codes the server uses (4000–4999 are ours).
pub mod close {
    /// The token was missing, malformed, forged or of an unknown key.
    pub const AUTH_FAILED: u16 = 4001;
    /// The token expired (also during a connection): reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// No `hello` within the time allowed.
    pub const HELLO_TIMEOUT: u16 = 4003;
    /// The protocol version is not spoken here.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4004;
    /// The session was revoked.
    pub const REVOKED: u16 = 4005;
    /// The client fell behind its live queue: reconnect and resync from your anchors.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client kept sending after being told `rate_limited`: back off before reconnecting.
    pub const RATE_LIMITED: u16 = 4029;
    /// The server is shutting down or over capacity: reconnect elsewhere or later.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame was not valid UTF-8 (RFC 6455).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
}

/// Stable error codes; clients match on these, the message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON (or not UTF-8 text).
    BadFrame,
    /// The frame is JSON but not a known request type.
    UnknownType,
    /// A known request with a missing or invalid field.
    InvalidRequest,
    /// The frame exceeds the size limit.
    TooLarge,
    /// The client speaks a protocol version this server does not.
    UnsupportedProtocol,
    /// A request other than `hello` came before `hello`.
    HelloRequired,
    /// The caller may not do this (e.g. not a member of the conversation).
    Forbidden,
    /// The conversation, group or user does not exist.
    NotFound,
    /// The state changed under the request too often; re-read and retry.
    Conflict,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimited,
    /// The server is shedding load; retry after `retry_after_ms`.
    Overloaded,
    /// A failure on our side; the request may be retried with the same ids.
    Internal,
    /// Server API only: the API key is missing, malformed, unknown or revoked.
    Unauthorized,
    /// The before-send hook refused the message; the message says why. Sending it again
    /// unchanged is refused again.
    Rejected,
    /// An earlier send on this connection was refused (`rate_limited`, `overloaded`,
    /// `internal`): later ones are refused too until that one is sent again, so a client that
    /// retries in order keeps its order.
    OutOfOrder,
}

impl ErrorCode {
    /// The code as it is written on the wire (`not_found`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Rejected => "rejected",
            ErrorCode::OutOfOrder => "out_of_order",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_is_written_as_serde_writes_it() {
        use ErrorCode::*;
        for code in [
            BadFrame,
            UnknownType,
            InvalidRequest,
            TooLarge,
            UnsupportedProtocol,
            HelloRequired,
            Forbidden,
            NotFound,
            Conflict,
            RateLimited,
            Overloaded,
            Internal,
            Unauthorized,
            Rejected,
            OutOfOrder,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
