//! The Anchorage wire protocol: JSON frames over the `/ws` WebSocket.
//!
//! Every client request carries a client-chosen `id`; every answer and every error about that
//! request carries the same `id`. Frames are tagged by `type`. The protocol is versioned at
//! connect (the `hello` frame names the version the client speaks); [`PROTOCOL_VERSION`] is the
//! newest one this software speaks.
//!
//! Decoding is strict and precise: [`decode_client_frame`] says whether a frame was too large,
//! not JSON, of an unknown type or missing a field, so the edge can answer with an [`ErrorCode`]
//! and keep the connection.

use serde::{Deserialize, Serialize};

use anchorage_schema::Anchor;

/// The newest protocol version this software speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A client-chosen request id, echoed in the answer.
pub type RequestId = u64;

/// Requests a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame on a connection: the protocol version and the client's anchors.
    Hello {
        id: RequestId,
        protocol: u16,
        #[serde(default)]
        anchors: Vec<ConvAnchor>,
    },
    /// Liveness check; answered with `pong`.
    Ping { id: RequestId },
}

/// The client's version of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvAnchor {
    pub conv: anchorage_schema::ConversationId,
    pub anchor: Anchor,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        id: RequestId,
        protocol: u16,
        /// Largest frame the server accepts, in bytes.
        max_frame_bytes: u32,
    },
    Pong {
        id: RequestId,
    },
    /// A request failed, or a frame could not be read (then `id` is absent).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        /// For `rate_limited` and `overloaded`: when to try again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Stable error codes; clients match on these, the message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    #[error("frame has no \"type\" field")]
    MissingType,
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("invalid {type_name:?} frame: {reason}")]
    Invalid { type_name: String, reason: String },
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::NotJson(_) | FrameError::MissingType => ErrorCode::BadFrame,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::Invalid { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// The request types this version of the protocol knows.
pub const CLIENT_FRAME_TYPES: &[&str] = &["hello", "ping"];

/// Decodes one client frame, refusing anything larger than `max_len` bytes before parsing.
///
/// Returns the request id alongside the error when the frame was readable enough to have one,
/// so the error frame can reference it.
pub fn decode_client_frame(
    text: &str,
    max_len: usize,
) -> Result<ClientFrame, (Option<RequestId>, FrameError)> {
    if text.len() > max_len {
        return Err((
            None,
            FrameError::TooLarge {
                len: text.len(),
                max: max_len,
            },
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (None, FrameError::NotJson(e.to_string())))?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let type_name = match value.get("type").and_then(serde_json::Value::as_str) {
        Some(t) => t.to_owned(),
        None => return Err((id, FrameError::MissingType)),
    };
    if !CLIENT_FRAME_TYPES.contains(&type_name.as_str()) {
        return Err((id, FrameError::UnknownType(type_name)));
    }
    serde_json::from_value(value).map_err(|e| {
        (
            id,
            FrameError::Invalid {
                type_name,
                reason: e.to_string(),
            },
        )
    })
}

impl ServerFrame {
    /// An error frame for a failed decode.
    pub fn from_frame_error(id: Option<RequestId>, err: &FrameError) -> Self {
        ServerFrame::Error {
            id,
            code: err.code(),
            message: err.to_string(),
            retry_after_ms: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Server frames hold only strings, numbers and enums: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hello() {
        let f = decode_client_frame(
            r#"{"type":"hello","id":1,"protocol":1,"anchors":[{"conv":"c1","anchor":{"epoch":3,"seq":9}}]}"#,
            1024,
        )
        .unwrap();
        match f {
            ClientFrame::Hello {
                id,
                protocol,
                anchors,
            } => {
                assert_eq!((id, protocol), (1, 1));
                assert_eq!(anchors[0].anchor.seq.0, 9);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_bad_frame_gets_its_own_code() {
        let cases = [
            ("x".repeat(2000), ErrorCode::TooLarge, None),
            ("{not json".into(), ErrorCode::BadFrame, None),
            (r#"{"id":4}"#.into(), ErrorCode::BadFrame, Some(4)),
            (
                r#"{"id":5,"type":"dance"}"#.into(),
                ErrorCode::UnknownType,
                Some(5),
            ),
            (
                r#"{"id":6,"type":"hello"}"#.into(),
                ErrorCode::InvalidRequest,
                Some(6),
            ),
            (
                r#"{"id":7,"type":"ping","extra":true}"#.into(),
                ErrorCode::InvalidRequest,
                Some(7),
            ),
        ];
        for (text, code, id) in cases {
            let (got_id, err) = decode_client_frame(&text, 1024).unwrap_err();
            assert_eq!(err.code(), code, "{text}");
            assert_eq!(got_id, id, "{text}");
        }
    }

    #[test]
    fn error_frame_shape() {
        let (id, err) = decode_client_frame(r#"{"id":9,"type":"dance"}"#, 64).unwrap_err();
        let json = ServerFrame::from_frame_error(id, &err).to_json();
        assert_eq!(
            json,
            r#"{"type":"error","id":9,"code":"unknown_type","message":"unknown frame type \"dance\""}"#
        );
    }
}
